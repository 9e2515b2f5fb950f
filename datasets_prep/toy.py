"""Synthetic toy distributions: the one home of every toy source and target.

`sample_toy(name, n, dim)` draws n points as one (n, dim) float32 tensor, without a
per-item loop, on the device of the caller's choice. The UOTM paper's toys (TOYS_UOTM)
are trained by train_toy.py, the S-JKO paper's 2-D toys (TOYS_2D) by train.py.

1-D (the UOTM paper's toys, docs/reference.md section 5):
    outlier   (1 - p) N(1, 0.1^2) + p N(-1, 0.1^2)
    p         1/2 N(1, 0.5^2) + 1/2 N(-1, 0.5^2)
    q         2/3 N(2, 0.5^2) + 1/3 N(-1, 0.5^2)
any dimension:
    noise     N(0, I)
    gaussian  N(m, I) with m = (0, ..., 0, 10): 10 on the last coordinate, so (0, 10)
              in 2-D as published and N(10, 1) in 1-D
2-D (the S-JKO toys, as its public dataset.py samples them):
    25gaussian      means on {-6, -3, 0, 3, 6}^2, covariance 0.005 I
    8gaussian       8 means on the circle of radius 12, covariance 0.4 I
    8gaussian-half  the first 4 of those means (angles 0, 45, 90 and 135 degrees)
    twocircles      radii 4 and 8 around the origin (half the points on each), noise std 0.2
    threecircles    radius 4 around (-8, 0), (0, 0) and (8, 0), noise std 0.1
    checkerboard    uniform on the 8 dark cells of a 4 x 4 board covering [-2 pi/3, 2 pi/3]^2
                    (the cells (i, j) with i + j odd, counting from the lower left)
    spiral          one arm: angle a = 3 pi sqrt(u) - pi/2 (u uniform), radius a + pi (from
                    pi/2 to 7 pi/2), noise std 0.25
    moon            two arcs of radius 10, t in [0, pi]: 10 (cos t + 1/2, 1/5 - sin t) and
                    10 (cos t - 1/2, sin t - 1/5), noise std 0.5
2-D translations (train.py; TOY_TRANSLATIONS): moon2spiral and spiral2moon, whose data is
the second toy and whose source, in place of N(0, I), the first.

The public threecircles gives 2 noise levels for its 3 circles, so its sampler fails an
assertion; the 0.1 it gives is used for all three. The public moon puts its t on an even grid
of each arc's n/2 points; so does `moon` here (with the odd point on the first arc).

Mixtures are stratified: each component gets round(n * weight) points (largest
remainders first, so the counts add up to n), as in the public code (which draws the
checkerboard's cells at random instead: the same distribution), and the points are then
shuffled. The outlier target with n = 4000, p = 0.01 thus holds exactly 40
outliers, and every 2-D mixture has equal counts per mode.
"""
import math

import torch

from uot.errors import UsageError

# name -> the only data_dim it supports (None: any).
TOY_DIMS = {
    "noise": None, "gaussian": None,
    "outlier": 1, "p": 1, "q": 1,
    "25gaussian": 2, "8gaussian": 2, "8gaussian-half": 2, "twocircles": 2, "threecircles": 2,
    "checkerboard": 2, "spiral": 2, "moon": 2,
}
TOY_NAMES = tuple(TOY_DIMS)
TOYS_2D = tuple(name for name, dim in TOY_DIMS.items() if dim == 2)
TOYS_UOTM = tuple(name for name in TOY_DIMS if name not in TOYS_2D)
# translation dataset -> (source toy, target toy)
TOY_TRANSLATIONS = {"moon2spiral": ("moon", "spiral"), "spiral2moon": ("spiral", "moon")}


def data_toy(dataset):
    """The toy a train.py 2-D dataset's data is drawn from: itself, or a translation's target."""
    return TOY_TRANSLATIONS[dataset][1] if dataset in TOY_TRANSLATIONS else dataset


def _grid_means():
    ticks = torch.tensor([-6.0, -3.0, 0.0, 3.0, 6.0])
    return torch.cartesian_prod(ticks, ticks)


def _circle_means(k, radius):
    angle = 2 * math.pi * torch.arange(k) / k
    return radius * torch.stack([angle.cos(), angle.sin()], 1)


# Targets made of well-separated equal-weight modes: name -> (means (K, d), std of each
# isotropic mode), for the mode-coverage metric. `outlier` is left out on purpose: its
# outlier mode holds exactly p = 1% of the mass, the coverage threshold itself; its
# metric is uot.metrics.outlier_fraction.
TOY_MODES = {
    "25gaussian": (_grid_means(), math.sqrt(0.005)),
    "8gaussian": (_circle_means(8, 12.0), math.sqrt(0.4)),
    "8gaussian-half": (_circle_means(8, 12.0)[:4], math.sqrt(0.4)),
}


# name -> (centres (K, 2), radii (K,), noise std)
CIRCLES = {
    "twocircles": (torch.zeros(2, 2), torch.tensor([4.0, 8.0]), 0.2),
    "threecircles": (torch.tensor([[-8.0, 0.0], [0.0, 0.0], [8.0, 0.0]]), torch.tensor([4.0, 4.0, 4.0]), 0.1),
}


def metric_args(name):
    """What uot.metrics.toy_metrics must know of target `name`: its modes, its outlier mode."""
    return dict(modes=TOY_MODES.get(name), outlier=(-1.0, 1.0) if name == "outlier" else None)


def check_toy(name, dim, flag="--source_name/--target_name", names=TOY_NAMES):
    """Raise a UsageError naming `flag` unless `name` is one of `names` and exists in `dim` dimensions."""
    if name not in names:
        raise UsageError(f"{flag}: unknown toy distribution '{name}'; choose one of {', '.join(names)}")
    if dim < 1:
        raise UsageError(f"--data_dim must be >= 1, got {dim}")
    if TOY_DIMS[name] not in (None, dim):
        raise UsageError(f"{flag} {name} is {TOY_DIMS[name]}-D only, but --data_dim is {dim}")


def stratified_counts(n, weights):
    """Integer counts summing to n, as close to n * weights as possible (largest remainders)."""
    exact = [n * w for w in weights]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _component_ids(n, weights, generator, device):
    """A shuffled (n,) tensor of component indices with stratified counts."""
    counts = torch.tensor(stratified_counts(n, weights), device=device)
    ids = torch.repeat_interleave(torch.arange(len(weights), device=device), counts)
    return ids[torch.randperm(n, generator=generator, device=device)]


def _gaussian_mixture(n, means, std, weights, generator, device):
    means = means.to(device)
    ids = _component_ids(n, weights, generator, device)
    noise = torch.randn(n, means.shape[1], generator=generator, device=device)
    return means[ids] + std * noise


def _uniform(n, generator, device):
    return torch.rand(n, generator=generator, device=device)


def sample_toy(name, n, dim=1, p=0.01, generator=None, device="cpu"):
    """n samples of the toy distribution `name` in `dim` dimensions: float32 (n, dim).

    `p` is the outlier fraction of `outlier` (in (0, 1)); `generator` a torch.Generator
    on `device` for reproducible draws.
    """
    check_toy(name, dim)
    kw = dict(generator=generator, device=device)
    if name == "noise":
        return torch.randn(n, dim, **kw)
    if name == "gaussian":
        mean = torch.zeros(dim, device=device)
        mean[-1] = 10.0
        return mean + torch.randn(n, dim, **kw)
    if name == "outlier":
        if not 0.0 < p < 1.0:
            raise UsageError(f"--p is the outlier fraction and must be in (0, 1), got {p}")
        return _gaussian_mixture(n, torch.tensor([[1.0], [-1.0]]), 0.1, [1 - p, p], **kw)
    if name == "p":
        return _gaussian_mixture(n, torch.tensor([[1.0], [-1.0]]), 0.5, [0.5, 0.5], **kw)
    if name == "q":
        return _gaussian_mixture(n, torch.tensor([[2.0], [-1.0]]), 0.5, [2 / 3, 1 / 3], **kw)
    if name in TOY_MODES:
        means, std = TOY_MODES[name]
        return _gaussian_mixture(n, means, std, [1 / len(means)] * len(means), **kw)
    if name in ("twocircles", "threecircles"):
        centres, radii, std = CIRCLES[name]
        ids = _component_ids(n, [1 / len(radii)] * len(radii), **kw)
        angle = 2 * math.pi * _uniform(n, **kw)
        circle = radii.to(device)[ids, None] * torch.stack([angle.cos(), angle.sin()], 1)
        return centres.to(device)[ids] + circle + std * torch.randn(n, 2, **kw)
    if name == "checkerboard":
        # dark cells (i, j) of a 4 x 4 board with i + j odd, each cell pi/3 wide
        cells = torch.cartesian_prod(torch.arange(4), torch.arange(4))
        dark = cells[cells.sum(1) % 2 == 1].to(device=device, dtype=torch.float32)
        corner = dark[_component_ids(n, [1 / len(dark)] * len(dark), **kw)]
        return (math.pi / 3) * (corner + torch.rand(n, 2, **kw) - 2.0)
    if name == "spiral":
        angle = 3 * math.pi * _uniform(n, **kw).sqrt() - math.pi / 2
        arm = (angle + math.pi)[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
        return arm + 0.25 * torch.randn(n, 2, **kw)
    # moon: an even grid of t on each arc, as the public sampler lays its points
    first, second = stratified_counts(n, [0.5, 0.5])
    t = torch.cat([torch.linspace(0, math.pi, first, device=device), torch.linspace(0, math.pi, second, device=device)])
    sign = torch.cat([torch.ones(first, device=device), -torch.ones(second, device=device)])
    arcs = torch.stack([t.cos() + 0.5 * sign, sign * (0.2 - t.sin())], 1)
    points = 10.0 * arcs + 0.5 * torch.randn(n, 2, **kw)
    return points[torch.randperm(n, generator=generator, device=device)]
