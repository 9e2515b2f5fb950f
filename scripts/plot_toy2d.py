"""One figure and one markdown table from finished 2-D train.py runs (scripts/toy2d_*.sh).

    python scripts/plot_toy2d.py --logdir train_logs --datasets 25gaussian twocircles \
        --exps uotm_kl source_fixed_kl sjko_kl --out assets/sjko_toy2d.png
    python scripts/plot_toy2d.py --translation --datasets moon2spiral spiral2moon --exps sjko_kl \
        --out assets/translation_toy2d.png

With --translation (runs of scripts/toy2d_translation.sh), each row is one run: its source
points coloured by their x, the images of the same points in the same colours over the target,
and the displacement of 300 of them; the table gives the metrics at every save.

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


def last_samples(run_dir):
    saves = glob.glob(os.path.join(run_dir, "samples_*.npz"))
    return np.load(max(saves, key=lambda path: int(re.findall(r"(\d+)\.npz$", path)[0])))


def plot_translations(a):
    runs = [(dataset, exp) for dataset in a.datasets for exp in a.exps]
    fig, axes = plt.subplots(len(runs), 3, figsize=(13, 3.6 * len(runs)), squeeze=False)
    print("| run | step | transport cost | k-NN KL | energy distance |")
    print("|---|---|---|---|---|")
    for row, (dataset, exp) in zip(axes, runs):
        run_dir = os.path.join(a.logdir, dataset, exp)
        samples = last_samples(run_dir)
        source, target, images = samples["source"], samples["target"], samples["generated"]
        records = json.load(open(os.path.join(run_dir, "metrics.json")))
        for r in records:
            print(f"| {dataset} {exp} | {r['step']} | {r['transport_cost']:.3f} | {r['knn_kl']:.3f} | "
                  f"{r['energy_distance']:.4f} |")
        colour = dict(c=source[:, 0], cmap="viridis", s=2)
        row[0].scatter(source[:, 0], source[:, 1], **colour)
        row[0].set_title(f"{dataset}: source x (test draw)")
        row[1].scatter(target[:, 0], target[:, 1], s=2, c="lightgrey", label="target")
        row[1].scatter(images[:, 0], images[:, 1], **colour)
        row[1].set_title(f"their images T(x), step {records[-1]['step']}\n"
                         f"k-NN KL {records[-1]['knn_kl']:.2f}, cost {records[-1]['transport_cost']:.2f}")
        shown = slice(0, 300)
        row[2].plot(np.stack([source[shown, 0], images[shown, 0]]), np.stack([source[shown, 1], images[shown, 1]]),
                    c="grey", lw=0.4, alpha=0.6)
        row[2].scatter(source[shown, 0], source[shown, 1], s=3, c="tab:blue", label="x")
        row[2].scatter(images[shown, 0], images[shown, 1], s=3, c="tab:orange", label="T(x)")
        row[2].legend(loc="upper right", markerscale=3)
        row[2].set_title("x -> T(x), 300 points")
        everything = np.concatenate([source, target, images])
        low, high = everything.min(0) - 1, everything.max(0) + 1
        for ax in row:   # one frame for the three panels, so that points can be compared across them
            ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), aspect="equal")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    save_figure(fig, a.out)
    print(f"wrote {a.out}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--logdir", default="train_logs")
    p.add_argument("--datasets", nargs="+", default=["25gaussian", "twocircles"])
    p.add_argument("--exps", nargs="+", default=["uotm_kl", "source_fixed_kl", "sjko_kl"])
    p.add_argument("--out", default="assets/sjko_toy2d.png")
    p.add_argument("--translation", action="store_true", help="runs of a 2-D translation (moon2spiral, ...)")
    a = p.parse_args()
    if a.translation:
        return plot_translations(a)

    rows, cols = len(a.datasets), len(a.exps)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    print("| dataset | run | iterations | mode coverage | outer modes | k-NN KL | energy distance |")
    print("|---|---|---|---|---|---|---|")
    for i, dataset in enumerate(a.datasets):
        for j, exp in enumerate(a.exps):
            run_dir = os.path.join(a.logdir, dataset, exp)
            samples = last_samples(run_dir)
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
