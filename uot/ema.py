"""Frozen copies of a network: the generator's EMA and the JKO reference map.

`frozen_copy` makes a separate copy in eval mode with no gradients; `update_ema` moves an
EMA copy towards the live network with one foreach lerp.
"""
import copy

import torch


def frozen_copy(model):
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


@torch.no_grad()
def update_ema(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for every parameter, in one foreach call."""
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)
