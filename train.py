"""Train a UOTM or S-JKO generator on images or 2-D toy data.

    python train.py --exp kl --phi1 kl --phi2 kl                        # UOTM, CIFAR-10
    python train.py --exp sjko --phi2 kl --num_phase 100 --init_h 0.1 --h 0.1 \
        --init_num_iterations 10000 --num_iterations 2000 --use_ema --lr_scheduler
    torchrun --nproc_per_node 4 train.py ...                           # several GPUs

UOTM is the one-phase case of the S-JKO loop. Giving any S-JKO schedule flag (--num_phase,
--h, --init_h, --init_num_iterations, --num_iterations) selects the S-JKO mode: the public
S-JKO code's defaults, a run counted in iterations, c = ||y - y_ref||^2 / (2 d h).
Otherwise the UOTM mode: the public UOTM code's defaults, epochs, c = tau ||x - y||^2.
README.md states the rules; docs/runs.md lists what a run writes.
"""
import argparse
import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from datasets_prep import IMAGE_DATASETS, build_image_dataset, dataset_info, default_image_size, measures
from datasets_prep.loader import ImageStream, ToyStream
from datasets_prep.measures.grey_images import FLOOR_DRAWS
from datasets_prep.toy import TOY_TRANSLATIONS, TOYS_2D, data_toy, metric_args, sample_toy
from datasets_prep import translation
from score_sde import (add_model_args, build_generator, build_potential, count_parameters, initial_reference,
                       source_shape)
from uot import dist as udist
from uot.cli import ArgumentParser, Refused, check_non_negative, check_phi, check_positive
from uot.errors import UsageError, exit_on_usage_error
from uot.io import atomic_torch_save, atomic_write_json, prepare_folder, read_checkpoint
from uot.losses import PAIRINGS, GANLoss, JSDLoss, SemiDualLoss, image_cost_scale, jko_cost_scale
from uot.monitor import (DIVERGED_EXIT_CODE, PREEMPTED_EXIT_CODE, RANK_LOST_EXIT_CODE, Diverged, RunLog, StepStats,
                         StopRequest)
from uot.samples import save_image_grid, save_toy_samples
from uot.schedule import Phase, alpha_at, cosine, data_noise_std, jko_phases, phase_at
from uot.state import TrainState, check_compatible, load_rng_state_dict, rng_state_dict
from uot.steps import map_step, potential_step
from utils import ScaledPhi, select_phi  # utils: where users register their own Psi*

# Flags of the public train.py that have no counterpart here: each stops with what it did there
# and what to write instead (docs/reference.md lists every public flag whose meaning differs).
PUBLIC_FLAGS_REFUSED = {
    "--cost": "the public S-JKO train.py declares it but never reads it: its cost is always the squared "
              "distance (w2), as here; drop it",
    "--init_noise": "the public train_JSD.py declares it but never reads it: the data noise is 1/(32 (k + 1)) "
                    "in phase k there and here (--no_data_noise turns it off); drop it",
    "--uniform_quantization": "the public train_JSD.py declares it but never reads it; drop it",
    "--fid": "in the public S-JKO train.py it is store_false: passing it turns FID during training off; here "
             "FID during training is off unless --fid_every N; drop it",
}
# --use_ema before the mode is known: the two public codes give it opposite meanings (resolve_args)
USE_EMA_AS_PUBLISHED = "as published"
SJKO_FLAGS = ("num_phase", "init_h", "h", "init_num_iterations", "num_iterations")
TRAIN_TOYS = TOYS_2D + tuple(TOY_TRANSLATIONS)   # the 2-D datasets: --model_name toy
DATASET_NAMES = IMAGE_DATASETS + TRAIN_TOYS
# Arguments the networks' shapes depend on: a run started --init_from another must share them.
NETWORK_KEYS = ("model_name", "image_size", "num_channels", "num_channels_dae", "n_mlp", "ch_mult",
             "num_res_blocks", "attn_resolutions", "resamp_with_conv", "conditional", "fir",
             "fir_kernel", "skip_rescale", "resblock_type", "progressive", "progressive_input",
             "progressive_combine", "embedding_type", "fourier_scale", "not_use_tanh",
             "z_emb_dim", "nz", "ngf", "mlp_width", "mlp_depth")
# ... and a resume must not change them, nor the data.
RESUME_KEYS = NETWORK_KEYS + ("dataset",)

# The defaults that differ between the three public training scripts: Jae-Moo/UOTM train.py
# (UOTM mode), Jae-Moo/Scalable-JKO train.py (S-JKO mode) and its train_JSD.py (S-JKO mode
# without --phi2). These flags default to None and take the value of their mode.
_SJKO = dict(lr_g=2e-4, eta_min=5e-5, phi1="linear", phi2="kl", use_ema=False, num_phase=1000, init_h=1.0, h=1.0,
             init_num_iterations=20000, num_iterations=400, alpha_max=5.0, potential_pairing="per_sample",
             save_image_every=2000, save_content_every=2000, save_ckpt_every=10000)
MODE_DEFAULTS = {
    "uotm": dict(lr_g=1.6e-4, eta_min=1e-5, phi1="kl", phi2="kl", use_ema=True, alpha_max=1.0,
                 potential_pairing="all_pairs", save_image_every=10, save_content_every=10, save_ckpt_every=100),
    "sjko": _SJKO,
    "sjko_jsd": dict(_SJKO, num_phase=50, init_h=0.1, h=0.1, init_num_iterations=10000, num_iterations=2000),
}


# ----------------------------------------------------------------------------------
# Command line

def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--exp", default="exp", help="experiment name: the run directory is <outdir>/<dataset>/<exp>")
    run.add_argument("--outdir", default="train_logs")
    run.add_argument("--dataset", default="cifar10", help=f"one of {', '.join(DATASET_NAMES)}; a translation "
                     f"({', '.join(translation.TRANSLATIONS)}) maps a source dataset, not N(0, I)")
    run.add_argument("--datadir", default="./data", help="data root of the image datasets")
    run.add_argument("--seed", type=int, default=1024)
    run.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    run.add_argument("--resume", nargs="?", const="yes", default=None, choices=["yes", "auto"],
                     help="continue from <run dir>/content.pth; 'auto' starts fresh when there is none")
    run.add_argument("--overwrite", action="store_true", help="start over in a run directory that holds a run")
    run.add_argument("--init_from", default=None, metavar="CONTENT.pth",
                     help="start from another run's networks: G and its EMA from the map it evaluates (its EMA "
                          "when it kept one), D as it was; steps, optimisers and schedules start afresh. In S-JKO "
                          "mode the loaded map can stand for phase 0: --init_num_iterations 0")
    run.add_argument("--dry_run", action="store_true",
                     help="validate the flags, build the networks, print the resolved settings, and stop")
    add_model_args(p)
    p.set_defaults(num_channels=None)   # the dataset's; given, it must agree (resolve_args)
    add_training_args(p)
    add_output_args(p)
    return p


def add_training_args(p):
    """The algorithm's flags. "mode" marks a default that MODE_DEFAULTS sets per mode."""
    opt = p.add_argument_group("training (defaults: the published CIFAR-10 runs of each mode)")
    opt.add_argument("--batch_size", type=int, default=256, help="global batch, split across ranks")
    opt.add_argument("--num_epoch", type=int, default=600, help="UOTM mode: epochs")
    opt.add_argument("--lr_g", type=float, default=None, help="mode: 1.6e-4 UOTM, 2e-4 S-JKO")
    opt.add_argument("--lr_d", type=float, default=1e-4)
    opt.add_argument("--beta1", type=float, default=0.5)
    opt.add_argument("--beta2", type=float, default=0.9)
    opt.add_argument("--schedule", type=int, default=1800, help="UOTM mode: cosine LR period in epochs")
    opt.add_argument("--no_lr_decay", action="store_true", help="UOTM mode: constant learning rates")
    opt.add_argument("--eta_min", type=float, default=None, help="cosine LR floor; mode: 1e-5 UOTM, 5e-5 S-JKO")
    opt.add_argument("--ema", dest="use_ema", action="store_true", default=None,
                     help="keep an EMA of G, in either mode; mode: on for UOTM, off for S-JKO")
    opt.add_argument("--no_ema", "--no_use_ema", dest="use_ema", action="store_false", help="no EMA of G")
    opt.add_argument("--use_ema", dest="use_ema", action="store_const", const=USE_EMA_AS_PUBLISHED,
                     help="S-JKO mode: --ema (the S-JKO code's store_true); refused in UOTM mode, where the UOTM "
                          "code's --use_ema is store_false and turns the EMA off")
    opt.add_argument("--ema_decay", type=float, default=0.9999)
    opt.add_argument("--tau", type=float, default=1e-3, help="UOTM mode: cost c = tau * ||x - y||^2")
    opt.add_argument("--phi1", default=None, help="Psi1* (source marginal); mode: kl UOTM, linear S-JKO")
    opt.add_argument("--phi2", default=None, help="Psi2* (target marginal); default kl; S-JKO without it: JSD")
    opt.add_argument("--loss", choices=["uot", "jsd", "gan"], default=None,
                     help="semi-dual UOT, S-JKO-JSD or a plain non-saturating GAN (default: jsd for S-JKO "
                          "without --phi2, else uot)")
    opt.add_argument("--potential_pairing", choices=PAIRINGS, default=None,
                     help="Psi1*(v - c) per sample (the paper) or over all pairs of the batch (the public UOTM "
                          "image code); mode: all_pairs UOTM, per_sample S-JKO")
    opt.add_argument("--reg_name", choices=["none", "r1", "gp"], default="r1")
    opt.add_argument("--r1_gamma", type=float, default=None, help="R1 weight: (gamma / 2) E ||grad v(y)||^2 (0.2)")
    opt.add_argument("--lmbda", type=float, default=None,
                     help="weight of --reg_name's penalty (the S-JKO CLI's name: with r1, the same as --r1_gamma; "
                          "gp: default 10)")
    opt.add_argument("--clip", type=float, default=0.0,
                     help="clip the potential's gradient to this norm before its step, as the S-JKO code does (0: off)")
    opt.add_argument("--r1_every", "--lazy_reg", dest="r1_every", type=int, default=1,
                     help="lazy R1: every k potential steps, scaled by k (1: every step, as published)")
    jko = p.add_argument_group("S-JKO (giving any of the first five selects the S-JKO mode)")
    jko.add_argument("--num_phase", type=int, default=None, help="K, the number of JKO steps (mode: 1000; JSD 50)")
    jko.add_argument("--init_h", type=float, default=None, help="step size of phase 0 (mode: 1; JSD 0.1)")
    jko.add_argument("--h", type=float, default=None, help="step size of phases 1.. (mode: 1; JSD 0.1)")
    jko.add_argument("--init_num_iterations", type=int, default=None, help="iterations of phase 0 (20000; JSD 10000)")
    jko.add_argument("--num_iterations", type=int, default=None, help="iterations of phases 1.. (400; JSD 2000)")
    jko.add_argument("--lr_scheduler", action="store_true", help="cosine LR over all iterations")
    jko.add_argument("--loss_scheduler", choices=["none", "steplr", "linear", "cosine"], default="none")
    jko.add_argument("--alpha_min", type=float, default=1.0)
    jko.add_argument("--alpha_max", type=float, default=None, help="mode: 5 S-JKO")
    jko.add_argument("--no_data_noise", action="store_true",
                     help="do not add N(0, (1/(32(k+1)))^2) noise to real data in phase k")


def add_output_args(p):
    out = p.add_argument_group("outputs (counted in epochs for UOTM, iterations for S-JKO) and speed")
    out.add_argument("--log_every", "--print_every", type=int, default=100,
                     help="iterations between stats.jsonl lines (--print_every: the public codes' name)")
    for flag, reason in PUBLIC_FLAGS_REFUSED.items():
        out.add_argument(flag, action=Refused, reason=reason)
    out.add_argument("--save_image_every", type=int, default=None, help="mode: 10 epochs UOTM, 2000 iterations S-JKO")
    out.add_argument("--save_content_every", type=int, default=None, help="mode: 10 epochs, 2000 iterations")
    out.add_argument("--save_ckpt_every", type=int, default=None, help="mode: 100 epochs, 10000 iterations")
    out.add_argument("--measure_samples", type=int, default=None,
                     help="samples per save on a dataset with a measure (datasets_prep.measures; default: 2000)")
    out.add_argument("--fid_every", type=int, default=0, help="FID of the EMA generator (0: never)")
    out.add_argument("--fid_samples", type=int, default=5000)
    out.add_argument("--fid_ref_stats", default=None,
                     help="reference statistics for --fid_every: an npz, or a public repository's *_stat.npy")
    out.add_argument("--inception_weights", default=None,
                     help="local FID Inception weights for --fid_every (default: the torch hub cache)")
    out.add_argument("--amp", choices=["none", "bf16"], default="none", help="bf16 autocast")
    out.add_argument("--channels_last", action="store_true")
    out.add_argument("--compile", action="store_true", help="torch.compile G and D (R1 passes stay eager)")
    out.add_argument("--num_threads", type=int, default=None,
                     help="torch CPU threads (default on the CPU: $OMP_NUM_THREADS if set, else 1, the fastest for "
                          "the small models trained on CPUs and robust beside other jobs; docs/performance.md)")
    out.add_argument("--num_workers", type=int, default=4, help="DataLoader workers for large datasets")
    out.add_argument("--data_on_device", choices=["auto", "on", "off"], default="auto",
                     help="hold the dataset on the device as uint8 (auto: the small datasets)")
    out.add_argument("--dist_timeout", type=int, default=600, help="seconds before a stuck collective fails")


def resolve_args(args, world):
    """Fill in the defaults of the mode and validate every flag. Touches no file."""
    args.sjko = any(getattr(args, k) is not None for k in SJKO_FLAGS)
    if args.dataset not in DATASET_NAMES:
        raise UsageError(f"--dataset {args.dataset} is unknown; choose one of {', '.join(DATASET_NAMES)}")
    args.toy = args.dataset in TRAIN_TOYS
    if args.toy != (args.model_name == "toy"):
        raise UsageError(f"--dataset {args.dataset} with --model_name {args.model_name}: the 2-D toy datasets "
                         f"({', '.join(TRAIN_TOYS)}) need --model_name toy --image_size 2, and only they take it")
    if args.dataset in translation.TRANSLATIONS and args.model_name == "otm":
        raise UsageError(f"--dataset {args.dataset} maps source images, and --model_name otm maps 3 x 8 x 8 noise; "
                         f"pick a --model_name whose map takes images")
    channels = 1 if args.toy else dataset_info(args.dataset).channels
    if args.num_channels not in (None, channels):
        raise UsageError(f"--num_channels {args.num_channels}: --dataset {args.dataset} has {channels} "
                         f"channel{'s' if channels > 1 else ''}; drop --num_channels or pass {channels}")
    args.num_channels = channels
    args.image_size = (args.image_size or 2) if args.toy else default_image_size(args.dataset, args.image_size)
    args.loss = args.loss or ("jsd" if args.sjko and args.phi2 is None else "uot")
    args.mode = "uotm" if not args.sjko else "sjko_jsd" if args.loss == "jsd" else "sjko"
    if args.use_ema == USE_EMA_AS_PUBLISHED:
        if args.mode == "uotm":
            raise UsageError("--use_ema in UOTM mode: the public UOTM train.py declares it store_false, so there it "
                             "turns the EMA off; here the EMA is on by default: drop --use_ema to keep it, or write "
                             "--no_ema to turn it off")
        args.use_ema = True
    for key, value in MODE_DEFAULTS[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.sjko:   # the S-JKO code's select_phi('softplus') is 2 softplus(s) - 2 log 2
        args.phi1, args.phi2 = (("softplus_sjko" if phi == "softplus" else phi) for phi in (args.phi1, args.phi2))
    if args.reg_name == "r1" and None not in (args.r1_gamma, args.lmbda) and args.r1_gamma != args.lmbda:
        raise UsageError(f"--r1_gamma {args.r1_gamma} and --lmbda {args.lmbda} both set the R1 weight: give one")
    if args.reg_name == "r1":
        args.r1_gamma = next(w for w in (args.r1_gamma, args.lmbda, 0.2) if w is not None)
    args.lmbda = 10.0 if args.lmbda is None else args.lmbda

    check_phi(args, "phi1", "phi2")
    check_positive(args, "tau", "lr_g", "lr_d", "batch_size", "num_epoch", "log_every", "r1_every", "ema_decay",
                   "save_image_every", "save_content_every", "save_ckpt_every", "image_size")
    for flag in ("num_threads", "measure_samples"):
        if getattr(args, flag) is not None:
            check_positive(args, flag)
    if args.sjko:
        check_positive(args, "h", "init_h", "num_phase", "num_iterations")
        if args.init_num_iterations == 0 and not args.init_from:
            raise UsageError("--init_num_iterations 0 skips phase 0, which needs a map to start from: "
                             "give --init_from RUN/content.pth, or a positive --init_num_iterations")
        if args.init_num_iterations == 0 and args.num_phase < 2:
            raise UsageError("--init_num_iterations 0 with --num_phase 1 trains nothing: raise --num_phase")
        check_non_negative(args, "init_num_iterations")
    if args.init_from and not os.path.isfile(args.init_from):
        raise UsageError(f"--init_from {args.init_from}: no such file; give a run's content.pth")
    check_non_negative(args, "lmbda", "fid_every", "clip", *(["r1_gamma"] if args.reg_name == "r1" else []))
    if not args.ema_decay < 1:
        raise UsageError(f"--ema_decay must be in (0, 1) (got {args.ema_decay})")
    if args.loss_scheduler != "none" and not 0 < args.alpha_min <= args.alpha_max:
        raise UsageError("--alpha_min / --alpha_max: need 0 < alpha_min <= alpha_max")
    if args.batch_size % world:
        raise UsageError(f"--batch_size {args.batch_size} is the global batch and must divide by the "
                         f"{world} processes; pick a multiple of {world}")
    if args.fid_every and args.dataset in translation.TRANSLATIONS:
        raise UsageError(f"--fid_every: FID samples from noise, but --dataset {args.dataset} maps a source "
                         f"dataset; drop --fid_every (the public code computes no FID for it either)")
    if args.fid_every and not args.fid_ref_stats:
        raise UsageError("--fid_every needs --fid_ref_stats FILE.npz (make one with test.py --compute_stats)")
    if args.fid_ref_stats:   # read now: a file it cannot use fails before training, not at the first FID
        from uot.fid import load_stats
        load_stats(args.fid_ref_stats)
    return args


def describe(args, G, D):
    """The resolved settings, as --dry_run prints them and log.txt starts with."""
    if args.sjko:
        length = (f"S-JKO: {args.num_phase} phase(s), {args.init_num_iterations} + {args.num_phase - 1} x "
                  f"{args.num_iterations} iterations, init_h {args.init_h}, h {args.h}")
        lr = f"cosine over the run to {args.eta_min}" if args.lr_scheduler else "constant"
    else:
        length = f"UOTM: {args.num_epoch} epochs, tau {args.tau}"
        lr = "constant" if args.no_lr_decay else f"cosine per epoch over {args.schedule} epochs to {args.eta_min}"
    loss = (f"{args.loss} phi1 {args.phi1} phi2 {args.phi2} pairing {args.potential_pairing}" if args.loss == "uot"
            else args.loss)
    reg = {"r1": f"R1 gamma {args.r1_gamma}", "gp": f"GP lambda {args.lmbda}", "none": "no penalty"}[args.reg_name]
    return "\n".join([
        f"{length}; {args.dataset} {args.image_size}px, batch {args.batch_size}",
        f"loss {loss}; {reg}",
        f"lr_g {args.lr_g} lr_d {args.lr_d} betas ({args.beta1}, {args.beta2}), {lr}",
        f"EMA {args.ema_decay if args.use_ema else 'off'}; nz {args.nz}; seed {args.seed}"
        + (f"; networks from {args.init_from}" if args.init_from else ""),
        f"{args.model_name}: G {count_parameters(G) / 1e6:.2f}M parameters, D {count_parameters(D) / 1e6:.2f}M parameters"])


def divergence_hint(args):
    """The likely cause of a non-finite loss and its fix, for the Diverged message."""
    if args.loss == "uot" and "kl" in (args.phi1, args.phi2):
        return ("Psi* kl is exp(s) - 1 and overflows once the potential grows: lower --lr_d, raise --r1_gamma, "
                "or try --phi1/--phi2 softplus")
    return "the potential grew without bound: lower --lr_d (and --lr_g) or raise --r1_gamma"


# ----------------------------------------------------------------------------------
# Set-up: everything the loop runs on, built once (scripts/bench_train.py builds its
# variants through the same function)

@dataclass
class Run:
    args: object
    device: torch.device
    state: TrainState
    G_fast: torch.nn.Module    # G or torch.compile(G): the same parameters
    D_fast: torch.nn.Module
    autocast: object
    data: object               # ImageStream or ToyStream; None for synthetic batches (benchmarks)
    phases: list
    steps_per_epoch: int
    batch: int                 # per rank
    source_shape: tuple
    initial_reference: object  # the phase-0 reference map: x -> y_ref
    inception: object = None   # the FID network of --fid_every (loaded before the run starts)
    source: object = None      # translations: the stream of source batches (None: N(0, I))
    source_test: object = None # translations: the source test images the saves map (images only)


@dataclass
class PhaseSetup:
    phase: Phase
    loss: object
    cost_scale: float
    reference: object   # x -> y_ref, the point T(x, z) is measured against
    data_noise: float


def build_training(args, device, G, D, dataset=None, source=None):
    """The run's state, data stream and schedule on `device`, from the networks `main` built;
    for an image translation, `source` = (its training split, its test split) as datasets."""
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    udist.broadcast_module(G)
    udist.broadcast_module(D)
    state = TrainState(G, D, args.lr_g, args.lr_d, (args.beta1, args.beta2), args.ema_decay if args.use_ema else None)
    rank, world = udist.rank(), udist.world_size()
    batch = args.batch_size // world
    if args.toy:
        data = ToyStream(data_toy(args.dataset), args.image_size, batch, device)
    elif dataset is not None:
        info = dataset_info(args.dataset)
        data = ImageStream(dataset, batch, rank, world, args.seed, device, flip=info.flip,
                           on_device=args.data_on_device == "on" or (args.data_on_device == "auto" and info.small),
                           num_workers=args.num_workers, channels_last=args.channels_last)
    else:
        data = None
    steps_per_epoch = data.steps_per_epoch if data is not None else ToyStream.steps_per_epoch
    if args.sjko:
        phases = jko_phases(args.num_phase, args.init_h, args.h, args.init_num_iterations, args.num_iterations)
    else:
        phases = [Phase(0, 0, args.num_epoch * steps_per_epoch, None)]
    G_fast, D_fast = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else nullcontext()
    run = Run(args, device, state, G_fast, D_fast, autocast, data, phases, steps_per_epoch, batch,
              source_shape(args), initial_reference(args))
    if args.dataset in TOY_TRANSLATIONS:
        run.source = ToyStream(TOY_TRANSLATIONS[args.dataset][0], args.image_size, batch, device)
    elif source is not None:
        run.source = ImageStream(source[0], batch, rank, world, args.seed, device, flip=False,
                                 on_device=args.data_on_device != "off", num_workers=args.num_workers)
        run.source_test = translation.to_model_input(source[1])
    return run


def enter_phase(run, phase, log):
    """The losses and reference map of `phase`; at its first step, T of the previous phase is frozen."""
    args, state = run.args, run.state
    if phase.index > 0 and state.step == phase.start:
        state.freeze_reference()
    if args.loss == "uot":
        phi1, phi2 = select_phi(args.phi1), select_phi(args.phi2)
        if args.loss_scheduler != "none":
            alpha = alpha_at(args.loss_scheduler, phase.index, len(run.phases), args.alpha_min, args.alpha_max)
            phi1, phi2 = ScaledPhi(phi1, alpha), ScaledPhi(phi2, alpha)
        loss = SemiDualLoss(phi1, phi2, args.potential_pairing)
    else:
        loss = JSDLoss() if args.loss == "jsd" else GANLoss()
    if state.G_ref is None:
        reference = run.initial_reference
    else:
        reference = lambda x: state.G_ref(x, torch.randn(x.shape[0], args.nz, device=x.device))  # noqa: E731
    data_dim = args.image_size if args.toy else args.num_channels * args.image_size ** 2   # d of c = |y - y_ref|^2 / (2dh)
    cost_scale = jko_cost_scale(phase.h, data_dim) if args.sjko else image_cost_scale(args.tau)
    noise = data_noise_std(phase.index) if args.sjko and not args.no_data_noise else 0.0
    log(f"phase {phase.index}: steps {phase.start}-{phase.end}, cost scale {cost_scale:.3g}, "
        f"reference {'T_' + str(phase.index - 1) if state.G_ref is not None else 'the source'}")
    return PhaseSetup(phase, loss, cost_scale, reference, noise)


def learning_rates(args, step, total_steps, steps_per_epoch):
    """(lr_g, lr_d) at `step`: cosine per epoch over --schedule epochs (UOTM), or per iteration
    over the run with --lr_scheduler (S-JKO), as the public schedulers step."""
    if (args.sjko and not args.lr_scheduler) or (not args.sjko and args.no_lr_decay):
        return args.lr_g, args.lr_d
    t, period = (step, total_steps) if args.sjko else (step // steps_per_epoch, args.schedule)
    return cosine(args.lr_g, args.eta_min, t, period), cosine(args.lr_d, args.eta_min, t, period)


def iteration(run, ps, real, sources=None):
    """One iteration: a potential step on a source batch, a map step on a fresh one (as the
    public loops draw them), then the EMA. Source batches are N(0, I), or for a translation
    the next two of `sources`. Returns the statistics, 0-d tensors on the device."""
    args, state = run.args, run.state
    if ps.data_noise:
        real = real + ps.data_noise * torch.randn_like(real)

    def source_batch():
        x = next(sources) if sources is not None else torch.randn((run.batch, *run.source_shape), device=run.device)
        return x, torch.randn(run.batch, args.nz, device=run.device)

    x, z = source_batch()
    with torch.no_grad(), run.autocast:
        y_ref = ps.reference(x) if ps.loss.potential_uses_cost else None
    r1 = args.reg_name == "r1" and args.r1_gamma > 0 and state.step % args.r1_every == 0
    loss_D, penalty, v_real, v_fake = potential_step(
        run.G_fast, run.D_fast, state.opt_D, ps.loss, real, x, z, y_ref, ps.cost_scale,
        r1_weight=0.5 * args.r1_gamma * args.r1_every if r1 else 0.0,
        gp_weight=args.lmbda if args.reg_name == "gp" else 0.0, clip=args.clip, D_eager=state.D,
        autocast=run.autocast)
    x, z = source_batch()
    with torch.no_grad(), run.autocast:
        y_ref = ps.reference(x)
    loss_G, cost = map_step(run.G_fast, run.D_fast, state.opt_G, ps.loss, x, z, y_ref, ps.cost_scale, run.autocast)
    state.update_ema()
    return dict(loss_D=loss_D, loss_G=loss_G, penalty=penalty, v_real=v_real, v_fake=v_fake, cost=cost)


# ----------------------------------------------------------------------------------
# The loop

def training_loop(run, run_dir, log, stop):
    """Returns 0 when done, PREEMPTED_EXIT_CODE after a stop signal; raises Diverged."""
    args, state = run.args, run.state
    total = run.phases[-1].end
    unit = 1 if args.sjko else run.steps_per_epoch   # steps per count of the --*_every flags
    stats = StepStats(run.device)

    def check_finite():   # the divergence guard: before every write, and at every log step
        checksums = udist.all_gather_tensor(state.weights_checksum())
        stats.check(checksums.sum().item(), lambda s: f"step {s} (phase {phase_at(run.phases, s - 1).index})",
                    divergence_hint(args))
        return checksums

    batches = run.data.batches(state.step)
    sources = run.source.batches(2 * state.step) if run.source is not None else None   # two per iteration
    ps = None
    while state.step < total:
        # A new JKO phase: the losses and the reference map it trains against.
        if ps is None or state.step >= ps.phase.end:
            ps = enter_phase(run, phase_at(run.phases, state.step), log.log)
        # One iteration.
        state.set_learning_rates(*learning_rates(args, state.step, total, run.steps_per_epoch))
        stats.add(state.step + 1, **iteration(run, ps, next(batches), sources))
        state.step += 1
        step = state.step

        # The divergence guard, before statistics are logged or anything is saved.
        log_now = step % args.log_every == 0 or step == total
        n, at_unit = divmod(step, unit)
        due = [save for save, every in ((save_checkpoint, args.save_content_every),
                                        (save_generator, args.save_ckpt_every),
                                        (save_samples, args.save_image_every),
                                        (evaluate_fid, args.fid_every))
               if every and (step == total or (at_unit == 0 and n % every == 0))]
        if log_now or due:
            checksums = check_finite()

        # Statistics every --log_every iterations (rank 0 writes them).
        if log_now:
            means, count, seconds = stats.take_means()
            lr_g, lr_d = state.opt_G.param_groups[0]["lr"], state.opt_D.param_groups[0]["lr"]
            record = dict(means, step=step, epoch=step / run.steps_per_epoch, phase=ps.phase.index, lr_g=lr_g,
                          lr_d=lr_d, images_per_s=count * args.batch_size / seconds, time=time.time(),
                          rank_param_spread=(checksums.max() - checksums.min()).item())
            log.record_stats(record, scalars=StepStats.NAMES + ("lr_g", "lr_d", "images_per_s"))
            log.log(" ".join(f"{k} {record[k]:.4g}" for k in ("step", "phase") + StepStats.NAMES + ("images_per_s",)))
        log.advance()

        # Saves, each when its --*_every flag says so (counted in epochs or iterations).
        for save in due:
            save(run, run_dir, n, log)

        # A stop signal (the ranks agree every 10 steps): save and leave, to be resumed.
        if step < total and (udist.world_size() == 1 or step % 10 == 0) and \
                udist.any_rank(stop.signal is not None, run.device):
            check_finite()
            if save_checkpoint not in due:
                save_checkpoint(run, run_dir, n, log)
            log.log(f"stopped by signal at step {step}; content.pth saved; continue with --resume auto")
            return PREEMPTED_EXIT_CODE
    log.log(f"done: {total} iterations")
    return 0


# ----------------------------------------------------------------------------------
# Saves. Each takes (run, run_dir, n, log), n counting epochs (UOTM) or iterations (S-JKO).

def save_checkpoint(run, run_dir, n, log):
    """content.pth: the TrainState, every rank's RNG states and the arguments (all ranks call it)."""
    rng = rng_state_dict(run.device)
    if udist.rank() == 0:
        atomic_torch_save(dict(run.state.state_dict(), **rng, args=json_safe(vars(run.args))),
                          os.path.join(run_dir, "content.pth"))


def save_generator(run, run_dir, n, log):
    """netG_<n>.pth: the weights of the generator to evaluate (the EMA when there is one)."""
    if udist.rank() == 0:
        atomic_torch_save(run.state.G_eval.state_dict(), os.path.join(run_dir, f"netG_{n}.pth"))


def save_samples(run, run_dir, n, log):
    """A metrics.json record and, from fixed noise: samples_<n>.png (images; on a dataset with a
    measure, datasets_prep.measures, also its measures of the samples, and once, in floor.json, the
    same measures of held-out real images at the same n), or samples_<n>.npz and scatter_<n>.png
    with the toy metrics (2-D toys). A translation maps fixed source test samples instead, adds
    its measures and shows its images below their sources."""
    if udist.rank() != 0:
        return
    args, G = run.args, run.state.G_eval
    fixed = torch.Generator().manual_seed(args.seed)   # the same noise at every save
    measure, outliers = measures.dataset_measure(args.dataset, args.datadir)
    count = 4000 if args.toy else (args.measure_samples or measure.recipe.samples) if measure else 64
    if run.source_test is not None:   # an image translation maps source test images (all that are measured)
        x = run.source_test[:None if args.dataset in translation.MEASURED else count]
    elif args.dataset in TOY_TRANSLATIONS:
        x = translation.toy_source(args.dataset, count, args.image_size, generator=fixed)
    else:
        x = torch.randn((count, *run.source_shape), generator=fixed)
    x, count = x.to(run.device), len(x)
    z = torch.randn(count, args.nz, generator=fixed).to(run.device)
    with torch.no_grad():
        generated = torch.cat([G(x[i:i + 1000], z[i:i + 1000]) for i in range(0, count, 1000)]).float()
    record = dict(step=run.state.step, phase=phase_at(run.phases, max(run.state.step - 1, 0)).index)
    if args.dataset in translation.TRANSLATIONS:
        record.update(measures.translation_metrics(args.dataset, x, generated))
    if args.toy:
        target = sample_toy(data_toy(args.dataset), count, dim=args.image_size, generator=fixed)
        record.update(save_toy_samples(run_dir, n, x, target, generated, f"{args.dataset}, step {record['step']}",
                                       **metric_args(args.dataset)))
    elif args.dataset in translation.TRANSLATIONS:   # rows of sources, each above the row of their images
        save_image_grid(translation.beside_sources(x, generated), os.path.join(run_dir, f"samples_{n}.png"))
    else:
        save_image_grid(generated[:64], os.path.join(run_dir, f"samples_{n}.png"))
        if measure:
            record.update(measure.metrics(generated, outliers))
            save_floor(measure, count, run_dir, log)
    log.record_metrics(record)


def save_floor(measure, count, run_dir, log):
    """floor.json, once per run: every measure of sets of `count` held-out real images (mean and
    sd over their draws), the floor the run's scores stand against."""
    path = os.path.join(run_dir, "floor.json")
    if os.path.isfile(path):
        return
    floor = measure.floor(count)
    atomic_write_json(path, dict(measure=measure.recipe.name, n=count, draws=FLOOR_DRAWS,
                                 sets="held-out real images", **{k: list(v) for k, v in floor.items()}))
    key = measure.fd_key
    log.log(f"floor of the measures at n = {count} (held-out real images, {FLOOR_DRAWS} draws): "
            f"{key} {floor[key][0]:.3f} +- {floor[key][1]:.3f}, precision {floor['precision'][0]:.3f}, "
            f"recall {floor['recall'][0]:.3f}")


def evaluate_fid(run, run_dir, n, log):
    """FID of the evaluation generator on --fid_samples samples (all ranks draw their share)."""
    from uot.fid import compute_fid
    args = run.args
    fid = compute_fid(run.state.G_eval, run.source_shape, args.nz, args.fid_samples, args.fid_ref_stats,
                      run.device, seed=args.seed, inception=run.inception)
    log.record_stats(dict(step=run.state.step, fid=fid, fid_samples=args.fid_samples, time=time.time()),
                     scalars=("fid",))
    log.log(f"step {run.state.step}: FID ({args.fid_samples} samples) {fid:.3f}")


def json_safe(d):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------------
# Run directory

def check_run_dir(run_dir, args):
    """Refuse to clobber another run or to resume from nothing. Returns the checkpoint to
    resume (read once, here), or None for a fresh start."""
    content, options = os.path.join(run_dir, "content.pth"), os.path.join(run_dir, "options.json")
    if args.resume == "yes" and not os.path.exists(content):
        raise UsageError(f"--resume: no checkpoint at {content}; drop --resume or use --resume auto")
    if args.resume and os.path.exists(content):
        ckpt = read_checkpoint(content)
        check_compatible(ckpt["args"], args, content, RESUME_KEYS)
        return ckpt
    if args.resume == "auto" and os.path.exists(options):
        # killed before its first content.pth: start over, if it is the same experiment
        with open(options, encoding="utf-8") as f:
            check_compatible(json.load(f), args, options, RESUME_KEYS)
        return None
    if (os.path.exists(options) or os.path.exists(content)) and not args.overwrite:
        raise UsageError(f"{run_dir} already holds a run: continue it with --resume, start over with "
                         f"--overwrite, or pick another --exp")
    return None


def prepare_run_dir(run_dir, args, fresh):
    """Rank 0: a clean directory for a fresh --overwrite run, no temporary files of a killed
    write, and options.json."""
    if udist.rank() != 0:
        return
    if fresh and args.overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    prepare_folder(run_dir, "--outdir")
    atomic_write_json(os.path.join(run_dir, "options.json"), json_safe(vars(args)))


# ----------------------------------------------------------------------------------

def check_batch_fits(args, dataset, what):
    if len(dataset) < args.batch_size:
        raise UsageError(f"--batch_size {args.batch_size} is larger than {what} ({len(dataset)} images); "
                         f"lower --batch_size")


def main(argv=None):
    """Returns the exit code: 0, PREEMPTED_EXIT_CODE or DIVERGED_EXIT_CODE (UsageError: see __main__)."""
    with StopRequest() as stop:   # from the start: a SIGTERM during startup stops after the first step
        return run_training(argv, stop)


def run_training(argv, stop):
    args = resolve_args(build_parser().parse_args(argv), int(os.environ.get("WORLD_SIZE", 1)))
    device_kind = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible; use --device cpu")

    # Everything that can fail on user input happens before any file is written.
    if args.dry_run:   # shapes and parameter counts only: built on the meta device, no memory, no init
        with torch.device("meta"):
            print(describe(args, build_generator(args), build_potential(args)))
        return 0
    torch.manual_seed(args.seed)          # the same initial weights on every rank
    G, D = build_generator(args), build_potential(args)
    run_dir = os.path.join(args.outdir, args.dataset, args.exp)
    resume = check_run_dir(run_dir, args)
    init = None
    if resume is None and args.init_from:   # a resumed run has moved on from them
        init = read_checkpoint(args.init_from)
        check_compatible(init["args"], args, args.init_from, NETWORK_KEYS, "--init_from")
    dataset = None if args.toy else build_image_dataset(args.dataset, args.datadir, args.image_size)
    if dataset is not None:
        check_batch_fits(args, dataset, "the dataset")
        dataset[0]   # decode one image now: a wrong folder or format fails here, naming the file
    source = None
    if args.dataset in translation.IMAGE_TRANSLATIONS:   # (train, test): train maps the one, saves the other
        source = tuple(translation.source_images(args.dataset, args.datadir, args.image_size, split)
                       for split in ("train", "test"))
        check_batch_fits(args, source[0], "the source training set")
    # --fid_every: the Inception weights are read now, so that their absence stops the run
    # before it writes anything rather than at the first evaluation
    inception = None
    if args.fid_every:
        from uot.fid import load_inception   # pytorch-fid and scipy: imported only when asked for
        inception = load_inception(args.inception_weights, "cpu")

    rank, world, local_rank = udist.init_distributed(device_kind, args.dist_timeout)
    device = torch.device(device_kind, local_rank) if device_kind == "cuda" else torch.device("cpu")
    # On the CPU, one thread unless told otherwise: several threads on the small networks trained
    # on CPUs gain nothing alone and lose 4x beside one other job (docs/performance.md)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    threads = args.num_threads or (int(omp) if omp.isdigit() else 0) or (1 if device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        run = build_training(args, device, G, D, dataset, source)
        run.inception = inception.to(device) if inception is not None else None
        torch.manual_seed(args.seed + rank)   # then a different noise stream per rank
        prepare_run_dir(run_dir, args, fresh=resume is None)
        if init is not None:
            run.state.start_from(init)
            del init
        if resume is not None:
            run.state.load_state_dict(resume)
            load_rng_state_dict(resume, run.device, fallback_seed=args.seed + 7919 * run.state.step)
            del resume
        with RunLog(run_dir, run.phases[-1].end, run.state.step, args.exp) as log:
            log.log(f"run {run_dir}: world {world}, device {device}, {torch.get_num_threads()} torch thread(s)\n{describe(args, run.state.G, run.state.D)}")
            try:
                return training_loop(run, run_dir, log, stop)
            except Diverged as err:
                log.log(str(err))
                message = str(err)
            except RuntimeError as err:   # a failed collective: name the ranks that died, if any did
                lost = udist.lost_ranks_message(err)
                if lost is None:
                    raise
                print(f"error: {lost}", file=sys.stderr, flush=True)
                return RANK_LOST_EXIT_CODE
        if rank == 0:   # after the progress bar has ended its line
            print(f"error: {message}", file=sys.stderr, flush=True)
        return DIVERGED_EXIT_CODE
    finally:
        udist.cleanup()


if __name__ == "__main__":
    sys.exit(exit_on_usage_error(main))
