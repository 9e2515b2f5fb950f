"""Small DCGAN-like networks (~0.4M parameters at 32 px), for quick experiments. (The
"Small" rows of the S-JKO tables are a different pair: --model_name otm, score_sde/otm.py.)

The map T(x, z) encodes the source image x with two stride-2 convs, adds a per-channel
embedding of z at the bottleneck, and decodes with two stride-2 transposed convs.
The potential is four plain convs (three of them stride 2), a sum over pixels and
a linear layer. No normalisation layers: batch statistics would make v(y) depend on
the rest of the batch and break the per-sample R1 penalty.
Any image size divisible by 4 (and >= 8) works: 32, 28 and 16 px included.
"""
import torch
import torch.nn as nn

from uot.errors import UsageError


def check_dcgan_image_size(image_size: int):
    if image_size < 8 or image_size % 4:
        raise UsageError(f"--model_name dcgan needs an --image_size that is a multiple of 4 and >= 8 "
                         f"(it halves the resolution twice), got {image_size}")


class DCGANGenerator(nn.Module):
    """T(x, z): x (B, C, H, W), z (B, nz) -> (B, C, H, W)."""

    def __init__(self, num_channels=3, nz=100, ngf=64, use_tanh=True):
        super().__init__()
        half = ngf // 2
        act = nn.LeakyReLU(0.2)
        self.encode = nn.Sequential(
            nn.Conv2d(num_channels, half, 4, stride=2, padding=1), act,  # H/2
            nn.Conv2d(half, ngf, 4, stride=2, padding=1))  # H/4
        self.z_embed = nn.Linear(nz, ngf)
        self.bottleneck = nn.Sequential(
            act, nn.Conv2d(ngf, ngf, 3, padding=1), act, nn.Conv2d(ngf, ngf, 3, padding=1), act)
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(ngf, half, 4, stride=2, padding=1), nn.ReLU(),  # H/2
            nn.ConvTranspose2d(half, num_channels, 4, stride=2, padding=1))  # H
        self.use_tanh = use_tanh

    def forward(self, x, z):
        h = self.encode(x) + self.z_embed(z)[:, :, None, None]
        h = self.decode(self.bottleneck(h))
        return torch.tanh(h) if self.use_tanh else h


class DCGANPotential(nn.Module):
    """v(y) -> (B,)."""

    def __init__(self, num_channels=3, ngf=64):
        super().__init__()
        half = ngf // 2
        act = nn.LeakyReLU(0.2)
        self.features = nn.Sequential(
            nn.Conv2d(num_channels, half, 3, padding=1), act,
            nn.Conv2d(half, ngf, 4, stride=2, padding=1), act,  # H/2
            nn.Conv2d(ngf, ngf, 4, stride=2, padding=1), act,  # H/4
            nn.Conv2d(ngf, 2 * ngf, 4, stride=2, padding=1), act)  # H/8 (rounded down)
        self.linear = nn.Linear(2 * ngf, 1)

    def forward(self, y):
        return self.linear(self.features(y).mean(dim=(2, 3))).squeeze(1)
