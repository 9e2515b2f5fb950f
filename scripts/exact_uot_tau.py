"""The relaxation's error against the cost scale: exact UOT (scripts/exact_uot.py) over a range
of tau, with learned runs trained at some of them, in one figure and one JSONL.

    python scripts/exact_uot_tau.py RUN [RUN ...] --factors 0.01 0.1 1 10 100 \
        --jsonl assets/exact_uot_tau_q.jsonl --figure assets/exact_uot_tau_q.png
    python scripts/exact_uot_tau.py --table --jsonl assets/exact_uot_tau_q.jsonl     # the table again

The first RUN names the problem (source, target, Psi* pair, trainer's cost); the exact problem is
solved at its cost scale times each --factor. For every exact solve: the divergence D_Psi1(P 1 |
a) + D_Psi2(P^T 1 | b) of the exact plan and the paper's bound on it (the balanced OT cost,
s W2^2 for c = s ||x - y||^2; a solve not certified within --tol is kept, marked, and drawn as a
cross), and W1 between the target and T_exact#mu, and between the target and
the plan's second marginal P^T 1, with the sampling floor (two draws of N target points); on a
2-D mixture target, the modes T_exact#mu keeps (exact_uot.py's `modes`). For every RUN, trained at its own cost scale (they may differ
in that only): W1 between the target and T_learned#mu at that scale. Densities of the learned
pushforward are not estimated, so the learned error is read in W1 beside the exact one.
"""
import argparse
import json
import os
import time

import exact_uot   # scripts/exact_uot.py: this file's folder is on sys.path when it runs
from uot.errors import UsageError, exit_on_usage_error
from uot.io import atomic_write_text
from uot.plots import save_figure


def same_problem(a, b):
    """The runs may differ in their cost scale only."""
    keys = ("phi1", "phi2", "dim", "outlier")
    return all(getattr(a, k) == getattr(b, k) for k in keys) and a.cost.split(",")[0] == b.cost.split(",")[0]


def last_third(path, key):
    """[min, max] of `key` over the last third (at least 4) of a run's saves in its metrics.json
    (train_toy.py's W1 of its own samples to the target at every save: how much the run still
    wanders), or None."""
    try:
        with open(os.path.join(path, "metrics.json"), encoding="utf-8") as f:
            values = [save[key] for save in json.load(f) if key in save]
    except (OSError, ValueError, TypeError):
        return None
    values = values[-max(4, -(-len(values) // 3)):]
    return [min(values), max(values)] if len(values) >= 4 else None


def sweep(runs, factors, n, seed, exact_uot, learned=True, tol=1e-7):
    base = runs[0].problem.scale
    lines = []
    for factor in factors:
        runs[0].problem.scale = base * factor
        record, _ = exact_uot.compare(runs[0], n, seed, tol=tol)
        certified = max(record["exact"]["gap"], record["floor"]["gap"]) < tol
        if not certified:
            print(f"factor {factor:g}: the exact solve is not certified (gap {record['exact']['gap']:.2g}, floor's "
                  f"{record['floor']['gap']:.2g}, tol {tol:g}); its points are drawn as crosses", flush=True)
        lines.append({"kind": "exact", "cost_scale": base * factor, "factor": factor, "certified": certified,
                      "exact": record["exact"], "floor": record["floor"], "target": record["target"]})
    runs[0].problem.scale = base
    for run in runs if learned else []:
        record, _ = exact_uot.compare(run, n, seed, tol=tol)
        lines.append({"kind": "learned", "run": os.path.relpath(run.path), "cost_scale": run.problem.scale, **run.where,
                      "learned": record["learned"], "exact": record["exact"], "floor": record["floor"],
                      "w1_last_third": last_third(run.path, "w1")})
    return lines


def table(lines):
    """The markdown table of docs/results.md: the exact solves, then the learned runs."""
    def g(value):
        return "n/a" if value is None else f"{value:.4g}"

    exact = [line for line in lines if line["kind"] == "exact"]
    modes = "modes" in exact[0]["exact"]
    outliers = not modes and exact[0]["exact"]["outlier_share"] is not None
    out = ["| cost scale s | divergence | bound s W2^2 | W1 to target: T_exact#mu | P^T 1 | two target draws | "
           "mass kept |" + (" modes kept (outer) |" if modes else " outlier share of T_exact#mu |" if outliers else ""),
           "|---" * (8 if modes or outliers else 7) + "|"]
    for line in exact:
        e = line["exact"]
        last = (f" {e['modes'][0]}" + (f" ({e['modes'][1]})" if len(e["modes"]) > 1 else "") + " |" if modes
                else f" {g(e['outlier_share'])} |" if outliers else "")
        out.append(f"| {g(line['cost_scale'])}{'' if line['certified'] else ' (not certified)'} | "
                   f"{g(e['divergence'])} | {g(e['bound'])} | {g(e['w1_to_target'])} | "
                   f"{g(e['marginal_w1_to_target'])} | {g(line['target']['w1_two_draws'])} | {g(e['mass'])} |{last}")
    learned = [line for line in lines if line["kind"] == "learned"]
    if learned:
        out += ["", "| learned run | cost scale s | W1 to target: T_learned#mu | T_exact#mu | learned to exact, "
                    "in floors | the run's own W1 over its last third of saves |", "|---|---|---|---|---|---|"]
        for line in learned:
            wander = line.get("w1_last_third")
            out.append(f"| {os.path.basename(line['run'])} | {g(line['cost_scale'])} | "
                       f"{g(line['learned']['w1_to_target'])} | {g(line['exact']['w1_to_target'])} | "
                       f"{line['learned']['w1_to_exact'] / line['floor']['w1_exact_to_exact']:.2f} | "
                       f"{'n/a' if wander is None else f'{g(wander[0])}-{g(wander[1])}'} |")
    return "\n".join(out)


def figure(lines, title, path):
    import matplotlib.pyplot as plt

    exact = [line for line in lines if line["kind"] == "exact"]
    learned = [line for line in lines if line["kind"] == "learned"]
    s = [line["cost_scale"] for line in exact]
    with_modes = "modes" in exact[0]["exact"]
    fig, axes = plt.subplots(1, 3 if with_modes else 2, figsize=(18 if with_modes else 12, 4.5))
    left, right = axes[:2]
    left.plot(s, [line["exact"]["bound"] for line in exact], "k--", label="bound: s W2^2 (balanced OT cost)")
    left.plot(s, [line["exact"]["divergence"] for line in exact], "k-", lw=1)
    for ok, marker, what in ((True, "o", ""), (False, "x", ", not certified (gap >= tol)")):
        shown = [line for line in exact if line["certified"] == ok]
        if shown:
            left.scatter([line["cost_scale"] for line in shown], [line["exact"]["divergence"] for line in shown],
                         c="k", marker=marker, s=18, label="exact: D_Psi1(P 1 | mu) + D_Psi2(P^T 1 | nu)" + what)
    left.set(xscale="log", yscale="log", xlabel="cost scale s (c = s ||x - y||^2)", ylabel="divergence",
             title="the relaxation's error and the UOTM bound")
    left.legend(fontsize=8)
    right.plot(s, [line["exact"]["w1_to_target"] for line in exact], "ko-", ms=4, label="T_exact#mu")
    right.plot(s, [line["exact"]["marginal_w1_to_target"] for line in exact], "o:", c="grey", ms=3,
               label="P^T 1 (the plan's target marginal)")
    right.plot(s, [line["target"]["w1_two_draws"] for line in exact], c="tab:blue", lw=1, alpha=0.6,
               label="floor: two draws of the target")
    if learned:
        right.scatter([line["cost_scale"] for line in learned], [line["learned"]["w1_to_target"] for line in learned],
                      c="tab:orange", zorder=3, label="T_learned#mu (a trained run)")
    right.set(xscale="log", yscale="log", xlabel="cost scale s", ylabel="W1 to the target",
              title="the pushforward's distance to the target")
    right.legend(fontsize=8)
    if with_modes:   # a mixture target: the modes T_exact#mu keeps (and the outer ones, on 25gaussian)
        ax = axes[2]
        ax.plot(s, [line["exact"]["modes"][0] for line in exact], "ko-", ms=4, label="T_exact#mu: modes")
        if len(exact[0]["exact"]["modes"]) > 1:
            ax.plot(s, [line["exact"]["modes"][1] for line in exact], "o--", c="grey", ms=4,
                    label="T_exact#mu: outer modes")
        if learned:
            ax.scatter([line["cost_scale"] for line in learned], [line["learned"]["modes"][0] for line in learned],
                       c="tab:orange", zorder=3, label="T_learned#mu: modes")
        ax.axhline(exact[0]["target"]["modes"][0], c="tab:blue", lw=1, alpha=0.6, label="the target's modes")
        ax.set(xscale="log", xlabel="cost scale s", ylabel="modes holding >= 1% within 0.5",
               title="modes kept")
        ax.legend(fontsize=8)
    for ax in axes:   # the first run's own cost scale (factor 1)
        for line in exact:
            if line["factor"] == 1:
                ax.axvline(line["cost_scale"], c="tab:red", lw=0.8, ls=":")
    axes[0].plot([], [], c="tab:red", lw=0.8, ls=":", label="the run's own scale")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="toy runs of one problem, trained at one or more cost scales")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100],
                        help="the exact problem at the first run's cost scale times each")
    parser.add_argument("--n", type=int, default=1000, help="points of each exact solve")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-7, help="the certified gap of every exact solve")
    parser.add_argument("--problem_only", action="store_true",
                        help="take the problem from the first run and solve it exactly, without learned points "
                             "(for a run not trained to the end)")
    parser.add_argument("--jsonl", required=True, help="the records, one line per solve")
    parser.add_argument("--figure", help="the figure (required unless --table)")
    parser.add_argument("--table", action="store_true", help="print the table of the records in --jsonl and exit")
    a = parser.parse_args(argv)
    if a.table:
        with open(a.jsonl, encoding="utf-8") as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return None
    if not a.runs or not a.figure:
        raise UsageError("give one or more RUN folders and --figure (or --table to print the records of --jsonl)")
    if any(not f > 0 for f in a.factors) or a.n < 2:
        raise UsageError("--factors must be > 0 and --n >= 2")
    start = time.time()
    runs = [exact_uot.load_run(os.path.abspath(path)) for path in a.runs]
    for run in runs[1:]:
        if not same_problem(runs[0].problem, run.problem):
            raise UsageError(f"{run.path} solves another problem than {runs[0].path}: the runs may differ in tau only")
    exact_uot.check_pair(runs[0].problem.phi1, runs[0].problem.phi2)
    lines = sweep(runs, sorted(a.factors), a.n, a.seed, exact_uot, not a.problem_only, a.tol)
    atomic_write_text(a.jsonl, "".join(json.dumps(line) + "\n" for line in lines))
    p = runs[0].problem
    figure(lines, f"({p.phi1}, {p.phi2}), {p.cost.split(',')[0]}, N {a.n}, seed {a.seed}", a.figure)
    print(table(lines))
    print(f"{len(lines)} solves in {time.time() - start:.0f} s: {a.jsonl}, {a.figure}")
    return lines


if __name__ == "__main__":
    exit_on_usage_error(main)
