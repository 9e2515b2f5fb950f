"""UOTM (and OTM) on the toy problems of the UOTM paper: 1-D outliers and 1-D Gaussian mixtures.

    python train_toy.py --exp outlier --num_data 4000 --data_dim 1 --p 0.01 \
        --source_name noise --target_name outlier --phi1 kl --phi2 kl --tau 0.1 \
        --regularize --lmbda 0.01 --epochs 400 --batch_size 256 \
        --savepath train_logs/outlier/outlier_uot --lr 1e-4

(The S-JKO paper's 2-D toys are trained by train.py --dataset 25gaussian ... --model_name toy.)

Sampling follows the public toy loop: the target, and every source but `noise`, is a fixed
sample of --num_data points, reshuffled each epoch; `noise` is drawn fresh. An epoch is
floor(num_data / batch_size) iterations (the public code zips two drop_last loaders). An
iteration takes one source batch x and one target batch y, runs --n_critic potential steps
on them, each with a fresh latent z, then one map step on the same x with a fresh z.
Cost c(x, y) = 0.5 tau ||x - y||^2. The steps are uot.steps' (as train.py's), the run state
uot.state's: a run stopped by SIGTERM / SIGUSR1 (exit 75) or killed continues with
--resume to the same weights as an uninterrupted run; a non-finite loss or weight stops it
with exit 3.

Outputs in --savepath: options.json, checkpoint.pt (the run state: networks, optimizers,
iteration, RNG states, arguments), metrics.json (one entry per save), and per saved epoch
samples_<epoch>.npz (source, target, generated, all (n, d), generated[i] = T(source[i], z_i)
on a fixed evaluation sample) with its plots.
"""
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from datasets_prep.toy import TOYS_UOTM, check_toy, metric_args, sample_toy
from score_sde.toy import ToyGenerator, ToyPotential
from uot.cli import ArgumentParser, check_non_negative, check_phi, check_positive
from uot.errors import UsageError, exit_on_usage_error
from uot.io import RecordLog, atomic_torch_save, atomic_write_json, prepare_folder, read_checkpoint
from uot.losses import PAIRINGS, SemiDualLoss, toy_cost_scale
from uot.monitor import DIVERGED_EXIT_CODE, PREEMPTED_EXIT_CODE, Diverged, StepStats, StopRequest
from uot.samples import save_toy_samples
from uot.state import TrainState, check_compatible, load_rng_state_dict, rng_state_dict
from uot.steps import map_step, potential_step
from utils import PHI

CHECKPOINT = "checkpoint.pt"
# Arguments the networks, the fixed samples and the epoch length depend on: a resume must not change them.
RESUME_KEYS = ("data_dim", "nz", "hidden", "num_blocks", "num_data", "batch_size", "source_name", "target_name",
               "p", "seed")


def parse_args(argv=None):
    parser = ArgumentParser(description="UOTM / OTM on the UOTM paper's toy distributions")
    add = parser.add_argument
    add("--exp", default="toy",
        help="experiment label, e.g. outlier, 1d-gaussian-mixture, gaussian (names the default savepath)")
    add("--num_data", type=int, default=4000, help="size of the fixed target (and source) sample")
    add("--data_dim", type=int, default=1, help="dimension of the data")
    add("--p", type=float, default=0.01, help="outlier fraction of the 'outlier' distribution, in (0, 1)")
    add("--source_name", default="noise", help=f"source distribution: {', '.join(TOYS_UOTM)}")
    add("--target_name", required=True, help=f"target distribution: {', '.join(TOYS_UOTM)}")
    add("--phi1", default="linear", help=f"Psi1* (source marginal): {', '.join(PHI)}; linear/linear is OTM")
    add("--phi2", default="linear", help="Psi2* (target marginal), same choices")
    add("--tau", type=float, default=0.1, help="cost c = 0.5 tau ||x - y||^2 (outlier 0.1, mixture 0.02)")
    add("--potential_pairing", choices=PAIRINGS, default="per_sample",
        help="Psi1*(v - c) per sample (the paper's), or over all pairs of the batch, as the public toy script's "
             "(B, 1) potential minus a (B,) cost computes it")
    add("--regularize", action="store_true", help="add lmbda ||grad_x v(T(x, z))||^2 to the potential loss")
    add("--lmbda", type=float, default=0.01, help="weight of the --regularize term")
    add("--epochs", type=int, default=1000)
    add("--batch_size", type=int, default=256)
    add("--lr", type=float, default=1e-5, help="Adam learning rate of both networks (betas 0.9, 0.999)")
    add("--n_critic", type=int, default=5, help="potential steps per map step")
    add("--nz", type=int, default=None, help="latent size; default data_dim (z has the data's shape, as published)")
    add("--hidden", type=int, default=128, help="width of both MLPs")
    add("--num_blocks", type=int, default=3, help="residual blocks of both MLPs")
    add("--savepath", default=None, help="output folder (default train_logs/<exp>)")
    add("--save_every", type=int, default=100, help="save samples, plots, metrics every this many epochs")
    add("--save_content_every", type=int, default=None,
        help="write checkpoint.pt every this many epochs (default: --save_every), and on a stop signal")
    add("--resume", nargs="?", const="yes", default=None, choices=["yes", "auto"],
        help="continue from <savepath>/checkpoint.pt; 'auto' starts fresh when there is none")
    add("--overwrite", action="store_true", help="start over in a --savepath that holds a run")
    add("--seed", type=int, default=0, help="seeds the weights, then every draw of the run")
    add("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add("--num_threads", type=int, default=1,
        help="CPU threads for torch (1 is fastest for these small matrices; 0 keeps torch's default)")
    args = parser.parse_args(argv)
    if args.nz is None:
        args.nz = args.data_dim
    if args.savepath is None:
        args.savepath = os.path.join("train_logs", args.exp)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.save_content_every is None:
        args.save_content_every = args.save_every
    return args


def validate(args):
    """One-line UsageErrors naming the flag, before anything is built."""
    check_phi(args, "phi1", "phi2")
    check_positive(args, "tau", "lr", "epochs", "batch_size", "num_data", "save_every", "save_content_every",
                   "n_critic", "nz", "hidden")
    check_non_negative(args, "lmbda", "num_blocks", "num_threads")
    if "outlier" in (args.source_name, args.target_name) and not 0.0 < args.p < 1.0:
        raise UsageError(f"--p is the outlier fraction of 'outlier' and must be in (0, 1), got {args.p}")
    if args.num_data < args.batch_size:
        raise UsageError(f"--num_data {args.num_data} is less than one --batch_size {args.batch_size}: "
                         f"an epoch would have no iteration")
    if args.num_data <= 5:
        raise UsageError(f"--num_data must be > 5 (the k-NN KL estimate uses 5 neighbours), got {args.num_data}")
    check_toy(args.source_name, args.data_dim, "--source_name", names=TOYS_UOTM)
    check_toy(args.target_name, args.data_dim, "--target_name", names=TOYS_UOTM)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UsageError(f"--device: unknown device '{args.device}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible; use --device cpu")


class ToyTrainer:
    """The run state (uot.state.TrainState), the fixed samples and one training iteration.

    Every draw after the weights (the fixed samples, each epoch's shuffle or fresh source,
    each z) comes from torch's default generator, whose state a checkpoint holds."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        torch.manual_seed(args.seed)
        G = ToyGenerator(args.data_dim, args.nz, args.hidden, args.num_blocks).to(self.device)
        D = ToyPotential(args.data_dim, args.hidden, args.num_blocks).to(self.device)
        self.state = TrainState(G, D, args.lr, args.lr, (0.9, 0.999))
        self.loss = SemiDualLoss(args.phi1, args.phi2, args.potential_pairing)
        self.cost_scale = toy_cost_scale(args.tau)
        self.lmbda = args.lmbda if args.regularize else 0.0

        self.target = self.sample(args.target_name, args.num_data)
        # the fixed source sample; `noise` is drawn fresh, so it has none
        self.source = None if args.source_name == "noise" else self.sample(args.source_name, args.num_data)
        self.eval_source = self.source if self.source is not None else self.sample("noise", args.num_data)
        self.eval_z = torch.randn(args.num_data, args.nz, device=self.device)
        self.iters_per_epoch = args.num_data // args.batch_size

    # the names the public toy script gives its networks and optimizers
    netG = property(lambda self: self.state.G)
    netD = property(lambda self: self.state.D)
    optG = property(lambda self: self.state.opt_G)
    optD = property(lambda self: self.state.opt_D)

    def sample(self, name, n):
        return sample_toy(name, n, self.args.data_dim, self.args.p, device=self.device)

    def epoch_batches(self):
        """The (x, y) batches of one epoch: a reshuffle of the fixed samples, the ragged end dropped."""
        n, b = self.args.num_data, self.args.batch_size
        count = self.iters_per_epoch
        y = self.target[torch.randperm(n, device=self.device)[:count * b]]
        if self.source is None:
            x = self.sample("noise", count * b)
        else:
            x = self.source[torch.randperm(n, device=self.device)[:count * b]]
        return zip(x.view(count, b, -1), y.view(count, b, -1))

    def latent(self):
        return torch.randn(self.args.batch_size, self.args.nz, device=self.device)

    def potential_stats(self, x, z, y):
        """One step of v on the potential loss (+ lmbda * the source-gradient penalty):
        uot.steps.potential_step's loss, penalty, mean v(y) and mean v(T(x, z))."""
        # the cost even where Psi1* is linear and its gradient is nil: the loss is the public value
        return potential_step(self.netG, self.netD, self.optD, self.loss, y, x, z, x, self.cost_scale,
                              source_weight=self.lmbda)

    def potential_step(self, x, z, y):
        """One Adam step of v; returns its loss with the penalty term, as the public errD."""
        value, penalty, _, _ = self.potential_stats(x, z, y)
        return value + self.lmbda * penalty

    def map_stats(self, x, z):
        """One step of T on E[c(x, T(x, z)) - v(T(x, z))]: the loss and the mean cost."""
        return map_step(self.netG, self.netD, self.optG, self.loss, x, z, x, self.cost_scale)

    def map_step(self, x, z):
        """One Adam step of T; returns its loss."""
        return self.map_stats(x, z)[0]

    def train_iteration(self, x, y):
        """n_critic potential steps on the batches (x, y), then one map step on x, each step with
        a fresh z. Returns the statistics of uot.monitor.StepStats: those of the last potential
        step and of the map step."""
        for _ in range(self.args.n_critic):
            loss_D, penalty, v_real, v_fake = self.potential_stats(x, self.latent(), y)
        loss_G, cost = self.map_stats(x, self.latent())
        return dict(loss_D=loss_D, loss_G=loss_G, penalty=penalty, v_real=v_real, v_fake=v_fake, cost=cost)

    @torch.no_grad()
    def generate(self):
        """T(source_i, z_i) on the fixed evaluation sample."""
        return self.netG(self.eval_source, self.eval_z)


def divergence_hint(args):
    """The likely cause of a non-finite loss and its fix, for the Diverged message."""
    if "kl" in (args.phi1, args.phi2):
        return "Psi* kl is exp(s) - 1 and overflows once the potential grows: lower --lr, or add --regularize"
    return "the potential grew without bound: lower --lr, or add --regularize"


def save_checkpoint(trainer):
    """checkpoint.pt: the TrainState, the RNG states and the arguments, at an epoch's end."""
    a = trainer.args
    atomic_torch_save(dict(trainer.state.state_dict(), **rng_state_dict(trainer.device), args=vars(a)),
                      os.path.join(a.savepath, CHECKPOINT))


def save_samples(trainer, epoch):
    """samples_<epoch>.npz and its plots; returns the metrics."""
    a = trainer.args
    return save_toy_samples(a.savepath, epoch, trainer.eval_source, trainer.target, trainer.generate(),
                            f"{a.exp}: {a.phi1}/{a.phi2}, tau {a.tau}, epoch {epoch}", **metric_args(a.target_name))


def checkpoint_to_resume(args):
    """The checkpoint of --resume (read once, here), or None for a fresh start; refuses to
    resume from nothing, with other settings, or to start over on a run without --overwrite."""
    path = os.path.join(args.savepath, CHECKPOINT)
    exists = os.path.exists(path)
    if args.resume == "yes" and not exists:
        raise UsageError(f"--resume: no checkpoint at {path}; drop --resume or use --resume auto")
    if args.resume and exists:
        ckpt = read_checkpoint(path)
        check_compatible(ckpt["args"], args, path, RESUME_KEYS)
        return ckpt
    if exists and not args.overwrite:
        raise UsageError(f"{args.savepath} already holds a run: continue it with --resume, start over with "
                         f"--overwrite, or pick another --savepath")
    return None


def main(argv=None):
    """Returns the exit code: 0, PREEMPTED_EXIT_CODE or DIVERGED_EXIT_CODE (UsageError: see __main__)."""
    with StopRequest() as stop:   # from the start: a signal during startup stops after the first epoch
        return run(argv, stop)


def run(argv, stop):
    args = parse_args(argv)
    validate(args)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    resume = checkpoint_to_resume(args)
    prepare_folder(args.savepath, "--savepath")
    atomic_write_json(os.path.join(args.savepath, "options.json"), vars(args))
    trainer = ToyTrainer(args)
    state, iters = trainer.state, trainer.iters_per_epoch
    if resume is not None:   # checkpoints are written at epoch ends only: the next epoch starts afresh
        state.load_state_dict(resume)
        load_rng_state_dict(resume, trainer.device, fallback_seed=args.seed)
        del resume
    metrics = RecordLog(os.path.join(args.savepath, "metrics.json"))
    metrics.keep_until(state.step // iters, key="epoch")   # a fresh run replaces an earlier run's records
    stats = StepStats(trainer.device, checkpoint=CHECKPOINT)
    start, message = time.time(), None
    with tqdm(total=args.epochs * iters, initial=state.step, desc=args.exp, mininterval=1.0) as bar:
        try:
            for epoch in range(state.step // iters + 1, args.epochs + 1):
                for x, y in trainer.epoch_batches():
                    stats.add(state.step + 1, **trainer.train_iteration(x, y))
                    state.step += 1
                    bar.update()
                # the divergence guard, once an epoch: before anything of this epoch is written
                stats.check(state.weights_checksum().item(), lambda s: f"epoch {(s - 1) // iters + 1} iteration {s}",
                            divergence_hint(args))
                means, _, _ = stats.take_means()
                samples_due = epoch % args.save_every == 0 or epoch == args.epochs
                if samples_due:
                    entry = {"epoch": epoch, "iteration": state.step, "seconds": round(time.time() - start, 1),
                             "loss_potential": means["loss_D"], "loss_map": means["loss_G"]}
                    entry.update(save_samples(trainer, epoch))
                    metrics.append(entry)
                    bar.write(json.dumps(entry))
                if samples_due or epoch % args.save_content_every == 0 or stop.signal is not None:
                    save_checkpoint(trainer)
                if stop.signal is not None and epoch < args.epochs:
                    bar.write(f"stopped by signal after epoch {epoch}; {CHECKPOINT} saved; continue with --resume")
                    return PREEMPTED_EXIT_CODE
        except Diverged as err:
            message = str(err)
    if message is not None:   # after the progress bar has ended its line
        print(f"error: {message}", file=sys.stderr, flush=True)
        return DIVERGED_EXIT_CODE
    print(f"done in {time.time() - start:.0f} s; outputs in {args.savepath}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_usage_error(main))
