"""The "Small" models of the S-JKO tables: the public S-JKO code's `--model_name otm`
(its `models/otm/OTM.py`: `Generator` and `Discriminator`, the OTM baselines' networks).

The map does not see an image-shaped source: it takes `x` of shape (C, 8, 8) (192 numbers
for RGB), ignores the latent z, and its phase-0 reference map is that source upsampled
bicubically to the image (`otm_reference`). The public code fixes C = 3; here C is the
dataset's channel count, which is the same thing on RGB data.

Two details of the public layers are kept because they change the numbers:
- each residual up-block returns twice its branch (the public block adds its branch to
  itself: its shortcut is built but never used);
- in the potential, the first activation of a residual block is in place, so the block's
  skip path sees the activated input, LeakyReLU(x), not x.
Batch norm in the map always uses the batch's statistics: the public code never switches
its networks to eval mode, so its samples, references and FID all use batch statistics.

At 64 px the public code switches to another pair (its `ResNet_G(features=256)` and
`ResNet_D(features=128)`, from NCSN): `ResNetGenerator` and `ResNetPotential` below, of
widths 4 * ngf and 2 * ngf, the public ones at the default --ngf 64 (the public code ignores
--ngf there). It has no otm networks for other sizes above 32 px.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from uot.errors import UsageError

SOURCE_SIZE = 8   # the source is C x 8 x 8 noise
RESNET_SIZE = 64  # the image size of the ResNet pair


def otm_source_shape(num_channels):
    return (num_channels, SOURCE_SIZE, SOURCE_SIZE)


def otm_reference(x, image_size):
    """The phase-0 reference map: the source upsampled bicubically to image_size x image_size."""
    return F.interpolate(x, size=(image_size, image_size), mode="bicubic")


def check_otm_image_size(image_size):
    if image_size == RESNET_SIZE:
        return
    if image_size < SOURCE_SIZE or image_size % SOURCE_SIZE or image_size > 32:
        raise UsageError(f"--model_name otm has networks for an --image_size that is a multiple of {SOURCE_SIZE} up "
                         f"to 32 (its map upsamples three times) and for {RESNET_SIZE} (the public ResNet pair), "
                         f"got {image_size}")


def _batch_norm(channels):
    return nn.BatchNorm2d(channels, track_running_stats=False)


def _conv(in_ch, out_ch, kernel_size):
    """The public map's convolutions are 'convT': transposed, stride 1, 'same' padding."""
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size, stride=1, padding=kernel_size // 2)


class UpBlock(nn.Module):
    """BN -> ReLU -> 2x nearest upsampling -> conv3x3 -> BN -> ReLU -> conv3x3, doubled."""

    def __init__(self, channels):
        super().__init__()
        self.branch = nn.Sequential(
            _batch_norm(channels), nn.ReLU(), nn.Upsample(scale_factor=2),
            _conv(channels, channels, 3), _batch_norm(channels), nn.ReLU(), _conv(channels, channels, 3))

    def forward(self, h):
        return 2 * self.branch(h)


class OTMGenerator(nn.Module):
    """T(x, z) = net(dense(x)): x (B, C, 8, 8) source noise, z ignored -> (B, C, S, S)."""

    def __init__(self, num_channels=3, image_size=32, ngf=64):
        super().__init__()
        self.ngf, self.init_size = ngf, image_size // 8
        self.dense = nn.Linear(num_channels * SOURCE_SIZE ** 2, self.init_size ** 2 * ngf)
        self.net = nn.Sequential(UpBlock(ngf), UpBlock(ngf), UpBlock(ngf),
                                 _batch_norm(ngf), nn.ReLU(), _conv(ngf, num_channels, 3), nn.Tanh())

    def forward(self, x, z=None):
        h = self.dense(x.flatten(1)).view(-1, self.ngf, self.init_size, self.init_size)
        return self.net(h)


class DownBlock(nn.Module):
    """LeakyReLU -> conv3x3 -> LeakyReLU -> conv3x3 [-> 2x2 average pool], plus a skip path
    that starts from LeakyReLU(x) (see the module docstring): a 1x1 conv and the same pooling
    when the block downsamples, the identity otherwise."""

    def __init__(self, channels, downsample):
        super().__init__()
        self.act = nn.LeakyReLU(0.2)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.pool = nn.AvgPool2d(2) if downsample else nn.Identity()
        self.skip = nn.Conv2d(channels, channels, 1) if downsample else nn.Identity()

    def forward(self, x):
        x = self.act(x)
        return self.pool(self.conv2(self.act(self.conv1(x)))) + self.pool(self.skip(x))


class OTMPotential(nn.Module):
    """v(y) -> (B,): a residual stem that halves the resolution, three residual blocks (the
    first halves it again), ReLU, a sum over pixels and a linear layer."""

    def __init__(self, num_channels=3, ngf=64):
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.stem = nn.Sequential(nn.Conv2d(num_channels, ngf, 3, padding=1), act,
                                  nn.Conv2d(ngf, ngf, 3, padding=1), nn.AvgPool2d(2))
        self.stem_skip = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(num_channels, ngf, 1))
        self.blocks = nn.Sequential(DownBlock(ngf, True), DownBlock(ngf, False), DownBlock(ngf, False))
        self.linear = nn.Linear(ngf, 1)

    def forward(self, y):
        h = self.blocks(self.stem(y) + self.stem_skip(y))
        return self.linear(F.relu(h).sum(dim=(2, 3))).squeeze(1)


# --- the 64 px pair -------------------------------------------------------------------

class UpsampleConv(nn.Module):
    """The public UpsampleConv: four copies of the input stacked on the channels, a pixel
    shuffle (so each output pixel of a 2 x 2 block takes another input channel, not a copy of
    one), then a conv3x3."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, h):
        return self.conv(F.pixel_shuffle(h.repeat(1, 4, 1, 1), 2))


def _bn_lrelu(layer, channels):
    return nn.Sequential(layer, nn.BatchNorm2d(channels, track_running_stats=False), nn.LeakyReLU(0.2))


class ResNetGenerator(nn.Module):
    """T(x, z) for 64 px: x (B, C, 8, 8) seen as a (C * 64)-channel 1 x 1 image, a 1x1 conv, a
    4x4 transposed conv to 4 x 4, four UpsampleConv doublings to 64 x 64 (each with batch norm
    and LeakyReLU 0.2), a conv3x3 and tanh; z is ignored."""

    def __init__(self, num_channels=3, features=256):
        super().__init__()
        f = features
        self.begin = _bn_lrelu(nn.Conv2d(num_channels * SOURCE_SIZE ** 2, f, 1), f)
        self.trans = _bn_lrelu(nn.ConvTranspose2d(f, 2 * f, 4), 2 * f)
        self.ups = nn.Sequential(*[_bn_lrelu(UpsampleConv(a, b), b)
                                   for a, b in [(2 * f, 4 * f), (4 * f, 4 * f), (4 * f, 2 * f), (2 * f, 2 * f)]])
        self.end = nn.Conv2d(2 * f, num_channels, 3, padding=1)

    def forward(self, x, z=None):
        h = self.trans(self.begin(x.reshape(x.shape[0], -1, 1, 1)))
        return torch.tanh(self.end(self.ups(h)))


class InstanceNormPlus(nn.Module):
    """NCSN's InstanceNorm2dPlus: instance norm, plus alpha times the per-channel means
    standardised across the channels (unbiased variance), then gamma * h + beta."""

    def __init__(self, channels):
        super().__init__()
        self.alpha = nn.Parameter(1 + 0.02 * torch.randn(channels))   # the public init: N(1, 0.02^2)
        self.gamma = nn.Parameter(1 + 0.02 * torch.randn(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        means = x.mean(dim=(2, 3))
        means = (means - means.mean(-1, keepdim=True)) / torch.sqrt(means.var(-1, keepdim=True) + 1e-5)
        h = F.instance_norm(x) + means[..., None, None] * self.alpha[:, None, None]
        return self.gamma[:, None, None] * h + self.beta[:, None, None]


class ResNetDownBlock(nn.Module):
    """NCSN's ResidualBlock with resample 'down': norm -> ReLU -> conv3x3 -> norm -> ReLU ->
    conv3x3 -> 2x2 mean, plus a 1x1 conv -> 2x2 mean skip. Registered in the public order
    (conv1, norm2, conv2, skip, norm1), so that its parameters load in order."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, padding=1)
        self.norm2 = InstanceNormPlus(in_ch)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1)
        self.norm1 = InstanceNormPlus(in_ch)

    def forward(self, x):
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return F.avg_pool2d(self.skip(x), 2) + F.avg_pool2d(h, 2)


class ResNetPotential(nn.Module):
    """v(y) -> (B,) for 64 px: conv3x3, four halving residual blocks (widths 2f, 4f, 2f, f) to
    4 x 4, and a 4x4 conv to one number."""

    def __init__(self, num_channels=3, features=128):
        super().__init__()
        f = features
        self.begin = nn.Conv2d(num_channels, f, 3, padding=1)
        self.blocks = nn.Sequential(*[ResNetDownBlock(a, b) for a, b in [(f, 2 * f), (2 * f, 4 * f), (4 * f, 2 * f),
                                                                          (2 * f, f)]])
        self.end = nn.Conv2d(f, 1, 4)

    def forward(self, y):
        return self.end(self.blocks(self.begin(y))).flatten()
