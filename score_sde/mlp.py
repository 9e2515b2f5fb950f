"""Plain MLPs on flattened images: a map and a potential for small images such as the 8x8
digits (scripts/digits.flags), where they train to readable digits in minutes on a CPU and
the papers' NCSN++ does not (docs/results.md, the digits study).

MLPGenerator  T(x, z) = tanh(f([flatten(x), z])) reshaped as x: x (B, C, H, W), z (B, nz)
MLPPotential  v(y)    = g(flatten(y)),                          shape (B,)

f and g: `depth` hidden layers of `width` units with SiLU between them. No normalisation
layers: batch statistics would make v(y) depend on the rest of the batch and break the
per-sample R1 penalty.
"""
import torch
import torch.nn as nn


def mlp(widths):
    """Linear layers of the given widths with a SiLU between consecutive ones."""
    layers = []
    for i in range(len(widths) - 1):
        layers += [nn.Linear(widths[i], widths[i + 1]), nn.SiLU()]
    return nn.Sequential(*layers[:-1])


class MLPGenerator(nn.Module):
    def __init__(self, image_shape, nz, width=512, depth=3, use_tanh=True):
        super().__init__()
        self.image_shape = tuple(image_shape)
        pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.net = mlp([pixels + nz] + [width] * depth + [pixels])
        self.use_tanh = use_tanh

    def forward(self, x, z):
        y = self.net(torch.cat([x.flatten(1), z], dim=1)).view(x.shape[0], *self.image_shape)
        return torch.tanh(y) if self.use_tanh else y


class MLPPotential(nn.Module):
    def __init__(self, image_shape, width=512, depth=3):
        super().__init__()
        self.net = mlp([image_shape[0] * image_shape[1] * image_shape[2]] + [width] * depth + [1])

    def forward(self, y):
        return self.net(y.flatten(1)).squeeze(1)
