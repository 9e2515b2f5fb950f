"""The semi-dual math against hand-computed values."""
import math
import os
import re

import pytest
import torch

from uot.errors import UsageError
from uot.losses import (GANLoss, JSDLoss, SemiDualLoss, image_cost_scale, jko_cost_scale, quadratic_cost,
                        r1_penalty, source_gradient_penalty, toy_cost_scale)
from uot.phi import PHI, ScaledPhi, register_phi, select_phi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

S = torch.tensor([-3.0, -2.0, -0.5, 0.0, 0.7, 2.0], dtype=torch.float64)

# Psi*(s) written out by hand for the points of S.
HAND = {
    "linear": [-3.0, -2.0, -0.5, 0.0, 0.7, 2.0],
    "kl": [math.exp(s) - 1 for s in S.tolist()],
    # chi: y = max(s, -2), 0.25 y^2 + y
    "chi": [-1.0, -1.0, 0.0625 - 0.5, 0.0, 0.25 * 0.49 + 0.7, 3.0],
    "softplus": [math.log1p(math.exp(s)) for s in S.tolist()],
    "softplus_sjko": [2 * math.log1p(math.exp(s)) - 2 * math.log(2) for s in S.tolist()],
}
# their derivatives
HAND_GRAD = {
    "linear": [1.0] * 6,
    "kl": [math.exp(s) for s in S.tolist()],
    "chi": [0.0, 0.0, 0.75, 1.0, 1.35, 2.0],  # 0.5 y + 1 for s > -2, 0 below
    "softplus": [1 / (1 + math.exp(-s)) for s in S.tolist()],
    "softplus_sjko": [2 / (1 + math.exp(-s)) for s in S.tolist()],
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_phi_values_and_derivatives(name):
    s = S.clone().requires_grad_(True)
    out = select_phi(name)(s)
    torch.testing.assert_close(out.detach(), torch.tensor(HAND[name], dtype=torch.float64))
    (grad,) = torch.autograd.grad(out.sum(), s)
    torch.testing.assert_close(grad, torch.tensor(HAND_GRAD[name], dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(HAND))
def test_phi_convex_and_nondecreasing(name):
    s = torch.linspace(-8, 5, 2001, dtype=torch.float64)
    f = select_phi(name)(s)
    assert (f[1:] - f[:-1] >= -1e-12).all(), "not non-decreasing"
    second = f[2:] - 2 * f[1:-1] + f[:-2]
    assert (second >= -1e-9).all(), "not convex"


def test_unknown_phi_and_registration():
    with pytest.raises(UsageError, match="nope"):
        select_phi("nope")
    register_phi("square_plus", lambda s: torch.relu(s) ** 2)
    try:
        assert select_phi("square_plus")(torch.tensor(3.0)).item() == 9.0
        import utils  # the user-facing face sees the same registry
        assert utils.select_phi("square_plus") is PHI["square_plus"]
    finally:
        PHI.pop("square_plus")


def test_scaled_phi():
    g = ScaledPhi(select_phi("kl"), alpha=2.0)
    assert g(torch.tensor(1.0)).item() == pytest.approx(2 * (math.exp(0.5) - 1))


def test_cost_conventions():
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0], [1.0, 1.0]])
    y = torch.tensor([[1.0, 1.0], [1.0, 0.0], [3.0, 1.0]])
    sq = torch.tensor([2.0, 4.0, 4.0])
    torch.testing.assert_close(quadratic_cost(x, y, image_cost_scale(1e-3)), 1e-3 * sq)
    torch.testing.assert_close(quadratic_cost(x, y, toy_cost_scale(0.1)), 0.05 * sq)
    # S-JKO: 0.5 * mean over d of (x - y)^2 / h, d = 2, h = 0.1
    torch.testing.assert_close(quadratic_cost(x, y, jko_cost_scale(0.1, 2)), 0.5 * (sq / 2) / 0.1)
    # images: every non-batch dim is summed
    img = torch.ones(2, 3, 4, 4)
    torch.testing.assert_close(quadratic_cost(img, 0 * img, 1.0), torch.full((2,), 48.0))
    # the published CIFAR-10 link: h = 0.1, d = 3 * 32 * 32 gives tau ~ 0.0016
    assert jko_cost_scale(0.1, 3 * 32 * 32) == pytest.approx(0.00163, abs=1e-5)


# A 3-sample batch, computed by hand below.
V_FAKE = torch.tensor([0.5, -1.0, 2.0])
V_REAL = torch.tensor([1.0, 0.0, -0.5])
COST = torch.tensor([0.25, 0.5, 1.0])


def test_semidual_losses_by_hand():
    loss = SemiDualLoss("kl", "kl")
    # Psi1*(v_fake - c) = exp(.) - 1 at 0.25, -1.5, 1.0; Psi2*(-v_real) at -1, 0, 0.5
    expected = ((math.exp(0.25) - 1) + (math.exp(-1.5) - 1) + (math.exp(1.0) - 1)) / 3 \
        + ((math.exp(-1.0) - 1) + 0.0 + (math.exp(0.5) - 1)) / 3
    assert loss.potential(V_FAKE, V_REAL, COST).item() == pytest.approx(expected, rel=1e-6)
    # map: mean(c - v_fake) = mean(-0.25, 1.5, -1.0)
    assert loss.map(V_FAKE, COST).item() == pytest.approx(0.25 / 3, rel=1e-6)
    # OTM: both linear: mean(v_fake - c) + mean(-v_real)
    otm = SemiDualLoss("linear", "linear")
    assert otm.potential(V_FAKE, V_REAL, COST).item() == pytest.approx((-0.25) / 3 + (-0.5) / 3)
    # source-fixed chi: linear source term, chi on the target term: y = -1, 0, 0.5
    sf = SemiDualLoss("linear", "chi")
    chi_sum = (0.25 - 1) + 0 + (0.0625 + 0.5)
    assert sf.potential(V_FAKE, V_REAL, COST).item() == pytest.approx((-0.25 + chi_sum) / 3)


def test_all_pairs_potential_loss_by_hand():
    # the public UOTM image code: Psi1*(v_i - c_j) over all 9 pairs (i, j)
    loss = SemiDualLoss("kl", "kl", pairing="all_pairs")
    pairs = [math.exp(v - c) - 1 for v in V_FAKE.tolist() for c in COST.tolist()]
    target = ((math.exp(-1.0) - 1) + 0.0 + (math.exp(0.5) - 1)) / 3
    assert loss.potential(V_FAKE, V_REAL, COST).item() == pytest.approx(sum(pairs) / 9 + target, rel=1e-6)
    # for kl that is mean_i exp(v_i) * mean_j exp(-c_j) - 1: the per-sample cost weighting is gone
    factorized = (V_FAKE.exp().mean() * (-COST).exp().mean()).item() - 1
    assert sum(pairs) / 9 == pytest.approx(factorized, rel=1e-6)
    per_sample = SemiDualLoss("kl", "kl").potential(V_FAKE, V_REAL, COST).item()
    assert abs(per_sample - (sum(pairs) / 9 + target)) > 0.1
    # equal costs make the two pairings equal; a linear Psi1* too (the mean is linear)
    flat = torch.full((3,), 0.5)
    assert loss.potential(V_FAKE, V_REAL, flat).item() == pytest.approx(
        SemiDualLoss("kl", "kl").potential(V_FAKE, V_REAL, flat).item(), rel=1e-6)
    assert SemiDualLoss("linear", "kl", "all_pairs").potential(V_FAKE, V_REAL, COST).item() == pytest.approx(
        SemiDualLoss("linear", "kl").potential(V_FAKE, V_REAL, COST).item(), rel=1e-6)
    # the map loss is linear in the cost: the pairing does not touch it
    assert loss.map(V_FAKE, COST).item() == SemiDualLoss("kl", "kl").map(V_FAKE, COST).item()


def test_a_linear_psi1_needs_no_cost_in_the_potential_step():
    assert not SemiDualLoss("linear", "kl").potential_uses_cost
    assert not SemiDualLoss(ScaledPhi(select_phi("linear"), 3.0), "kl").potential_uses_cost
    assert SemiDualLoss("kl", "kl").potential_uses_cost and not JSDLoss().potential_uses_cost
    # without the cost the value is E v(T x) + E Psi2*(-v(y)), the S-JKO code's potential loss
    value = SemiDualLoss("linear", "kl").potential(V_FAKE, V_REAL, None).item()
    assert value == pytest.approx(V_FAKE.mean().item() + (V_REAL.neg().exp() - 1).mean().item(), rel=1e-6)
    with pytest.raises(ValueError):
        SemiDualLoss("kl", "kl").potential(V_FAKE, V_REAL, None)


def test_gan_losses_by_hand():
    # non-saturating GAN: the potential as in JSD, the map without any transport cost
    sp = lambda s: math.log1p(math.exp(s))  # noqa: E731
    loss = GANLoss()
    expected_v = (sp(-1.0) + sp(0.0) + sp(0.5)) / 3 + (sp(0.5) + sp(-1.0) + sp(2.0)) / 3
    assert loss.potential(V_FAKE, V_REAL, COST).item() == pytest.approx(expected_v, rel=1e-6)
    assert loss.map(V_FAKE, COST).item() == pytest.approx((sp(-0.5) + sp(1.0) + sp(-2.0)) / 3, rel=1e-6)
    # its gradient in v(T x) is -sigmoid(-v) / B: it pushes every generated sample's potential up
    v = V_FAKE.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss.map(v, COST), v)
    torch.testing.assert_close(grad, -torch.sigmoid(-V_FAKE) / 3)


def test_jsd_losses_by_hand():
    sp = lambda s: math.log1p(math.exp(s))  # noqa: E731
    loss = JSDLoss()
    expected_v = (sp(-1.0) + sp(0.0) + sp(0.5)) / 3 + (sp(0.5) + sp(-1.0) + sp(2.0)) / 3
    assert loss.potential(V_FAKE, V_REAL, COST).item() == pytest.approx(expected_v, rel=1e-6)
    expected_t = (0.25 + sp(-0.5) + 0.5 + sp(1.0) + 1.0 + sp(-2.0)) / 3
    assert loss.map(V_FAKE, COST).item() == pytest.approx(expected_t, rel=1e-6)


def test_r1_penalty_by_hand():
    # v(y) = sum(w * y^2): grad = 2 w y, so ||grad||^2 = 4 sum(w^2 y^2)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    y = torch.tensor([[1.0, 1.0], [0.0, 3.0]], requires_grad=True)
    v = (w * y ** 2).sum(1)
    pen = r1_penalty(v, y)
    expected = (4 * (1 + 4) + 4 * (0 + 36)) / 2
    assert pen.item() == pytest.approx(expected)
    # it is differentiable w.r.t. the potential's parameters (double backward):
    # d/dw of mean_b 4 sum_j w_j^2 y_bj^2 = 8 w_j mean_b y_bj^2
    (gw,) = torch.autograd.grad(pen, w)
    torch.testing.assert_close(gw, torch.tensor([8 * 1 * 0.5, 8 * 2 * 5.0]))


def test_source_gradient_penalty_through_the_map():
    # T(x) = a x, v(y) = y^2 (1-D): d v(T(x)) / dx = 2 a^2 x, penalty = mean 4 a^4 x^2
    a = torch.tensor(1.5, requires_grad=True)
    x = torch.tensor([[1.0], [-2.0]], requires_grad=True)
    v = ((a * x) ** 2).sum(1)
    pen = source_gradient_penalty(v, x)
    assert pen.item() == pytest.approx(4 * 1.5 ** 4 * 2.5)
    (ga,) = torch.autograd.grad(pen, a)
    assert ga.item() == pytest.approx(16 * 1.5 ** 3 * 2.5)


def test_the_readme_register_phi_line_works_verbatim_at_the_bottom_of_utils(tmp_path):
    """The README's example line, appended as written to utils.py (where the UOTM README sends
    users), gives a Psi* that both training scripts accept and that trains: utils.py must
    provide what the line uses (torch)."""
    import train
    import train_toy
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        [line] = re.findall(r"`(register_phi\(.*?\))`", f.read())
    utils_path = os.path.join(ROOT, "utils.py")
    with open(utils_path, encoding="utf-8") as f:
        source = f.read()
    assert line in source   # the comment in utils.py shows the same line
    namespace = {"__name__": "utils_with_the_line", "__file__": utils_path}
    exec(compile(source + "\n" + line + "\n", utils_path, "exec"), namespace)
    try:
        s = torch.tensor([-2.0, 0.0, 3.0])
        torch.testing.assert_close(select_phi("softplus_sq")(s), torch.log1p(torch.exp(s)) ** 2)
        train_toy.validate(train_toy.parse_args(["--target_name", "q", "--phi2", "softplus_sq", "--device", "cpu"]))
        flags = ["--dataset", "8gaussian", "--image_size", "2", "--model_name", "toy", "--nz", "2", "--batch_size", "8",
                 "--num_phase", "1", "--init_num_iterations", "2", "--phi1", "softplus_sq", "--phi2", "softplus_sq",
                 "--outdir", str(tmp_path), "--device", "cpu"]
        assert train.main(flags) == 0
    finally:
        PHI.pop("softplus_sq")
    with pytest.raises(UsageError, match="--phi1: unknown Psi. 'softplus_sq'"):
        train.resolve_args(train.build_parser().parse_args(["--phi1", "softplus_sq"]), 1)
