"""Sample-based metrics for the toy experiments (train_toy.py, train.py's 2-D S-JKO runs).

Every function takes sample sets as (n, d) arrays or tensors (1-D arrays are read as n
points in one dimension) and returns a Python float. What a target's modes are is the
caller's to say (datasets_prep.toy knows them): the functions take them as arguments.
"""
import math

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.stats import wasserstein_distance


def _points(samples):
    """float64 numpy array of shape (n, d)."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples, dtype=np.float64)
    return samples.reshape(len(samples), -1)


def knn_kl(p_samples, q_samples, k=5, min_distance=1e-12):
    """k-NN estimate of KL(P || Q) from x_i ~ P (n of them) and y_j ~ Q (m of them).

    Wang, Kulkarni & Verdu (2009):  KL ~ d/n sum_i log(nu_k(i) / rho_k(i)) + log(m / (n - 1)),
    rho_k(i) the distance from x_i to its k-th nearest neighbour among the other x's,
    nu_k(i) that to its k-th nearest y. Duplicate points would make a distance 0 and
    the log infinite: distances are floored at `min_distance`, so a collapsed sample
    (many identical points) gets a large but finite value.
    """
    x, y = _points(p_samples), _points(q_samples)
    n, d = x.shape
    if n <= k or len(y) < k:
        raise ValueError(f"knn_kl needs more than k={k} samples on each side, got {n} and {len(y)}")
    # k + 1 neighbours among the x's: the nearest one is x_i itself
    rho = cKDTree(x).query(x, k=k + 1)[0][:, k]
    nu = cKDTree(y).query(x, k=k)[0][:, k - 1]
    rho, nu = np.maximum(rho, min_distance), np.maximum(nu, min_distance)
    return float(d * np.mean(np.log(nu / rho)) + math.log(len(y) / (n - 1)))


def w1_1d(a, b):
    """Wasserstein-1 distance between two 1-D samples."""
    a, b = _points(a), _points(b)
    if a.shape[1] != 1 or b.shape[1] != 1:
        raise ValueError("w1_1d takes 1-D samples")
    return float(wasserstein_distance(a[:, 0], b[:, 0]))


def outlier_fraction(samples, outlier_mode=-1.0, main_mode=1.0):
    """Fraction of the samples closer to `outlier_mode` than to `main_mode` (points or scalars)."""
    x = _points(samples)
    to_outlier = np.linalg.norm(x - np.asarray(outlier_mode, dtype=np.float64), axis=1)
    to_main = np.linalg.norm(x - np.asarray(main_mode, dtype=np.float64), axis=1)
    return float(np.mean(to_outlier < to_main))


def mode_coverage(samples, means, std, min_fraction=0.01, radius_std=3.0, radius=None):
    """Fraction of the modes that hold at least `min_fraction` of the samples within
    `radius_std` standard deviations (or within `radius`, when given) of their mean."""
    x, means = _points(samples), _points(means)
    distances = np.linalg.norm(x[:, None, :] - means[None, :, :], axis=2)  # (n, K)
    share = np.mean(distances <= (radius if radius is not None else radius_std * std), axis=0)
    return float(np.mean(share >= min_fraction))


def energy_distance(a, b, max_points=5000, seed=0):
    """Energy distance sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) with Euclidean norms (V-statistics).

    In 1-D it equals scipy.stats.energy_distance. It is 0 only for equal distributions.
    Sets larger than `max_points` are subsampled (fixed `seed`): the cost is quadratic.
    """
    generator = np.random.default_rng(seed)

    def subsample(x):
        x = _points(x)
        return x[generator.choice(len(x), max_points, replace=False)] if len(x) > max_points else x

    a, b = torch.from_numpy(subsample(a)), torch.from_numpy(subsample(b))

    def mean_distance(u, v):
        return torch.cdist(u, v).mean().item()

    squared = 2 * mean_distance(a, b) - mean_distance(a, a) - mean_distance(b, b)
    return math.sqrt(max(squared, 0.0))


def toy_metrics(generated, target, modes=None, outlier=None, k=5):
    """The metrics that apply: a dict of floats.

    knn_kl (KL(generated || target)) and energy_distance always; w1 in 1-D;
    mode_coverage when `modes` = (means (K, d), std) is given; outlier_fraction (generated
    points nearer the outlier mode than the main one) when `outlier` = (outlier_mode,
    main_mode) is given.
    """
    generated, target = _points(generated), _points(target)
    metrics = {"knn_kl": knn_kl(generated, target, k=k), "energy_distance": energy_distance(generated, target)}
    if generated.shape[1] == 1:
        metrics["w1"] = w1_1d(generated, target)
    if outlier is not None:
        metrics["outlier_fraction"] = outlier_fraction(generated, *outlier)
    if modes is not None:
        metrics["mode_coverage"] = mode_coverage(generated, *modes)
    return metrics
