"""The 2-D toys that share a name with the public S-JKO dataset.py sample its distributions.

golden/public_toys.json holds the means of a few moments (tests/data/recording/record_toys.py:
FEATURES) over 30,000 points the public samplers drew, with their standard errors. Each toy
here draws as many points; a moment agrees when the two means differ by at most Z_MAX standard
errors of their difference (sqrt(se_public^2 + se_here^2)): at the recorded sample size that
is sampling error only, while a shape that is off (a wrong scale, placement or arm) is many
errors away. (A noise level small against the shape's spread, as the spiral's 0.25, is
beyond these moments; toy.py states those levels.)
"""
import importlib.util
import json
import math
import os

import pytest
import torch

from datasets_prep.toy import TOYS_2D, sample_toy
from tiny import DATA

Z_MAX = 4.0   # 8 toys x 8 moments at one seed: all within 4 errors unless a shape is wrong


def _recorder():
    path = os.path.join(DATA, "recording", "record_toys.py")
    spec = importlib.util.spec_from_file_location("record_toys", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORDER = _recorder()
with open(os.path.join(DATA, "golden", "public_toys.json")) as f:
    PUBLIC = json.load(f)


def z_scores(name, points):
    """|mean here - mean public| / its standard error, per recorded moment."""
    mean, se = RECORDER.moments(points.numpy())
    public = PUBLIC["toys"][name]
    return [abs(m - pm) / math.hypot(s, ps) for m, s, pm, ps in zip(mean, se, public["mean"], public["se"])]


def ours(name, n=PUBLIC["n"], seed=1):
    return sample_toy(name, n, 2, generator=torch.Generator().manual_seed(seed))


def test_every_shared_name_was_recorded():
    assert PUBLIC["features"] == list(RECORDER.FEATURES) and PUBLIC["n"] == RECORDER.N
    # every public 2-D toy is here, and every 2-D toy here that the public code names was recorded
    assert set(PUBLIC["toys"]) == set(RECORDER.TOYS) <= set(TOYS_2D)


@pytest.mark.parametrize("name", sorted(PUBLIC["toys"]))
def test_toy_moments_match_the_public_sampler(name):
    scores = z_scores(name, ours(name))
    assert max(scores) < Z_MAX, dict(zip(PUBLIC["features"], [round(z, 1) for z in scores]))


def test_wrong_shapes_fail():
    # this project's checkerboard before it took the public one: a board on [-8, 8]^2, and
    # the public board's other colour (the cells it drops), which the first version here took
    board = ours("checkerboard")
    assert max(z_scores("checkerboard", board * (12 / math.pi))) > 100
    assert max(z_scores("checkerboard", board.flip(1) * torch.tensor([-1.0, 1.0]))) > 20
    # the spiral turned by half a turn (the other arm of a two-armed spiral); a moon 5% too large
    assert max(z_scores("spiral", -ours("spiral"))) > 20
    assert max(z_scores("moon", ours("moon") * 1.05)) > Z_MAX
