"""Toy samplers, toy networks, the regularizer and train_toy.py end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_toy
from datasets_prep.toy import TOY_DIMS, TOY_MODES, TOY_NAMES, check_toy, sample_toy, stratified_counts
from score_sde.toy import ToyGenerator, ToyPotential
from uot.errors import UsageError, exit_on_usage_error
from uot.losses import source_gradient_penalty
from uot.metrics import w1_1d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- samplers -----------------------------------------------------------------------

@pytest.mark.parametrize("name", TOY_NAMES)
def test_sampler_shape_dtype_and_seeding(name):
    dim = TOY_DIMS[name] or 3
    x = sample_toy(name, 500, dim, generator=torch.Generator().manual_seed(0))
    assert x.shape == (500, dim) and x.dtype == torch.float32 and torch.isfinite(x).all()
    again = sample_toy(name, 500, dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_stratified_counts_add_up_to_n():
    assert stratified_counts(4000, [0.99, 0.01]) == [3960, 40]
    assert stratified_counts(256, [0.99, 0.01]) == [253, 3]  # 253.44, 2.56: the larger remainder wins
    assert stratified_counts(10, [1 / 3] * 3) == [4, 3, 3]


def test_1d_mixtures_have_their_weights_means_and_stds():
    generator = torch.Generator().manual_seed(1)
    outlier = sample_toy("outlier", 4000, p=0.01, generator=generator)[:, 0]
    assert (outlier < 0).sum() == 40  # exactly p of the points, near -1
    assert outlier[outlier < 0].mean() == pytest.approx(-1, abs=0.05)
    assert outlier[outlier > 0].std() == pytest.approx(0.1, abs=0.01)
    q = sample_toy("q", 6000, generator=generator)[:, 0]
    assert (q > 0.5).float().mean() == pytest.approx(2 / 3, abs=0.01)
    assert q[q > 0.5].mean() == pytest.approx(2, abs=0.05)
    p = sample_toy("p", 6000, generator=generator)[:, 0]
    assert p.mean() == pytest.approx(0, abs=0.05) and p[p > 0].mean() == pytest.approx(1, abs=0.1)
    gaussian = sample_toy("gaussian", 6000, 2, generator=generator)
    torch.testing.assert_close(gaussian.mean(0), torch.tensor([0.0, 10.0]), atol=0.05, rtol=0)


@pytest.mark.parametrize("name", sorted(TOY_MODES))
def test_2d_mixtures_put_equal_counts_on_every_mode(name):
    means, std = TOY_MODES[name]
    x = sample_toy(name, 100 * len(means), 2, generator=torch.Generator().manual_seed(2))
    nearest = torch.cdist(x, means).argmin(1)
    assert torch.equal(torch.bincount(nearest, minlength=len(means)), torch.full((len(means),), 100))
    assert (x - means[nearest]).std() == pytest.approx(std, rel=0.05)


def test_bad_name_dim_or_p_is_a_usage_error_naming_the_flag():
    with pytest.raises(UsageError, match="--target_name"):
        check_toy("nope", 1, "--target_name")
    with pytest.raises(UsageError, match="--source_name outlier is 1-D only"):
        check_toy("outlier", 2, "--source_name")
    with pytest.raises(UsageError, match="2-D only"):
        sample_toy("25gaussian", 10, 1)
    with pytest.raises(UsageError, match="--p"):
        sample_toy("outlier", 10, p=1.5)


# --- networks -----------------------------------------------------------------------

def test_networks_shapes_and_published_sizes():
    netG, netD = ToyGenerator(1, 1), ToyPotential(1)
    x, z = torch.randn(7, 1), torch.randn(7, 1)
    assert netG(x, z).shape == (7, 1) and netD(x).shape == (7,)
    linear = 128 * 128 + 128
    trunk = (1 * 128 + 128) + 9 * linear  # lift, then 3 blocks of 3 layers
    assert sum(p.numel() for p in netG.parameters()) == trunk + (256 + linear) + (linear + 129)
    assert sum(p.numel() for p in netD.parameters()) == trunk + linear + 129
    assert ToyGenerator(2, 5)(torch.randn(3, 2), torch.randn(3, 5)).shape == (3, 2)


# --- the regularizer ----------------------------------------------------------------

@pytest.mark.parametrize("dim", [1, 2])
def test_regularizer_through_the_jacobian_equals_the_double_backward_through_t(dim):
    torch.manual_seed(0)
    netG = ToyGenerator(dim, dim, hidden=16, num_blocks=1).double()
    netD = ToyPotential(dim, hidden=16, num_blocks=1).double()
    x, z = torch.randn(32, dim, dtype=torch.float64), torch.randn(32, dim, dtype=torch.float64)
    params = list(netD.parameters())

    def penalty_direct():  # d v(T(x)) / dx through T itself, as the public code
        xg = x.clone().requires_grad_(True)
        return source_gradient_penalty(netD(netG(xg, z)), xg)

    def penalty_linearized():  # what train_toy.py does
        y, jacobian = train_toy.map_and_jacobian(netG, x, z)
        xg = x.clone().requires_grad_(True)
        return source_gradient_penalty(netD(train_toy.linearized(y, jacobian, xg)), xg)

    direct, linearized = penalty_direct(), penalty_linearized()
    torch.testing.assert_close(linearized, direct)
    grads_direct = torch.autograd.grad(direct, params, allow_unused=True, materialize_grads=True)
    grads_linearized = torch.autograd.grad(linearized, params, allow_unused=True, materialize_grads=True)
    # every weight of v moves the penalty, except v's output bias: grad_y v ignores it
    for param, grad in zip(params, grads_linearized):
        assert (grad.abs().sum() > 0) == (param is not netD.head[-1].bias)
    for a, b in zip(grads_linearized, grads_direct):
        torch.testing.assert_close(a, b)

    # and a central finite difference on one weight of v
    weight, eps = netD.head[0].weight, 1e-6

    def penalty_moved(delta):
        with torch.no_grad():
            weight[0, 0] += delta
        value = penalty_linearized().item()
        with torch.no_grad():
            weight[0, 0] -= delta
        return value

    finite_difference = (penalty_moved(eps) - penalty_moved(-eps)) / (2 * eps)
    index = next(i for i, p in enumerate(params) if p is weight)
    assert grads_linearized[index][0, 0].item() == pytest.approx(finite_difference, rel=1e-6)


def test_regularizer_hand_derived_for_linear_networks():
    # T(x, z) = a x + b z and v(y) = w y^2 / 2: grad_x v(T) = a w T, so the penalty is
    # E (a w T)^2 and its derivative in w is 2 w E (a T)^2.
    a, b, w = 1.5, 0.3, torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    x, z = torch.randn(64, 1, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)

    def net_t(x, z):
        return a * x + b * z

    y, jacobian = train_toy.map_and_jacobian(net_t, x, z)
    torch.testing.assert_close(jacobian, torch.full((64, 1, 1), a, dtype=torch.float64))
    xg = x.clone().requires_grad_(True)
    y_lin = train_toy.linearized(y, jacobian, xg)
    penalty = source_gradient_penalty((w * y_lin.square() / 2).squeeze(1), xg)
    t = a * x + b * z
    torch.testing.assert_close(penalty, ((a * w * t) ** 2).mean())
    (grad,) = torch.autograd.grad(penalty, w)
    torch.testing.assert_close(grad, 2 * w.detach() * ((a * t) ** 2).mean())


# --- training -----------------------------------------------------------------------

def small_args(*flags):
    return train_toy.parse_args(["--num_data", "1024", "--hidden", "32", "--num_blocks", "1",
                                 "--batch_size", "128", "--lr", "1e-3", "--device", "cpu", *flags])


def test_short_1d_run_lowers_w1_to_the_target():
    trainer = train_toy.ToyTrainer(small_args("--source_name", "p", "--target_name", "q", "--tau", "0.02"))
    before = w1_1d(trainer.generate(), trainer.target)
    for _ in range(38):   # 8 iterations an epoch: 304 iterations
        for x, y in trainer.epoch_batches():
            trainer.train_iteration(x, y)
    after = w1_1d(trainer.generate(), trainer.target)
    assert after < before / 2, (before, after)


def test_an_epoch_is_a_reshuffle_of_the_fixed_samples_as_the_public_loop_draws_it():
    # 1000 points, batch 128: floor(1000 / 128) = 7 iterations, the last 104 points dropped
    trainer = train_toy.ToyTrainer(small_args("--source_name", "p", "--target_name", "q", "--num_data", "1000"))
    assert trainer.iters_per_epoch == 7
    batches = list(trainer.epoch_batches())
    assert len(batches) == 7 and all(x.shape == y.shape == (128, 1) for x, y in batches)
    for fixed, seen in ((trainer.source, torch.cat([x for x, _ in batches])),
                        (trainer.target, torch.cat([y for _, y in batches]))):
        values = set(fixed[:, 0].tolist())
        assert set(seen[:, 0].tolist()) <= values and len(set(seen[:, 0].tolist())) == 7 * 128
    again = torch.cat([y for _, y in trainer.epoch_batches()])
    assert not torch.equal(again, torch.cat([y for _, y in batches]))   # reshuffled every epoch
    # the `noise` source has no fixed sample: it is drawn fresh
    fresh = train_toy.ToyTrainer(small_args("--target_name", "outlier"))
    assert fresh.source is None
    first, second = (torch.cat([x for x, _ in fresh.epoch_batches()]) for _ in range(2))
    assert not set(first[:, 0].tolist()) & set(second[:, 0].tolist())


def test_an_iteration_reuses_its_batches_and_draws_a_fresh_z_per_step(monkeypatch):
    trainer = train_toy.ToyTrainer(small_args("--target_name", "outlier", "--regularize"))
    seen = []
    for name in ("potential_step", "map_step"):
        real = getattr(trainer, name)

        def spy(x, z, *rest, real=real, name=name):
            seen.append((name, x.clone(), z.clone(), *[r.clone() for r in rest]))
            return real(x, z, *rest)

        monkeypatch.setattr(trainer, name, spy)
    x, y = next(iter(trainer.epoch_batches()))
    loss_v, loss_t = trainer.train_iteration(x, y)
    assert [s[0] for s in seen] == ["potential_step"] * 5 + ["map_step"]
    assert all(torch.equal(s[1], x) for s in seen)                  # one source batch for all six steps
    assert all(torch.equal(s[3], y) for s in seen[:5])              # one target batch for the five
    zs = [s[2] for s in seen]
    assert all(not torch.equal(a, b) for i, a in enumerate(zs) for b in zs[i + 1:])   # a fresh z each
    assert loss_v.shape == loss_t.shape == () and torch.isfinite(loss_v) and torch.isfinite(loss_t)
    assert all(p.requires_grad for p in [*trainer.netG.parameters(), *trainer.netD.parameters()])


def run_cli(*flags):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train_toy.py"), *flags],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_1d_run_writes_samples_metrics_and_plots(tmp_path):
    out = tmp_path / "outlier"
    result = run_cli("--exp", "outlier", "--target_name", "outlier", "--regularize", "--num_data", "300",
                     "--batch_size", "128", "--epochs", "3", "--save_every", "2", "--hidden", "16",
                     "--savepath", str(out))
    assert result.returncode == 0, result.stderr
    samples = np.load(out / "samples_3.npz")
    assert sorted(samples.files) == ["generated", "source", "target"]
    assert all(samples[k].shape == (300, 1) and samples[k].dtype == np.float32 for k in samples.files)
    history = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [2, 3] and history[-1]["iteration"] == 3 * 2  # floor(300 / 128) = 2 a epoch
    assert {"knn_kl", "w1", "outlier_fraction", "energy_distance"} <= set(history[-1])
    options = json.loads((out / "options.json").read_text())
    assert options["nz"] == 1 and options["target_name"] == "outlier"
    for name in ("samples_2.npz", "joint_2.png", "density_3.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".tmp-*"))
    # the options rebuild the networks of the checkpoint
    checkpoint = torch.load(out / "checkpoint.pt")
    args = train_toy.parse_args(["--target_name", "outlier"])
    args.__dict__.update(options)
    ToyGenerator(args.data_dim, args.nz, args.hidden, args.num_blocks).load_state_dict(checkpoint["netG"])


def test_cli_2d_gaussian_run_draws_its_scatter(tmp_path):
    out = tmp_path / "gaussian"
    result = run_cli("--exp", "gaussian", "--data_dim", "2", "--target_name", "gaussian", "--num_data", "200",
                     "--batch_size", "100", "--epochs", "2", "--hidden", "16", "--savepath", str(out))
    assert result.returncode == 0, result.stderr
    assert np.load(out / "samples_2.npz")["generated"].shape == (200, 2)
    assert (out / "scatter_2.png").stat().st_size > 0


@pytest.mark.parametrize("flags, flag", [
    (["--phi1", "nope"], "--phi1"),
    (["--tau", "-1"], "--tau"),
    (["--p", "2"], "--p"),
    (["--epochs", "0"], "--epochs"),
    (["--source_name", "moons"], "--source_name"),   # the S-JKO 2-D toys are train.py's
    (["--num_data", "100"], "--num_data"),            # less than one batch of 256
    (["--data_dim", "2"], "--target_name"),
])
def test_bad_flags_exit_2_with_one_line_naming_the_flag(flags, flag, capsys, tmp_path):
    argv = ["--target_name", "outlier", "--savepath", str(tmp_path / "never_created"), *flags]
    with pytest.raises(SystemExit) as exit_info:
        exit_on_usage_error(lambda: train_toy.main(argv))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], lines
    assert not (tmp_path / "never_created").exists()


def test_bad_flag_from_the_command_line():
    result = run_cli("--target_name", "outlier", "--phi1", "nope")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--phi1" in result.stderr
