"""Seconds per training iteration of train_toy.py on the UOTM README's outlier configuration.

    python scripts/bench_toy.py [--iters 20 --repeats 5 --warmup 10] [train_toy.py flags]

Times train_toy.ToyTrainer.train_iteration itself (5 potential steps with the
regularizer, then one map step) with the flags of scripts/toy_outlier.sh; extra
train_toy.py flags (e.g. --num_threads 2, --device cuda) are appended. Prints the
median and the best of the repeats, per iteration, per epoch and projected over the
run's epochs (400), training only (the few evaluations add seconds).
"""
import argparse
import os
import shlex
import statistics
import time

import torch

import train_toy

OUTLIER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_outlier.sh")


def outlier_flags():
    """The train_toy.py flags of scripts/toy_outlier.sh, the UOTM README's outlier command."""
    text = open(OUTLIER_SCRIPT).read().replace("\\\n", " ")
    command = next(line for line in text.splitlines() if "train_toy.py" in line)
    return [flag for flag in shlex.split(command.split("train_toy.py", 1)[1]) if flag != "$@"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20, help="iterations per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    bench, extra = parser.parse_known_args()
    args = train_toy.parse_args(outlier_flags() + extra)
    train_toy.validate(args)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    trainer = train_toy.ToyTrainer(args)

    x, y = next(iter(trainer.epoch_batches()))

    def run(n):
        for _ in range(n):
            trainer.train_iteration(x, y)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()

    run(bench.warmup)
    wall, cpu = [], []
    for _ in range(bench.repeats):
        w, c = time.perf_counter(), time.process_time()
        run(bench.iters)
        wall.append((time.perf_counter() - w) / bench.iters)
        cpu.append((time.process_time() - c) / bench.iters)

    iters = trainer.iters_per_epoch
    print(f"outlier config: batch {args.batch_size}, {iters} iterations/epoch, n_critic {args.n_critic}, "
          f"regularize {args.regularize}, device {args.device}, torch threads {torch.get_num_threads()}")
    for name, value in (("median", statistics.median(wall)), ("best", min(wall))):
        print(f"{name:6s}: {value * 1e3:7.1f} ms/iteration  {value * iters:6.2f} s/epoch  "
              f"{value * iters * args.epochs / 60:5.1f} min for {args.epochs} epochs")
    print(f"process CPU time: {statistics.median(cpu) * 1e3:.1f} ms/iteration (median)")


if __name__ == "__main__":
    main()
