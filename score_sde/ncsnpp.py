"""NCSN++ transport map T(x, z): the score_sde U-Net as used by DDGAN/UOTM, without time input.

The auxiliary latent z goes through PixelNorm and an MLP (the "mapping network"),
and its embedding sets the scale and shift of every group norm (AdaGN). Options
keep score_sde's names; the CIFAR-10 defaults are in `score_sde.config`.
"""
import math

import torch
import torch.nn as nn

from uot.errors import UsageError

from .layers import (AttentionBlock, PixelNorm, ResnetBlockBigGAN, ResnetBlockDDPM,
                     conv2d, dense, downsample, group_norm, skip_add, upsample)


class FourierFeatures(nn.Module):
    """Fixed random Fourier features [sin, cos](2 pi B z), B ~ N(0, scale^2).

    score_sde uses Gaussian Fourier features to embed the noise level; the UOTM
    generator has no time input, so `--embedding_type fourier` embeds z this way
    before the mapping network instead.
    """

    def __init__(self, dim, scale):
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim, dim) * scale)

    def forward(self, z):
        proj = 2 * math.pi * z @ self.freqs.t()
        return torch.cat([proj.sin(), proj.cos()], dim=1)


def mapping_network(nz, z_emb_dim, n_mlp, embedding_type="positional", fourier_scale=16.0):
    """z -> [Fourier features] -> PixelNorm -> n_mlp + 1 linear layers with SiLU."""
    layers = []
    if embedding_type == "fourier":
        layers.append(FourierFeatures(nz, fourier_scale))
        nz = 2 * nz
    layers += [PixelNorm(), dense(nz, z_emb_dim), nn.SiLU()]
    for _ in range(n_mlp):
        layers += [dense(z_emb_dim, z_emb_dim), nn.SiLU()]
    return nn.Sequential(*layers)


class NCSNpp(nn.Module):
    """U-Net generator T(x, z) -> same shape as x.

    Encoder: conv, then per resolution `num_res_blocks` residual blocks (+ attention
    at `attn_resolutions`) and a downsampling step; the input image also runs down a
    pyramid (`progressive_input`) that is merged after every downsampling. Middle:
    block, attention, block. Decoder: per resolution `num_res_blocks + 1` blocks on the
    concatenated skips, optional attention and output pyramid (`progressive`), and an
    upsampling step. Output: norm, SiLU, conv, tanh (unless `not_use_tanh`).
    """

    def __init__(self, cfg):
        super().__init__()
        nf, ch_mult = cfg.num_channels_dae, list(cfg.ch_mult)
        channels = cfg.num_channels
        self.centered = cfg.centered
        self.use_tanh = not cfg.not_use_tanh
        self.skip_rescale = cfg.skip_rescale
        self.resblock_type = cfg.resblock_type
        self.progressive = cfg.progressive
        self.progressive_input = cfg.progressive_input
        self.combine = cfg.progressive_combine
        for flag, value, allowed in (("--resblock_type", self.resblock_type, ("biggan", "ddpm")),
                                     ("--progressive", self.progressive, ("none", "output_skip", "residual")),
                                     ("--progressive_input", self.progressive_input, ("none", "input_skip", "residual")),
                                     ("--progressive_combine", self.combine, ("sum", "cat")),
                                     ("--embedding_type", cfg.embedding_type, ("positional", "fourier"))):
            if value not in allowed:
                raise UsageError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
        fir, fir_kernel = cfg.fir, tuple(cfg.fir_kernel)
        resolutions = [cfg.image_size // 2 ** i for i in range(len(ch_mult))]
        attn_resolutions = set(cfg.attn_resolutions)

        # --no-conditional drops z: a deterministic map T(x) with plain group norms.
        self.mapping = None
        zemb_dim = None
        if cfg.conditional:
            self.mapping = mapping_network(cfg.nz, cfg.z_emb_dim, cfg.n_mlp, cfg.embedding_type, cfg.fourier_scale)
            zemb_dim = cfg.z_emb_dim

        def res_block(in_ch, out_ch=None, up=False, down=False):
            if self.resblock_type == "ddpm":
                return ResnetBlockDDPM(in_ch, out_ch, zemb_dim, cfg.dropout, self.skip_rescale)
            return ResnetBlockBigGAN(in_ch, out_ch, zemb_dim, up=up, down=down, dropout=cfg.dropout,
                                     fir=fir, fir_kernel=fir_kernel, skip_rescale=self.skip_rescale)

        def attention(ch, resolution):
            return AttentionBlock(ch, self.skip_rescale) if resolution in attn_resolutions else nn.Identity()

        # ---- encoder
        self.conv_in = conv2d(channels, nf)
        skip_channels = [nf]
        in_ch, pyramid_ch = nf, channels
        self.down_blocks, self.down_attn = nn.ModuleList(), nn.ModuleList()
        self.downsamples, self.pyramid_downs = nn.ModuleList(), nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(res_block(in_ch, nf * mult))
                in_ch = nf * mult
                attns.append(attention(in_ch, resolutions[level]))
                skip_channels.append(in_ch)
            self.down_blocks.append(blocks)
            self.down_attn.append(attns)
            if level == len(ch_mult) - 1:
                continue
            if self.resblock_type == "ddpm":
                self.downsamples.append(downsample(in_ch, with_conv=cfg.resamp_with_conv, fir=fir, fir_kernel=fir_kernel))
            else:
                self.downsamples.append(res_block(in_ch, down=True))
            if self.progressive_input == "input_skip":
                # parameter-free pyramid of the input image, merged by a 1x1 conv
                self.pyramid_downs.append(nn.ModuleDict({
                    "down": downsample(with_conv=False, fir=fir, fir_kernel=fir_kernel),
                    "merge": conv2d(pyramid_ch, in_ch, kernel_size=1)}))
                if self.combine == "cat":
                    in_ch *= 2
            elif self.progressive_input == "residual":
                self.pyramid_downs.append(downsample(pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                pyramid_ch = in_ch
            skip_channels.append(in_ch)

        # ---- middle
        in_ch = skip_channels[-1]
        self.mid_block0 = res_block(in_ch)
        self.mid_attn = AttentionBlock(in_ch, self.skip_rescale)
        self.mid_block1 = res_block(in_ch)

        # ---- decoder
        self.up_blocks, self.up_attn = nn.ModuleList(), nn.ModuleList()
        self.pyramid_ups, self.upsamples = nn.ModuleList(), nn.ModuleList()
        pyramid_ch = 0
        for level in reversed(range(len(ch_mult))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                out_ch = nf * ch_mult[level]
                blocks.append(res_block(in_ch + skip_channels.pop(), out_ch))
                in_ch = out_ch
            self.up_blocks.append(blocks)
            self.up_attn.append(attention(in_ch, resolutions[level]))
            top = level == len(ch_mult) - 1
            if self.progressive == "output_skip":
                # every level adds its own RGB prediction to the upsampled running one
                self.pyramid_ups.append(nn.Sequential(group_norm(in_ch), nn.SiLU(),
                                                      conv2d(in_ch, channels, init_scale=0.0)))
            elif self.progressive == "residual":
                if top:
                    self.pyramid_ups.append(nn.Sequential(group_norm(in_ch), nn.SiLU(), conv2d(in_ch, in_ch)))
                else:
                    self.pyramid_ups.append(upsample(pyramid_ch, in_ch, with_conv=True, fir=fir, fir_kernel=fir_kernel))
                pyramid_ch = in_ch
            if level != 0:
                if self.resblock_type == "ddpm":
                    self.upsamples.append(upsample(in_ch, with_conv=cfg.resamp_with_conv, fir=fir, fir_kernel=fir_kernel))
                else:
                    self.upsamples.append(res_block(in_ch, up=True))
        assert not skip_channels
        if self.progressive == "output_skip":
            self.output_skip_up = upsample(with_conv=False, fir=fir, fir_kernel=fir_kernel)
        else:
            self.conv_out = nn.Sequential(group_norm(in_ch), nn.SiLU(), conv2d(in_ch, channels, init_scale=0.0))

    def _resample(self, module, h, zemb):
        # BigGAN blocks resample with AdaGN (they take z); plain resampling layers do not.
        return module(h) if self.resblock_type == "ddpm" else module(h, zemb)

    def forward(self, x, z):
        zemb = self.mapping(z) if self.mapping is not None else None
        if not self.centered:
            x = 2 * x - 1  # inputs in [0, 1]
        num_levels = len(self.down_blocks)

        # encoder
        pyramid = x
        hs = [self.conv_in(x)]
        for level in range(num_levels):
            for block, attn in zip(self.down_blocks[level], self.down_attn[level]):
                hs.append(attn(block(hs[-1], zemb)))
            if level == num_levels - 1:
                continue
            h = self._resample(self.downsamples[level], hs[-1], zemb)
            if self.progressive_input == "input_skip":
                pyramid = self.pyramid_downs[level]["down"](pyramid)
                merged = self.pyramid_downs[level]["merge"](pyramid)
                h = torch.cat([merged, h], dim=1) if self.combine == "cat" else merged + h
            elif self.progressive_input == "residual":
                pyramid = skip_add(self.pyramid_downs[level](pyramid), h, self.skip_rescale)
                h = pyramid
            hs.append(h)

        # middle
        h = self.mid_block1(self.mid_attn(self.mid_block0(hs[-1], zemb)), zemb)

        # decoder
        pyramid = None
        for i in range(num_levels):
            for block in self.up_blocks[i]:
                h = block(torch.cat([h, hs.pop()], dim=1), zemb)
            h = self.up_attn[i](h)
            if self.progressive == "output_skip":
                rgb = self.pyramid_ups[i](h)
                pyramid = rgb if i == 0 else self.output_skip_up(pyramid) + rgb
            elif self.progressive == "residual":
                if i == 0:
                    pyramid = self.pyramid_ups[i](h)
                else:
                    pyramid = skip_add(self.pyramid_ups[i](pyramid), h, self.skip_rescale)
                    h = pyramid
            if i != num_levels - 1:
                h = self._resample(self.upsamples[i], h, zemb)

        h = pyramid if self.progressive == "output_skip" else self.conv_out(h)
        return torch.tanh(h) if self.use_tanh else h
