"""The semi-dual UOT objective: transport costs, potential and map losses, penalties.

Notation (docs/reference.md): x ~ mu the source noise, y ~ nu the data,
T(x, z) the transport map (generator), v(y) the potential (discriminator).

    potential loss  E_x Psi1*( v(T(x)) - c(x, T(x)) ) + E_y Psi2*( -v(y) )
    map loss        E_x [ c(x, T(x)) - v(T(x)) ]

Every trainer of the project (train.py, train_toy.py, the benchmarks) takes its
losses from this module; uot/steps.py turns them into training steps.
"""
import torch
import torch.nn.functional as F

from uot.phi import is_linear, select_phi


# --- transport costs --------------------------------------------------------------
# All three published conventions are c(x, y) = scale * ||x - y||^2 per sample;
# they differ only in the scale, which the published tau / h values depend on.

def quadratic_cost(x, y, scale):
    """scale * ||x - y||^2 summed over every non-batch dimension: shape (B,)."""
    return scale * (x - y).flatten(1).square().sum(1)


def image_cost_scale(tau):
    """Image UOTM: c = tau * sum (x - y)^2 (CIFAR-10 tau = 1e-3)."""
    return tau


def toy_cost_scale(tau):
    """Toy UOTM: c = 0.5 * tau * sum (x - y)^2 (outlier tau = 0.1, mixture tau = 0.02)."""
    return 0.5 * tau


def jko_cost_scale(h, dim):
    """S-JKO: c = 0.5 * mean (x - y)^2 / h = sum (x - y)^2 / (2 d h), i.e. tau = 1 / (2 d h)."""
    return 1.0 / (2.0 * dim * h)


# --- the losses -------------------------------------------------------------------
# A loss object has potential(v_fake, v_real, cost) and map(v_fake, cost), all per-sample
# (B,) tensors, and `potential_uses_cost`: whether the cost changes the potential's
# gradient (the trainer skips computing it when it does not).

PAIRINGS = ("per_sample", "all_pairs")


class SemiDualLoss:
    """UOTM / OTM / S-JKO losses for a pair of Psi* functions (names or callables).

    pairing "per_sample" is the paper's E_x Psi1*(v(T x) - c(x, T x)). "all_pairs" is what
    the public UOTM image code computes: its potential is (B, 1) and its cost (B,), so
    Psi1*(v - c) broadcasts to (B, B) and pairs every v(T x_i) with every c_j. The map loss
    is linear in the cost, so the pairing does not change it.
    """

    def __init__(self, phi1="kl", phi2="kl", pairing="per_sample"):
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        self.phi1 = select_phi(phi1) if isinstance(phi1, str) else phi1
        self.phi2 = select_phi(phi2) if isinstance(phi2, str) else phi2
        self.pairing = pairing
        # a linear Psi1* makes the cost a constant of the potential loss
        self.potential_uses_cost = not is_linear(self.phi1)

    def potential(self, v_fake, v_real, cost):
        """E Psi1*(v(T x) - c(x, T x)) + E Psi2*(-v(y)); v_fake, cost from detached T x.
        `cost` may be None when Psi1* is linear: the loss is then E v(T x) + E Psi2*(-v(y))."""
        if cost is None:
            if self.potential_uses_cost:
                raise ValueError("this Psi1* needs the cost")
            cost = torch.zeros_like(v_fake)
        if self.pairing == "all_pairs":
            fake_term = self.phi1(v_fake[:, None] - cost[None, :])
        else:
            fake_term = self.phi1(v_fake - cost)
        return fake_term.mean() + self.phi2(-v_real).mean()

    def map(self, v_fake, cost):
        """E [c(x, T x) - v(T x)]."""
        return (cost - v_fake).mean()


class GANLoss:
    """The non-saturating GAN losses, v being the discriminator's logit:
    potential softplus(-v(y)) + softplus(v(T x)); map softplus(-v(T x)).

    With `transport_cost` the map also pays c(x, T x): S-JKO-JSD (see JSDLoss).
    """
    potential_uses_cost = False

    def __init__(self, transport_cost=False):
        self.transport_cost = transport_cost

    def potential(self, v_fake, v_real, cost=None):
        return F.softplus(-v_real).mean() + F.softplus(v_fake).mean()

    def map(self, v_fake, cost):
        loss = F.softplus(-v_fake)
        return (loss + cost if self.transport_cost else loss).mean()


class JSDLoss(GANLoss):
    """S-JKO-JSD: the potential is a GAN discriminator, the map pays the JKO cost.

    potential: softplus(-v(y)) + softplus(v(T x));  map: c(x, T x) + softplus(-v(T x)).
    """

    def __init__(self):
        super().__init__(transport_cost=True)


# --- gradient penalties -----------------------------------------------------------

def squared_grad_norm(outputs, inputs):
    """Mean over the batch of ||d outputs.sum() / d inputs||^2, differentiable (double backward).

    `inputs` must have requires_grad set before `outputs` were computed from it.
    """
    (grad,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    return grad.flatten(1).square().sum(1).mean()


def r1_penalty(v_real, real):
    """R1: E_y ||grad_y v(y)||^2 on real data. The trainer adds (gamma / 2) times this."""
    return squared_grad_norm(v_real, real)


def source_gradient_penalty(v_fake, source):
    """Toy regularizer: E_x ||grad_x v(T(x))||^2 w.r.t. the *source* x (UOTM toy code)."""
    return squared_grad_norm(v_fake, source)


def interpolate_gradient_penalty(potential, real, fake):
    """WGAN-GP: E (||grad v(y_hat)|| - 1)^2 at random points between real and fake samples."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
    y_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(potential(y_hat).sum(), y_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()
