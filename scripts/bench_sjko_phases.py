"""Seconds per S-JKO iteration in phase 1 vs phase 10: does an iteration cost the same late
in the flow as early on (O(K) training: one frozen reference network per phase)?

    python scripts/bench_sjko_phases.py [--iters 100 --window 20] [--digits] [train.py flags]

Runs train.main itself, 11 phases of `--iters` iterations each, with a stats.jsonl line
every `--window` iterations: train.py's own images_per_s over each window is the timer,
so what is timed is the real loop (data, noise, reference map, potential_step, map_step,
EMA, bookkeeping). The first window of every phase is warm-up (phase setup, the frozen
copy, allocator growth) and is dropped; the median of the others is the phase's figure.
Phases are numbered as in train.py: phase 0 transports from the identity (no reference
network), each phase k >= 1 runs the frozen T_{k-1} once per iteration. The figure of the
O(K) claim is phase 10 / phase 1, both with a frozen reference; phase 1 / phase 0 is the
constant price of that one extra forward pass. Default: the 2-D toy of the S-JKO README (batch 400); --digits: a small
NCSN++ on 8x8 digits. Extra train.py flags are appended (e.g. --device cuda).
"""
import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile

import train

TOY = ("--dataset 25gaussian --image_size 2 --model_name toy --nz 2 --batch_size 400 --lr_g 1e-4 --lr_d 2e-5 "
       "--reg_name none --phi2 kl --no_use_ema")
# the digits configuration (scripts/digits.flags; about 0.1 s per iteration on a CPU) with the
# wider potential, smaller z and slower EMA that the figures of docs/performance.md were timed with
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.flags"), encoding="utf-8") as f:
    DIGITS = f.read().strip() + " --ngf 16 --nz 8 --z_emb_dim 32 --ema_decay 0.999 --phi2 kl --use_ema"
NUM_PHASE = 11   # phases 0..10


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100, help="iterations per phase")
    parser.add_argument("--window", type=int, default=20, help="iterations per timed window")
    parser.add_argument("--digits", action="store_true", help="small NCSN++ on digits instead of the 2-D toy")
    bench, extra = parser.parse_known_args()
    if bench.iters % bench.window or bench.iters < 2 * bench.window:
        parser.error("--iters must be a multiple of --window, at least two windows")
    total = NUM_PHASE * bench.iters
    with tempfile.TemporaryDirectory() as outdir:
        # one save, at the very end: it follows the last stats line, so no timed window holds it
        argv = shlex.split(DIGITS if bench.digits else TOY) + [
            "--num_phase", str(NUM_PHASE), "--init_h", "1", "--h", "1",
            "--init_num_iterations", str(bench.iters), "--num_iterations", str(bench.iters),
            "--log_every", str(bench.window), "--save_image_every", str(total),
            "--save_content_every", str(total), "--save_ckpt_every", str(total),
            "--outdir", outdir, "--exp", "bench"] + extra
        if train.main(argv) != 0:
            sys.exit("train.py failed")
        dataset = argv[argv.index("--dataset") + 1]
        records = [json.loads(line) for line in open(os.path.join(outdir, dataset, "bench", "stats.jsonl"))]
        options = json.load(open(os.path.join(outdir, dataset, "bench", "options.json")))
    batch = options["batch_size"]
    windows_per_phase = bench.iters // bench.window
    seconds = {}   # phase -> median seconds per iteration over its timed windows
    for k in range(NUM_PHASE):
        timed = records[k * windows_per_phase + 1:(k + 1) * windows_per_phase]
        seconds[k] = statistics.median(batch / r["images_per_s"] for r in timed)
    device = options["device"] or ("cuda" if train.torch.cuda.is_available() else "cpu")
    print(f"{'digits NCSN++' if bench.digits else '2-D toy'}: batch {batch}, device {device}, "
          f"{bench.iters} iterations per phase, median of {windows_per_phase - 1} windows of {bench.window}")
    for k, s in seconds.items():
        print(f"phase {k:2d}: {s * 1e3:8.2f} ms/iteration")
    print(f"phase 1: {seconds[1] * 1e3:.2f} ms  phase 10: {seconds[10] * 1e3:.2f} ms  "
          f"ratio phase10/phase1 {seconds[10] / seconds[1]:.3f}  "
          f"(phase1/phase0 {seconds[1] / seconds[0]:.3f}: the reference network's forward pass)")


if __name__ == "__main__":
    main()
