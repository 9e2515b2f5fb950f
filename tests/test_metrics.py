"""The toy metrics against known answers."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from datasets_prep.toy import TOY_MODES, metric_args, sample_toy
from uot.metrics import energy_distance, knn_kl, mode_coverage, outlier_fraction, toy_metrics, w1_1d


def gaussian_kl(m1, s1, m2, s2):
    """KL(N(m1, s1^2) || N(m2, s2^2))."""
    return math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


def test_outlier_fraction_counts_points_nearer_minus_one():
    # -0.1 is nearer -1 (0.9) than +1 (1.1); 0.1 is nearer +1
    samples = np.array([-1.2, -0.9, -0.1, 0.1, 1.0, 2.0])[:, None]
    assert outlier_fraction(samples) == pytest.approx(3 / 6)
    assert outlier_fraction(torch.ones(10, 1)) == 0.0
    assert outlier_fraction(samples, outlier_mode=2.0, main_mode=-1.0) == pytest.approx(2 / 6)


def test_outlier_fraction_of_the_outlier_target_is_p():
    samples = sample_toy("outlier", 4000, p=0.01, generator=torch.Generator().manual_seed(0))
    assert outlier_fraction(samples) == pytest.approx(0.01)


def test_mode_coverage_all_half_and_threshold():
    means, std = TOY_MODES["25gaussian"]
    generator = torch.Generator().manual_seed(0)
    assert mode_coverage(sample_toy("25gaussian", 2500, 2, generator=generator), means, std) == 1.0
    # points on 12 or 13 of the 25 modes: 12 covered when the 13th gets too few points
    ids = torch.cat([torch.arange(12).repeat(100), torch.full((5,), 12)])
    samples = means[ids] + std * torch.randn(len(ids), 2, generator=generator)
    assert mode_coverage(samples, means, std) == pytest.approx(12 / 25)  # 5 / 1205 < 1%
    assert mode_coverage(samples, means, std, min_fraction=0.004) == pytest.approx(13 / 25)
    # 5 std away from every mean: nothing covered
    assert mode_coverage(means[:3] + 5 * std, means, std) == 0.0
    # a fixed radius instead of 3 std: 5 std away on both axes is 7.1 std away, inside a radius of 8 std
    assert mode_coverage(means[:3] + 5 * std, means, std, radius=8 * std) == pytest.approx(3 / 25)


def test_knn_kl_zero_for_same_distribution_large_for_shifted():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 4000), rng.normal(0, 1, 4000)
    assert abs(knn_kl(a, b)) < 0.06
    assert knn_kl(a, rng.normal(3, 1, 4000)) > 3.0  # exact 4.5


@pytest.mark.parametrize("m1, s1, m2, s2", [(0, 1, 1, 2), (0.5, 0.5, 0, 1), (0, 1, 0.5, 1)])
def test_knn_kl_matches_closed_form_for_1d_gaussians(m1, s1, m2, s2):
    rng = np.random.default_rng(1)
    estimate = knn_kl(rng.normal(m1, s1, 5000), rng.normal(m2, s2, 5000))
    assert estimate == pytest.approx(gaussian_kl(m1, s1, m2, s2), abs=0.06)


def test_knn_kl_in_2d_and_with_duplicates():
    rng = np.random.default_rng(2)
    p, q = rng.normal(0, 1, (4000, 2)), rng.normal(0, 2, (4000, 2))
    exact = 2 * gaussian_kl(0, 1, 0, 2)  # independent coordinates add up
    assert knn_kl(p, q) == pytest.approx(exact, abs=0.08)
    collapsed = np.zeros((100, 1))  # every point a duplicate: finite, and large
    assert 10 < knn_kl(collapsed, rng.normal(0, 1, (100, 1))) < np.inf


def test_w1_1d_of_a_shift_is_the_shift():
    a = np.random.default_rng(3).normal(0, 1, 1000)
    assert w1_1d(a, a + 0.7) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        w1_1d(np.zeros((5, 2)), np.zeros((5, 2)))


def test_energy_distance_matches_scipy_in_1d_and_separates_distributions():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.5, 1, 3000)
    assert energy_distance(a, b) == pytest.approx(scipy.stats.energy_distance(a, b), rel=1e-9)
    assert energy_distance(a, a) == 0.0
    assert energy_distance(a, rng.normal(0, 1, 3000)) < 0.05
    assert energy_distance(a, b) > 0.2
    p2, q2 = rng.normal(0, 1, (2000, 2)), rng.normal(0, 1, (2000, 2))
    assert energy_distance(p2, q2) < 0.05 < energy_distance(p2, q2 + [1.0, 0.0])


def test_toy_metrics_reports_what_applies():
    generator = torch.Generator().manual_seed(5)
    outlier = sample_toy("outlier", 1000, generator=generator)
    m = toy_metrics(outlier, outlier, **metric_args("outlier"))
    assert set(m) == {"knn_kl", "energy_distance", "w1", "outlier_fraction"}
    assert m["w1"] == 0.0 and m["outlier_fraction"] == pytest.approx(0.01)
    grid = sample_toy("25gaussian", 1000, 2, generator=generator)
    m = toy_metrics(grid, sample_toy("25gaussian", 1000, 2, generator=generator), **metric_args("25gaussian"))
    assert set(m) == {"knn_kl", "energy_distance", "mode_coverage"} and m["mode_coverage"] == 1.0
    assert set(toy_metrics(grid, grid, **metric_args("moon"))) == {"knn_kl", "energy_distance"}
