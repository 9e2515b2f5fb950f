"""Training speed of train.py, one optimization at a time, against a plain baseline.

    python scripts/bench_train.py --config cifar10|celeba_256|digits|digits_wide|digits_mlp|mnist_mlp|mnist_study|mnist_ncsnpp|toy
        [--device cpu|cuda] [--batch_size N] [--warmup W --iters N --repeats R] [--compile auto|on|off]
        [--variants NAME ...] [--json PATH]

One iteration is what train.py's loop does per step, train.iteration: a potential step
(with R1), a map step, then the generator EMA, on synthetic batches of the config's
shape (the data pipeline is not timed). Each variant is set up by train.build_training
from train.py's own parser, so it runs exactly train.py's code; every variant starts from
the same initial weights. Variants:

  baseline       fp32 eager, contiguous tensors, for-loop Adam, EMA as a per-parameter
                 Python loop (the public code's way), R1 every step
  one flag each  bf16 autocast, channels_last, torch.compile (G and D; R1 stays eager),
                 foreach Adam, fused Adam, foreach-lerp EMA, TF32 + cudnn.benchmark (CUDA),
                 lazy R1 (--r1_every 4: R1 on every 4th potential step, scaled by 4 --
                 a different algorithm from the published one)
  default        what train.py does with no speed flag on this device
  all            every speed flag train.py has (published algorithm: R1 every step);
                 without --compile where the compile variants are skipped
  all+lazy_r1    the same with --r1_every 4

Each variant is built and run for `--warmup` untimed iterations (torch.compile compiles
there); then `--repeats` rounds time `--iters` iterations of every variant in turn, so
that a shared machine's changing load hits all variants alike; the median round is
reported. Peak memory is the variant's own CUDA max_memory_allocated (weights, optimizer
states, activations); on CPU it is not measured (the process RSS mixes all variants).

How close an iteration comes to the machine: the FLOPs of one iteration are counted once,
untimed, by torch.utils.flop_counter.FlopCounterMode on an eager fp32 build of the config
(matmuls and convolutions, attention's included, in the forward passes, the backward passes
and R1's double backward; elementwise work -- activations, Adam, EMA -- is not counted).
bf16, channels_last and torch.compile run the same matmuls, so they share the count; lazy
R1 is counted over one R1 period. The practical fp32 peak is measured in the same process,
on the same torch threads, before the timed rounds: the best of several n x n torch.mm calls
(2 n^3 FLOPs each, n grown until one call takes at least 50 ms; TF32 off). Each variant's
GFLOP/s is its FLOPs per iteration over its median time per iteration, and % matmul that
over the matmul peak (TF32 and bf16 variants may pass 100%).
"""
import argparse
import contextlib
import math
import os
import shlex
import statistics
import sys
import time
import types

import torch
from torch.utils.flop_counter import FlopCounterMode

import train
from score_sde import build_generator, build_potential, count_parameters
from uot.io import atomic_write_json
from uot.records import cpu_model


def read_flags(name):
    """The train.py flags of a scripts/*.flags file."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), encoding="utf-8") as f:
        return f.read().strip()


# train.py flags of each benchmark configuration, and CPU-friendly timing defaults.
CONFIGS = {
    # UOTM CIFAR-10 as published: NCSN++ 128 channels, ch_mult 1 2 2 2, batch 256 (train.py's defaults)
    "cifar10": dict(flags="--dataset cifar10", warmup=3, iters=10, repeats=3),
    # UOTM CelebA-HQ 256 (scripts/uotm_celeba256.sh)
    "celeba_256": dict(flags="--dataset celeba_256 --image_size 256 --num_channels_dae 64 --n_mlp 3 "
                             "--ch_mult 1 1 2 2 4 4 --lr_d 1e-4 --lr_g 2e-4 --ema_decay 0.999 "
                             "--batch_size 32 --tau 0.00001 --r1_gamma 5", warmup=3, iters=10, repeats=3),
    # the NCSN++ pair of the digits study on sklearn's 8x8 digits (scripts/digits.flags, study_digits.py):
    # G 0.25M, D 0.19M parameters; "digits_wide" is the wider pair of earlier demos (G 0.82M, D 0.77M)
    "digits": dict(flags=read_flags("digits.flags"), warmup=2, iters=20, repeats=3),
    "digits_wide": dict(flags="--dataset digits --image_size 8 --num_channels_dae 32 --ch_mult 1 2 --num_res_blocks 1 "
                              "--attn_resolutions 4 --n_mlp 2 --z_emb_dim 64 --nz 16 --ngf 16 --ema_decay 0.999 "
                              "--batch_size 64", warmup=2, iters=10, repeats=3),
    # the MLP pair of the digits study's main rows and the demo (scripts/digits_mlp.flags): G 0.60M, D 0.56M
    "digits_mlp": dict(flags=read_flags("digits_mlp.flags"), warmup=3, iters=20, repeats=3),
    # the MLP pair of UOTM on MNIST at 32 px (scripts/mnist_uotm.sh, its network and optimization flags):
    # G 4.21M, D 3.15M; only the shape of MNIST is used, so no data is needed
    "mnist_mlp": dict(flags="--dataset mnist --model_name mlp --mlp_width 1024 --mlp_depth 3 --nz 16 "
                            "--batch_size 128 --lr_g 4e-4 --lr_d 4e-4 --eta_min 1e-5 --ema_decay 0.999 --tau 0.003 "
                            "--phi1 kl --phi2 kl", warmup=2, iters=10, repeats=3),
    # the MLP pair of scripts/study_mnist.py (scripts/mnist_mlp.flags: 3 hidden layers of 512), UOTM (kl, kl)
    "mnist_study": dict(flags="--dataset mnist " + read_flags("mnist_mlp.flags") + " --lr_g 4e-4 --lr_d 4e-4 "
                              "--phi1 kl --phi2 kl", warmup=2, iters=20, repeats=3),
    # a reduced NCSN++ pair for MNIST at 32 px (issue 26.4's candidate): 16 channels, ch_mult 1 2 2, one res
    # block, attention at 8 px, potential ngf 8; G 0.42M, D 0.19M (the published widths: D 12.25M)
    "mnist_ncsnpp": dict(flags="--dataset mnist --image_size 32 --num_channels_dae 16 --ch_mult 1 2 2 "
                               "--num_res_blocks 1 --attn_resolutions 8 --ngf 8 --n_mlp 2 --z_emb_dim 64 --nz 16 "
                               "--batch_size 64 --ema_decay 0.999 --tau 0.003 --phi1 kl --phi2 kl",
                         warmup=1, iters=3, repeats=3),
    # the S-JKO 2-D toy networks and batch (scripts/toy2d_sjko.sh), with train.py's default R1
    "toy": dict(flags="--dataset 8gaussian --model_name toy --image_size 2 --nz 2 --batch_size 400 "
                      "--lr_g 1e-4 --lr_d 2e-5", warmup=3, iters=10, repeats=3),
}
LAZY_R1_EVERY = 4

BASELINE = dict(amp="none", channels_last=False, compile=False, adam="loop", ema="loop", cuda_fast=False,
                r1_every=1)


def variants(device, image_data, compile_ok=True):
    """(name, settings, what) for every variant; the settings override BASELINE. Without
    compile_ok, "all" is every other speed flag."""
    cuda = device.type == "cuda"
    defaults = train.build_parser().parse_args([])
    # train.py's loop: fused Adam and the foreach-lerp EMA always; TF32 + cudnn.benchmark on CUDA
    default = dict(amp=defaults.amp, channels_last=defaults.channels_last, compile=defaults.compile,
                   adam="fused", ema="foreach", cuda_fast=cuda, r1_every=defaults.r1_every)
    everything = dict(amp="bf16", channels_last=image_data, compile=compile_ok, adam="fused", ema="foreach",
                      cuda_fast=cuda, r1_every=1)
    no_compile = "" if compile_ok else " but --compile"
    return [
        ("baseline", {}, "fp32 eager, contiguous, for-loop Adam, loop EMA, R1 every step"),
        ("bf16", dict(amp="bf16"), "--amp bf16 (autocast)"),
        ("channels_last", dict(channels_last=True), "--channels_last"),
        ("compile", dict(compile=True), "--compile (G, D; R1 eager)"),
        ("adam_foreach", dict(adam="foreach"), "Adam(foreach=True)"),
        ("adam_fused", dict(adam="fused"), "Adam(fused=True)"),
        ("ema_foreach", dict(ema="foreach"), "uot.ema.update_ema (_foreach_lerp_)"),
        ("tf32_cudnn", dict(cuda_fast=True), "TF32 matmul/conv + cudnn.benchmark"),
        ("lazy_r1", dict(r1_every=LAZY_R1_EVERY), f"--r1_every {LAZY_R1_EVERY} (changes the algorithm)"),
        ("default", default, "train.py with no speed flag"),
        ("all", everything, f"every speed flag{no_compile}, R1 every step"),
        ("all+lazy_r1", dict(everything, r1_every=LAZY_R1_EVERY), f"all{no_compile} + --r1_every {LAZY_R1_EVERY}"),
    ]


def compile_skipped(compile_mode, device, model_name):
    """Why the torch.compile variants do not run, or None."""
    if compile_mode == "off":
        return "skipped (--compile off)"
    if compile_mode == "auto" and device.type == "cpu" and model_name == "ncsnpp":
        # measured: 295 s of warm-up for the digits NCSN++ on a shared 2-core CPU, per variant
        return "skipped: compiling NCSN++ on CPU takes minutes per variant (--compile on to try)"
    return None


def not_applicable(settings, device, image_data, compile_reason):
    """Why a variant cannot run here, or None."""
    if settings["channels_last"] and not image_data:
        return "2-D toy data has no channels"
    if settings["cuda_fast"] and device.type != "cuda":
        return "CUDA only"
    if settings["compile"] and compile_reason:
        return compile_reason
    return None


@torch.no_grad()
def update_ema_loop(ema, model, decay):
    """The public code's EMA: one multiply-add per parameter, from Python."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def set_cuda_fast(on):
    """train.py's CUDA settings (run_training) when on, PyTorch's defaults when off."""
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = True   # PyTorch's default; train.py keeps it
    torch.backends.cudnn.benchmark = on


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_args(config_flags, settings, batch_size, device):
    """train.py's args for one variant, through its own parser and validation."""
    argv = shlex.split(config_flags) + ["--device", device.type, "--amp", settings["amp"], "--ema",
                                        "--r1_every", str(settings["r1_every"])]
    argv += ["--channels_last"] * settings["channels_last"] + ["--compile"] * settings["compile"]
    if batch_size:
        argv += ["--batch_size", str(batch_size)]
    return train.resolve_args(train.build_parser().parse_args(argv), 1)


def build_variant(config_flags, settings, batch_size, device):
    """One variant, set up as train.py sets up a run: returns `iteration(step)`, the variant's
    args and the parameter counts of G and D."""
    args = train_args(config_flags, settings, batch_size, device)
    torch.manual_seed(args.seed)
    run = train.build_training(args, device, build_generator(args), build_potential(args))
    state = run.state
    if settings["adam"] != "fused":   # train.py's optimizers are fused Adam
        adam = dict(betas=(args.beta1, args.beta2), foreach=settings["adam"] == "foreach", fused=False)
        state.opt_G = torch.optim.Adam(state.G.parameters(), lr=args.lr_g, **adam)
        state.opt_D = torch.optim.Adam(state.D.parameters(), lr=args.lr_d, **adam)
    if settings["ema"] == "loop":
        state.update_ema = types.MethodType(lambda self: update_ema_loop(self.G_ema, self.G, self.ema_decay), state)
    phase = train.enter_phase(run, run.phases[0], log=lambda message: None)
    shape = (args.image_size,) if args.toy else (args.num_channels, args.image_size, args.image_size)
    real = torch.rand((args.batch_size, *shape), device=device) * 2 - 1   # a batch in [-1, 1]
    if args.channels_last:
        real = real.contiguous(memory_format=torch.channels_last)   # as datasets_prep.loader yields it

    def iteration(step):
        """One step of train.training_loop; returns the two losses."""
        state.step = step
        stats = train.iteration(run, phase, real)
        return torch.stack([stats["loss_D"], stats["loss_G"]])

    return iteration, args, count_parameters(state.G), count_parameters(state.D)


class GlobalOnly(contextlib.nullcontext):
    """FlopCounterMode's module tracker, reduced to the whole program: the real tracker's hooks
    on module inputs break torch.autograd.grad to a leaf tensor, R1's (pytorch/pytorch#131753)."""
    parents = ("Global",)


def count_flops(fn):
    """The FLOPs FlopCounterMode counts while fn() runs: matmuls and convolutions, their
    backward passes included; elementwise work is not counted."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = GlobalOnly()   # the same total, only not broken down by module
    with counter:
        fn()
    return counter.get_total_flops()


def flops_per_iteration(config_flags, batch_size, device, r1_every):
    """FLOPs of one iteration of the config with R1 on every `r1_every`-th potential step (the
    mean over one period), counted on a fresh eager fp32 build: bf16, channels_last and
    torch.compile run the same matmuls, and counting changes no timed variant's state."""
    iteration = build_variant(config_flags, dict(BASELINE, r1_every=r1_every), batch_size, device)[0]
    return count_flops(lambda: [iteration(step) for step in range(r1_every)]) / r1_every


def matmul_peak(device, min_seconds=0.05, repeats=5):
    """The practical fp32 peak: GFLOP/s of an n x n torch.mm (2 n^3 FLOPs), the best of `repeats`
    calls (the first may pay a warm-up), with n grown until that best takes `min_seconds`; on this
    process's torch threads, TF32 off as in the fp32 variants."""
    if device.type == "cuda":
        set_cuda_fast(False)

    def best_seconds(n, calls):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        out = torch.empty(n, n, device=device)
        times = []
        for _ in range(calls):
            sync(device)
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            sync(device)
            times.append(time.perf_counter() - start)
        return min(times)

    n = 256
    while (seconds := best_seconds(n, repeats)) < min_seconds:
        # the time grows as n^3: aim just past min_seconds, at most 4x n per step, n a multiple of 256
        n = min(4 * n, 256 * math.ceil(n * (1.2 * min_seconds / seconds) ** (1 / 3) / 256))
    return dict(n=n, seconds=seconds, gflops=2 * n ** 3 / seconds / 1e9, calls=repeats,
                threads=torch.get_num_threads())


class Runner:
    """One variant, built and warmed up; each `time()` adds one timed repeat."""

    def __init__(self, config_flags, settings, batch_size, device, warmup, iters):
        self.device, self.settings = device, settings
        if device.type == "cuda":
            set_cuda_fast(settings["cuda_fast"])
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)   # the variants built before this one
        self.iteration, args, params_G, params_D = build_variant(config_flags, settings, batch_size, device)
        # lazy R1: a whole number of R1 periods per repeat, and both kinds of step in the warm-up
        period = args.r1_every
        self.iters = -(-iters // period) * period
        self.warmup = max(warmup, 2) if period > 1 else warmup
        self.step, self.losses, self.wall, self.cpu = 0, [], [], []
        start = time.perf_counter()
        self.run(self.warmup)   # torch.compile compiles here
        self.warmup_s = time.perf_counter() - start
        # this variant's own peak over its warm-up: weights, optimizer states, activations
        # (the variants built before it hold their memory constant meanwhile)
        self.peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20 if device.type == "cuda" else None
        self.info = dict(batch_size=args.batch_size, params_G=params_G, params_D=params_D)

    def run(self, n):
        if self.device.type == "cuda":
            set_cuda_fast(self.settings["cuda_fast"])
        for _ in range(n):
            self.losses.append(self.iteration(self.step))
            self.step += 1
        sync(self.device)

    def time(self):
        wall, cpu = time.perf_counter(), time.process_time()
        self.run(self.iters)
        self.wall.append((time.perf_counter() - wall) / self.iters)
        self.cpu.append((time.process_time() - cpu) / self.iters)

    def figures(self):
        ms = statistics.median(self.wall) * 1e3
        return dict(self.info, status="ok", ms_per_iter=ms, images_per_s=self.info["batch_size"] / ms * 1e3,
                    ms_per_iter_repeats=[t * 1e3 for t in self.wall], best_ms_per_iter=min(self.wall) * 1e3,
                    cpu_ms_per_iter=statistics.median(self.cpu) * 1e3, warmup_s=self.warmup_s,
                    warmup=self.warmup, iters=self.iters, repeats=len(self.wall), peak_memory_mib=self.peak_mib,
                    losses_finite=bool(torch.isfinite(torch.stack(self.losses)).all()))


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="digits")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--batch_size", type=int, default=None, help="override the config's batch")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations per variant (compile here)")
    parser.add_argument("--iters", type=int, default=None, help="iterations per timed repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats; the median is reported")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="run the torch.compile variants (auto: not for NCSN++ on CPU, where compiling "
                             "takes minutes)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help="run only these (the baseline always runs); default: all")
    parser.add_argument("--json", default=None, help="write every figure to this file")
    bench = parser.parse_args(argv)
    config = CONFIGS[bench.config]
    device = torch.device(bench.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    timing = {k: getattr(bench, k) if getattr(bench, k) is not None else config[k]
              for k in ("warmup", "iters", "repeats")}
    image_data = bench.config != "toy"
    # several compiled variants live side by side: let each keep its graphs instead of
    # silently falling back to eager at the default limit of 8 per function
    torch._dynamo.config.recompile_limit = 64
    load_before = load_average()

    print(f"config {bench.config}: train.py {config['flags']}" +
          (f" --batch_size {bench.batch_size}" if bench.batch_size else ""))
    print(f"device {device_name(device)}, torch {torch.__version__}; warm-up {timing['warmup']}, then "
          f"{timing['repeats']} rounds of {timing['iters']} iterations per variant, variants interleaved",
          flush=True)
    records, runners = [], {}
    model_name = train_args(config["flags"], BASELINE, None, device).model_name
    compile_reason = compile_skipped(bench.compile, device, model_name)
    names = [name for name, _, _ in variants(device, image_data)]
    unknown = sorted(set(bench.variants or []) - set(names))
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(names)}")
    for name, overrides, what in variants(device, image_data, compile_ok=compile_reason is None):
        settings = dict(BASELINE, **overrides)
        record = dict(name=name, what=what, settings=settings)
        records.append(record)
        reason = not_applicable(settings, device, image_data, compile_reason)
        if reason is None and bench.variants and name != "baseline" and name not in bench.variants:
            reason = "not selected (--variants)"
        if reason is None:
            print(f"  warming up {name}", flush=True)
            try:
                runners[name] = Runner(config["flags"], settings, bench.batch_size, device,
                                       timing["warmup"], timing["iters"])
            except Exception as err:   # e.g. torch.compile without a working C compiler: report it, go on
                if not settings["compile"]:
                    raise
                reason = f"failed: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:120]}"
        if reason is not None:
            record.update(status="n/a", reason=reason)
    # untimed: the FLOPs of an iteration for each R1 period that runs, then the machine's matmul peak
    flops = {period: flops_per_iteration(config["flags"], bench.batch_size, device, period)
             for period in sorted({runner.settings["r1_every"] for runner in runners.values()})}
    info = runners["baseline"].info
    counts = (f"{count / 1e9:.4g} GFLOP" + (f" with --r1_every {period}" if period > 1 else "")
              for period, count in flops.items())
    print(f"FLOPs per iteration (FlopCounterMode): {', '.join(counts)}; G {info['params_G'] / 1e6:.2f}M, "
          f"D {info['params_D'] / 1e6:.2f}M parameters")
    peak = matmul_peak(device)
    print(f"fp32 matmul peak {peak['gflops']:.1f} GFLOP/s: torch.mm of {peak['n']} x {peak['n']} in "
          f"{peak['seconds'] * 1e3:.1f} ms, best of {peak['calls']} calls, {peak['threads']} torch threads", flush=True)
    # round robin: every variant sees the same share of a shared machine's load
    for _ in range(timing["repeats"]):
        for runner in runners.values():
            runner.time()

    header = (f"{'variant':14s} {'images/s':>10s} {'ms/iter':>9s} {'best ms':>9s} {'CPU ms':>8s} {'peak MiB':>9s} "
              f"{'vs base':>8s} {'GFLOP/s':>8s} {'% matmul':>8s} {'warm-up s':>9s}  what")
    print(header)
    print("-" * len(header))
    base = runners["baseline"].figures()["images_per_s"]
    for record in records:
        if record.get("status") == "n/a":
            print(f"{record['name']:14s} {'n/a':>10s}".ljust(len(header) - len("  what"))
                  + f"  {record['what']} -- {record['reason']}")
            continue
        record.update(runners[record["name"]].figures())
        record["vs_baseline"] = record["images_per_s"] / base
        record["flops_per_iter"] = flops[record["settings"]["r1_every"]]
        record["gflop_per_s"] = record["flops_per_iter"] / record["ms_per_iter"] / 1e6
        record["of_matmul_peak"] = record["gflop_per_s"] / peak["gflops"]
        peak_mib = f"{record['peak_memory_mib']:.0f}" if record["peak_memory_mib"] is not None else "n/a"
        print(f"{record['name']:14s} {record['images_per_s']:10.1f} {record['ms_per_iter']:9.2f} "
              f"{record['best_ms_per_iter']:9.2f} {record['cpu_ms_per_iter']:8.1f} {peak_mib:>9s} "
              f"{record['vs_baseline']:7.2f}x {record['gflop_per_s']:8.2f} {100 * record['of_matmul_peak']:7.1f}% "
              f"{record['warmup_s']:9.1f}  {record['what']}"
              + ("" if record["losses_finite"] else "  (non-finite loss!)"))
    if device.type == "cuda":
        set_cuda_fast(True)
    print("vs base: images/s over the baseline's (below 1: slower). ms/iter: median wall time (best: fastest "
          "round); CPU ms: process CPU time, all threads. Peak MiB: CUDA max_memory_allocated of the variant "
          "(not measured on CPU). GFLOP/s: the counted FLOPs per iteration over the median time; % matmul: that "
          "over the fp32 matmul peak.")

    if bench.json:
        atomic_write_json(bench.json, dict(
            config=bench.config, config_flags=config["flags"], batch_size=records[0]["batch_size"],
            device=device.type, device_name=device_name(device), torch=torch.__version__,
            torch_threads=torch.get_num_threads(), load_average_before=load_before, load_average_after=load_average(),
            command=shlex.join(["python", "scripts/bench_train.py"] + (sys.argv[1:] if argv is None else argv)),
            time=time.strftime("%Y-%m-%d %H:%M:%S"), **timing, matmul_peak=peak, variants=records))
        print(f"wrote {bench.json}")
    return records


if __name__ == "__main__":
    main()
