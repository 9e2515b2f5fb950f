"""UOTM (and OTM) on the toy problems of the paper: 1-D outliers, 1-D Gaussian mixtures, 2-D toys.

    python train_toy.py --exp outlier --num_data 4000 --data_dim 1 --p 0.01 \
        --source_name noise --target_name outlier --phi1 kl --phi2 kl --tau 0.1 \
        --regularize --lmbda 0.01 --epochs 400 --batch_size 256 \
        --savepath train_logs/outlier/outlier_uot --lr 1e-4

The target is a fixed sample of --num_data points drawn once (seeded). An epoch is
ceil(num_data / batch_size) iterations; an iteration takes --n_critic potential steps,
each on a fresh batch of target points (a reshuffled stream over the fixed sample) and
fresh source points x and latents z, then one map step. Cost c(x, y) = 0.5 tau ||x - y||^2.

Outputs in --savepath: options.json, checkpoint.pt (networks), samples.npz (source,
target, generated, all (n, d), generated[i] = T(source[i], z_i) on a fixed evaluation
sample), metrics.json (one entry per save) and PNG plots per saved epoch.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from datasets_prep.toy import TOY_NAMES, check_toy, sample_toy
from score_sde.toy import ToyGenerator, ToyPotential
from uot.errors import UsageError, exit_on_usage_error
from uot.io import RecordLog, atomic_savez, atomic_torch_save, atomic_write_json
from uot.losses import SemiDualLoss, quadratic_cost, source_gradient_penalty, toy_cost_scale
from uot.metrics import toy_metrics
from uot.plots import save_figure, scatter_2d
from utils import PHI, select_phi


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="UOTM / OTM on toy distributions")
    add = parser.add_argument
    add("--exp", default="toy",
        help="experiment label, e.g. outlier, 1d-gaussian-mixture, gaussian (names the default savepath)")
    add("--num_data", type=int, default=4000, help="size of the fixed target sample")
    add("--data_dim", type=int, default=1, help="dimension of the data")
    add("--p", type=float, default=0.01, help="outlier fraction of the 'outlier' distribution, in (0, 1)")
    add("--source_name", default="noise", help=f"source distribution: {', '.join(TOY_NAMES)}")
    add("--target_name", required=True, help=f"target distribution: {', '.join(TOY_NAMES)}")
    add("--phi1", default="kl", help=f"Psi1* (source marginal): {', '.join(PHI)}; linear/linear is OTM")
    add("--phi2", default="kl", help="Psi2* (target marginal), same choices")
    add("--tau", type=float, default=0.1, help="cost c = 0.5 tau ||x - y||^2 (outlier 0.1, mixture 0.02)")
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
    for flag in ("phi1", "phi2"):
        try:
            select_phi(getattr(args, flag))
        except UsageError as err:
            raise UsageError(f"--{flag}: {err}") from None
    positive = ("tau", "lr", "epochs", "batch_size", "num_data", "save_every", "n_critic", "nz", "hidden")
    for flag in positive:
        if not getattr(args, flag) > 0:
            raise UsageError(f"--{flag} must be > 0, got {getattr(args, flag)}")
    for flag in ("lmbda", "num_blocks", "num_threads"):
        if not getattr(args, flag) >= 0:
            raise UsageError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if not 0.0 < args.p < 1.0:
        raise UsageError(f"--p is the outlier fraction and must be in (0, 1), got {args.p}")
    if args.num_data <= 5:
        raise UsageError(f"--num_data must be > 5 (the k-NN KL estimate uses 5 neighbours), got {args.num_data}")
    check_toy(args.source_name, args.data_dim, "--source_name")
    check_toy(args.target_name, args.data_dim, "--target_name")
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
        self.loss = SemiDualLoss(args.phi1, args.phi2)
        self.cost_scale = toy_cost_scale(args.tau)
        self.lmbda = args.lmbda if args.regularize else 0.0

        self.generator = torch.Generator(self.device).manual_seed(args.seed)
        self.target = self.sample(args.target_name, args.num_data)
        self.eval_source = self.sample(args.source_name, args.num_data)
        self.eval_z = torch.randn(args.num_data, args.nz, generator=self.generator, device=self.device)
        self.target_order = torch.empty(0, dtype=torch.long, device=self.device)
        self.iters_per_epoch = math.ceil(args.num_data / args.batch_size)

    def sample(self, name, n):
        return sample_toy(name, n, self.args.data_dim, self.args.p, self.generator, self.device)

    def target_batches(self, count):
        """`count` batches (count, B, d) of the fixed target sample, taken from a stream of
        reshuffled passes over it: every point is used equally often."""
        needed = count * self.args.batch_size
        while len(self.target_order) < needed:
            fresh = torch.randperm(self.args.num_data, generator=self.generator, device=self.device)
            self.target_order = torch.cat([self.target_order, fresh])
        index, self.target_order = self.target_order[:needed], self.target_order[needed:]
        return self.target[index].view(count, self.args.batch_size, -1)

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
        # (B, d) against (B, d): a (B, 1, 1) source would silently broadcast the loss to (B, B, 1)
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

    def train_iteration(self):
        """n_critic potential steps then one map step; the randomness of all of them drawn at once.

        Each step leaves the other network's weights frozen, so autograd computes no
        gradient for them. Returns the last potential loss and the map loss.
        """
        a = self.args
        k, batch, dim = a.n_critic, a.batch_size, a.data_dim
        x = self.sample(a.source_name, (k + 1) * batch).view(k + 1, batch, dim)
        z = torch.randn(k + 1, batch, a.nz, generator=self.generator, device=self.device)
        y_real = self.target_batches(k)

        set_requires_grad(self.netG, False)
        for i in range(k):
            loss_v = self.potential_step(x[i], z[i], y_real[i])
        set_requires_grad(self.netG, True)

        set_requires_grad(self.netD, False)
        loss_t = self.map_step(x[k], z[k])
        set_requires_grad(self.netD, True)
        return loss_v, loss_t

    @torch.no_grad()
    def generate(self):
        """T(source_i, z_i) on the fixed evaluation sample."""
        return self.netG(self.eval_source, self.eval_z)


# --- outputs ---------------------------------------------------------------------

def plot_1d(source, target, generated, title, savepath, epoch):
    """joint_epochN.png: T(x, z) against x; density_epochN.png: target and generated
    densities (histogram + KDE), on a linear and a log scale (the log one shows a 1% mode)."""
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(source[:, 0], generated[:, 0], s=2, alpha=0.3)
    ax.set(xlabel="source x", ylabel="T(x, z)", title=title)
    save_figure(fig, os.path.join(savepath, f"joint_epoch{epoch:04d}.png"))

    lo = min(target.min(), generated.min()) - 0.5
    hi = max(target.max(), generated.max()) + 0.5
    grid = np.linspace(lo, hi, 600)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, log in zip(axes, (False, True)):
        peak = 0.0
        for data, label, color in ((target, "target", "tab:gray"), (generated, "generated", "tab:blue")):
            heights = ax.hist(data[:, 0], bins=120, range=(lo, hi), density=True, color=color, alpha=0.35,
                              label=label)[0]
            ax.plot(grid, gaussian_kde(data[:, 0])(grid), color=color, lw=1.5)
            peak = max(peak, heights.max())
        ax.set(xlabel="y", ylabel="density (log scale)" if log else "density", xlim=(lo, hi))
        if log:
            ax.set_yscale("log")
            ax.set_ylim(1e-3, 2 * peak)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, os.path.join(savepath, f"density_epoch{epoch:04d}.png"))


def save_outputs(trainer, epoch):
    """samples.npz, the plots of this epoch, checkpoint.pt; returns the metrics."""
    a = trainer.args
    source = trainer.eval_source.cpu().numpy()
    target = trainer.target.cpu().numpy()
    generated = trainer.generate().cpu().numpy()
    atomic_savez(os.path.join(a.savepath, "samples.npz"), source=source, target=target, generated=generated)
    metrics = toy_metrics(generated, target, a.target_name)
    title = f"{a.exp}: {a.phi1}/{a.phi2}, tau {a.tau}, epoch {epoch}"
    if "outlier_fraction" in metrics:
        title += f", outliers {100 * metrics['outlier_fraction']:.2f}%"
    if a.data_dim == 1:
        plot_1d(source, target, generated, title, a.savepath, epoch)
    elif a.data_dim == 2:
        scatter_2d(target, generated, os.path.join(a.savepath, f"scatter_epoch{epoch:04d}.png"), title)
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
            for _ in range(trainer.iters_per_epoch):
                loss_v, loss_t = trainer.train_iteration()
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
