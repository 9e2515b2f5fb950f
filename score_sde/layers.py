"""Building blocks of the NCSN++ generator and the potentials, in pure PyTorch.

FIR resampling follows StyleGAN2's `upfirdn2d` (upsample by zero insertion, pad,
convolve with a normalised FIR filter, subsample). The public code compiles a CUDA
kernel for it at import time; here a depthwise conv2d / conv_transpose2d with the
filter in a buffer does the same job, runs on any device and supports gradients of
any order (the R1 penalty needs a double backward through the potential).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from uot.errors import UsageError


# ----------------------------------------------------------------------------- init

def variance_scaling_(tensor: torch.Tensor, scale: float = 1.0, mode: str = "fan_avg"):
    """Uniform init with variance scale / fan (DDPM / score_sde's `default_init`).

    A scale of 0 means "almost zero" (1e-10), as in score_sde: layers that end a
    residual branch start close to the identity map.
    """
    scale = 1e-10 if scale == 0 else scale
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(tensor)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    bound = math.sqrt(3.0 * scale / max(1.0, fan))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=None, bias=True, init_scale=1.0,
           mode="fan_avg"):
    """Conv layer with variance-scaling init and zero bias.

    mode="fan_avg" is score_sde's DDPM init (generator). The DDGAN/UOTM potential and
    the z-mapping layers use mode="fan_out": their init helper meant fan_avg but falls
    through to fan_out, and we keep what it actually does.
    """
    padding = kernel_size // 2 if padding is None else padding
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias)
    variance_scaling_(conv.weight, init_scale, mode)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def dense(in_features, out_features, init_scale=1.0, mode="fan_out"):
    """Linear layer with variance-scaling init and zero bias (DDGAN's `dense`)."""
    linear = nn.Linear(in_features, out_features)
    variance_scaling_(linear.weight, init_scale, mode)
    nn.init.zeros_(linear.bias)
    return linear


def group_norm(channels, affine=True):
    """GroupNorm with min(C // 4, 32) groups, eps 1e-6, as in score_sde."""
    groups = min(channels // 4, 32)
    if groups < 1 or channels % groups:
        raise UsageError(f"group norm cannot split {channels} channels into {groups} groups; "
                         "use a --num_channels_dae that is a multiple of 32 (or of 4 below 128)")
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=affine)


def skip_add(x, h, rescale: bool):
    """Residual sum; skip_rescale divides by sqrt(2) to keep the variance at 1."""
    return (x + h) / math.sqrt(2.0) if rescale else x + h


# ----------------------------------------------------------------------------- FIR

def fir_kernel_2d(taps) -> torch.Tensor:
    """Separable 2-D FIR filter from 1-D taps, normalised to sum 1."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    if k.ndim != 1 or len(k) < 2:
        raise UsageError(f"--fir_kernel needs at least 2 taps, got {list(taps)}")
    k = torch.outer(k, k)
    return k / k.sum()


def upfirdn2d(x, kernel, up: int = 1, down: int = 1, pad=(0, 0)):
    """StyleGAN2's upfirdn2d in pure PyTorch.

    Upsample by inserting up-1 zeros after each pixel, pad by pad=(before, after)
    pixels on each spatial axis (negative values crop), convolve with `kernel`
    (a true convolution: the kernel is flipped), keep every down-th pixel.
    """
    channels, taps = x.shape[1], kernel.shape[-1]
    pad0, pad1 = pad
    if up > 1:
        # conv_transpose2d = zero insertion followed by a full true convolution. The
        # full result starts taps-1 pixels before the padded reference and ends
        # taps-up pixels after it; crop (or pad) to the requested window.
        weight = kernel.expand(channels, 1, taps, taps)
        x = F.conv_transpose2d(x, weight, stride=up, groups=channels)
        x = F.pad(x, [pad0 - (taps - 1), pad1 - (taps - up)] * 2)
        return x[:, :, ::down, ::down] if down > 1 else x
    weight = kernel.flip([0, 1]).expand(channels, 1, taps, taps)
    x = F.pad(x, [pad0, pad1] * 2)
    return F.conv2d(x, weight, stride=down, groups=channels)


def _resample_pads(taps: int, up: bool, conv_size: int = 1):
    """Padding of StyleGAN2's (conv-fused) 2x up/down FIR resampling."""
    if up:
        p = (taps - 2) - (conv_size - 1)
        return ((p + 1) // 2 + 1, p // 2 + (1 if conv_size > 1 else 0))
    p = (taps - 2) + (conv_size - 1)
    return ((p + 1) // 2, p // 2)


class FIRUpsample(nn.Module):
    """2x FIR upsampling; gain 4 so that a constant image stays constant (away from borders)."""

    def __init__(self, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel) * 4, persistent=False)
        self.pad = _resample_pads(len(fir_kernel), up=True)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=2, pad=self.pad)


class FIRDownsample(nn.Module):
    """2x FIR downsampling (filter, then keep every other pixel)."""

    def __init__(self, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)
        self.pad = _resample_pads(len(fir_kernel), up=False)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, down=2, pad=self.pad)


class FIRUpConv(nn.Module):
    """3x3 conv fused with 2x FIR upsampling (StyleGAN2 `upsample_conv_2d`).

    Equal to: insert zeros, 3x3 correlation with `weight` over the fully padded
    result, then the FIR filter; done as one strided conv_transpose2d + the filter.
    """

    def __init__(self, in_ch, out_ch, fir_kernel=(1, 3, 3, 1), kernel_size=3):
        super().__init__()
        self.weight = nn.Parameter(variance_scaling_(torch.empty(out_ch, in_ch, kernel_size, kernel_size)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel) * 4, persistent=False)
        self.pad = _resample_pads(len(fir_kernel), up=True, conv_size=kernel_size)

    def forward(self, x):
        # conv_transpose2d with the flipped, transposed kernel correlates with `weight`.
        x = F.conv_transpose2d(x, self.weight.flip([2, 3]).transpose(0, 1), stride=2)
        return upfirdn2d(x, self.kernel, pad=self.pad) + self.bias[:, None, None]


class FIRDownConv(nn.Module):
    """2x FIR downsampling fused with a strided 3x3 conv (StyleGAN2 `conv_downsample_2d`)."""

    def __init__(self, in_ch, out_ch, fir_kernel=(1, 3, 3, 1), kernel_size=3):
        super().__init__()
        self.weight = nn.Parameter(variance_scaling_(torch.empty(out_ch, in_ch, kernel_size, kernel_size)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("kernel", fir_kernel_2d(fir_kernel), persistent=False)
        self.pad = _resample_pads(len(fir_kernel), up=False, conv_size=kernel_size)

    def forward(self, x):
        x = upfirdn2d(x, self.kernel, pad=self.pad)
        return F.conv2d(x, self.weight, self.bias, stride=2)


class _NearestUpConv(nn.Sequential):
    def __init__(self, in_ch, out_ch):
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), conv2d(in_ch, out_ch))


class _StridedConv(nn.Module):
    """TF 'SAME'-style stride-2 3x3 conv: pad one pixel right and bottom only."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = conv2d(in_ch, out_ch, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def upsample(in_ch=None, out_ch=None, with_conv=False, fir=True, fir_kernel=(1, 3, 3, 1)):
    """2x upsampling layer: FIR or nearest, with or without a learned 3x3 conv."""
    out_ch = out_ch or in_ch
    if fir:
        return FIRUpConv(in_ch, out_ch, fir_kernel) if with_conv else FIRUpsample(fir_kernel)
    return _NearestUpConv(in_ch, out_ch) if with_conv else nn.Upsample(scale_factor=2, mode="nearest")


def downsample(in_ch=None, out_ch=None, with_conv=False, fir=True, fir_kernel=(1, 3, 3, 1)):
    """2x downsampling layer: FIR or 2x2 average, with or without a learned 3x3 conv."""
    out_ch = out_ch or in_ch
    if fir:
        return FIRDownConv(in_ch, out_ch, fir_kernel) if with_conv else FIRDownsample(fir_kernel)
    return _StridedConv(in_ch, out_ch) if with_conv else nn.AvgPool2d(2)


# ----------------------------------------------------------------------------- generator blocks

class PixelNorm(nn.Module):
    """Scale each latent vector to unit root-mean-square (StyleGAN's mapping input)."""

    def forward(self, z):
        return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class AdaGroupNorm(nn.Module):
    """Group norm whose per-channel scale and shift come from the z embedding (AdaGN).

    With style_dim=None (generator built with --no-conditional) it is a plain
    affine group norm.
    """

    def __init__(self, channels, style_dim=None):
        super().__init__()
        self.norm = group_norm(channels, affine=style_dim is None)
        self.style = None
        if style_dim is not None:
            self.style = dense(style_dim, 2 * channels)
            with torch.no_grad():  # start at gamma = 1, beta = 0
                self.style.bias[:channels] = 1.0

    def forward(self, x, zemb=None):
        x = self.norm(x)
        if self.style is None:
            return x
        gamma, beta = self.style(zemb)[:, :, None, None].chunk(2, dim=1)
        return gamma * x + beta


class NIN(nn.Module):
    """Per-pixel linear map over channels (a 1x1 conv), score_sde's init scale 0.1."""

    def __init__(self, in_ch, out_ch, init_scale=0.1):
        super().__init__()
        self.conv = conv2d(in_ch, out_ch, kernel_size=1, init_scale=init_scale)

    def forward(self, x):
        return self.conv(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels, with a residual connection."""

    def __init__(self, channels, skip_rescale=True):
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v = NIN(channels, channels), NIN(channels, channels), NIN(channels, channels)
        self.out = NIN(channels, channels, init_scale=0.0)
        self.skip_rescale = skip_rescale

    def forward(self, x):
        b, c, height, width = x.shape
        h = self.norm(x)
        # (B, 1 head, HW, C); SDPA scales the logits by 1/sqrt(C) as score_sde does.
        q, k, v = (f(h).reshape(b, 1, c, height * width).transpose(2, 3) for f in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(2, 3).reshape(b, c, height, width)
        return skip_add(x, self.out(h), self.skip_rescale)


class ResnetBlockBigGAN(nn.Module):
    """BigGAN-style residual block with AdaGN, optionally resampling by 2 (up or down).

    Resampling happens inside the block, after the first norm + activation, on both
    the residual branch and the skip; the skip gets a 1x1 conv when the shape changes.
    """

    def __init__(self, in_ch, out_ch=None, zemb_dim=None, up=False, down=False, dropout=0.0,
                 fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True, act=None):
        super().__init__()
        out_ch = out_ch or in_ch
        self.act = act or nn.SiLU()
        self.norm0 = AdaGroupNorm(in_ch, zemb_dim)
        if up:
            self.resample = FIRUpsample(fir_kernel) if fir else nn.Upsample(scale_factor=2, mode="nearest")
        elif down:
            self.resample = FIRDownsample(fir_kernel) if fir else nn.AvgPool2d(2)
        else:
            self.resample = nn.Identity()
        self.conv0 = conv2d(in_ch, out_ch)
        self.norm1 = AdaGroupNorm(out_ch, zemb_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv2d(out_ch, out_ch, init_scale=0.0)
        self.skip = conv2d(in_ch, out_ch, kernel_size=1) if (in_ch != out_ch or up or down) else nn.Identity()
        self.skip_rescale = skip_rescale

    def forward(self, x, zemb=None):
        h = self.act(self.norm0(x, zemb))
        h = self.conv0(self.resample(h))
        h = self.act(self.norm1(h, zemb))
        h = self.conv1(self.dropout(h))
        return skip_add(self.skip(self.resample(x)), h, self.skip_rescale)


class ResnetBlockDDPM(nn.Module):
    """DDPM-style residual block with AdaGN (no resampling; a NIN skip when widths differ)."""

    def __init__(self, in_ch, out_ch=None, zemb_dim=None, dropout=0.0, skip_rescale=True, act=None):
        super().__init__()
        out_ch = out_ch or in_ch
        self.act = act or nn.SiLU()
        self.norm0 = AdaGroupNorm(in_ch, zemb_dim)
        self.conv0 = conv2d(in_ch, out_ch)
        self.norm1 = AdaGroupNorm(out_ch, zemb_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv2d(out_ch, out_ch, init_scale=0.0)
        self.skip = NIN(in_ch, out_ch) if in_ch != out_ch else nn.Identity()
        self.skip_rescale = skip_rescale

    def forward(self, x, zemb=None):
        h = self.conv0(self.act(self.norm0(x, zemb)))
        h = self.conv1(self.dropout(self.act(self.norm1(h, zemb))))
        return skip_add(self.skip(x), h, self.skip_rescale)
