"""The user-facing face of the `uot` package.

The seed README tells users to look here for `select_phi`; everything it needs lives
in `uot/` and is re-exported from this file. To add your own Psi*::

    from utils import register_phi
    register_phi("my_phi", my_convex_nondecreasing_fn)
"""
from uot.errors import UsageError  # noqa: F401
from uot.losses import (  # noqa: F401
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
