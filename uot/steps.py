"""The two steps of a training iteration: a potential step, then a map step.

Both take batches the caller has drawn, so that the caller owns the randomness (and a
resume replays it). `D_eager` is for the passes that need a double backward (R1, GP)
when `D` is a torch.compile'd module: both share the same parameters. Gradients are
averaged over the ranks (uot.dist) before each optimizer step.
"""
from contextlib import nullcontext

import torch

from uot import dist as udist
from uot.losses import interpolate_gradient_penalty, quadratic_cost, r1_penalty, source_gradient_penalty


def linearized_map(G, x, z):
    """T(x, z) for (B, d) data, differentiable in x but not in T's weights: y + J (x - x.detach())
    with y = T(x, z) and J its per-sample Jacobian in x, both without a graph.

    Anything computed from it has the same d/dx as through T itself. The toy regulariser needs
    d v(T(x)) / dx and its gradient in v's weights, never T's; J does not depend on v, so this
    spares a double backward through T. J is d vector-Jacobian products: T treats the samples
    independently, so the gradient of the batch sum of output j holds each sample's row j.
    """
    with torch.enable_grad():
        x0 = x.detach().requires_grad_(True)
        y = G(x0, z)
        rows = [torch.autograd.grad(y[:, j].sum(), x0, retain_graph=j + 1 < y.shape[1])[0]
                for j in range(y.shape[1])]
    jacobian = torch.stack(rows, 1)
    return y.detach() + (jacobian @ (x - x.detach()).unsqueeze(2)).squeeze(2)


def potential_step(G, D, opt_D, loss, real, x, z, y_ref, cost_scale, r1_weight=0.0, gp_weight=0.0,
                   source_weight=0.0, clip=0.0, D_eager=None, autocast=nullcontext()):
    """One optimizer step of D on the potential loss (+ r1_weight * R1, gp_weight * GP, or
    source_weight * the toy regulariser E ||grad_x v(T(x, z))||^2, taken w.r.t. the source).

    `y_ref` is the reference the cost measures T(x, z) against (x itself, or T_ref(x, z')),
    None when `loss.potential_uses_cost` is False. `clip` > 0 clips the gradient norm before
    the step. Returns the detached loss, the penalty, and the means of v on the real and the
    generated batch.
    """
    D_eager = D if D_eager is None else D_eager
    real = real.detach().requires_grad_(r1_weight > 0)
    with autocast:
        if source_weight > 0:
            x = x.detach().requires_grad_(True)
            fake = linearized_map(G, x, z)
        else:
            with torch.no_grad():
                fake = G(x, z)
        v_real = (D_eager if r1_weight > 0 else D)(real).float()
        v_fake = (D_eager if source_weight > 0 else D)(fake).float()
        cost = quadratic_cost(y_ref.float(), fake.detach().float(), cost_scale) if y_ref is not None else None
        value = loss.potential(v_fake, v_real, cost)
        if r1_weight > 0:
            penalty = r1_penalty(v_real, real)
            total = value + r1_weight * penalty
        elif gp_weight > 0:
            penalty = interpolate_gradient_penalty(D_eager, real.detach(), fake)
            total = value + gp_weight * penalty
        elif source_weight > 0:
            penalty = source_gradient_penalty(v_fake, x)
            total = value + source_weight * penalty
        else:
            penalty, total = torch.zeros((), device=real.device), value
    opt_D.zero_grad(set_to_none=True)
    total.backward()
    udist.average_gradients(D.parameters())
    if clip > 0:   # the S-JKO code's --clip: the whole batch's gradient, penalty included, to norm <= clip
        torch.nn.utils.clip_grad_norm_(D.parameters(), clip)
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
