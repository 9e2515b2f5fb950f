"""One figure and one markdown table from finished 2-D train.py runs (scripts/toy2d_*.sh).

    python scripts/plot_toy2d.py --logdir train_logs --datasets 25gaussian twocircles \
        --exps uotm_kl source_fixed_kl sjko_kl --out assets/sjko_toy2d.png

Rows are datasets, columns runs: each panel is the run's last samples_<n>.npz (the 4000
evaluation points train.py saved at its last save). The table prints the metrics of the
last metrics.json record of each run, as train.py computed them, and for 25gaussian how
many of its 16 outer modes (the border of the 5 x 5 grid) the same samples cover.
"""
import argparse
import glob
import json
import os
import re

import numpy as np

import matplotlib.pyplot as plt

from datasets_prep.toy import TOY_MODES
from uot.metrics import mode_coverage
from uot.plots import draw_scatter_2d, save_figure


def outer_modes_covered(generated):
    """Covered modes (uot.metrics.mode_coverage's rule) among the 16 on the border of 25gaussian."""
    means, std = TOY_MODES["25gaussian"]
    outer = means[means.abs().amax(1) == 6]
    return round(mode_coverage(generated, outer, std) * len(outer))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logdir", default="train_logs")
    p.add_argument("--datasets", nargs="+", default=["25gaussian", "twocircles"])
    p.add_argument("--exps", nargs="+", default=["uotm_kl", "source_fixed_kl", "sjko_kl"])
    p.add_argument("--out", default="assets/sjko_toy2d.png")
    a = p.parse_args()

    rows, cols = len(a.datasets), len(a.exps)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    print("| dataset | run | iterations | mode coverage | outer modes | k-NN KL | energy distance |")
    print("|---|---|---|---|---|---|---|")
    for i, dataset in enumerate(a.datasets):
        for j, exp in enumerate(a.exps):
            run_dir = os.path.join(a.logdir, dataset, exp)
            saves = glob.glob(os.path.join(run_dir, "samples_*.npz"))
            samples = np.load(max(saves, key=lambda path: int(re.findall(r"(\d+)\.npz$", path)[0])))
            last = json.load(open(os.path.join(run_dir, "metrics.json")))[-1]
            coverage = f"{last['mode_coverage']:.2f}" if "mode_coverage" in last else "n/a"
            outer = f"{outer_modes_covered(samples['generated'])}/16" if dataset == "25gaussian" else "n/a"
            print(f"| {dataset} | {exp} | {last['step']} | {coverage} | {outer} | {last['knn_kl']:.3f} | "
                  f"{last['energy_distance']:.3f} |")
            title = f"{dataset}, {exp}, step {last['step']}"
            if "mode_coverage" in last:
                title += f"\ncoverage {last['mode_coverage']:.2f}, KL {last['knn_kl']:.2f}"
            else:
                title += f"\nKL {last['knn_kl']:.2f}, energy {last['energy_distance']:.2f}"
            draw_scatter_2d(axes[i, j], samples["target"], samples["generated"], title)
    fig.tight_layout()   # two-line titles: keep them clear of the row above
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    save_figure(fig, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
