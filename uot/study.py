"""The multi-seed studies' runner and rules of evidence (scripts/study_digits.py, study_mnist.py).

A study is rows of train.py flags, each trained with several seeds, one run per process, every
save measured. Its records (one dict per run, kept in a RecordLog) carry every save's measures;
this module turns them into the page's cells:

  convergence   the slope rule: is a row's curve flat over the last third of its saves?
  welch_p, holm Welch's t-test of two rows' final values; Holm's adjustment across a page
  verdict       "held" / "contradicted" / "differ" only when the adjusted p < 0.05 and both rows
                are flat; otherwise it says why not
"""
import concurrent.futures
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch

from uot.records import cpu_model, mean_sd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_run(name, seed, argv, run_dir, out):
    """train.py `argv` in its own process with one thread; the record of the run (`name`, `seed`):
    exit code (3: diverged), seconds, the machine and versions, and metrics.json's saves."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.time()
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "stdout.txt"), "w") as log:
        code = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + argv, cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT).returncode
    metrics_path = os.path.join(run_dir, "metrics.json")
    saves = json.load(open(metrics_path)) if os.path.exists(metrics_path) else []
    return dict(row=name, seed=seed, exit_code=code, diverged=code == 3, seconds=round(time.time() - start, 1),
                cpu=cpu_model(), torch=torch.__version__, python=platform.python_version(),
                flags=shlex.join(argv), run_dir=os.path.relpath(run_dir, out), saves=saves)


def run_all(todo, jobs, log, curve_key):
    """Run `todo`, a list of (name, seed, start, depends_on) where start() returns a record and
    depends_on names the (name, seed) whose run must finish first (or None), `jobs` at a time;
    append each record to `log` as it finishes and print its final `curve_key(name)`."""
    print(f"{len(log.records)} runs done, {len(todo)} to run, {jobs} at a time", flush=True)
    began, futures = time.time(), {}

    def after(start, before):
        if before is not None:
            before.result()
        return start()

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for name, seed, start, depends_on in todo:
            futures[(name, seed)] = pool.submit(after, start, futures.get(depends_on))
        for future in concurrent.futures.as_completed(futures.values()):
            record = future.result()
            log.append(record)
            key = curve_key(record["row"])
            last = final(record, key)
            print(f"[{time.time() - began:6.0f} s] {record['row']} seed {record['seed']}: exit {record['exit_code']}, "
                  f"{key} {'n/a' if last is None else f'{last:.2f}'}, {record['seconds']:.0f} s", flush=True)


def final(record, key):
    """The measure at the last save of a run that did not diverge."""
    if record["diverged"] or not record["saves"] or key not in record["saves"][-1]:
        return None
    return record["saves"][-1][key]


def finals(records, row, key):
    return [v for r in records if r["row"] == row and (v := final(r, key)) is not None]


def mean_curve(records, row, key):
    """The seed-mean of `key` per save over the runs of `row` that did not diverge."""
    curves = [[s[key] for s in r["saves"]] for r in records if r["row"] == row and not r["diverged"] and r["saves"]]
    if not curves:
        return []
    return [statistics.mean(c[i] for c in curves if len(c) > i) for i in range(max(map(len, curves)))]


def convergence(records, row, key):
    """The slope rule: each seed's least-squares slope of `key` over the last third of its saves
    (at least 4 saves), times that span, is its drift. The row is flat when its mean drift is
    within the standard error of its mean final value (too small to move a comparison), or when
    the drifts do not differ from 0 (a one-sample t-test over the seeds, p >= 0.05) and their mean
    is within one sd of the seeds' finals (with few seeds a t-test cannot see a large drift).
    Returns (mean drift relative to the mean final value, p, flat), or None without 4 saves; with
    one seed p is None and the row is not called flat (there is no noise to hold it against)."""
    from scipy.stats import ttest_1samp

    runs = [r for r in records if r["row"] == row and not r["diverged"] and len(r["saves"]) >= 4]
    if not runs:
        return None
    drifts, ends = [], []
    for r in runs:
        last = r["saves"][-max(4, -(-len(r["saves"]) // 3)):]
        x = [s.get("step", i) for i, s in enumerate(last)]
        y = [s[key] for s in last]
        drifts.append(statistics.linear_regression(x, y).slope * (x[-1] - x[0]))
        ends.append(y[-1])
    drift, end = statistics.mean(drifts), statistics.mean(ends)
    if len(drifts) < 2:   # no seed-to-seed noise to hold the drift against
        return drift / abs(end) if end else 0.0, None, False
    if statistics.stdev(drifts) == 0:
        p = 1.0 if drift == 0 else 0.0
    else:
        p = float(ttest_1samp(drifts, 0.0).pvalue)
    spread = statistics.stdev(ends) if len(ends) > 1 else 0.0
    flat = abs(drift) <= spread / len(ends) ** 0.5 or (p >= 0.05 and abs(drift) <= spread)
    return drift / abs(end) if end else 0.0, p, flat


def convergence_cell(records, row, key):
    c = convergence(records, row, key)
    if c is None:
        return "n/a"
    if c[1] is None:
        return f"{c[0]:+.1%} (one seed: no test)"
    return f"{c[0]:+.1%} (p {c[1]:.2g})" + ("" if c[2] else " not converged")


def row_cells(records, row, key, curve_fmt):
    """The cells every study table gives a row: n (runs that did not diverge), the seed-mean
    curve of `key`, the slope rule's cell, diverged/runs and seconds (mean +- sd)."""
    runs = [r for r in records if r["row"] == row]
    return dict(n=str(sum(not r["diverged"] for r in runs)),
                curve=" ".join(curve_fmt.format(v) for v in mean_curve(records, row, key)),
                drift=convergence_cell(records, row, key), diverged=f"{sum(r['diverged'] for r in runs)}/{len(runs)}",
                seconds=mean_sd([r["seconds"] for r in runs], "{:.0f}"))


def welch_p(xa, xb):
    """Welch's t-test of two rows' finals (None with fewer than 2 runs on a side)."""
    from scipy.stats import ttest_ind

    if len(xa) < 2 or len(xb) < 2:
        return None
    p = float(ttest_ind(xa, xb, equal_var=False).pvalue)
    if p != p:   # both constant: no spread to test
        p = 1.0 if statistics.mean(xa) == statistics.mean(xb) else 0.0
    return p


def holm(ps):
    """Holm's step-down adjustment of the p-values `ps` (None kept as None) for their number m:
    the i-th smallest becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    order = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    adjusted, running = list(ps), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(xa, xb, p, claim_lower, flat):
    """The verdict of a comparison at its Holm-adjusted p. `claim_lower`: True when the claim is
    that A is lower, False that A is higher, None when the comparison has no direction."""
    if p is None:
        return "too few runs"
    if p >= 0.05:
        return f"no difference detected (n = {len(xa)}, {len(xb)})"
    lower = statistics.mean(xa) < statistics.mean(xb)
    if claim_lower is None:
        found = "differ: the first lower" if lower else "differ: the second lower"
    else:
        found = "held" if lower == claim_lower else "contradicted"
    return found if flat else f"{found}, but a row is not converged: no verdict"


def slope_rule(records, curve_key):
    """A row's qualification for a verdict: (its slope-rule cell, converged) on `curve_key(row)`."""
    def qualification(row):
        c = convergence(records, row, curve_key(row))
        return convergence_cell(records, row, curve_key(row)), c is not None and c[2]
    return qualification


def compare(records, comparisons, curve_key, formats, qualification=None):
    """The page's comparison table: one line per (row A, row B, measure, claim, claim_lower) of
    `comparisons` with runs on both sides, Welch's p of the final values and Holm's adjustment
    across every line, on which the verdicts stand. Whether a row qualifies for a verdict is
    `qualification(row)` -> (cell, qualified); by default the slope rule on its measure
    `curve_key(row)`. `formats` maps a measure to its number format."""
    qualification = qualification or slope_rule(records, curve_key)
    rows = []
    for a, b, key, claim, lower in comparisons:
        xa, xb = finals(records, a, key), finals(records, b, key)
        if xa and xb:
            rows.append((a, b, key, claim, lower, xa, xb, welch_p(xa, xb)))
    adjusted = holm([row[-1] for row in rows])
    lines = [f"| claim | row A | row B | measure | A (mean +- sd, n) | B (mean +- sd, n) | drift A / B | Welch p | "
             f"Holm p (m = {sum(p is not None for p in adjusted)}) | verdict |", "|---" * 10 + "|"]
    for (a, b, key, claim, lower, xa, xb, p), p_holm in zip(rows, adjusted):
        (cell_a, flat_a), (cell_b, flat_b) = qualification(a), qualification(b)
        fmt = formats.get(key, "{:.3f}")
        lines.append(f"| {claim} | {a} | {b} | {key} | {mean_sd(xa, fmt)} ({len(xa)}) | {mean_sd(xb, fmt)} "
                     f"({len(xb)}) | {cell_a} / {cell_b} "
                     f"| {'n/a' if p is None else f'{p:.2g}'} | {'n/a' if p_holm is None else f'{p_holm:.2g}'} "
                     f"| {verdict(xa, xb, p_holm, lower, flat_a and flat_b)} |")
    return lines


def sample_figure(records, rows, path, out):
    """The last sample grid (samples_<n>.png) of the first seed of each of `rows`, (name, what),
    that has runs under `out`."""
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    from uot.plots import save_figure

    shown = [name for name, _ in rows if any(r["row"] == name for r in records)]
    cols = min(5, len(shown))
    fig, axes = plt.subplots(-(-len(shown) // cols), cols, figsize=(2.6 * cols, 2.9 * -(-len(shown) // cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, shown):
        first = min((r for r in records if r["row"] == name), key=lambda r: r["seed"])
        grids = [f for f in os.listdir(os.path.join(out, first["run_dir"])) if f.startswith("samples_")]
        if grids:
            last = max(grids, key=lambda f: int(f[len("samples_"):-len(".png")]))
            ax.imshow(mpimg.imread(os.path.join(out, first["run_dir"], last)), cmap="gray")
        ax.set_title(f"{name}\nseed {first['seed']}" + (" (diverged)" if first["diverged"] else ""), fontsize=8)
    save_figure(fig, path)


def curve_figure(records, rows, curve_key, path, xlabel, floors=None):
    """The seed-mean of each row's `curve_key(name)` per save, one panel per panel index of `rows`,
    (name, panel), that has runs; `floors`: {panel: (label, value)}, drawn as a dashed line."""
    import matplotlib.pyplot as plt

    from uot.plots import save_figure

    plotted = [(name, panel) for name, panel in rows
               if any(r["row"] == name and not r["diverged"] and r["saves"] for r in records)]
    used = sorted({panel for _, panel in plotted})   # one panel per group of rows that has runs
    fig, axes = plt.subplots(1, len(used), figsize=(5.3 * len(used), 4.5), squeeze=False)
    for name, panel in plotted:
        ok = [r for r in records if r["row"] == name and not r["diverged"] and r["saves"]]
        steps = [s["step"] for s in max(ok, key=lambda r: len(r["saves"]))["saves"]]
        axes[0, used.index(panel)].plot(steps, mean_curve(records, name, curve_key(name)), marker="o", ms=3,
                                        label=name)
    for panel, ax in zip(used, axes.flat):
        key = curve_key(next(name for name, p in plotted if p == panel))
        if floors and panel in floors:
            label, value = floors[panel]
            ax.axhline(value, color="k", ls="--", lw=1, label=label)
        ax.set(xlabel=xlabel, ylabel=f"{key} (mean over seeds)", yscale="log")
        ax.legend(fontsize=7)
    save_figure(fig, path)
