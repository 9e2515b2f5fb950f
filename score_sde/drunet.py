"""DRUNet, the residual U-Net of Zhang et al. (Plug-and-Play Image Restoration with Deep
Denoiser Prior, 2021), as the public S-JKO code's `--model_name drunet` builds it (its
`models/drunet/drunet.py` `UNetRes` with `nc = ngf * ch_mult`, `nb = num_res_blocks`).

T(x, z) = U-Net(x): z is ignored, so the map is deterministic. Four widths (one per
resolution); each level runs `blocks` residual blocks (conv3x3 -> ReLU -> conv3x3, plus the
input), the encoder halves the resolution with a 2x2 stride-2 conv, the decoder doubles it
with a 2x2 stride-2 transposed conv, and each decoder level starts from the sum of the
upsampled features and the encoder's features at that resolution. No output nonlinearity.
The layers are registered in the public order (head, three encoder levels, body, three
decoder levels, tail), so the public parameters load in order.
"""
import torch.nn as nn

from uot.errors import UsageError

LEVELS = 4


def check_drunet_config(ch_mult, image_size):
    if len(ch_mult) != LEVELS:
        raise UsageError(f"--model_name drunet takes {LEVELS} widths (--ch_mult with {LEVELS} numbers, e.g. 1 2 2 2), "
                         f"got {len(ch_mult)}")
    step = 2 ** (LEVELS - 1)
    if image_size < step or image_size % step:
        raise UsageError(f"--model_name drunet halves the resolution {LEVELS - 1} times: --image_size must be a "
                         f"multiple of {step}, got {image_size}")


def _conv3x3(in_ch, out_ch):
    return nn.Conv2d(in_ch, out_ch, 3, padding=1)


class ResBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.branch = nn.Sequential(_conv3x3(channels, channels), nn.ReLU(), _conv3x3(channels, channels))

    def forward(self, h):
        return h + self.branch(h)


class DRUNet(nn.Module):
    def __init__(self, num_channels, widths, blocks):
        super().__init__()
        w = list(widths)
        self.head = _conv3x3(num_channels, w[0])
        self.down = nn.ModuleList(
            nn.Sequential(*[ResBlock(w[i]) for _ in range(blocks)], nn.Conv2d(w[i], w[i + 1], 2, stride=2))
            for i in range(LEVELS - 1))
        self.body = nn.Sequential(*[ResBlock(w[-1]) for _ in range(blocks)])
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2), *[ResBlock(w[i]) for _ in range(blocks)])
            for i in reversed(range(LEVELS - 1)))
        self.tail = _conv3x3(w[0], num_channels)

    def forward(self, x, z=None):
        skips = [self.head(x)]
        for level in self.down:
            skips.append(level(skips[-1]))
        h = self.body(skips[-1])
        for level, skip in zip(self.up, reversed(skips[1:])):
            h = level(h + skip)
        return self.tail(h + skips[0])
