"""The user-facing face of the `uot` package.

The UOTM README tells users to look here for `select_phi`; everything it needs lives
in `uot/` and is re-exported from this file. train.py and train_toy.py take their Psi*
from here, so a Psi* registered at the bottom of this file is a valid --phi1/--phi2.
"""
import torch  # noqa: F401  (the register_phi lines below are written with torch)

from uot.errors import UsageError  # noqa: F401
from uot.losses import (  # noqa: F401
    GANLoss,
    JSDLoss,
    SemiDualLoss,
    image_cost_scale,
    jko_cost_scale,
    quadratic_cost,
    r1_penalty,
    source_gradient_penalty,
    toy_cost_scale,
)
from uot.phi import PHI, ScaledPhi, register_phi, select_phi  # noqa: F401

# Your own Psi* (convex, non-decreasing, differentiable), one line each, e.g.
#   register_phi("softplus_sq", lambda s: torch.nn.functional.softplus(s) ** 2)
# then: python train.py --phi1 softplus_sq --phi2 softplus_sq ...
