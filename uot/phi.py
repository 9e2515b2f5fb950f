"""Psi* functions: convex conjugates of the marginal divergences of unbalanced OT.

The semi-dual loss needs Psi* convex, non-decreasing and differentiable. Each entry
of `PHI` maps a name (the value of --phi1 / --phi2) to such a function of a tensor.

Add your own with one line, anywhere before the scripts parse their flags::

    from utils import register_phi
    register_phi("my_phi", lambda s: torch.nn.functional.softplus(s) ** 2)

and pass `--phi2 my_phi`.
"""
import math

import torch
import torch.nn.functional as F

from uot.errors import UsageError


def linear(s):
    """Psi* of the indicator divergence: the balanced (exact marginal) case, i.e. plain OT."""
    return s


def kl(s):
    """Psi* of KL: exp(s) - 1 (the UOTM code used exp(s); the constant changes no gradient)."""
    return torch.expm1(s)


def chi(s):
    """Psi* of the chi^2 divergence, made non-decreasing by clamping at its minimum s = -2."""
    y = torch.clamp(s, min=-2.0)
    return 0.25 * y * y + y


def softplus(s):
    """Psi*(s) = softplus(s), as in the UOTM code and its Psi ablation."""
    return F.softplus(s)


def softplus_sjko(s):
    """Psi*(s) = 2 softplus(s) - 2 log 2, the S-JKO code's `softplus` (twice the gradient)."""
    return 2.0 * F.softplus(s) - 2.0 * math.log(2.0)


PHI = {
    "linear": linear,
    "kl": kl,
    "chi": chi,
    "softplus": softplus,
    "softplus_sjko": softplus_sjko,
}


def register_phi(name, fn):
    """Make `fn` available as --phi1/--phi2 `name`. It must be convex and non-decreasing."""
    PHI[name] = fn
    return fn


def select_phi(name):
    """The Psi* function registered under `name`."""
    try:
        return PHI[name]
    except KeyError:
        raise UsageError(f"unknown Psi* '{name}': choose one of {', '.join(sorted(PHI))} "
                         f"or register your own with utils.register_phi") from None


def is_linear(phi):
    """True for the identity Psi* (also when wrapped in ScaledPhi: alpha * (s / alpha) = s)."""
    return phi is linear or (isinstance(phi, ScaledPhi) and is_linear(phi.phi))


class ScaledPhi:
    """g(s) = alpha * Psi*(s / alpha): the S-JKO loss scheduler's reshaping of Psi*.

    Large alpha makes g close to its tangent at 0 (nearly balanced OT); small alpha
    relaxes the marginal more.
    """

    def __init__(self, phi, alpha):
        self.phi, self.alpha = phi, float(alpha)

    def __call__(self, s):
        return self.alpha * self.phi(s / self.alpha)
