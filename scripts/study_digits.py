"""The papers' claims on real images, at CPU scale: a multi-seed study on scikit-learn's
8x8 handwritten digits, in one command.

    python scripts/study_digits.py [--out train_logs/study_digits] [--seeds 3] [--jobs 2]
        [--rows NAME ...] [--epochs N]

Every row of ROWS is trained `--seeds` times by train.py (seeds 0, 1, ...), `--jobs` runs at
a time with one torch thread each. A run that finished is never run again: its record in
runs.jsonl is kept, so a second invocation skips it and a half-finished study continues
(a run killed midway continues from its content.pth with --resume auto). Outputs in --out:

  runs.jsonl      one record per run: the row, the seed, the flags, the exit code (3: the
                  run diverged), the wall time, and the digits measures
                  (datasets_prep.digits_eval: digits_fd, classes_covered, class_entropy,
                  outlier_fraction on digits+outliers) at every save
  results.md      per row, mean +- std over the seeds: the final measures, digits_fd over
                  training, divergences, wall time
  samples.png     the final samples of every row's first seed
  curves.png      digits_fd over training per row, the mean over seeds
  runs/           the train.py run directories

digits_fd is a Frechet distance on the features of a small digit classifier, not FID.
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from uot.io import RecordLog, atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The common settings of every run: a small NCSN++ map (16 channels) and potential (ngf 8) on
# the digits at their own 8 px, batch 32, the published optimiser and R1, and an EMA of decay
# 0.99 evaluated at every save (0.999 lags by ~700 iterations: longer than a run). EPOCHS epochs
# of 56 iterations, a save every SAVE_EVERY epochs: about 150 s per run on one core.
EPOCHS, SAVE_EVERY = 12, 2
ITERS_PER_EPOCH = 1797 // 32
# scripts/digits.flags: the digits configuration (networks, batch, EMA decay 0.99, tau 0.048),
# read by the demo and the benchmarks too
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.flags"), encoding="utf-8") as f:
    DIGITS_FLAGS = f.read().strip()
COMMON = DIGITS_FLAGS + " --ema --log_every 100"

# UOTM's tau weighs a cost summed over pixels: the published 1e-3 at CIFAR-10's d = 3072 is
# tau d = 3.07 per unit of mean squared pixel distance. The same weight at the digits' d = 64
# is tau = 0.048, the study's default (digits.flags); 1e-3 here would be a 48x weaker cost.


def uotm(flags=""):
    return (f"--num_epoch {{epochs}} --schedule {{epochs}} --save_image_every {{save_every}} "
            f"--potential_pairing all_pairs {flags}")


def sjko(flags):
    """10 JKO steps over the same number of iterations as the UOTM rows, h = 0.1 (the S-JKO-JSD
    CIFAR-10 value). The JKO cost sum (y - y_ref)^2 / (2 d h) is per pixel already: 1 / (2h) = 5
    per unit of mean squared distance, next to UOTM's tau d = 3.07."""
    return ("--num_phase 10 --init_h 0.1 --h 0.1 --init_num_iterations {phase_iters} --num_iterations {phase_iters} "
            "--lr_scheduler --save_image_every {save_iters} " + flags)


# (row name, group, what it tests, train.py flags); flags given later win over uotm()'s.
ROWS = [
    ("uotm_kl", "Psi*", "UOTM (kl, kl), tau 0.048, all-pairs potential loss (the public code's)",
     uotm("--phi1 kl --phi2 kl")),
    ("uotm_softplus", "Psi*", "UOTM (softplus, softplus)", uotm("--phi1 softplus --phi2 softplus")),
    ("uotm_chi", "Psi*", "UOTM (chi, chi)", uotm("--phi1 chi --phi2 chi")),
    ("otm", "OT vs UOT", "OTM: balanced OT (linear, linear)", uotm("--phi1 linear --phi2 linear")),
    ("source_fixed", "OT vs UOT", "source-fixed UOTM (linear, kl)", uotm("--phi1 linear --phi2 kl")),
    ("sjko", "S-JKO", "S-JKO (kl), K = 10, h = 0.1", sjko("--phi2 kl")),
    ("sjko_jsd", "S-JKO", "S-JKO-JSD, K = 10, h = 0.1", sjko("")),
    ("gan", "GAN", "non-saturating GAN, same networks and R1", uotm("--loss gan")),
    ("uotm_kl_no_ema", "EMA", "UOTM (kl, kl) without EMA", uotm("--phi1 kl --phi2 kl --no_use_ema")),
    ("gan_no_ema", "EMA", "GAN without EMA", uotm("--loss gan --no_use_ema")),
    ("uotm_kl_per_sample", "pairing", "UOTM (kl, kl), per-sample potential loss (the paper's); compare uotm_kl",
     uotm("--phi1 kl --phi2 kl --potential_pairing per_sample")),
    ("tau_0.0048", "tau", "UOTM (kl, kl), tau 0.0048 (10x below)", uotm("--phi1 kl --phi2 kl --tau 0.0048")),
    ("tau_0.024", "tau", "UOTM (kl, kl), tau 0.024 (2x below)", uotm("--phi1 kl --phi2 kl --tau 0.024")),
    ("tau_0.096", "tau", "UOTM (kl, kl), tau 0.096 (2x above)", uotm("--phi1 kl --phi2 kl --tau 0.096")),
    ("tau_0.24", "tau", "UOTM (kl, kl), tau 0.24 (5x above)", uotm("--phi1 kl --phi2 kl --tau 0.24")),
    ("outliers_uotm", "outliers", "UOTM (kl, kl) on digits + 1% inverted digits",
     uotm("--phi1 kl --phi2 kl --dataset digits+outliers")),
    ("outliers_otm", "outliers", "OTM on digits + 1% inverted digits",
     uotm("--phi1 linear --phi2 linear --dataset digits+outliers")),
    ("outliers_gan", "outliers", "GAN on digits + 1% inverted digits", uotm("--loss gan --dataset digits+outliers")),
]


def run_flags(row_flags, epochs, seed, out):
    iters = epochs * ITERS_PER_EPOCH
    flags = row_flags.format(epochs=epochs, save_every=SAVE_EVERY, phase_iters=iters // 10,
                             save_iters=SAVE_EVERY * ITERS_PER_EPOCH)
    return shlex.split(COMMON) + shlex.split(flags) + ["--seed", str(seed), "--outdir", out, "--device", "cpu",
                                                       "--save_ckpt_every", "100000", "--resume", "auto"]


def train_one(name, row_flags, seed, epochs, out):
    """One train.py run in its own process, one thread, under <out>/runs; returns its record."""
    exp = f"{name}_seed{seed}"
    argv = run_flags(row_flags, epochs, seed, os.path.join(out, "runs")) + ["--exp", exp]
    dataset = argv[max(i for i, flag in enumerate(argv) if flag == "--dataset") + 1]   # the last one wins
    run_dir = os.path.join(out, "runs", dataset, exp)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.time()
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "stdout.txt"), "w") as log:
        code = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + argv, cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT).returncode
    metrics_path = os.path.join(run_dir, "metrics.json")
    saves = json.load(open(metrics_path)) if os.path.exists(metrics_path) else []
    return dict(row=name, seed=seed, exit_code=code, diverged=code == 3, seconds=round(time.time() - start, 1),
                flags=shlex.join(argv), run_dir=os.path.relpath(run_dir, out), saves=saves)


def mean_sd(values, fmt="{:.1f}"):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} +- {fmt.format(statistics.stdev(values))}"


def final(record, key):
    """The measure at the last save of a run that did not diverge."""
    if record["diverged"] or not record["saves"] or key not in record["saves"][-1]:
        return None
    return record["saves"][-1][key]


def results_table(records, rows):
    lines = ["| row | what | digits_fd (final) | classes covered | class entropy | outliers | digits_fd over "
             "training (mean over seeds, per save) | diverged | seconds |", "|---" * 9 + "|"]
    for name, group, what, _ in rows:
        runs = [r for r in records if r["row"] == name]
        if not runs:
            continue
        ok = [r for r in runs if not r["diverged"]]
        curve = []
        for i in range(max((len(r["saves"]) for r in ok), default=0)):
            values = [r["saves"][i]["digits_fd"] for r in ok if len(r["saves"]) > i]
            curve.append(f"{statistics.mean(values):.0f}")
        outliers = mean_sd([final(r, "outlier_fraction") for r in runs], "{:.3f}") \
            if any("outlier_fraction" in (r["saves"] or [{}])[-1] for r in ok) else ""
        lines.append(f"| {name} | {what} | {mean_sd([final(r, 'digits_fd') for r in runs])} | "
                     f"{mean_sd([final(r, 'classes_covered') for r in runs])} | "
                     f"{mean_sd([final(r, 'class_entropy') for r in runs], '{:.3f}')} | {outliers} | "
                     f"{' '.join(curve)} | {sum(r['diverged'] for r in runs)}/{len(runs)} | "
                     f"{mean_sd([r['seconds'] for r in runs], '{:.0f}')} |")
    return "\n".join(lines)


def figures(records, rows, out):
    """samples.png: the last sample grid of each row's first seed; curves.png: digits_fd per save."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    from uot.plots import save_figure

    shown = [(name, what) for name, _, what, _ in rows if any(r["row"] == name for r in records)]
    cols = 5
    fig, axes = plt.subplots(-(-len(shown) // cols), cols, figsize=(2.6 * cols, 2.9 * -(-len(shown) // cols)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, what) in zip(axes.flat, shown):
        first = min((r for r in records if r["row"] == name), key=lambda r: r["seed"])
        grids = [f for f in os.listdir(os.path.join(out, first["run_dir"])) if f.startswith("samples_")]
        if grids:
            last = max(grids, key=lambda f: int(f[len("samples_"):-len(".png")]))
            ax.imshow(mpimg.imread(os.path.join(out, first["run_dir"], last)), cmap="gray")
        ax.set_title(f"{name}\nseed {first['seed']}" + (" (diverged)" if first["diverged"] else ""), fontsize=8)
    save_figure(fig, os.path.join(out, "samples.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, group, _, _ in rows:
        ok = [r for r in records if r["row"] == name and not r["diverged"] and r["saves"]]
        if not ok:
            continue
        steps = [s["step"] for s in ok[0]["saves"]]
        curve = [statistics.mean(r["saves"][i]["digits_fd"] for r in ok if len(r["saves"]) > i)
                 for i in range(len(steps))]
        ax = axes[0] if group in ("Psi*", "OT vs UOT", "S-JKO", "GAN") else axes[1]
        ax.plot(steps, curve, marker="o", ms=3, label=name)
    for ax in axes:
        ax.set(xlabel="iteration", ylabel="digits_fd (mean over seeds)", yscale="log")
        ax.legend(fontsize=7)
    save_figure(fig, os.path.join(out, "curves.png"))


# The comparisons the results page reports: (row, row, measure). Each prints n per row, the
# means, Welch's t-test p, and how far each row's mean curve still moved between its last two
# saves (a row whose curve still moves by more than 5% has not converged: no verdict).
COMPARISONS = [("uotm_kl", "otm", "digits_fd"), ("uotm_kl", "uotm_softplus", "digits_fd"),
               ("uotm_kl", "uotm_chi", "digits_fd"), ("uotm_kl", "tau_0.024", "digits_fd"),
               ("uotm_kl", "source_fixed", "digits_fd"), ("uotm_kl", "sjko", "digits_fd"),
               ("uotm_kl", "sjko_jsd", "digits_fd"), ("uotm_kl", "gan", "digits_fd"),
               ("uotm_kl", "uotm_kl_no_ema", "digits_fd"), ("uotm_kl", "uotm_kl_per_sample", "digits_fd"),
               ("outliers_uotm", "outliers_otm", "outlier_fraction")]


def compare(records):
    """The lines of COMPARISONS for `records` (the study's runs.jsonl)."""
    from scipy.stats import ttest_ind

    def finals(row, key):
        return [v for r in records if r["row"] == row and (v := final(r, key)) is not None]

    def last_change(row, key):   # relative change of the seed-mean curve over its last two saves
        curves = [[s[key] for s in r["saves"]] for r in records if r["row"] == row and not r["diverged"]]
        a, b = (statistics.mean(c[i] for c in curves) for i in (-2, -1))
        return abs(b - a) / abs(a)

    lines = []
    for a, b, key in COMPARISONS:
        xa, xb = finals(a, key), finals(b, key)
        p = ttest_ind(xa, xb, equal_var=False).pvalue
        lines.append(f"{key}: {a} {statistics.mean(xa):.3f} (n={len(xa)}, last-save change "
                     f"{last_change(a, key):.0%}) vs {b} {statistics.mean(xb):.3f} (n={len(xb)}, "
                     f"{last_change(b, key):.0%}): Welch p = {p:.3g}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join("train_logs", "study_digits"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    p.add_argument("--rows", nargs="+", default=None, help="only these rows (default: all)")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--compare", metavar="RUNS.jsonl", help="print the comparisons of a finished study and exit")
    a = p.parse_args(argv)
    if a.compare:
        with open(a.compare, encoding="utf-8") as f:
            print("\n".join(compare([json.loads(line) for line in f if line.strip()])))
        return
    rows = [row for row in ROWS if a.rows is None or row[0] in a.rows]
    unknown = set(a.rows or []) - {row[0] for row in ROWS}
    if unknown:
        p.error(f"--rows: unknown {', '.join(sorted(unknown))}; choose from {', '.join(r[0] for r in ROWS)}")
    os.makedirs(a.out, exist_ok=True)
    log = RecordLog(os.path.join(a.out, "runs.jsonl"))   # rewritten atomically at every append
    records = log.records
    done = {(r["row"], r["seed"]) for r in records}
    todo = [(name, flags, seed) for seed in range(a.seeds) for name, _, _, flags in rows if (name, seed) not in done]
    print(f"{len(done)} runs done, {len(todo)} to run, {a.jobs} at a time", flush=True)
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(train_one, name, flags, seed, a.epochs, a.out) for name, flags, seed in todo]
        for future in concurrent.futures.as_completed(futures):
            record = future.result()
            log.append(record)
            last = final(record, "digits_fd")
            print(f"[{time.time() - start:6.0f} s] {record['row']} seed {record['seed']}: exit {record['exit_code']}, "
                  f"digits_fd {'n/a' if last is None else f'{last:.1f}'}, {record['seconds']:.0f} s", flush=True)
    table = results_table(records, rows)
    atomic_write_text(os.path.join(a.out, "results.md"), table + "\n")
    print(table)
    figures(records, rows, a.out)
    print(f"wrote {os.path.join(a.out, 'results.md')}, samples.png, curves.png")


if __name__ == "__main__":
    main()
