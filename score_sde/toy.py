"""The toy networks of UOTM: residual MLPs (hidden 128, 3 blocks, SiLU), the published sizes.

ToyGenerator  T(x, z) = head(trunk(x) + embed(z)), same shape as x (B, data_dim)
ToyPotential  v(y)    = head(trunk(y)),            shape (B,)
"""
import math

import torch.nn as nn

from .mlp import mlp


class ResidualMLP(nn.Module):
    """Linear lift to `hidden`, then residual blocks h <- (h + f(h)) / sqrt(2).

    Each f is three Linear + SiLU layers; the 1/sqrt(2) keeps the scale of h constant.
    """

    def __init__(self, in_dim, hidden=128, num_blocks=3):
        super().__init__()
        self.lift = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(hidden, hidden), nn.SiLU())])
            for _ in range(num_blocks))

    def forward(self, x):
        h = self.lift(x)
        for block in self.blocks:
            h = (h + block(h)) * (1 / math.sqrt(2))
        return h


class ToyGenerator(nn.Module):
    """Transport map T(x, z): x (B, data_dim) source points, z (B, nz) latent noise."""

    def __init__(self, data_dim, nz, hidden=128, num_blocks=3):
        super().__init__()
        self.trunk = ResidualMLP(data_dim, hidden, num_blocks)
        self.embed_z = mlp([nz, hidden, hidden])
        self.head = mlp([hidden, hidden, data_dim])

    def forward(self, x, z):
        return self.head(self.trunk(x) + self.embed_z(z))


class ToyPotential(nn.Module):
    """Potential v(y): (B, data_dim) -> (B,)."""

    def __init__(self, data_dim, hidden=128, num_blocks=3):
        super().__init__()
        self.trunk = ResidualMLP(data_dim, hidden, num_blocks)
        self.head = mlp([hidden, hidden, 1])

    def forward(self, y):
        return self.head(self.trunk(y)).squeeze(1)
