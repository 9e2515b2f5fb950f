"""The two steps of a training iteration: a potential step, then a map step.

Both take batches the caller has drawn, so that the caller owns the randomness (and a
resume replays it). `D_eager` is for the passes that need a double backward (R1, GP)
when `D` is a torch.compile'd module: both share the same parameters. Gradients are
averaged over the ranks (uot.dist) before each optimizer step.
"""
from contextlib import nullcontext

import torch

from uot import dist as udist
from uot.losses import interpolate_gradient_penalty, quadratic_cost, r1_penalty


def potential_step(G, D, opt_D, loss, real, x, z, y_ref, cost_scale, r1_weight=0.0, gp_weight=0.0,
                   D_eager=None, autocast=nullcontext()):
    """One optimizer step of D on the potential loss (+ r1_weight * R1 or gp_weight * GP).

    `y_ref` is the reference the cost measures T(x, z) against (x itself, or T_ref(x, z')),
    None when `loss.potential_uses_cost` is False. Returns the detached loss, the penalty,
    and the means of v on the real and the generated batch.
    """
    D_eager = D if D_eager is None else D_eager
    real = real.detach().requires_grad_(r1_weight > 0)
    with autocast:
        with torch.no_grad():
            fake = G(x, z)
        v_real = (D_eager if r1_weight > 0 else D)(real).float()
        v_fake = D(fake).float()
        cost = quadratic_cost(y_ref.float(), fake.float(), cost_scale) if y_ref is not None else None
        value = loss.potential(v_fake, v_real, cost)
        if r1_weight > 0:
            penalty = r1_penalty(v_real, real)
            total = value + r1_weight * penalty
        elif gp_weight > 0:
            penalty = interpolate_gradient_penalty(D_eager, real.detach(), fake)
            total = value + gp_weight * penalty
        else:
            penalty, total = torch.zeros((), device=real.device), value
    opt_D.zero_grad(set_to_none=True)
    total.backward()
    udist.average_gradients(D.parameters())
    opt_D.step()
    return value.detach(), penalty.detach(), v_real.detach().mean(), v_fake.detach().mean()


def map_step(G, D, opt_G, loss, x, z, y_ref, cost_scale, autocast=nullcontext()):
    """One optimizer step of G on the map loss, D frozen. Returns the detached loss and the
    batch mean of the cost c(y_ref, T(x, z))."""
    D.requires_grad_(False)   # no gradient for D's weights: saves their backward
    try:
        with autocast:
            fake = G(x, z)
            cost = quadratic_cost(y_ref.float(), fake.float(), cost_scale)
            value = loss.map(D(fake).float(), cost)
        opt_G.zero_grad(set_to_none=True)
        value.backward()
    finally:
        D.requires_grad_(True)
    udist.average_gradients(G.parameters())
    opt_G.step()
    return value.detach(), cost.detach().mean()
