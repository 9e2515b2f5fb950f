"""Potentials v(y) for images (the DDGAN/UOTM discriminators without time input).

A 1x1 stem, residual conv blocks that halve the resolution with an FIR filter,
a minibatch-stddev feature, a 3x3 conv, LeakyReLU(0.2), a sum over pixels and a
linear layer to one scalar per sample.
"""
import math

import torch
import torch.nn as nn

from .layers import FIRDownsample, conv2d, dense


def minibatch_stddev(h, group_size: int = 4):
    """Append the mean over features of the per-group std (StyleGAN), as one channel.

    Samples j, j + B/G, j + 2B/G, ... form a group. G is the largest divisor of the
    batch size that is <= group_size (the public code needs B % min(B, 4) == 0).
    """
    b, c, height, width = h.shape
    group = next(g for g in range(min(group_size, b), 0, -1) if b % g == 0)
    std = (h.reshape(group, b // group, c, height, width).var(dim=0, unbiased=False) + 1e-8).sqrt()
    std = std.mean(dim=(1, 2, 3))  # (B/G,)
    std = std.reshape(1, b // group, 1, 1, 1).expand(group, -1, 1, height, width).reshape(b, 1, height, width)
    return torch.cat([h, std], dim=1)


class DownConvBlock(nn.Module):
    """act -> conv3x3 -> act -> [FIR down] -> conv3x3, plus a 1x1 skip; sum / sqrt(2)."""

    def __init__(self, in_ch, out_ch, downsample=False, act=None, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.act = act or nn.LeakyReLU(0.2)
        self.conv1 = conv2d(in_ch, out_ch, mode="fan_out")
        self.down = FIRDownsample(fir_kernel) if downsample else nn.Identity()
        self.conv2 = conv2d(out_ch, out_ch, init_scale=0.0, mode="fan_out")
        self.skip = conv2d(in_ch, out_ch, kernel_size=1, bias=False, mode="fan_out")

    def forward(self, x):
        h = self.act(self.conv1(self.act(x)))
        h = self.conv2(self.down(h))
        return (h + self.skip(self.down(x))) / math.sqrt(2.0)


class ResidualPotential(nn.Module):
    """v(y) -> (B,). `plan` lists (in_mult, out_mult, downsample) per block, widths in units of ngf."""

    def __init__(self, num_channels, ngf, plan, stem_mult, final_init_scale, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.act = act
        self.stem = conv2d(num_channels, ngf * stem_mult, kernel_size=1, mode="fan_out")
        self.blocks = nn.Sequential(*[DownConvBlock(ngf * i, ngf * o, down, act, fir_kernel) for i, o, down in plan])
        width = ngf * plan[-1][1]
        self.final_conv = conv2d(width + 1, width, init_scale=final_init_scale, mode="fan_out")
        self.linear = dense(width, 1)
        self.num_downsamples = sum(down for _, _, down in plan)

    def forward(self, y):
        h = self.blocks(self.stem(y))
        h = self.act(self.final_conv(minibatch_stddev(h)))
        return self.linear(h.sum(dim=(2, 3))).squeeze(1)


class SmallPotential(ResidualPotential):
    """For images up to 32 px (CIFAR-10: 12.25M parameters at ngf 64); downsamples 3 times."""

    def __init__(self, num_channels=3, ngf=64, fir_kernel=(1, 3, 3, 1)):
        plan = [(2, 2, False), (2, 4, True), (4, 8, True), (8, 8, True)]
        super().__init__(num_channels, ngf, plan, stem_mult=2, final_init_scale=0.0, fir_kernel=fir_kernel)


class LargePotential(ResidualPotential):
    """For images above 32 px (CelebA-HQ, LSUN): downsamples 6 times, or 4 times up to 64 px
    (as the S-JKO code's; the UOTM code has no image size between 32 and 256 px)."""

    def __init__(self, num_channels=3, ngf=64, fir_kernel=(1, 3, 3, 1), image_size=256):
        plan = [(2, 4, True), (4, 8, True)] + [(8, 8, True)] * (4 if image_size > 64 else 2)
        super().__init__(num_channels, ngf, plan, stem_mult=2, final_init_scale=1.0, fir_kernel=fir_kernel)
