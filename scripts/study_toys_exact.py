"""The papers' toy commands, as written, several seeds each, against the exact solution of the
problem each one trains on (scripts/exact_uot.py), in one resumable command.

    python scripts/study_toys_exact.py [--out train_logs/study_toys] [--jobs 2] [--rows NAME ...]
    python scripts/study_toys_exact.py --table assets/study_toys_exact.jsonl

Every run is the command of scripts/<command>.sh (the UOTM and S-JKO READMEs' toy commands) with
`--seed S` and its output folder added, then `exact_uot.py RUN --n 1000 --seed 0` (--n) on its final
generator. A finished run is never run again (its record in runs.jsonl is kept); a run killed
midway continues from its checkpoint (--resume auto). Outputs:

  runs.jsonl   one record per run: row, seed, the command, exit code, training and solve seconds,
               the CPU model, torch, Python and POT versions, and exact_uot.py's JSON line
  table.md     per row, mean +- sd over the seeds of learned against exact, with the sampling
               floor, and how many seeds lie within K = 2 floors (the tolerance of
               tests/test_exact_uot.py: the spread of exact-against-exact ratios)
"""
import concurrent.futures
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import exact_uot   # scripts/exact_uot.py: this file's folder is on sys.path when it runs
import ot
import torch

from uot.io import RecordLog, atomic_write_text
from uot.records import chosen_rows, cpu_model, mean_sd, study_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 2.0   # learned within K sampling floors of exact: tests/test_exact_uot.py's tolerance

# (row, what, script, environment, trainer): train_toy.py scripts take --savepath, train.py
# scripts --outdir and --exp (the run folder is <outdir>/<dataset>/<exp>)
ROWS = [
    ("outlier", "UOTM README: 1-D outlier, (kl, kl), tau 0.1, 400 epochs", "toy_outlier.sh", {}, "toy"),
    ("gaussian_mixture", "UOTM README: 1-D Gaussian mixture, (kl, kl), tau 0.02, 2,000 epochs",
     "toy_gaussian_mixture.sh", {}, "toy"),
    ("uotm_8gaussian", "S-JKO README: UOTM (kl, kl) on 8gaussian, 50,000 iterations", "toy2d_uotm.sh",
     {"DATASET": "8gaussian", "PHI": "kl"}, "train"),
    ("otm_8gaussian", "OTM (linear, linear) on 8gaussian, the UOTM command otherwise", "toy2d_uotm.sh",
     {"DATASET": "8gaussian", "PHI": "linear"}, "train"),
    ("uotm_25gaussian", "S-JKO README: UOTM (kl, kl) on 25gaussian, 50,000 iterations", "toy2d_uotm.sh",
     {"DATASET": "25gaussian", "PHI": "kl"}, "train"),
    ("otm_25gaussian", "OTM (linear, linear) on 25gaussian, the UOTM command otherwise", "toy2d_uotm.sh",
     {"DATASET": "25gaussian", "PHI": "linear"}, "train"),
    ("source_fixed_25gaussian", "S-JKO README: source-fixed UOTM (linear, kl) on 25gaussian", "toy2d_source_fixed.sh",
     {"DATASET": "25gaussian", "PHI": "kl"}, "train"),
]
SEEDS = 5


def command(row, seed, out, extra=()):
    """The shell command of one run (`extra` flags appended: a smoke run's), its environment and its run folder."""
    name, _, script, env, trainer = row
    argv = ["bash", os.path.join("scripts", script), *extra, "--seed", str(seed), "--device", "cpu"]
    if trainer == "toy":
        run = os.path.join(out, "runs", f"{name}_seed{seed}")
        argv += ["--savepath", run, "--resume", "auto"]
    else:
        argv += ["--outdir", os.path.join(out, "runs"), "--exp", f"{name}_seed{seed}", "--resume", "auto"]
        run = os.path.join(out, "runs", env["DATASET"], f"{name}_seed{seed}")
    return argv, dict(os.environ, **env, PYTHON=sys.executable, OMP_NUM_THREADS="1"), run


def run_one(row, seed, out, extra=(), n=1000):
    """Train one seed of `row` in its own process (one thread), then solve its problem exactly."""
    argv, env, run = command(row, seed, out, extra)
    os.makedirs(os.path.dirname(run), exist_ok=True)
    start = time.time()
    with open(run + ".log", "w") as log:
        code = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    trained = time.time() - start
    record = dict(row=row[0], seed=seed, command=shlex.join(argv), env={k: env[k] for k in row[3]}, exit_code=code,
                  train_seconds=round(trained, 1), cpu=cpu_model(), torch=torch.__version__, pot=ot.__version__,
                  python=platform.python_version(), run=os.path.relpath(run, out))
    if code == 0:
        torch.set_num_threads(1)
        record["exact"] = exact_uot.main([run, "--n", str(n), "--seed", "0"])
    return record


def table(records):
    """Per row: mean +- sd over its seeds of exact_uot.py's figures."""
    header = ["row", "what", "seeds", "learned: W1 to exact", "floor: W1 exact to exact", "ratio (W1)",
              f"seeds within {K:g} floors", "map error / floor", "W1 to target: learned", "exact", "two target draws",
              "outlier share: learned", "exact", "target", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, what, *_ in ROWS:
        done = [r for r in records if r["row"] == name and "exact" in r]
        if not done:
            continue
        e = [r["exact"] for r in done]

        def col(part, key, fmt="{:.3g}"):
            return mean_sd([x[part].get(key) for x in e], fmt)

        within = sum(x["learned"]["w1_to_exact"] <= K * x["floor"]["w1_exact_to_exact"] for x in e)
        failed = sum(r["exit_code"] != 0 for r in records if r["row"] == name)
        lines.append(" | ".join([
            f"| {name}", what, f"{len(done)}" + (f" ({failed} failed)" if failed else ""),
            col("learned", "w1_to_exact"), col("floor", "w1_exact_to_exact"), col("ratio", "w1", "{:.2f}"),
            f"{within}/{len(done)}", col("ratio", "map_error_mean", "{:.2f}"), col("learned", "w1_to_target"),
            col("exact", "w1_to_target"), col("target", "w1_two_draws"),
            col("learned", "outlier_share", "{:.4f}"), col("exact", "outlier_share", "{:.4f}"),
            col("target", "outlier_share", "{:.4f}"), mean_sd([r["train_seconds"] for r in done], "{:.0f}")]) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = study_parser(__doc__.splitlines()[0], os.path.join("train_logs", "study_toys"))
    p.add_argument("--seeds", type=int, default=SEEDS, help="seeds 0 .. this - 1 of every row")
    p.add_argument("--flags", default="", help="flags appended to every command (a smoke run: '--epochs 2'); "
                   "the records say so in their command")
    p.add_argument("--n", type=int, default=1000, help="points of each exact solve (exact_uot.py --n)")
    p.add_argument("--table", metavar="RUNS.jsonl", help="print the table of recorded runs and exit")
    a = p.parse_args(argv)
    if a.table:
        with open(a.table, encoding="utf-8") as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return
    rows = chosen_rows(p, a.rows, ROWS)
    os.makedirs(a.out, exist_ok=True)
    log = RecordLog(os.path.join(a.out, "runs.jsonl"))
    done = {(r["row"], r["seed"]) for r in log.records if r["exit_code"] == 0}
    todo = [(seed, row) for seed in range(a.seeds) for row in rows if (row[0], seed) not in done]
    print(f"{len(done)} runs done, {len(todo)} to run, {a.jobs} at a time", flush=True)
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(run_one, row, seed, a.out, shlex.split(a.flags), a.n) for seed, row in todo]
        for future in concurrent.futures.as_completed(futures):
            record = future.result()
            log.records = [r for r in log.records if (r["row"], r["seed"]) != (record["row"], record["seed"])]
            log.append(record)
            ratio = record.get("exact", {}).get("ratio", {}).get("w1")
            print(f"[{time.time() - start:6.0f} s] {record['row']} seed {record['seed']}: exit {record['exit_code']}, "
                  f"W1 ratio to the floor {ratio}, {record['train_seconds']:.0f} s", flush=True)
    text = table(log.records)
    atomic_write_text(os.path.join(a.out, "table.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
