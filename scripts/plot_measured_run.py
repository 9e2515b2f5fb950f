"""The curve of a measured train.py run against its floor, and its table (docs/results.md).

    python scripts/plot_measured_run.py train_logs/mnist/uotm --out assets/mnist_uotm_curve.png

A run on a dataset with a measure (datasets_prep.measures: digits, mnist, fashion_mnist and
their outlier sets) writes the measures of its samples to metrics.json at every save and, in
floor.json, the same measures of held-out real images at the same n (mean and sd over their
draws). This draws the Frechet distance (log scale) and precision per save with the floor's
mean +- sd as a band, and prints a markdown table of every save with the floor as its last row.
"""
import argparse
import json
import os

import matplotlib.pyplot as plt

from uot.plots import save_figure

COLUMNS = ("precision", "recall", "accepted_share", "train_distance_ratio", "classes_covered", "outlier_fraction")


def read_run(run_dir):
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
        saves = json.load(f)
    with open(os.path.join(run_dir, "floor.json"), encoding="utf-8") as f:
        floor = json.load(f)
    return saves, floor


def table(saves, floor):
    """Markdown: one row per save, then the floor (mean +- sd) at the same n."""
    fd_key = f"{floor['measure']}_fd"
    columns = [c for c in COLUMNS if c in saves[-1]]
    lines = [f"| step | {fd_key} | " + " | ".join(columns) + " |", "|---:|---:|" + "---:|" * len(columns)]
    for save in saves:
        lines.append(f"| {save['step']} | {save[fd_key]:.2f} | " + " | ".join(
            f"{save[c]}" if isinstance(save[c], int) else f"{save[c]:.3f}" for c in columns) + " |")
    lines.append(f"| floor: {floor['sets']}, n = {floor['n']}, {floor['draws']} draws | "
                 f"{floor[fd_key][0]:.2f} +- {floor[fd_key][1]:.2f} | " +
                 " | ".join(f"{floor[c][0]:.3f} +- {floor[c][1]:.3f}" if c in floor else "" for c in columns) + " |")
    return "\n".join(lines)


def plot(saves, floor, title, path):
    fd_key = f"{floor['measure']}_fd"
    steps = [s["step"] for s in saves]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, log in ((axes[0], fd_key, True), (axes[1], "precision", False)):
        mean, sd = floor[key]
        ax.plot(steps, [s[key] for s in saves], marker="o", ms=3, label="generated samples")
        ax.axhspan(mean - sd, mean + sd, color="tab:green", alpha=0.25,
                   label=f"floor: held-out real, n = {floor['n']} (mean +- sd)")
        ax.axhline(mean, color="tab:green", lw=1)
        ax.set_xlabel("iteration")
        ax.set_ylabel(key)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True, help="the figure (.png)")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    saves, floor = read_run(args.run_dir)
    plot(saves, floor, args.title or args.run_dir, args.out)
    print(table(saves, floor))


if __name__ == "__main__":
    main()
