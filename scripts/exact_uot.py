"""A trained toy run against the exact solution of its unbalanced OT problem (POT).

    python scripts/exact_uot.py train_logs/outlier/outlier_uot            # a train_toy.py run
    python scripts/exact_uot.py train_logs/25gaussian/uotm_kl              # a train.py 2-D toy run
    python scripts/exact_uot.py RUN --n 2000 --seed 1 --tau_factor 10      # another problem, for contrast

The run's problem comes from its checkpoint's `args`: the source mu (N(0, I), or the source toy
of train_toy.py / of a 2-D translation), the target nu (datasets_prep.toy's sampler; S-JKO adds
its phase-0 data noise N(0, (1/32)^2 I) to the data, and so does the exact problem here), the
Psi* pair, and the cost c(x, y) = s ||x - y||^2 with the trainer's own scale s (uot.losses):
train_toy.py `toy_cost_scale(tau)` = 0.5 tau, train.py UOTM mode `image_cost_scale(tau)` = tau,
train.py S-JKO mode `jko_cost_scale(init_h, d)` = 1 / (2 d init_h). An S-JKO run is compared
within its phase 0 only (phase k >= 1 solves a JKO step from T_(k-1), not a problem from the
source): past phase 0 its content.pth is refused; --checkpoint takes a netG_<n>.pth of phase 0.
The generator is content.pth's EMA where the run keeps one (as test.py evaluates), else G.

The problem, between N source points x_i and N target points y_j of weight a_i = b_j = 1/N
(probability measures, as the semi-dual's expectations are; the plan P >= 0 is unnormalised,
its mass is what the relaxation keeps), M_ij = c(x_i, y_j), Psi the convex conjugate of Psi*:

    primal  min_{P >= 0} <M, P> + D_Psi1(P 1 | a) + D_Psi2(P^T 1 | b),   D_Psi(m | a) = sum_i a_i Psi(m_i / a_i)
    semi-dual  S(v) = -sum_i a_i Psi1*(-v^c_i) - sum_j b_j Psi2*(-v_j),   v^c_i = min_j M_ij - v_j

S(v) is minus the trainers' potential loss at v with T x_i = argmin_j M_ij - v_j. For every P
and v, <M, P> >= <P 1, v^c> + <P^T 1, v>, and Fenchel-Young gives D_Psi(m | a) >= <m, s> -
<a, Psi*(s)> (s = -v^c on the source, -v on the target): S(v) <= primal(P), with equality at the
optimum. Every solve stops on this certificate, gap = primal(P) - S(v) < --tol (the JSON's `gap`).

| Psi1*, Psi2* | Psi (t = dm / da) | POT counterpart |
|---|---|---|
| linear, linear | 0 at t = 1, else +inf: exact marginals | ot.emd(a, b, M), balanced OT (OTM) |
| kl, kl | t log t - t + 1: POT's generalised KL, weight 1 | ot.unbalanced.mm_unbalanced(a, b, M, reg_m=1, div='kl') |
| chi, chi | (t - 1)^2 on t >= 0: sum (m - a)^2 / a = N sum (m - a)^2 | mm_unbalanced(..., div='l2', reg_m=2N) (*) |
| linear, kl and kl, linear | one marginal exact, KL on the other | none: mm_unbalanced refuses an infinite reg_m |

(*) POT's l2 is 0.5 sum (m - a)^2: the correspondence is exact because a = b = 1/N.

Other pairs (softplus, kl with chi, a loss scheduler's rescaled Psi*, the GAN / JSD losses) are
refused. The solver (--solver newton, the default) maximises the semi-dual: Newton's method on
the semi-dual with the c-transform's min smoothed into a softmin at temperature eps, from the
balanced problem's potentials, eps from 1e-3 (max M - min M) down by 10 per stage; after each
stage the potentials' marginals a Psi1*'(-v^c) and b Psi2*'(-v), brought to one mass, are joined
by ot.emd, and the solve stops once that plan is certified within --tol. The plan is then an
exact transport plan, not an entropic one. --solver mm runs the majorisation-minimisation
iterations instead (mm_unbalanced; for the semi-relaxed pairs its update with one marginal held:
P_ij <- P_ij (b_j / (P^T 1)_j) exp(-M_ij), rows rescaled to a_i): exact in the limit, but its
iterate is an entropic plan at eps ~ 2 / iterations, so it is slow (N = 1,000, outlier, (kl, kl):
50,000 iterations and 460 s for a gap of 2e-5, where the Newton path certifies 6e-8 in 5 s).

What is compared, on the same source points x_i (solution A: the points x_i, y_j; B: fresh
draws of both, the sampling floor; a third draw of the target is "the target"):

- maps: T_exact(x_i), the mean of the plan's conditional law of y given x_i (the barycentric
  map sum_j P_ij y_j / sum_j P_ij; in a row without mass, which chi allows, the semi-dual's
  T x_i = argmin_j M_ij - v_j), against T_learned(x_i), the mean of the generator's T(x_i, z)
  over --latents draws of z (map_spread: the mean over x of the sd over z); mean and max error
  over the x_i. The floor compares A's map with B's, carried to the x_i by linear interpolation
  (1-D) or the nearest source point of B (d > 1).
- pushforwards: T_exact#mu is that conditional law averaged over the uniform x_i, i.e. the y_j
  with weights (1/N) sum_i P_ij / (P 1)_i: what the optimal map outputs from mu, the exact
  counterpart of the generator's T_learned#mu (the points T(x_i, z_i)). Where Psi1 is relaxed it
  differs from the plan's second marginal P^T 1 = T#(P 1), the law the Psi2 penalty holds to nu;
  `marginal_*` reports that one, normalised (absent when the plan has no mass). Wasserstein-1
  between weighted point sets (exact in 1-D, scipy.stats.wasserstein_distance; ot.emd2 with the
  Euclidean cost otherwise); for the `outlier` target, the share of the mass nearer the outlier
  mean (-1) than the main mean (1).
- modes (2-D mixture targets): the modes holding at least 1% of the mass within 0.5 of their
  mean (scripts/sjko_toy_coverage.py's rule), and on 25gaussian the outer ones (of 16) after it.
- target: w1_two_draws, W1 between two draws of N target points (what W1 to the target reads
  for a perfect pushforward at this N).
- ratio: the learned figure over the floor's (w1: w1_to_exact / w1_exact_to_exact).
- the relaxation's error: `divergence` = D_Psi1(P 1 | a) + D_Psi2(P^T 1 | b) of the exact plan, and
  `bound` = the balanced OT cost <M, P_emd> (s W2^2 for c = s ||x - y||^2): the UOTM paper's bound
  on it (the plan's value is at most the balanced plan's, whose divergences are 0).

One JSON line on stdout; a figure next to the run (exact_uot.png; with --tau_factor or --phis
exact_uot_<phi1>_<phi2>_x<factor>.png; or --figure): in 1-D the two maps over x and the
pushforwards' densities, in d >= 2 the target, T_exact#mu (N points drawn with its weights) and
T_learned#mu (the first two coordinates). Refusals (not a run folder, an image run, a Psi pair
or loss without an exact counterpart) are one line on stderr, exit code 2.
docs/reference.md, "Exact unbalanced OT with POT", has the derivation.
"""
import argparse
import json
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
import ot
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy.spatial import cKDTree
from scipy.stats import wasserstein_distance

from datasets_prep.toy import TOY_TRANSLATIONS, data_toy, metric_args, sample_toy
from score_sde import build_generator
from score_sde.toy import ToyGenerator
from uot.errors import UsageError, exit_on_usage_error
from uot.io import load_checkpoint, read_checkpoint
from uot.losses import image_cost_scale, jko_cost_scale, toy_cost_scale
from uot.phi import select_phi
from uot.plots import save_figure
from uot.schedule import data_noise_std, jko_phases

PAIRS = {
    ("linear", "linear"): "ot.emd (balanced OT)",
    ("kl", "kl"): "ot.unbalanced.mm_unbalanced(div='kl', reg_m=1)",
    ("chi", "chi"): "ot.unbalanced.mm_unbalanced(div='l2', reg_m=2N)",
    ("linear", "kl"): "semi-relaxed KL MM (source marginal exact)",
    ("kl", "linear"): "semi-relaxed KL MM (target marginal exact)",
}
NETG_FILE = re.compile(r"netG_(\d+)\.pth")


# --- the exact problem and its solvers ------------------------------------------------

def divergence(name, m, a):
    """D_Psi(m | a) = sum_i a_i Psi(m_i / a_i) for the Psi whose conjugate is Psi* `name`."""
    if name == "linear":   # the indicator: 0 on m = a (checked by the caller's gap), else +inf
        return 0.0 if np.allclose(m, a, rtol=1e-6, atol=1e-12) else float("inf")
    if name == "kl":
        ratio = np.where(m > 0, m / a, 1.0)
        return float(np.sum(m * np.log(ratio) - m + a))
    if name == "chi":
        return float(np.sum((m - a) ** 2 / a))
    raise UsageError(f"no divergence for Psi* {name!r}")


def psi_star(name, s):
    """The trainer's own Psi* (uot.phi), on a float64 numpy array."""
    return select_phi(name)(torch.from_numpy(np.asarray(s, dtype=np.float64))).numpy()


def c_transform(M, v):
    """v^c(x_i) = min_j M_ij - v_j."""
    return (M - v[None, :]).min(1)


def semi_dual(M, a, b, v, phi1, phi2):
    """S(v) = -sum_i a_i Psi1*(-v^c_i) - sum_j b_j Psi2*(-v_j): minus the trainers' potential loss at v
    (with T x = argmin_y c(x, y) - v(y)); a lower bound of the primal value for every v."""
    return float(-(a * psi_star(phi1, -c_transform(M, v))).sum() - (b * psi_star(phi2, -v)).sum())


def primal(M, a, b, P, phi1, phi2):
    """<M, P> + D_Psi1(P 1 | a) + D_Psi2(P^T 1 | b)."""
    return float((M * P).sum() + divergence(phi1, P.sum(1), a) + divergence(phi2, P.sum(0), b))


def target_potential(name, m, b):
    """The v with Psi*'(-v_j) = m_j / b_j, the optimality condition on the target side."""
    if name == "kl":
        return -np.log(np.maximum(m / b, 1e-300))
    if name == "chi":
        return -2.0 * (m / b - 1.0)
    raise ValueError(name)


def semi_relaxed_kl(a, b, M, iterations, P=None):
    """`iterations` MM steps of min_{P >= 0, P 1 = a} <M, P> + KL(P^T 1 | b), from P (default a b^T / |b|):
    Jensen's bound on the KL term gives P_ij <- P_ij (b_j / (P^T 1)_j) exp(-M_ij), then row i is
    rescaled to a_i (each row's shift of M cancels in that rescaling, so exp never underflows a row)."""
    K = np.exp(-(M - M.min(1, keepdims=True)))
    P = a[:, None] * b[None, :] / b.sum() if P is None else P
    for _ in range(iterations):
        P = P * K * (b / np.maximum(P.sum(0), 1e-300))[None, :]
        P *= (a / P.sum(1))[:, None]
    return P


def check_pair(phi1, phi2):
    if (phi1, phi2) not in PAIRS:
        raise UsageError(f"the Psi pair ({phi1}, {phi2}) has no exact POT counterpart here: exact_uot solves "
                         f"{', '.join(f'({p}, {q})' for p, q in PAIRS)}")


# Psi*, Psi*' and Psi*'' of uot.phi's `linear`, `kl` and `chi`, on numpy arrays (the Newton
# path's derivatives; tests/test_exact_uot.py checks the values against uot.phi).
PSI = {
    "linear": lambda s: (s, np.ones_like(s), np.zeros_like(s)),
    "kl": lambda s: (np.expm1(s), np.exp(s), np.exp(s)),
    "chi": lambda s: (np.maximum(s, -2) + np.maximum(s, -2) ** 2 / 4, np.where(s > -2, 1 + s / 2, 0.0),
                      np.where(s > -2, 0.5, 0.0)),
}


def smoothed_semi_dual(M, a, b, phi1, phi2, v, eps):
    """S with the c-transform's min over j replaced by the softmin at temperature eps:
    (value, -v^c_eps, the softmin weights pi (rows sum to 1))."""
    r = M - v[None, :]
    low = r.min(1)
    e = np.exp(-(r - low[:, None]) / eps)
    z = e.sum(1)
    w = eps * np.log(z) - low   # -v^c_eps
    with np.errstate(over="ignore"):
        value = -(a * PSI[phi1](w)[0]).sum() - (b * PSI[phi2](-v)[0]).sum()
    return (value if np.isfinite(value) else -np.inf), w, e / z[:, None]


def newton_stage(M, a, b, phi1, phi2, v, eps, steps=50):
    """Newton's method (with a backtracking line search, and a ridge that grows when a step fails)
    on the smoothed semi-dual at `eps`, until the Newton decrement is below 1e-4 eps. The Hessian
    drops softmin weights below 1e-14 and is sparse once they are few."""
    n, m = M.shape
    value, w, pi = smoothed_semi_dual(M, a, b, phi1, phi2, v, eps)
    ridge, done = 1e-12, 0
    while done < steps:
        _, d1, h1 = PSI[phi1](w)
        _, d2, h2 = PSI[phi2](-v)
        c = a * d1
        grad = b * d2 - pi.T @ c
        keep = pi > 1e-14
        if keep.sum() > 0.05 * n * m:
            H = pi.T @ ((a * h1 - c / eps)[:, None] * pi)
            H[np.diag_indices(m)] += pi.T @ c / eps + b * h2
            H[np.diag_indices(m)] += ridge * H.diagonal().max()
            step = np.linalg.solve(H, grad)
        else:
            Pi = scipy.sparse.csr_matrix((pi[keep], np.nonzero(keep)), shape=(n, m))
            H = Pi.T @ scipy.sparse.diags(a * h1 - c / eps) @ Pi + scipy.sparse.diags(Pi.T @ c / eps + b * h2)
            H = H + scipy.sparse.diags(np.full(m, ridge * H.diagonal().max()))
            step = scipy.sparse.linalg.spsolve(H.tocsc(), grad)
        decrement = float(grad @ step)
        done += 1
        if 0 <= decrement < 1e-4 * eps:
            break
        t = 1.0
        while t > 1e-6:
            trial = smoothed_semi_dual(M, a, b, phi1, phi2, v + t * step, eps)
            if trial[0] >= value + 0.25 * t * decrement:
                break
            t /= 2
        else:   # no ascent along the step: a stiffer ridge, or give up at this eps
            ridge *= 1e3
            if ridge > 1e-2:
                break
            continue
        v, (value, w, pi), ridge = v + t * step, trial, max(ridge / 10, 1e-12)
    return v, done


def newton_path(M, a, b, phi1, phi2, tol, stages=12):
    """Optimal potentials of the semi-dual by a path of smoothed problems: from the balanced
    problem's duals (ot.emd) or 0, whichever is higher, Newton at eps = 1e-3 (max M - min M), then eps / 10 at each stage,
    until the plan of the potentials (plan_from_potentials) is certified within `tol`.
    Returns (P, v, Newton steps)."""
    _, log = ot.emd(a, b, M, numItermax=10 ** 8, log=True)
    eps, steps = 1e-3 * float(M.max() - M.min()) or 1.0, 0
    # the balanced duals, or v = 0 where they overflow Psi*: at large costs they reach hundreds and
    # exp(-v) is infinite, while S(0) is finite for every pair
    v = max((log["v"].copy(), np.zeros(len(b))), key=lambda v0: smoothed_semi_dual(M, a, b, phi1, phi2, v0, eps)[0])
    for _ in range(stages):
        v, done = newton_stage(M, a, b, phi1, phi2, v, eps)
        steps += done
        P = plan_from_potentials(M, a, b, phi1, phi2, c_transform(M, v), v)
        if primal(M, a, b, P, phi1, phi2) - semi_dual(M, a, b, v, phi1, phi2) < tol:
            break
        eps /= 10
    return P, v, steps


def plan_from_potentials(M, a, b, phi1, phi2, u, v):
    """The plan of optimal potentials: its marginals are a Psi1*'(-u) and b Psi2*'(-v) (the held
    one for `linear`), brought to one mass, and joined by the balanced OT plan between them (ot.emd)."""
    m1 = a * PSI[phi1](-u)[1]
    m2 = b * PSI[phi2](-v)[1]
    if m1.sum() <= 0 or m2.sum() <= 0:   # chi's Psi*' vanishes below -2: the plan may move no mass at all
        return np.zeros_like(M)
    if phi1 == "linear":
        m2 = m2 * (m1.sum() / m2.sum())
    elif phi2 == "linear":
        m1 = m1 * (m2.sum() / m1.sum())
    else:
        m1 = m1 * (0.5 * (m1.sum() + m2.sum()) / m1.sum())
    # ot.emd checks equal sums to 6 decimals in absolute terms: it is given the two marginals as
    # probability vectors and its plan is scaled back to their mass
    mass = m1.sum()
    return mass * ot.emd(m1 / mass, m2 / m2.sum(), M, numItermax=10 ** 8)


def mm_solve(M, a, b, phi1, phi2, tol, max_iterations, chunk=250):
    """The majorisation-minimisation solvers, in chunks until the gap is below `tol`: POT's
    mm_unbalanced for the both-relaxed pairs, semi_relaxed_kl for the others (slow: an annealing)."""
    pair, P, iterations = (phi1, phi2), None, 0
    while True:
        if pair == ("kl", "kl"):
            P = ot.unbalanced.mm_unbalanced(a, b, M, 1.0, div="kl", G0=P, numItermax=chunk, stopThr=0.0)
        elif pair == ("chi", "chi"):   # chi^2 = N sum (m - a)^2 with a = 1/N: l2 with reg_m = 2/a
            P = ot.unbalanced.mm_unbalanced(a, b, M, (2.0 / a[0], 2.0 / b[0]), div="l2", G0=P,
                                            numItermax=chunk, stopThr=0.0)
        elif pair == ("linear", "kl"):
            P = semi_relaxed_kl(a, b, M, chunk, P)
        else:   # (kl, linear): the transposed problem
            P = semi_relaxed_kl(b, a, M.T, chunk, None if P is None else P.T).T
        iterations += chunk
        if pair == ("kl", "linear"):   # the potential of the relaxed side, carried over by the c-transform
            v = c_transform(M.T, target_potential("kl", P.sum(1), a))
        else:
            v = target_potential(phi2, P.sum(0), b)
        gap = primal(M, a, b, P, phi1, phi2) - semi_dual(M, a, b, v, phi1, phi2)
        if gap < tol or iterations >= max_iterations:
            return P, v, iterations


def solve(M, a, b, phi1, phi2, tol=1e-7, method="newton", max_iterations=50000):
    """The exact plan P of the pair's problem, its target potential v and its certificate:
    (P, v, info) with info's `gap` = primal(P) - S(v) >= 0. `linear` pairs: ot.emd. Relaxed pairs:
    method "newton", the Newton path (`iterations`: its Newton steps), or "mm", the MM
    iterations (`iterations`: their count)."""
    check_pair(phi1, phi2)
    if (phi1, phi2) == ("linear", "linear"):
        P, log = ot.emd(a, b, M, numItermax=10 ** 8, log=True)
        v, iterations = log["v"], 1
    elif method == "newton":
        P, v, iterations = newton_path(M, a, b, phi1, phi2, tol)
    else:
        P, v, iterations = mm_solve(M, a, b, phi1, phi2, tol, max_iterations)
    value = primal(M, a, b, P, phi1, phi2)
    solver = PAIRS[(phi1, phi2)] if method == "mm" or "linear" == phi1 == phi2 else \
        "Newton path on the smoothed semi-dual, plan by ot.emd between the potentials' marginals"
    return P, v, dict(solver=solver, value=value, gap=value - semi_dual(M, a, b, v, phi1, phi2),
                      iterations=iterations, mass=float(P.sum()),
                      divergence=divergence(phi1, P.sum(1), a) + divergence(phi2, P.sum(0), b),
                      bound=float(ot.emd2(a, b, M, numItermax=10 ** 8)))


def conditional(P, M, v):
    """The plan's conditional law of y given x_i, row by row (rows sum to 1): P_ij / sum_j P_ij,
    or, in a row the plan gives no mass (chi can), the point of the semi-dual's map
    T(x_i) = argmin_j M_ij - v_j."""
    rows = P.sum(1)
    Q = np.zeros_like(P)
    kept = rows > 0
    Q[kept] = P[kept] / rows[kept, None]
    empty = np.flatnonzero(~kept)
    Q[empty, (M[empty] - v[None, :]).argmin(1)] = 1.0
    return Q


# --- measures between weighted point sets -------------------------------------------

def w1(x, wx, y, wy):
    """Wasserstein-1 between weighted point sets (weights normalised): exact in 1-D, ot.emd2 otherwise."""
    wx, wy = wx / wx.sum(), wy / wy.sum()
    if x.shape[1] == 1:
        return float(wasserstein_distance(x[:, 0], y[:, 0], wx, wy))
    return float(ot.emd2(wx, wy, ot.dist(x, y, metric="euclidean"), numItermax=10 ** 8))


def outlier_share(points, weights, outlier, main):
    """The share of the mass nearer the outlier mean than the main mean."""
    nearer = np.linalg.norm(points - outlier, axis=1) < np.linalg.norm(points - main, axis=1)
    return float(weights[nearer].sum() / weights.sum())


def modes_covered(points, weights, means, outer=None, radius=0.5, min_share=0.01):
    """The modes holding at least 1% of the mass within `radius` of their mean (the rule of
    scripts/sjko_toy_coverage.py): [covered] or, with an `outer` mask, [covered, outer covered]."""
    share = (weights[:, None] * (np.linalg.norm(points[:, None] - means[None], axis=2) <= radius)).sum(0)
    covered = share / weights.sum() >= min_share
    return [int(covered.sum())] + ([] if outer is None else [int(covered[outer].sum())])


def carry_map(x_from, t_from, x_to):
    """A map known at x_from, at the points x_to: linear interpolation in 1-D, nearest point otherwise."""
    kept = ~np.isnan(t_from).any(1)
    x_from, t_from = x_from[kept], t_from[kept]
    if x_from.shape[1] == 1:
        order = np.argsort(x_from[:, 0])
        return np.stack([np.interp(x_to[:, 0], x_from[order, 0], t_from[order, k])
                         for k in range(t_from.shape[1])], 1)
    return t_from[cKDTree(x_from).query(x_to)[1]]


def map_errors(t, t_ref):
    """Mean and max over the points of |t - t_ref| (Euclidean), rows where either is undefined left out."""
    err = np.linalg.norm(t - t_ref, axis=1)
    err = err[~np.isnan(err)]
    return float(err.mean()), float(err.max())


# --- runs -----------------------------------------------------------------------------

@dataclass
class Problem:
    phi1: str
    phi2: str
    scale: float            # c(x, y) = scale * ||x - y||^2
    cost: str               # how the trainer writes it
    source: object          # (n, generator) -> (n, d) float32 tensor
    target: object
    dim: int
    outlier: tuple = None   # (outlier mean, main mean) of an outlier target
    notes: list = field(default_factory=list)
    modes: tuple = None     # a mixture target's means (datasets_prep.toy.TOY_MODES), and its outer ones (a mask)

    def cost_matrix(self, x, y):
        return self.scale * ot.dist(x, y)   # squared Euclidean distances


@dataclass
class Run:
    path: str
    trainer: str
    where: dict
    G: torch.nn.Module
    nz: int
    problem: Problem


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_run(path, checkpoint=None):
    """The run in folder `path`: its trainer, its generator (eval mode) and its problem."""
    options_path = os.path.join(path, "options.json")
    if not os.path.isdir(path) or not os.path.isfile(options_path):
        raise UsageError(f"{path} is not a run folder (no options.json): give the --savepath of a train_toy.py run "
                         f"or the <outdir>/<dataset>/<exp> folder of a train.py toy run")
    options = read_json(options_path)
    if "target_name" in options:
        return toy_run(path, checkpoint)
    if "model_name" not in options:
        raise UsageError(f"{options_path} is neither train_toy.py's nor train.py's options")
    if options["model_name"] != "toy":
        raise UsageError(f"{path} is an image run (--model_name {options['model_name']}): exact_uot solves the "
                         f"toy problems only (train_toy.py, and train.py with --model_name toy)")
    return train_run(path, options, checkpoint)


def toy_run(path, checkpoint):
    """A train_toy.py run: checkpoint.pt (its args and G), cost 0.5 tau ||x - y||^2."""
    if checkpoint is not None:
        raise UsageError("--checkpoint is for train.py runs; a train_toy.py run has one checkpoint.pt")
    if not os.path.isfile(os.path.join(path, "checkpoint.pt")):
        raise UsageError(f"{path} holds no checkpoint.pt: the run has not saved yet")
    ckpt = read_checkpoint(os.path.join(path, "checkpoint.pt"))
    a = argparse.Namespace(**ckpt["args"])
    G = ToyGenerator(a.data_dim, a.nz, a.hidden, a.num_blocks)
    G.load_state_dict(ckpt["G"])
    notes = []
    if a.regularize and a.lmbda > 0:
        notes.append(f"the run adds {a.lmbda} ||grad_x v(T(x, z))||^2 to its potential loss; the exact problem has "
                     f"no such term")
    if a.potential_pairing == "all_pairs":
        notes.append("the run's potential loss pairs all (B, B) of a batch; the exact problem is the paper's, "
                     "per sample")
    problem = Problem(
        a.phi1, a.phi2, toy_cost_scale(a.tau), f"0.5 tau ||x - y||^2, tau {a.tau}",
        lambda n, g: sample_toy(a.source_name, n, a.data_dim, a.p, generator=g),
        lambda n, g: sample_toy(a.target_name, n, a.data_dim, a.p, generator=g),
        a.data_dim, metric_args(a.target_name)["outlier"], notes)
    epoch = ckpt["step"] // (a.num_data // a.batch_size)
    return Run(path, "train_toy.py", {"epoch": epoch, "step": ckpt["step"]}, G.eval(), a.nz, problem)


def train_run(path, options, checkpoint):
    """A train.py toy run: content.pth (its G_ema, else G), or --checkpoint netG_<n>.pth."""
    if checkpoint is None:
        if not os.path.isfile(os.path.join(path, "content.pth")):
            raise UsageError(f"{path} holds no content.pth: the run has not saved yet "
                             f"(or pass --checkpoint netG_<n>.pth)")
        ckpt = read_checkpoint(os.path.join(path, "content.pth"))
        a = argparse.Namespace(**ckpt["args"])
        state = ckpt["G_ema"] if ckpt.get("G_ema") is not None else ckpt["G"]
        step = ckpt["step"]
    else:
        match = NETG_FILE.fullmatch(os.path.basename(checkpoint))
        if match is None or not os.path.isfile(checkpoint):
            raise UsageError(f"--checkpoint {checkpoint}: give an existing netG_<n>.pth of the run")
        a = argparse.Namespace(**options)
        if not a.sjko:
            raise UsageError("--checkpoint: in UOTM mode compare the run's content.pth (netG_<n>.pth counts epochs)")
        state, step = load_checkpoint(checkpoint), int(match.group(1))
    if a.loss != "uot":
        raise UsageError(f"{path} trains the {a.loss} loss, which is no semi-dual UOT problem")
    if a.loss_scheduler != "none":
        raise UsageError(f"{path} rescales its Psi* (--loss_scheduler {a.loss_scheduler}): not solved here")
    G = build_generator(a)
    G.load_state_dict(state)
    d, noise, notes = a.image_size, 0.0, []
    if a.sjko:
        phase0 = jko_phases(a.num_phase, a.init_h, a.h, a.init_num_iterations, a.num_iterations)[0]
        if step > phase0.end or phase0.iterations == 0:
            raise UsageError(f"{path} at step {step} is past S-JKO's phase 0 (steps 0-{phase0.end}), whose map "
                             f"solves a JKO step from T_(k-1), not a problem from the source: give "
                             f"--checkpoint netG_<n>.pth with n <= {phase0.end}")
        scale, cost = jko_cost_scale(a.init_h, d), f"||x - y||^2 / (2 d h), d {d}, h {a.init_h} (phase 0)"
        noise = 0.0 if a.no_data_noise else data_noise_std(0)
    else:
        scale, cost = image_cost_scale(a.tau), f"tau ||x - y||^2, tau {a.tau}"
        if a.potential_pairing == "all_pairs":
            notes.append("the run's potential loss pairs all (B, B) of a batch (UOTM mode's default); the exact "
                         "problem is the paper's, per sample")
    if noise:
        notes.append(f"target: the data plus N(0, {noise:g}^2 I), the noise S-JKO adds in phase 0")
    if a.reg_name != "none":
        notes.append(f"the run adds a {a.reg_name} penalty to its potential loss; the exact problem has none")
    toy = data_toy(a.dataset)

    def source(n, g):
        if a.dataset in TOY_TRANSLATIONS:
            return sample_toy(TOY_TRANSLATIONS[a.dataset][0], n, d, generator=g)
        return torch.randn(n, d, generator=g)

    def target(n, g):
        y = sample_toy(toy, n, d, generator=g)
        return y + noise * torch.randn(n, d, generator=g) if noise else y

    modes = metric_args(toy)["modes"]
    if modes is not None:   # 25gaussian's outer modes: the border of its grid (scripts/sjko_toy_coverage.py's)
        means = modes[0].double().numpy()
        modes = (means, np.abs(means).max(1) == np.abs(means).max() if toy == "25gaussian" else None)
    problem = Problem(a.phi1, a.phi2, scale, cost, source, target, d, metric_args(toy)["outlier"], notes, modes)
    return Run(path, f"train.py ({a.mode} mode)", {"step": step}, G.eval(), a.nz, problem)


# --- the comparison -------------------------------------------------------------------

def exact_solution(problem, x, y, tol, method, max_iterations):
    """Solve the problem between the points x and y (weights 1/N): plan, certificate, map, pushforwards."""
    n = len(x)
    a, b = np.full(n, 1.0 / n), np.full(len(y), 1.0 / len(y))
    M = problem.cost_matrix(x, y)
    P, v, info = solve(M, a, b, problem.phi1, problem.phi2, tol, method, max_iterations)
    Q = conditional(P, M, v)
    marginal = P.sum(0)
    return dict(P=P, info=info, map=Q @ y, push=a @ Q,
                marginal=marginal / marginal.sum() if marginal.sum() > 0 else None)


@torch.no_grad()
def learned(run, x, z, latents):
    """T(x_i, z_i), and the map x -> E_z T(x, z) with its spread (mean over x of the sd over z)."""
    xt = torch.from_numpy(x).float()
    points = run.G(xt, z).double().numpy()
    many = torch.stack([run.G(xt, zk) for zk in latents]).double().numpy()
    return points, many.mean(0), float(many.std(0).mean())


def compare(run, n=1000, seed=0, latents=32, tol=1e-7, method="newton", max_iterations=50000):
    """Everything the JSON line holds, and the arrays of the figure."""
    problem = run.problem
    g = torch.Generator().manual_seed(seed)
    xa, ya, xb, yb, yt = (f(n, g).double().numpy() for f in
                          (problem.source, problem.target, problem.source, problem.target, problem.target))
    z = torch.randn(n, run.nz, generator=g)
    zs = torch.randn(latents, n, run.nz, generator=g)
    A = exact_solution(problem, xa, ya, tol, method, max_iterations)
    B = exact_solution(problem, xb, yb, tol, method, max_iterations)
    points, t_learned, spread = learned(run, xa, z, zs)
    uniform, target_w = np.full(n, 1.0 / n), np.full(len(yt), 1.0 / len(yt))

    def share(p, w):
        return None if problem.outlier is None or w is None else round(outlier_share(p, w, *problem.outlier), 5)

    def r(value):
        return float(f"{value:.4g}")

    floor_map = map_errors(carry_map(xb, B["map"], xa), A["map"])
    floor_w1 = w1(ya, A["push"], yb, B["push"])
    learned_map = map_errors(t_learned, A["map"])
    learned_w1 = w1(points, uniform, ya, A["push"])
    record = {
        "exact": {"w1_to_target": r(w1(ya, A["push"], yt, target_w)), "outlier_share": share(ya, A["push"]),
                  "marginal_w1_to_target": None if A["marginal"] is None else r(w1(ya, A["marginal"], yt, target_w)),
                  "marginal_outlier_share": share(ya, A["marginal"]),
                  "mass": r(A["info"]["mass"]), "value": r(A["info"]["value"]),
                  "divergence": r(A["info"]["divergence"]), "bound": r(A["info"]["bound"]),
                  "gap": float(f"{A['info']['gap']:.2e}"),
                  "iterations": A["info"]["iterations"], "solver": A["info"]["solver"]},
        "learned": {"w1_to_target": r(w1(points, uniform, yt, target_w)), "outlier_share": share(points, uniform),
                    "w1_to_exact": r(learned_w1), "map_error_mean": r(learned_map[0]),
                    "map_error_max": r(learned_map[1]),
                    "map_spread": r(spread)},
        "floor": {"w1_exact_to_exact": r(floor_w1), "map_error_mean": r(floor_map[0]), "map_error_max": r(floor_map[1]),
                  "w1_to_target": r(w1(yb, B["push"], yt, target_w)), "outlier_share": share(yb, B["push"]),
                  "gap": float(f"{B['info']['gap']:.2e}")},
        "ratio": {"w1": r(learned_w1 / floor_w1), "map_error_mean": r(learned_map[0] / floor_map[0])},
        "target": {"outlier_share": share(yt, target_w), "w1_two_draws": r(w1(yb, uniform, yt, target_w))},
    }
    if problem.modes is not None:
        for part, (pts, w) in (("exact", (ya, A["push"])), ("learned", (points, uniform)), ("floor", (yb, B["push"])),
                               ("target", (yt, target_w))):
            record[part]["modes"] = modes_covered(pts, w, *problem.modes)
    arrays = dict(xa=xa, ya=ya, yt=yt, xb=xb, A=A, B=B, points=points, t_learned=t_learned)
    return record, arrays


# --- the figure -------------------------------------------------------------------------

def figure(run, arrays, path, title):
    import matplotlib.pyplot as plt

    xa, ya, yt, A, points = arrays["xa"], arrays["ya"], arrays["yt"], arrays["A"], arrays["points"]
    if run.problem.dim == 1:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        order = np.argsort(xa[:, 0])
        left.scatter(xa[:, 0], points[:, 0], s=2, alpha=0.25, c="tab:orange", label="T(x, z), one z each")
        left.plot(xa[order, 0], arrays["t_learned"][order, 0], c="tab:orange", lw=1.5,
                  label="T_learned(x) = E_z T(x, z)")
        left.plot(xa[order, 0], A["map"][order, 0], c="k", lw=1.5, label="T_exact(x) (barycentric)")
        ob = np.argsort(arrays["xb"][:, 0])
        left.plot(arrays["xb"][ob, 0], arrays["B"]["map"][ob, 0], c="grey", lw=1, ls="--",
                  label="T_exact on fresh draws (floor)")
        left.set(xlabel="source x", ylabel="T(x)", title="maps")
        left.legend(fontsize=8)
        lo, hi = min(yt.min(), ya.min(), points.min()) - 0.3, max(yt.max(), ya.max(), points.max()) + 0.3
        bins = np.linspace(lo, hi, 120)
        right.hist(yt[:, 0], bins=bins, density=True, color="tab:gray", alpha=0.4, label="target")
        right.hist(ya[:, 0], bins=bins, weights=A["push"], density=True, histtype="step", color="k", lw=1.5,
                   label="T_exact#mu")
        right.hist(points[:, 0], bins=bins, density=True, histtype="step", color="tab:orange", lw=1.5,
                   label="T_learned#mu")
        right.set(yscale="log", xlabel="y", ylabel="density (log scale)", title="pushforwards")
        right.legend(fontsize=8)
    else:
        rng = np.random.default_rng(0)   # T_exact#mu shown as N points drawn with its weights
        shown = ya[rng.choice(len(ya), len(ya), p=A["push"])]
        fig, axes = plt.subplots(1, 3, figsize=(15, 5))
        everything = np.concatenate([yt, shown, points])[:, :2]
        low, high = everything.min(0) - 0.5, everything.max(0) + 0.5
        for ax, data, label, colour in zip(axes, (yt, shown, points), ("target", "T_exact#mu", "T_learned#mu"),
                                           ("tab:blue", "k", "tab:orange")):
            ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.4, c=colour)
            ax.set(title=label, xlim=(low[0], high[0]), ylim=(low[1], high[1]), aspect="equal")
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    save_figure(fig, path)


# --- the command line ----------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a train_toy.py --savepath, or a train.py toy run's <outdir>/<dataset>/<exp>")
    parser.add_argument("--n", type=int, default=1000, help="source and target points of each exact solve")
    parser.add_argument("--seed", type=int, default=0, help="seeds every draw (sources, targets, latents)")
    parser.add_argument("--latents", type=int, default=32, help="latents z averaged into T_learned(x)")
    parser.add_argument("--tol", type=float, default=1e-7, help="the certified gap at which a solve stops")
    parser.add_argument("--solver", choices=["newton", "mm"], default="newton",
                        help="relaxed pairs: the Newton path (default), or the MM iterations (POT's mm_unbalanced; "
                             "slow: a cross-check)")
    parser.add_argument("--max_iterations", type=int, default=50000, help="--solver mm: iterations at most")
    parser.add_argument("--checkpoint", help="train.py runs: a netG_<n>.pth of the run instead of content.pth")
    parser.add_argument("--tau_factor", type=float, default=1.0,
                        help="solve with the run's cost scale times this (another problem than the run's, "
                             "for contrast)")
    parser.add_argument("--phis", nargs=2, metavar=("PHI1", "PHI2"),
                        help="solve with this Psi* pair instead of the run's (for contrast)")
    parser.add_argument("--figure", help="the figure's path (default: exact_uot.png in the run folder)")
    a = parser.parse_args(argv)
    if a.n < 2 or a.latents < 1 or not a.tol > 0 or not a.tau_factor > 0:
        raise UsageError("--n must be >= 2, --latents >= 1, --tol and --tau_factor > 0")
    return a


def main(argv=None):
    start = time.time()
    a = parse_args(argv)
    run = load_run(os.path.abspath(a.run), a.checkpoint)
    problem = run.problem
    if a.phis:
        problem.phi1, problem.phi2 = a.phis
    problem.scale *= a.tau_factor
    check_pair(problem.phi1, problem.phi2)
    record, arrays = compare(run, a.n, a.seed, a.latents, a.tol, a.solver, a.max_iterations)
    changed = a.phis is not None or a.tau_factor != 1.0
    path = a.figure or os.path.join(run.path, "exact_uot.png" if not changed else
                                    f"exact_uot_{problem.phi1}_{problem.phi2}_x{a.tau_factor:g}.png")
    figure(run, arrays, path, f"{os.path.basename(run.path)}: ({problem.phi1}, {problem.phi2}), "
                              f"c = {problem.scale:.4g} ||x - y||^2, N {a.n}, seed {a.seed}")
    line = {"run": os.path.relpath(run.path), "trainer": run.trainer, **run.where, "phi1": problem.phi1,
            "phi2": problem.phi2, "cost": problem.cost, "cost_scale": problem.scale, "tau_factor": a.tau_factor,
            "n": a.n, "seed": a.seed, **record,
            "notes": problem.notes, "figure": os.path.relpath(path), "seconds": round(time.time() - start, 1)}
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    exit_on_usage_error(main)
