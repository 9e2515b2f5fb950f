"""Iterations per second of a small digits run on a CPU, alone and beside another job, by
torch thread count and OpenMP wait policy: what a shared CPU costs a run.

    python scripts/bench_threads.py [--seconds 20] [--flags "train.py flags"]

Each figure comes from a fresh process (OpenMP reads its settings when torch loads) that
trains the configuration of scripts/study_digits.py (train.iteration, synthetic batches)
for `--seconds` after a warm-up. "beside a job" runs one more such process, with one
thread, for the whole measurement: the situation of two runs sharing a 2-core machine,
or of a run next to anything else. OMP_WAIT_POLICY is libgomp's (the OpenMP of PyTorch's
x86 wheels): ACTIVE threads spin while they wait for work, PASSIVE ones sleep; "default"
leaves it unset (libgomp then spins for a while before it sleeps).
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

from study_digits import COMMON   # the networks and batch of the digits study (this folder)

STUDY_FLAGS = COMMON + " --phi1 kl --phi2 kl"
SCENARIOS = [   # (threads, OMP_WAIT_POLICY or None, beside another job)
    (2, None, False), (2, "PASSIVE", False), (1, None, False),
    (2, None, True), (2, "PASSIVE", True), (1, None, True), (1, "PASSIVE", True),
]


def worker(flags, seconds, warmup):
    """Train on synthetic batches; print iterations per second over `seconds` (forever if 0)."""
    import torch

    import train
    from score_sde import build_generator, build_potential

    args = train.resolve_args(train.build_parser().parse_args(shlex.split(flags) + ["--device", "cpu"]), 1)
    torch.manual_seed(args.seed)
    run = train.build_training(args, torch.device("cpu"), build_generator(args), build_potential(args))
    phase = train.enter_phase(run, run.phases[0], log=lambda message: None)
    real = torch.rand(args.batch_size, args.num_channels, args.image_size, args.image_size) * 2 - 1
    for _ in range(warmup):
        train.iteration(run, phase, real)
    start, count = time.perf_counter(), 0
    while seconds == 0 or time.perf_counter() - start < seconds:
        train.iteration(run, phase, real)
        run.state.step += 1
        count += 1
    print(f"{count / (time.perf_counter() - start):.3f}", flush=True)


def measure(threads, policy, beside, flags, seconds, warmup):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--flags", flags]
    other = None
    if beside:   # a one-thread job for the whole measurement
        other_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        other = subprocess.Popen(command + ["--seconds", "0"], env=other_env, stdout=subprocess.DEVNULL)
        time.sleep(3)
    try:
        out = subprocess.run(command + ["--seconds", str(seconds), "--warmup", str(warmup)], env=env,
                             capture_output=True, text=True, check=True).stdout
    finally:
        if other is not None:
            other.kill()
            other.wait()
    return float(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20, help="timed seconds per figure")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first")
    p.add_argument("--flags", default=STUDY_FLAGS, help="train.py flags of the configuration")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.flags, a.seconds, a.warmup)
        return
    print(f"train.py {a.flags}; {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f}")
    print("| torch threads | OMP_WAIT_POLICY | beside a 1-thread job | iterations/s | vs 2 threads alone |")
    print("|---:|---|---|---:|---:|")
    base = None
    for threads, policy, beside in SCENARIOS:
        rate = measure(threads, policy, beside, a.flags, a.seconds, a.warmup)
        base = base or rate
        print(f"| {threads} | {policy or 'default'} | {'yes' if beside else 'no'} | {rate:.2f} | {rate / base:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
