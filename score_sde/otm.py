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
"""
import torch.nn as nn
import torch.nn.functional as F

from uot.errors import UsageError

SOURCE_SIZE = 8   # the source is C x 8 x 8 noise


def otm_source_shape(num_channels):
    return (num_channels, SOURCE_SIZE, SOURCE_SIZE)


def otm_reference(x, image_size):
    """The phase-0 reference map: the source upsampled bicubically to image_size x image_size."""
    return F.interpolate(x, size=(image_size, image_size), mode="bicubic")


def check_otm_image_size(image_size):
    if image_size < SOURCE_SIZE or image_size % SOURCE_SIZE:
        raise UsageError(f"--model_name otm needs an --image_size that is a multiple of {SOURCE_SIZE} "
                         f"(its map upsamples three times), got {image_size}")


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
