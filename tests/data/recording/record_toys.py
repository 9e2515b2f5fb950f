"""Record the moments of the public S-JKO 2-D toy samplers into golden/public_toys.json.

    python tests/data/recording/record_toys.py PUBLIC_SJKO_CHECKOUT [--commit SHA]

PUBLIC_SJKO_CHECKOUT is a checkout (or an extracted tree) of Jae-Moo/Scalable-JKO: its
dataset.py is imported from there and run unchanged; nothing of it is copied here. For each
toy of TOYS, the public sampler draws one seeded batch of N points; the file keeps the sample
mean of each of FEATURES and its standard error (the features' sample standard deviation over
sqrt(N)). tests/test_toy2d_public.py draws this project's samplers and compares, with
tolerances from these standard errors and its own. `features` is the one definition both use.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

N = 30000   # divisible by every mixture's component count (2, 3, 4, 8, 25), as the public samplers require
SEED = 0
TOYS = ("8gaussian", "8gaussian-half", "25gaussian", "twocircles", "threecircles", "checkerboard", "spiral", "moon")
FEATURES = ("x", "y", "x^2", "xy", "y^2", "x^3", "y^3", "r")
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "public_toys.json")


def features(points):
    """(N, len(FEATURES)) float64: the per-point values whose means are recorded."""
    p = np.asarray(points, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return np.stack([x, y, x * x, x * y, y * y, x ** 3, y ** 3, np.hypot(x, y)], 1)


def moments(points):
    """(means, standard errors) of the features of `points`, as lists."""
    f = features(points)
    return f.mean(0).tolist(), (f.std(0, ddof=1) / np.sqrt(len(f))).tolist()


def public_batch(dataset, name):
    """One batch of N points from the public sampler of `name`, and the error it raised if it
    failed. The public threecircles hands its Circles class 2 noise levels for 3 circles and
    fails its own assertion; its batch is then drawn from the same class with the noise level
    it gives (0.1) for each circle, centres and radii as the public code passes them."""
    args = argparse.Namespace(dataset=name, batch_size=N)
    try:
        return dataset.build_data_sampler(args, True).sample(), None
    except AssertionError:
        if name != "threecircles":
            raise
        circles = dataset.Circles(N, centers=[[-8, 0], [0, 0], [8, 0]], radius=[4, 4, 4], sigmas=[0.1, 0.1, 0.1])
        return circles.sample(), "AssertionError in its sampler: len(sigmas) 2 != len(radius) 3"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkout", help="folder holding the public S-JKO dataset.py")
    p.add_argument("--commit", default="a9e8c489aff8dbc11c4938b1f00c97c4d02805bc",
                   help="the public commit the checkout is at (recorded, not checked)")
    p.add_argument("--out", default=OUT)
    a = p.parse_args()
    sys.path.insert(0, os.path.abspath(a.checkout))
    import dataset   # the public dataset.py

    record = dict(public_code="Jae-Moo/Scalable-JKO dataset.py", commit=a.commit, n=N, seed=SEED,
                  features=list(FEATURES), numpy=np.__version__, torch=torch.__version__.split("+")[0], toys={})
    for i, name in enumerate(TOYS):
        np.random.seed(SEED + i)    # checkerboard, spiral and moon draw from numpy
        torch.manual_seed(SEED + i)  # the Gaussian mixtures and circles from torch
        points, error = public_batch(dataset, name)
        points = np.asarray(points)
        mean, se = moments(points)
        record["toys"][name] = dict(count=len(points), mean=mean, se=se)
        if error:
            record["toys"][name]["public_error"] = error
    with open(a.out, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
