"""Train a UOTM or S-JKO generator on images or 2-D toy data.

    python train.py --exp kl --phi1 kl --phi2 kl                        # UOTM, CIFAR-10
    python train.py --exp sjko --phi2 kl --num_phase 100 --init_h 0.1 --h 0.1 \
        --init_num_iterations 10000 --num_iterations 2000 --use_ema --lr_scheduler
    torchrun --nproc_per_node 4 train.py ...                           # several GPUs

UOTM is the one-phase case of the S-JKO loop: giving any S-JKO schedule flag
(--num_phase, --h, --init_h, --init_num_iterations, --num_iterations) selects the
S-JKO schedule (iterations, c = ||y - y_ref||^2 / (2 d h)); otherwise the UOTM one
(epochs, c = tau ||x - y||^2). See README.md for the rules and every output file.
"""
import argparse
import functools
import io
import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import nullcontext

import torch

from datasets_prep import IMAGE_DATASETS, build_image_dataset, dataset_num_channels
from datasets_prep.loader import ImageStream
from datasets_prep.toy import TOY_DIMS, sample_toy
from score_sde import add_model_args, build_generator, build_potential, count_parameters
from uot import dist as udist
from uot.ema import make_ema, update_ema
from uot.errors import UsageError, exit_on_usage_error
from uot.io import (RecordLog, atomic_savez, atomic_torch_save, atomic_write_bytes, atomic_write_json,
                    load_checkpoint)
from uot.losses import (JSDLoss, SemiDualLoss, image_cost_scale, interpolate_gradient_penalty,
                        jko_cost_scale, quadratic_cost, r1_penalty)
from uot.schedule import Phase, alpha_at, cosine, data_noise_std, jko_phases, phase_at
from utils import ScaledPhi, select_phi  # utils: where users register their own Psi*

PREEMPTED_EXIT_CODE = 75   # EX_TEMPFAIL: "try again"; requeue with --resume auto
DIVERGED_EXIT_CODE = 3
SYNTHETIC_EPOCH_STEPS = 100  # toy data is infinite: a UOTM-mode "epoch" is 100 iterations
SMALL_DATASETS = ("digits", "mnist", "cifar10", "cifar10+mnist")  # held on the device as uint8
FLIP_DATASETS = ("cifar10", "cifar10+mnist", "celeba_256", "lsun")
SJKO_FLAGS = ("num_phase", "init_h", "h", "init_num_iterations", "num_iterations")
TOY_TARGETS_2D = tuple(name for name, dim in TOY_DIMS.items() if dim == 2)
# Arguments a checkpoint's weights depend on: a resume must not change them.
ARCH_KEYS = ("model_name", "image_size", "num_channels", "num_channels_dae", "n_mlp", "ch_mult",
             "num_res_blocks", "attn_resolutions", "resamp_with_conv", "conditional", "fir",
             "fir_kernel", "skip_rescale", "resblock_type", "progressive", "progressive_input",
             "progressive_combine", "embedding_type", "fourier_scale", "not_use_tanh",
             "z_emb_dim", "nz", "ngf", "dataset")


# ----------------------------------------------------------------------------------
# Command line

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, malformed value) are one-line UsageErrors, like ours."""

    def error(self, message):
        raise UsageError(f"{message}; see {self.prog} --help")


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--exp", default="exp", help="experiment name: the run directory is <outdir>/<dataset>/<exp>")
    run.add_argument("--outdir", default="train_logs")
    run.add_argument("--dataset", default="cifar10", help=f"one of {', '.join(IMAGE_DATASETS + TOY_TARGETS_2D)}")
    run.add_argument("--datadir", default="./data", help="data root of the image datasets")
    run.add_argument("--seed", type=int, default=1024)
    run.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    run.add_argument("--resume", nargs="?", const="yes", default=None, choices=["yes", "auto"],
                     help="continue from <run dir>/content.pth; 'auto' starts fresh when there is none")
    run.add_argument("--overwrite", action="store_true", help="start over in a run directory that holds a run")
    run.add_argument("--dry_run", action="store_true",
                     help="validate the flags, build the networks, print their sizes, and stop")

    add_model_args(p)

    opt = p.add_argument_group("UOTM training (defaults: the published CIFAR-10 run)")
    opt.add_argument("--batch_size", type=int, default=256, help="global batch, split across ranks")
    opt.add_argument("--num_epoch", type=int, default=600)
    opt.add_argument("--lr_g", type=float, default=1.6e-4)
    opt.add_argument("--lr_d", type=float, default=1e-4)
    opt.add_argument("--beta1", type=float, default=0.5)
    opt.add_argument("--beta2", type=float, default=0.9)
    opt.add_argument("--schedule", type=int, default=1800, help="cosine LR period in epochs (UOTM)")
    opt.add_argument("--no_lr_decay", action="store_true")
    opt.add_argument("--eta_min", type=float, default=None, help="cosine floor (1e-5 UOTM, 5e-5 S-JKO)")
    opt.add_argument("--use_ema", dest="use_ema", action="store_true", default=None,
                     help="keep an EMA of G (default: on for UOTM; for S-JKO off unless given, as in its code)")
    opt.add_argument("--no_use_ema", dest="use_ema", action="store_false")
    opt.add_argument("--ema_decay", type=float, default=0.9999)
    opt.add_argument("--tau", type=float, default=1e-3, help="UOTM cost c = tau * ||x - y||^2")
    opt.add_argument("--phi1", default=None, help="Psi1* (source marginal); default kl (UOTM), linear (S-JKO)")
    opt.add_argument("--phi2", default=None, help="Psi2* (target marginal); default kl; S-JKO without it: JSD")
    opt.add_argument("--loss", choices=["uot", "jsd"], default=None,
                     help="semi-dual UOT losses or S-JKO-JSD (default: jsd for S-JKO without --phi2)")
    opt.add_argument("--reg_name", choices=["none", "r1", "gp"], default="r1")
    opt.add_argument("--r1_gamma", type=float, default=0.2, help="R1 weight: (gamma / 2) E ||grad v(y)||^2")
    opt.add_argument("--lmbda", type=float, default=10.0, help="weight of --reg_name gp")
    opt.add_argument("--r1_every", "--lazy_reg", dest="r1_every", type=int, default=1,
                     help="lazy R1: every k potential steps, scaled by k (1: every step, as published)")

    jko = p.add_argument_group("S-JKO (giving any of these selects the S-JKO schedule)")
    jko.add_argument("--num_phase", type=int, default=None, help="K, the number of JKO steps (default 1)")
    jko.add_argument("--init_h", type=float, default=None, help="step size of phase 0 (default: --h)")
    jko.add_argument("--h", type=float, default=None, help="step size of phases 1.. (default 0.1)")
    jko.add_argument("--init_num_iterations", type=int, default=None, help="iterations of phase 0 (default 10000)")
    jko.add_argument("--num_iterations", type=int, default=None, help="iterations of phases 1.. (default 2000)")
    jko.add_argument("--lr_scheduler", action="store_true", help="cosine LR over all iterations (S-JKO)")
    jko.add_argument("--loss_scheduler", choices=["none", "steplr", "linear", "cosine"], default="none")
    jko.add_argument("--alpha_min", type=float, default=1.0)
    jko.add_argument("--alpha_max", type=float, default=1.0)
    jko.add_argument("--no_data_noise", action="store_true",
                     help="S-JKO: do not add N(0, (1/(32(k+1)))^2) noise to real data in phase k")

    out = p.add_argument_group("outputs (counted in epochs for UOTM, iterations for S-JKO)")
    out.add_argument("--log_every", type=int, default=100, help="iterations between stats.jsonl lines")
    out.add_argument("--save_image_every", type=int, default=None)
    out.add_argument("--save_content_every", type=int, default=None)
    out.add_argument("--save_ckpt_every", type=int, default=None)
    out.add_argument("--fid_every", type=int, default=0, help="FID of the EMA generator (0: never)")
    out.add_argument("--fid_samples", type=int, default=5000)
    out.add_argument("--fid_ref_stats", default=None, help="reference statistics .npz for --fid_every")
    out.add_argument("--inception_weights", default=None,
                     help="local FID Inception weights for --fid_every (default: the torch hub cache)")

    perf = p.add_argument_group("speed")
    perf.add_argument("--amp", choices=["none", "bf16"], default="none", help="bf16 autocast")
    perf.add_argument("--channels_last", action="store_true")
    perf.add_argument("--compile", action="store_true", help="torch.compile G and D (R1 passes stay eager)")
    perf.add_argument("--num_workers", type=int, default=4, help="DataLoader workers for large datasets")
    perf.add_argument("--data_on_device", choices=["auto", "on", "off"], default="auto",
                      help="hold the dataset on the device as uint8 (auto: small datasets)")
    perf.add_argument("--dist_timeout", type=int, default=600, help="seconds before a stuck collective fails")
    return p


def resolve_args(args, world):
    """Validate flags and fill in the mode-dependent defaults. Touches no file."""
    args.sjko = any(getattr(args, k) is not None for k in SJKO_FLAGS)
    args.toy = args.dataset in TOY_TARGETS_2D
    if args.dataset not in IMAGE_DATASETS + TOY_TARGETS_2D:
        raise UsageError(f"--dataset {args.dataset}: unknown; choose one of {', '.join(IMAGE_DATASETS + TOY_TARGETS_2D)}")
    if args.toy:
        if args.model_name != "toy":
            raise UsageError(f"--dataset {args.dataset} is 2-D toy data: pass --model_name toy --image_size 2")
        args.num_channels = 1
    else:
        if args.model_name == "toy":
            raise UsageError(f"--model_name toy is for the 2-D toy datasets, not --dataset {args.dataset}")
        args.num_channels = dataset_num_channels(args.dataset)
    if args.sjko:
        args.num_phase = 1 if args.num_phase is None else args.num_phase
        args.h = 0.1 if args.h is None else args.h
        args.init_h = args.h if args.init_h is None else args.init_h
        args.init_num_iterations = 10000 if args.init_num_iterations is None else args.init_num_iterations
        args.num_iterations = 2000 if args.num_iterations is None else args.num_iterations
        args.phi1 = args.phi1 or "linear"
        args.loss = args.loss or ("uot" if args.phi2 else "jsd")
        args.phi2 = args.phi2 or "kl"
        args.eta_min = 5e-5 if args.eta_min is None else args.eta_min
        args.use_ema = bool(args.use_ema)   # the S-JKO code's store_true: on only when passed
        defaults = dict(save_image_every=5000, save_content_every=2000, save_ckpt_every=10000)
    else:
        args.phi1, args.phi2 = args.phi1 or "kl", args.phi2 or "kl"
        args.loss = args.loss or "uot"
        args.eta_min = 1e-5 if args.eta_min is None else args.eta_min
        args.use_ema = args.use_ema is not False   # on unless --no_use_ema; --use_ema means on, as in S-JKO's CLI
        defaults = dict(save_image_every=10, save_content_every=10, save_ckpt_every=25)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    for flag in ("phi1", "phi2"):
        try:
            select_phi(getattr(args, flag))
        except UsageError as err:
            raise UsageError(f"--{flag}: {err}") from None
    positive = ["tau", "lr_g", "lr_d", "batch_size", "num_epoch", "log_every", "r1_every",
                "save_image_every", "save_content_every", "save_ckpt_every", "ema_decay"]
    if args.sjko:
        positive += ["h", "init_h", "num_phase", "init_num_iterations", "num_iterations"]
    for key in positive:
        if not getattr(args, key) > 0:
            raise UsageError(f"--{key} must be > 0 (got {getattr(args, key)})")
    for key in ("r1_gamma", "lmbda", "fid_every"):
        if getattr(args, key) < 0:
            raise UsageError(f"--{key} must be >= 0 (got {getattr(args, key)})")
    if not args.ema_decay < 1:
        raise UsageError(f"--ema_decay must be in (0, 1) (got {args.ema_decay})")
    if args.loss_scheduler != "none" and not 0 < args.alpha_min <= args.alpha_max:
        raise UsageError("--alpha_min / --alpha_max: need 0 < alpha_min <= alpha_max")
    if args.batch_size % world:
        raise UsageError(f"--batch_size {args.batch_size} is the global batch and must divide by the "
                         f"{world} processes; pick a multiple of {world}")
    if args.fid_every and not args.fid_ref_stats:
        raise UsageError("--fid_every needs --fid_ref_stats FILE.npz (make one with test.py --compute_stats)")
    if args.fid_ref_stats and not os.path.isfile(args.fid_ref_stats):
        raise UsageError(f"--fid_ref_stats {args.fid_ref_stats}: no such file")
    return args


# ----------------------------------------------------------------------------------
# Run directory, checkpoints

def check_run_dir(run_dir, args):
    """Refuse to clobber another run or to resume from nothing; returns the checkpoint to resume or None."""
    content, options = os.path.join(run_dir, "content.pth"), os.path.join(run_dir, "options.json")
    if args.resume == "yes" and not os.path.exists(content):
        raise UsageError(f"--resume: no checkpoint at {content}; drop --resume or use --resume auto")
    if args.resume and os.path.exists(content):
        return content
    if args.resume == "auto" and os.path.exists(options):
        # killed before its first content.pth: start over, if it is the same experiment
        with open(options, encoding="utf-8") as f:
            check_compatible(json.load(f), args, options)
        return None
    holds_run = os.path.exists(options) or os.path.exists(content)
    if holds_run and not args.overwrite:
        raise UsageError(f"{run_dir} already holds a run: continue it with --resume, start over with "
                         f"--overwrite, or pick another --exp")
    return None


def check_compatible(ckpt_args, args, source="the checkpoint"):
    for key in ARCH_KEYS:
        if key in ckpt_args and ckpt_args[key] != getattr(args, key):
            raise UsageError(f"--resume: {source} was made with --{key} {ckpt_args[key]}, "
                             f"this run has {getattr(args, key)}; use the same value or another --exp")


def read_checkpoint(path):
    """load_checkpoint, with a one-line UsageError for a file that is not one of our checkpoints."""
    try:
        ckpt = load_checkpoint(path)
    except Exception as err:  # what torch.load raises varies: zip, unpickling (weights_only), EOF errors
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"{path} is not a readable checkpoint ({reason}); delete it to start over") from None
    if not isinstance(ckpt, dict) or "args" not in ckpt:
        raise UsageError(f"{path} is not a train.py content.pth (no 'args'); delete it to start over")
    return ckpt


def save_content(path, step, G, D, G_ema, G_ref, opt_G, opt_D, args, device):
    """content.pth: everything a resume needs, RNG states of every rank included."""
    rng_cpu = udist.all_gather_tensor(torch.get_rng_state().to(device)).cpu()
    rng_cuda = (udist.all_gather_tensor(torch.cuda.get_rng_state().to(device)).cpu()
                if device.type == "cuda" else None)
    if udist.rank() != 0:
        return
    atomic_torch_save(dict(
        step=step, G=G.state_dict(), D=D.state_dict(),
        G_ema=G_ema.state_dict() if G_ema is not None else None,
        G_ref=G_ref.state_dict() if G_ref is not None else None,
        opt_G=opt_G.state_dict(), opt_D=opt_D.state_dict(),
        rng_cpu=rng_cpu, rng_cuda=rng_cuda, world_size=udist.world_size(),
        args=json_safe(vars(args)),
    ), path)


def json_safe(d):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------------
# Preemption

class StopRequest:
    """SIGTERM / SIGUSR1 (what SLURM sends before the kill) ask the loop to stop cleanly.

    A context manager: the previous handlers come back on exit. Repeated signals are not
    escalated to a kill, because torchrun forwards the SIGTERM that SLURM also sends to
    each worker directly."""

    def __enter__(self):
        self.signal = None
        self.previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        self.signal = signum


class Diverged(Exception):
    pass


def divergence_hint(args):
    """The likely cause of a non-finite loss and its fix, for the Diverged message."""
    if args.loss == "uot" and "kl" in (args.phi1, args.phi2):
        return ("Psi* kl is exp(s) - 1 and overflows once the potential grows: lower --lr_d, raise --r1_gamma, "
                "or try --phi1/--phi2 softplus")
    return "the potential grew without bound: lower --lr_d (and --lr_g) or raise --r1_gamma"


# ----------------------------------------------------------------------------------
# One iteration = one potential step, then one map step (then the EMA, in the loop).
# `G_fast` / `D_fast` may be torch.compile'd; passes that need a double backward (R1, GP)
# use the eager `D`, which shares the parameters.

def potential_step(G_fast, D, D_fast, opt_D, loss_fn, real, x, z, y_ref, cost_scale, r1_weight, gp_weight,
                   autocast=nullcontext()):
    """Minimise the potential loss (+ R1 or GP) over D. Returns detached diagnostics."""
    real = real.detach().requires_grad_(r1_weight > 0)
    with autocast:
        with torch.no_grad():
            fake = G_fast(x, z)
        v_real = (D if r1_weight > 0 else D_fast)(real).float()
        v_fake = D_fast(fake).float()
        cost = quadratic_cost(y_ref.float(), fake.float(), cost_scale)
        loss = loss_fn.potential(v_fake, v_real, cost)
        if r1_weight > 0:
            penalty = r1_penalty(v_real, real)
            total = loss + r1_weight * penalty
        elif gp_weight > 0:
            penalty = interpolate_gradient_penalty(D, real.detach(), fake)
            total = loss + gp_weight * penalty
        else:
            penalty, total = torch.zeros((), device=real.device), loss
    opt_D.zero_grad(set_to_none=True)
    total.backward()
    udist.average_gradients(D.parameters())
    opt_D.step()
    return loss.detach(), penalty.detach(), v_real.detach(), v_fake.detach(), cost.detach()


def map_step(G, G_fast, D, D_fast, opt_G, loss_fn, x, z, y_ref, cost_scale, autocast=nullcontext()):
    """Minimise the map loss over G with the potential frozen. Returns the detached loss."""
    D.requires_grad_(False)   # no gradient for D's weights: saves their backward
    with autocast:
        fake = G_fast(x, z)
        loss = loss_fn.map(D_fast(fake).float(), quadratic_cost(y_ref.float(), fake.float(), cost_scale))
    opt_G.zero_grad(set_to_none=True)
    loss.backward()
    udist.average_gradients(G.parameters())
    opt_G.step()
    D.requires_grad_(True)
    return loss.detach()


# ----------------------------------------------------------------------------------
# The loop

def training_loop(args, run_dir, device, G, D, real_data, steps_per_epoch, phases, resume_from, stop):
    master = udist.rank() == 0
    world = udist.world_size()
    batch = args.batch_size // world
    sample_shape = (args.image_size,) if args.toy else (args.num_channels, args.image_size, args.image_size)
    dim = math.prod(sample_shape)
    total_steps = phases[-1].end
    unit = 1 if args.sjko else steps_per_epoch   # steps per counting unit of the *_every flags

    G_ema = make_ema(G) if args.use_ema else None
    # fused Adam: one kernel per optimizer step on CUDA; on CPU it measured as fast as foreach
    adam = dict(betas=(args.beta1, args.beta2), fused=True)
    opt_G = torch.optim.Adam(G.parameters(), lr=args.lr_g, **adam)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr_d, **adam)
    G_ref = None   # the frozen map of the previous JKO phase; None means the identity

    start_step = 0
    if resume_from:
        ckpt = load_checkpoint(resume_from)
        check_compatible(ckpt["args"], args)
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        if G_ema is not None:
            G_ema.load_state_dict(ckpt["G_ema"] if ckpt["G_ema"] is not None else ckpt["G"])
        if ckpt["G_ref"] is not None:
            G_ref = make_ema(G)
            G_ref.load_state_dict(ckpt["G_ref"])
        opt_G.load_state_dict(ckpt["opt_G"])
        opt_D.load_state_dict(ckpt["opt_D"])
        start_step = ckpt["step"]
        if ckpt["world_size"] == world:
            # a row of the gathered (world, n) state is a view at a storage offset, and
            # set_rng_state on such a view segfaults (torch 2.14, every rank but 0): copy it
            torch.set_rng_state(ckpt["rng_cpu"][udist.rank()].clone())
            if device.type == "cuda" and ckpt["rng_cuda"] is not None:
                torch.cuda.set_rng_state(ckpt["rng_cuda"][udist.rank()].clone())
        else:  # a different number of processes cannot replay the same streams
            torch.manual_seed(args.seed + 7919 * start_step + udist.rank())
        del ckpt

    G_fast, D_fast = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else nullcontext())
    loss_fn = JSDLoss() if args.loss == "jsd" else None

    # rank 0's files
    stats = RecordLog(os.path.join(run_dir, "stats.jsonl")) if master else None
    metrics = RecordLog(os.path.join(run_dir, "metrics.json")) if master else None
    if master:
        stats.keep_until(start_step)
        metrics.keep_until(start_step)
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(run_dir, purge_step=start_step)
        log_file = open(os.path.join(run_dir, "log.txt"), "a", buffering=1)
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc=args.exp)
    fixed = torch.Generator().manual_seed(args.seed)   # the same sample grid at every save
    fixed_x = torch.randn((64,) + sample_shape, generator=fixed).to(device)
    fixed_z = torch.randn(64, args.nz, generator=fixed).to(device)
    if args.toy:
        eval_x = torch.randn((4000,) + sample_shape, generator=fixed).to(device)
        eval_z = torch.randn(4000, args.nz, generator=fixed).to(device)
        eval_target = sample_toy(args.dataset, 4000, dim=args.image_size, generator=fixed).to(device)

    def log(msg):
        if master:
            bar.write(msg)
            log_file.write(msg + "\n")

    def real_batches(step):
        """Real data from global step `step` on, epoch after epoch."""
        if args.toy:
            while True:
                yield sample_toy(args.dataset, batch, dim=args.image_size, device=device)
        epoch = step // steps_per_epoch
        start = step % steps_per_epoch
        while True:
            yield from real_data.epoch(epoch, start)
            epoch, start = epoch + 1, 0

    def lr_scale(step):
        """Fraction of the base LR at `step`: cosine per epoch (UOTM) or per iteration (S-JKO)."""
        if args.sjko and not args.lr_scheduler or not args.sjko and args.no_lr_decay:
            return None
        t, period = (step, total_steps) if args.sjko else (step // steps_per_epoch, args.schedule)
        return lambda base: cosine(base, args.eta_min, t, period)

    def generator_for_eval():
        return G_ema if G_ema is not None else G

    def save_outputs(step, tag):
        """Sample grid / 2-D samples and metrics, for rank 0."""
        Ge = generator_for_eval()
        with torch.no_grad():
            if args.toy:
                generated = torch.cat([Ge(eval_x[i:i + 1000], eval_z[i:i + 1000]) for i in range(0, 4000, 1000)])
                save_toy_outputs(run_dir, tag, args.dataset, eval_x, eval_target, generated, metrics,
                                 dict(step=step, phase=phase_at(phases, max(step - 1, 0)).index))
            else:
                grid = Ge(fixed_x, fixed_z).float()
                save_image_grid(grid, os.path.join(run_dir, f"samples_{tag}.png"))
                metrics.append(dict(step=step, phase=phase_at(phases, max(step - 1, 0)).index))

    def checkpoint(step, final=False):
        """Saves due at the end of global step `step` (count of completed steps)."""
        n, at_unit = divmod(step, unit)
        due = lambda every: final or (at_unit == 0 and n % every == 0)  # noqa: E731
        if due(args.save_content_every) or due(args.save_ckpt_every) or due(args.save_image_every) \
                or (args.fid_every and due(args.fid_every)):
            check_finite()
        if due(args.save_content_every):
            save_content(os.path.join(run_dir, "content.pth"), step, G, D, G_ema, G_ref, opt_G, opt_D,
                         args, device)
        if master and due(args.save_ckpt_every):
            atomic_torch_save(generator_for_eval().state_dict(), os.path.join(run_dir, f"netG_{n}.pth"))
        if master and due(args.save_image_every):
            save_outputs(step, n)
        if args.fid_every and due(args.fid_every):
            run_fid(args, generator_for_eval(), sample_shape, device, step, stats, tb if master else None, log)
        return due(args.save_content_every)

    # Statistics stay on the device between log steps: no host sync in the hot loop.
    names = ("loss_D", "loss_G", "penalty", "v_real", "v_fake", "cost")
    acc = torch.zeros(len(names), device=device)
    # the first iteration with a non-finite statistic: [its step, then the values of `names`]
    first_bad = torch.full((1 + len(names),), -1.0, dtype=torch.float64, device=device)
    acc_n, t_last = 0, time.time()

    def check_finite():
        """Raise Diverged on every rank once any rank met a non-finite loss or potential, or the
        weights went non-finite: called before every write, so the last checkpoint stays good."""
        bad = [row for row in udist.all_gather_tensor(first_bad).tolist() if row[0] >= 0]
        weights = sum(p.detach().double().sum() for p in list(G.parameters()) + list(D.parameters()))
        if not bad and math.isfinite(weights):
            return
        if bad:
            at, *values = min(bad)
            what = (f"step {int(at)} (phase {phase_at(phases, int(at) - 1).index}): non-finite "
                    + ", ".join(f"{k} {v:.4g}" for k, v in zip(names, values)))
        else:
            what = "non-finite weights (the losses were finite)"
        message = (f"training diverged at {what}; content.pth keeps the last good checkpoint. "
                   f"Likely cause: {divergence_hint(args)}")
        log(message)
        raise Diverged(message)

    log(f"run {run_dir}: {'S-JKO' if args.sjko else 'UOTM'}, {len(phases)} phase(s), {total_steps} iterations, "
        f"world {world}, device {device}, G {count_parameters(G) / 1e6:.2f}M, D {count_parameters(D) / 1e6:.2f}M")
    try:
        data_iter = real_batches(start_step)
        phase = None
        step = start_step
        while step < total_steps:
            if phase is None or step >= phase.end:
                phase = phase_at(phases, step)
                if phase.index > 0 and step == phase.start:   # a new JKO step: freeze T_{k-1}
                    G_ref = make_ema(G)
                cost_scale = jko_cost_scale(phase.h, dim) if args.sjko else image_cost_scale(args.tau)
                if args.loss == "uot":
                    alpha = alpha_at(args.loss_scheduler, phase.index, len(phases), args.alpha_min, args.alpha_max)
                    phi1, phi2 = select_phi(args.phi1), select_phi(args.phi2)
                    if args.loss_scheduler != "none":
                        phi1, phi2 = ScaledPhi(phi1, alpha), ScaledPhi(phi2, alpha)
                    loss_fn = SemiDualLoss(phi1, phi2)
                noise_std = data_noise_std(phase.index) if args.sjko and not args.no_data_noise else 0.0
                log(f"phase {phase.index}: steps {phase.start}-{phase.end}, cost scale {cost_scale:.3g}, "
                    f"reference {'identity' if G_ref is None else 'T_' + str(phase.index - 1)}")
            scale = lr_scale(step)
            if scale is not None:
                for opt, base in ((opt_G, args.lr_g), (opt_D, args.lr_d)):
                    for group in opt.param_groups:
                        group["lr"] = scale(base)

            real = next(data_iter)
            if noise_std:
                real = real + noise_std * torch.randn_like(real)
            x = torch.randn_like(real)
            with torch.no_grad(), autocast:
                y_ref = x if G_ref is None else G_ref(x, torch.randn(batch, args.nz, device=device))

            penalize_r1 = args.reg_name == "r1" and args.r1_gamma > 0 and step % args.r1_every == 0
            loss_D, penalty, v_real, v_fake, cost = potential_step(
                G_fast, D, D_fast, opt_D, loss_fn, real, x, torch.randn(batch, args.nz, device=device), y_ref,
                cost_scale, r1_weight=0.5 * args.r1_gamma * args.r1_every if penalize_r1 else 0.0,
                gp_weight=args.lmbda if args.reg_name == "gp" else 0.0, autocast=autocast)
            # the map step draws its own source batch (and reference latents), as the public loops do
            x = torch.randn_like(real)
            with torch.no_grad(), autocast:
                y_ref = x if G_ref is None else G_ref(x, torch.randn(batch, args.nz, device=device))
            loss_G = map_step(G, G_fast, D, D_fast, opt_G, loss_fn, x, torch.randn(batch, args.nz, device=device),
                              y_ref, cost_scale, autocast)
            if G_ema is not None:
                update_ema(G_ema, G, args.ema_decay)

            with torch.no_grad():
                row = torch.stack([loss_D, loss_G, penalty, v_real.mean(), v_fake.mean(), cost.mean()]).float()
                acc += row
                bad = ~torch.isfinite(row).all() & (first_bad[0] < 0)
                at = first_bad.new_tensor([step + 1])
                first_bad.copy_(torch.where(bad, torch.cat([at, row.double()]), first_bad))
            acc_n += 1
            step += 1

            if step % args.log_every == 0 or step == total_steps:
                check_finite()
                values = (udist.all_reduce_mean(acc.clone()) / acc_n).tolist()
                # every rank must hold the same weights; a drift would mean a broken gradient sync
                checksum = sum(p.detach().double().sum() for p in list(G.parameters()) + list(D.parameters()))
                sums = udist.all_gather_tensor(checksum)
                elapsed = time.time() - t_last
                record = dict(zip(names, values), step=step, epoch=step / steps_per_epoch, phase=phase.index,
                              lr_g=opt_G.param_groups[0]["lr"], lr_d=opt_D.param_groups[0]["lr"],
                              images_per_s=acc_n * args.batch_size / elapsed, time=time.time(),
                              rank_param_spread=(sums.max() - sums.min()).item())
                if master:
                    stats.append(record)
                    for key in names + ("lr_g", "lr_d", "images_per_s"):
                        tb.add_scalar(key, record[key], step)
                    log(" ".join(f"{k} {record[k]:.4g}" if isinstance(record[k], float) else f"{k} {record[k]}"
                                 for k in ("step", "phase") + names + ("images_per_s",)))
                    bar.set_postfix(loss_D=f"{values[0]:.3f}", loss_G=f"{values[1]:.3f}")
                acc.zero_()
                acc_n, t_last = 0, time.time()
            if master:
                bar.update(1)

            saved = checkpoint(step, final=step == total_steps)
            # ranks agree on stopping every 10 steps: one tiny all-reduce, not one per step
            if step < total_steps and (world == 1 or step % 10 == 0) and \
                    udist.any_rank(stop.signal is not None, device):
                check_finite()
                if not saved:
                    save_content(os.path.join(run_dir, "content.pth"), step, G, D, G_ema, G_ref, opt_G, opt_D,
                                 args, device)
                log(f"stopped by signal at step {step}; content.pth saved; continue with --resume auto")
                return PREEMPTED_EXIT_CODE
        log(f"done: {total_steps} iterations")
        return 0
    finally:   # also on divergence or preemption: the bar ends its line before any error message
        if master:
            bar.close()
            tb.close()
            log_file.close()


# ----------------------------------------------------------------------------------
# Outputs

def save_image_grid(images, path):
    from torchvision.utils import save_image
    buffer = io.BytesIO()
    save_image(images * 0.5 + 0.5, buffer, format="png", nrow=int(math.sqrt(images.shape[0])))
    atomic_write_bytes(path, buffer.getvalue())


def save_toy_outputs(run_dir, tag, name, source, target, generated, metrics, record):
    from uot.metrics import toy_metrics
    from uot.plots import scatter_2d
    source, target, generated = (t.detach().cpu().numpy() for t in (source, target, generated))
    atomic_savez(os.path.join(run_dir, f"samples_{tag}.npz"), source=source, target=target, generated=generated)
    scatter_2d(target, generated, os.path.join(run_dir, f"scatter_{tag}.png"),
               title=f"{name}, step {record['step']}")
    record.update(toy_metrics(generated, target, name))
    metrics.append(record)


@functools.lru_cache(maxsize=1)
def fid_inception(weights, device):
    """The Inception network for --fid_every, loaded once per run."""
    from uot.fid import load_inception
    return load_inception(weights, device)


def run_fid(args, G, sample_shape, device, step, stats, tb, log):
    from uot.fid import compute_fid
    fid = compute_fid(G, sample_shape, args.nz, args.fid_samples, args.fid_ref_stats, device,
                      seed=args.seed, inception=fid_inception(args.inception_weights, device))
    if udist.rank() == 0:
        stats.append(dict(step=step, fid=fid, fid_samples=args.fid_samples, time=time.time()))
        tb.add_scalar("fid", fid, step)
        log(f"step {step}: FID ({args.fid_samples} samples) {fid:.3f}")


# ----------------------------------------------------------------------------------

def main(argv=None):
    """Returns the exit code: 0, PREEMPTED_EXIT_CODE or DIVERGED_EXIT_CODE (UsageError: see __main__)."""
    with StopRequest() as stop:   # from the start: a SIGTERM during startup stops after the first step
        return run_training(argv, stop)


def run_training(argv, stop):
    args = build_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", 1))
    resolve_args(args, world)
    device_kind = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible; use --device cpu")

    # Everything that can fail on user input happens before any file is written.
    torch.manual_seed(args.seed)          # the same initial weights on every rank
    G, D = build_generator(args), build_potential(args)
    if args.dry_run:
        print(f"{'S-JKO' if args.sjko else 'UOTM'} {args.dataset} {args.image_size}px: "
              f"G {count_parameters(G) / 1e6:.2f}M parameters, D {count_parameters(D) / 1e6:.2f}M parameters")
        return 0
    run_dir = os.path.join(args.outdir, args.dataset, args.exp)
    resume_from = check_run_dir(run_dir, args)
    if resume_from:
        check_compatible(read_checkpoint(resume_from)["args"], args, resume_from)
    dataset = None if args.toy else build_image_dataset(args.dataset, args.datadir, args.image_size)
    if dataset is not None:
        if len(dataset) < args.batch_size:
            raise UsageError(f"--batch_size {args.batch_size} is larger than the dataset ({len(dataset)} images); "
                             f"lower --batch_size")
        dataset[0]   # decode one image now: a wrong folder or format fails here, naming the file

    rank, world, local_rank = udist.init_distributed(device_kind, args.dist_timeout)
    device = torch.device(device_kind, local_rank) if device_kind == "cuda" else torch.device("cpu")
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
        udist.broadcast_module(G)
        udist.broadcast_module(D)
        torch.manual_seed(args.seed + rank)   # then a different noise stream per rank
        batch = args.batch_size // world
        if args.toy:
            real_data, steps_per_epoch = None, SYNTHETIC_EPOCH_STEPS
        else:
            on_device = args.data_on_device == "on" or (args.data_on_device == "auto" and args.dataset in SMALL_DATASETS)
            real_data = ImageStream(dataset, batch, rank, world, args.seed, device,
                                    flip=args.dataset in FLIP_DATASETS, on_device=on_device,
                                    num_workers=args.num_workers, channels_last=args.channels_last)
            steps_per_epoch = real_data.steps_per_epoch
        if args.sjko:
            phases = jko_phases(args.num_phase, args.init_h, args.h, args.init_num_iterations, args.num_iterations)
        else:
            phases = [Phase(0, 0, args.num_epoch * steps_per_epoch, None)]
        if rank == 0:
            if args.overwrite and not resume_from and os.path.isdir(run_dir):
                shutil.rmtree(run_dir)
            os.makedirs(run_dir, exist_ok=True)
            for name in os.listdir(run_dir):   # uot.io's temporary files, left by a kill mid-write
                if name.startswith(".tmp-"):
                    os.remove(os.path.join(run_dir, name))
            atomic_write_json(os.path.join(run_dir, "options.json"), json_safe(vars(args)))
        try:
            return training_loop(args, run_dir, device, G, D, real_data, steps_per_epoch, phases, resume_from,
                                 stop)
        except Diverged as err:
            if rank == 0:
                print(f"error: {err}", file=sys.stderr, flush=True)
            return DIVERGED_EXIT_CODE
    finally:
        udist.cleanup()


if __name__ == "__main__":
    sys.exit(exit_on_usage_error(main))
