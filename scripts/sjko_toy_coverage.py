"""Mode coverage of 2-D S-JKO runs over training: this project's runs and the public code's,
side by side, with one rule applied to both.

    python scripts/sjko_toy_coverage.py --dataset 25gaussian \
        --ours train_logs/25gaussian/sjko_kl_seed1024 ... --public PUBLIC/train_logs/25gaussian/... \
        [--json assets/sjko_25gaussian_coverage.json] [--figure assets/sjko_25gaussian_parity.png]

A run of this project holds samples_<n>.npz per save (train.py, 4000 generated points from
fixed noise); a run of the public S-JKO code (Jae-Moo/Scalable-JKO train.py) holds
iter_<n>.npz per save (4800 generated points). A mode is covered when at least 1% of the
samples lie within `--radius` of its mean; the table also gives the strict rule of
train.py's metrics.json (3 standard deviations: 0.21 on 25gaussian) and, for 25gaussian,
the 16 outer modes (the border of the grid) under the first rule. Runs may hold different
numbers of saves (one still going): each row averages the runs that reached it. The figure shows the
coverage over training (every run, and each code's mean) and the last samples of the first
run of each code.
"""
import argparse
import glob
import os
import re
import statistics

import numpy as np

from datasets_prep.toy import TOY_MODES
from uot.io import atomic_write_json
from uot.metrics import mode_coverage


def saves(run_dir):
    """{iterations: generated points (n, 2)} of one run, ours or the public code's."""
    out = {}
    for path in glob.glob(os.path.join(run_dir, "samples_*.npz")):
        out[int(re.findall(r"samples_(\d+)\.npz$", path)[0])] = np.load(path)["generated"]
    for path in glob.glob(os.path.join(run_dir, "iter_*.npz")):   # np.savez of a dict: a pickled object
        record = np.load(path, allow_pickle=True)["arr_0"].item()
        out[int(re.findall(r"iter_(\d+)\.npz$", path)[0])] = np.asarray(record["fake"])
    if not out:
        raise SystemExit(f"{run_dir}: no samples_<n>.npz or iter_<n>.npz")
    return out


def coverage(points, dataset, radius):
    means, std = TOY_MODES[dataset]
    modes = len(means)
    record = dict(modes=round(mode_coverage(points, means, std, radius=radius) * modes),
                  modes_3std=round(mode_coverage(points, means, std) * modes))
    if dataset == "25gaussian":
        outer = means[means.abs().amax(1) == 6]
        record["outer"] = round(mode_coverage(points, outer, std, radius=radius) * len(outer))
    return record


def figure(table, runs, steps, dataset, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from datasets_prep.toy import sample_toy
    from uot.plots import draw_scatter_2d, save_figure

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for code, color in (("ours", "tab:blue"), ("public", "tab:orange")):
        names = [run for run in table if run.startswith(code)]
        for run in names:
            own = sorted(table[run])
            axes[0].plot(own, [table[run][s]["modes"] for s in own], color=color, alpha=0.35, lw=1)
        if names:
            reached = [s for s in steps if any(s in table[run] for run in names)]
            mean = [statistics.mean(table[run][s]["modes"] for run in names if s in table[run]) for s in reached]
            axes[0].plot(reached, mean, color=color, lw=2.5, marker="o",
                         label=f"{code} (mean of the {len(names)} runs that reached each save)")
    axes[0].set(xlabel="iteration", ylabel=f"modes covered (of {len(TOY_MODES[dataset][0])})",
                title="mode coverage: every run, and the mean")
    axes[0].legend()
    target = sample_toy(dataset, 4000, dim=2, generator=torch.Generator().manual_seed(0)).numpy()
    for ax, code in zip(axes[1:], ("ours", "public")):
        first = next(((c, d) for c, d in runs if c == code), None)
        if first is not None:
            last = max(runs[first])
            draw_scatter_2d(ax, target, runs[first][last],
                            f"{code}: {os.path.basename(os.path.normpath(first[1]))}, {last} iterations")
    save_figure(fig, path)


def summary(values):
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="25gaussian", choices=sorted(TOY_MODES))
    p.add_argument("--ours", nargs="+", default=[], help="run directories of train.py")
    p.add_argument("--public", nargs="+", default=[], help="run directories of the public S-JKO code")
    p.add_argument("--radius", type=float, default=0.5)
    p.add_argument("--json", help="also write every number here")
    p.add_argument("--figure", help="also draw the coverage curves and the last samples here")
    a = p.parse_args(argv)
    runs = {("ours", d): saves(d) for d in a.ours}
    runs.update({("public", d): saves(d) for d in a.public})
    steps = sorted(set.union(*(set(s) for s in runs.values())))   # a run still going has fewer saves
    table = {f"{code} {os.path.basename(os.path.normpath(d))}": {step: coverage(s[step], a.dataset, a.radius)
                                                                   for step in sorted(s)}
             for (code, d), s in runs.items()}
    total = len(TOY_MODES[a.dataset][0])
    print(f"{a.dataset}: modes covered (of {total}; >= 1% of the samples within {a.radius} of the mean), per run")
    print("| iterations | " + " | ".join(table) + " | ours, mean +- sd | public, mean +- sd |")
    print("|---" * (len(table) + 3) + "|")
    for step in steps:
        cells = [f"{table[run][step]['modes']}" if step in table[run] else "" for run in table]
        means = [[table[run][step]["modes"] for run in table if run.startswith(code) and step in table[run]]
                 for code in ("ours", "public")]
        print(f"| {step} | " + " | ".join(cells) + " | " +
              " | ".join(f"{summary(m)} (n={len(m)})" if m else "" for m in means) + " |")
    print("\nat each run's last save: modes within 3 std (the metrics.json rule) and outer modes (of 16)")
    for run, by_step in table.items():
        last = max(by_step)
        print(f"  {run}, {last} iterations: {by_step[last]['modes_3std']} within 3 std" +
              (f", {by_step[last]['outer']} outer" if "outer" in by_step[last] else ""))
    if a.json:
        atomic_write_json(a.json, dict(dataset=a.dataset, radius=a.radius, runs=table))
    if a.figure:
        figure(table, runs, steps, a.dataset, a.figure)


if __name__ == "__main__":
    main()
