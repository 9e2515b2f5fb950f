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
Cost c(x, y) = 0.5 tau ||x - y||^2.

Outputs in --savepath: options.json, checkpoint.pt (networks), metrics.json (one entry per
save), and per saved epoch samples_<epoch>.npz (source, target, generated, all (n, d),
generated[i] = T(source[i], z_i) on a fixed evaluation sample) with its plots.
"""
import json
import os
import time

import torch
from tqdm import tqdm

from datasets_prep.toy import TOYS_UOTM, check_toy, metric_args, sample_toy
from score_sde.toy import ToyGenerator, ToyPotential
from uot.cli import ArgumentParser, check_non_negative, check_phi, check_positive
from uot.errors import UsageError, exit_on_usage_error
from uot.io import RecordLog, atomic_torch_save, atomic_write_json
from uot.losses import PAIRINGS, SemiDualLoss, quadratic_cost, source_gradient_penalty, toy_cost_scale
from uot.samples import save_toy_samples
from utils import PHI


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
    add("--phi1", default="kl", help=f"Psi1* (source marginal): {', '.join(PHI)}; linear/linear is OTM")
    add("--phi2", default="kl", help="Psi2* (target marginal), same choices")
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
    add("--save_every", type=int, default=100, help="save samples, plots and metrics every this many epochs")
    add("--seed", type=int, default=0)
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--num_threads", type=int, default=1,
        help="CPU threads for torch (1 is fastest for these small matrices; 0 keeps torch's default)")
    args = parser.parse_args(argv)
    if args.nz is None:
        args.nz = args.data_dim
    if args.savepath is None:
        args.savepath = os.path.join("train_logs", args.exp)
    return args


def validate(args):
    """One-line UsageErrors naming the flag, before anything is built."""
    check_phi(args, "phi1", "phi2")
    check_positive(args, "tau", "lr", "epochs", "batch_size", "num_data", "save_every", "n_critic", "nz", "hidden")
    check_non_negative(args, "lmbda", "num_blocks", "num_threads")
    if not 0.0 < args.p < 1.0:
        raise UsageError(f"--p is the outlier fraction and must be in (0, 1), got {args.p}")
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
        raise UsageError("--device cuda: no CUDA device is available; pass --device cpu")


def set_requires_grad(module, flag):
    for param in module.parameters():
        param.requires_grad_(flag)


def map_and_jacobian(net_t, x, z):
    """T(x, z) and its Jacobian w.r.t. x: (B, d) and (B, d, d), both without a graph.

    data_dim vector-Jacobian products through T. T treats samples independently (no
    batch statistics), so the gradient of the batch sum of output j holds, for each
    sample, its own row j.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = net_t(x, z)
        rows = [torch.autograd.grad(y[:, j].sum(), x, retain_graph=j + 1 < y.shape[1])[0]
                for j in range(y.shape[1])]
    return y.detach(), torch.stack(rows, 1)


def linearized(y, jacobian, x):
    """y + J (x - x.detach()): the value y = T(x), but differentiable in x through J.

    For anything computed from it, d/dx is the same as through T itself. The toy
    regularizer needs d v(T(x)) / dx and its gradient w.r.t. v's weights, never T's;
    J does not depend on v, so this spares a double backward through T.
    """
    return y + (jacobian @ (x - x.detach()).unsqueeze(2)).squeeze(2)


class ToyTrainer:
    """Networks, optimizers, the fixed samples and one training iteration."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        torch.manual_seed(args.seed)  # network initialisation
        self.netG = ToyGenerator(args.data_dim, args.nz, args.hidden, args.num_blocks).to(self.device)
        self.netD = ToyPotential(args.data_dim, args.hidden, args.num_blocks).to(self.device)
        # fused: one kernel per step instead of a dozen small ops per parameter
        self.optG = torch.optim.Adam(self.netG.parameters(), lr=args.lr, fused=True)
        self.optD = torch.optim.Adam(self.netD.parameters(), lr=args.lr, fused=True)
        self.loss = SemiDualLoss(args.phi1, args.phi2, args.potential_pairing)
        self.cost_scale = toy_cost_scale(args.tau)
        self.lmbda = args.lmbda if args.regularize else 0.0

        self.generator = torch.Generator(self.device).manual_seed(args.seed)
        self.target = self.sample(args.target_name, args.num_data)
        # the fixed source sample; `noise` is drawn fresh, so it has none
        self.source = None if args.source_name == "noise" else self.sample(args.source_name, args.num_data)
        self.eval_source = self.source if self.source is not None else self.sample("noise", args.num_data)
        self.eval_z = torch.randn(args.num_data, args.nz, generator=self.generator, device=self.device)
        self.iters_per_epoch = args.num_data // args.batch_size

    def sample(self, name, n):
        return sample_toy(name, n, self.args.data_dim, self.args.p, self.generator, self.device)

    def epoch_batches(self):
        """The (x, y) batches of one epoch: a reshuffle of the fixed samples, the ragged end dropped."""
        n, b = self.args.num_data, self.args.batch_size
        count = self.iters_per_epoch
        y = self.target[torch.randperm(n, generator=self.generator, device=self.device)[:count * b]]
        if self.source is None:
            x = self.sample("noise", count * b)
        else:
            x = self.source[torch.randperm(n, generator=self.generator, device=self.device)[:count * b]]
        return zip(x.view(count, b, -1), y.view(count, b, -1))

    def latent(self):
        return torch.randn(self.args.batch_size, self.args.nz, generator=self.generator, device=self.device)

    def potential_step(self, x, z, y_real):
        """One Adam step of v on the potential loss (+ lmbda * the source-gradient penalty)."""
        if self.lmbda > 0:
            y_fake, jacobian = map_and_jacobian(self.netG, x, z)
            x = x.detach().requires_grad_(True)
            y_fake = linearized(y_fake, jacobian, x)
        else:
            with torch.no_grad():
                y_fake = self.netG(x, z)
        v_fake, v_real = self.netD(y_fake), self.netD(y_real)
        # (B, d) against (B, d), (B,) potentials: the pairing is the loss's choice, not a broadcast's
        assert y_fake.shape == x.shape == y_real.shape and v_fake.shape == v_real.shape == x.shape[:1]
        cost = quadratic_cost(x.detach(), y_fake.detach(), self.cost_scale)
        loss = self.loss.potential(v_fake, v_real, cost)
        if self.lmbda > 0:
            loss = loss + self.lmbda * source_gradient_penalty(v_fake, x)
        self.optD.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.netD.parameters()))
        self.optD.step()
        return loss.detach()

    def map_step(self, x, z):
        """One Adam step of T on E[c(x, T(x, z)) - v(T(x, z))]."""
        y_fake = self.netG(x, z)
        loss = self.loss.map(self.netD(y_fake), quadratic_cost(x, y_fake, self.cost_scale))
        self.optG.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.netG.parameters()))
        self.optG.step()
        return loss.detach()

    def train_iteration(self, x, y):
        """n_critic potential steps on the batches (x, y), then one map step on x, each step with
        a fresh z. Each step leaves the other network frozen, so autograd computes no gradient
        for it. Returns the last potential loss and the map loss."""
        set_requires_grad(self.netG, False)
        for _ in range(self.args.n_critic):
            loss_v = self.potential_step(x, self.latent(), y)
        set_requires_grad(self.netG, True)

        set_requires_grad(self.netD, False)
        loss_t = self.map_step(x, self.latent())
        set_requires_grad(self.netD, True)
        return loss_v, loss_t

    @torch.no_grad()
    def generate(self):
        """T(source_i, z_i) on the fixed evaluation sample."""
        return self.netG(self.eval_source, self.eval_z)


def save_outputs(trainer, epoch):
    """samples_<epoch>.npz, its plots, checkpoint.pt; returns the metrics."""
    a = trainer.args
    metrics = save_toy_samples(a.savepath, epoch, trainer.eval_source, trainer.target, trainer.generate(),
                               f"{a.exp}: {a.phi1}/{a.phi2}, tau {a.tau}, epoch {epoch}",
                               **metric_args(a.target_name))
    checkpoint = {"netG": trainer.netG.state_dict(), "netD": trainer.netD.state_dict(), "epoch": epoch}
    atomic_torch_save(checkpoint, os.path.join(a.savepath, "checkpoint.pt"))
    return metrics


def main(argv=None):
    args = parse_args(argv)
    validate(args)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        os.makedirs(args.savepath, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--savepath: cannot create {args.savepath}: {err.strerror}") from None
    atomic_write_json(os.path.join(args.savepath, "options.json"), vars(args))
    metrics = RecordLog(os.path.join(args.savepath, "metrics.json"))
    metrics.keep_until(0, key="epoch")   # a new run replaces the metrics of an earlier one in the folder

    trainer = ToyTrainer(args)
    start = time.time()
    with tqdm(total=args.epochs * trainer.iters_per_epoch, desc=args.exp, mininterval=1.0) as bar:
        for epoch in range(1, args.epochs + 1):
            for x, y in trainer.epoch_batches():
                loss_v, loss_t = trainer.train_iteration(x, y)
                bar.update()
                if bar.n % 20 == 0:
                    bar.set_postfix(loss_v=f"{loss_v.item():.4f}", loss_T=f"{loss_t.item():.4f}", refresh=False)
            if epoch % args.save_every == 0 or epoch == args.epochs:
                entry = {"epoch": epoch, "iteration": bar.n, "seconds": round(time.time() - start, 1),
                         "loss_potential": loss_v.item(), "loss_map": loss_t.item()}
                entry.update(save_outputs(trainer, epoch))
                metrics.append(entry)
                bar.write(json.dumps(entry))
    print(f"done in {time.time() - start:.0f} s; outputs in {args.savepath}")


if __name__ == "__main__":
    exit_on_usage_error(main)
