"""Toy samplers, toy networks, the regularizer and train_toy.py end to end."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train_toy
from helpers.full_disk import fill_disk_at_save
from datasets_prep.toy import TOY_DIMS, TOY_MODES, TOY_NAMES, check_toy, sample_toy, stratified_counts
from score_sde.toy import ToyGenerator, ToyPotential
from uot.errors import UsageError, exit_on_usage_error
from uot.io import load_checkpoint
from uot.losses import source_gradient_penalty
from uot.metrics import w1_1d
from uot.phi import PHI, register_phi
from uot.steps import linearized_map

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

    def penalty_linearized():  # what uot.steps.potential_step does for train_toy.py
        xg = x.clone().requires_grad_(True)
        return source_gradient_penalty(netD(linearized_map(netG, xg, z)), xg)

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

    xg = x.clone().requires_grad_(True)
    y_lin = linearized_map(net_t, xg, z)
    (jacobian,) = torch.autograd.grad(y_lin.sum(), xg, retain_graph=True)
    torch.testing.assert_close(jacobian, torch.full((64, 1), a, dtype=torch.float64))
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
    trainer = train_toy.ToyTrainer(small_args("--source_name", "p", "--target_name", "q", "--tau", "0.02",
                                              "--phi1", "kl", "--phi2", "kl"))
    before = w1_1d(trainer.generate(), trainer.target)
    for _ in range(60):   # 8 iterations an epoch: 480 iterations
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
    for name in ("potential_stats", "map_stats"):
        real = getattr(trainer, name)

        def spy(x, z, *rest, real=real, name=name):
            seen.append((name, x.clone(), z.clone(), *[r.clone() for r in rest]))
            return real(x, z, *rest)

        monkeypatch.setattr(trainer, name, spy)
    x, y = next(iter(trainer.epoch_batches()))
    stats = trainer.train_iteration(x, y)
    assert [s[0] for s in seen] == ["potential_stats"] * 5 + ["map_stats"]
    assert all(torch.equal(s[1], x) for s in seen)                  # one source batch for all six steps
    assert all(torch.equal(s[3], y) for s in seen[:5])              # one target batch for the five
    zs = [s[2] for s in seen]
    assert all(not torch.equal(a, b) for i, a in enumerate(zs) for b in zs[i + 1:])   # a fresh z each
    assert all(v.shape == () and torch.isfinite(v) for v in stats.values()) and stats["penalty"] > 0
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
    ToyGenerator(args.data_dim, args.nz, args.hidden, args.num_blocks).load_state_dict(checkpoint["G"])


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
    (["--source_name", "moon"], "--source_name"),    # the S-JKO 2-D toys are train.py's
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


# --- runs that stop and continue ------------------------------------------------------

# 4 iterations an epoch (512 / 128) of tiny networks; checkpoint.pt at every epoch's end, samples
# and metrics (their plots take a second) every 3 epochs and at the last
RUN = ["--target_name", "outlier", "--regularize", "--num_data", "512", "--batch_size", "128", "--hidden", "16",
       "--num_blocks", "1", "--lr", "1e-3", "--phi1", "kl", "--phi2", "kl", "--save_every", "3",
       "--save_content_every", "1", "--device", "cpu"]


def toy_run(tmp_path, name, *flags):
    return [*RUN, "--savepath", str(tmp_path / name), *flags]


def assert_same_state(path_a, path_b):
    a, b = (load_checkpoint(p / train_toy.CHECKPOINT) for p in (path_a, path_b))
    assert a["step"] == b["step"]
    for key in ("G", "D", "opt_G", "opt_D"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert torch.equal(a["rng_cpu"], b["rng_cpu"])


def signal_at_iteration(monkeypatch, n, sig=signal.SIGTERM):
    """Send `sig` to this process inside the n-th training iteration."""
    step, calls = train_toy.ToyTrainer.train_iteration, []

    def signalling(self, x, y):
        calls.append(None)
        if len(calls) == n:
            os.kill(os.getpid(), sig)
        return step(self, x, y)

    monkeypatch.setattr(train_toy.ToyTrainer, "train_iteration", signalling)


@pytest.fixture(scope="module")
def five_epochs(tmp_path_factory):
    """The folder of an uninterrupted 5-epoch run."""
    folder = tmp_path_factory.mktemp("straight")
    assert train_toy.main(toy_run(folder, "run", "--epochs", "5")) == 0
    return folder / "run"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_ends_the_epoch_saves_and_the_resumed_run_equals_an_uninterrupted_one(
        sig, five_epochs, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        signal_at_iteration(patch, 6, sig)          # in epoch 2: it is finished, saved, and the run stops
        assert train_toy.main(toy_run(tmp_path, "resumed", "--epochs", "5")) == train_toy.PREEMPTED_EXIT_CODE
    assert load_checkpoint(tmp_path / "resumed" / train_toy.CHECKPOINT)["step"] == 8
    assert "stopped by signal after epoch 2" in capsys.readouterr().out
    assert train_toy.main(toy_run(tmp_path, "resumed", "--epochs", "5", "--resume")) == 0
    assert_same_state(five_epochs, tmp_path / "resumed")
    history = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [3, 5]   # no save twice, none lost


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    epochs = 40   # 0.03 to 0.1 s each with its checkpoint: the kill lands before the end on a fast machine too
    # a checkpoint every epoch (RUN) is what the kill is aimed at; samples and plots at epochs 20
    # and 40 only (RUN's every 3 took three quarters of the test's time)
    run = ["--epochs", str(epochs), "--save_every", "20"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_toy.py"),
                             *toy_run(tmp_path, "killed", *run)],
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # at a random moment once the run writes its checkpoints: often inside a write
        while proc.poll() is None and not (out / train_toy.CHECKPOINT).exists():
            time.sleep(0.005)
        time.sleep(random.uniform(0, 0.6))
        assert proc.poll() is None, "the run ended before the kill"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = load_checkpoint(out / train_toy.CHECKPOINT)["step"]
    assert 4 <= killed_at < 4 * epochs
    assert train_toy.main(toy_run(tmp_path, "killed", *run, "--resume")) == 0
    assert not list(out.glob(".tmp-*"))
    assert train_toy.main(toy_run(tmp_path, "straight", *run)) == 0
    assert_same_state(tmp_path / "straight", out)


def test_resume_refuses_other_settings_and_a_used_savepath_needs_overwrite(tmp_path, capsys):
    assert train_toy.main(toy_run(tmp_path, "run", "--epochs", "1")) == 0
    for flags, message in [(["--resume", "--hidden", "8"], "was made with --hidden 16, this run has 8"),
                           ([], "already holds a run"),
                           (["--resume", "--savepath", str(tmp_path / "none")], "--resume: no checkpoint at")]:
        with pytest.raises(SystemExit) as exit_info:
            exit_on_usage_error(lambda: train_toy.main(toy_run(tmp_path, "run", "--epochs", "2", *flags)))
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert train_toy.main(toy_run(tmp_path, "run", "--epochs", "1", "--overwrite")) == 0
    assert train_toy.main(toy_run(tmp_path, "fresh", "--epochs", "1", "--resume", "auto")) == 0   # nothing to resume


@pytest.fixture
def nan_after_epoch_1():
    """--phi2 nan_after_epoch_1: Psi2* kl for the 20 potential steps of epoch 1, then NaN."""
    calls = []

    def phi(s):
        calls.append(None)
        return torch.expm1(s) * (float("nan") if len(calls) > 20 else 1.0)

    register_phi("nan_after_epoch_1", phi)
    yield "nan_after_epoch_1"
    del PHI["nan_after_epoch_1"]


def test_a_diverging_run_exits_3_in_one_line_and_keeps_the_last_good_checkpoint(nan_after_epoch_1, tmp_path, capsys):
    assert train_toy.main(toy_run(tmp_path, "nan", "--epochs", "5", "--phi2", nan_after_epoch_1)) == \
        train_toy.DIVERGED_EXIT_CODE
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("error: training diverged at epoch 2 iteration 5: non-finite "
                                                     "loss_D nan"), errors
    assert "checkpoint.pt keeps the last good checkpoint" in errors[0] and "lower --lr" in errors[0]
    ckpt = load_checkpoint(tmp_path / "nan" / train_toy.CHECKPOINT)
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["D"].values())
    assert not (tmp_path / "nan" / "metrics.json").exists()   # its first record was due after epoch 3


def test_a_full_disk_keeps_the_previous_checkpoint_and_exits_2_in_one_line(tmp_path, monkeypatch, capsys):
    """The disk fills up during the second checkpoint (epoch 2): its data never reach the disk."""
    fill_disk_at_save(monkeypatch, train_toy, 2)
    with pytest.raises(SystemExit) as exit_info:
        exit_on_usage_error(lambda: train_toy.main(toy_run(tmp_path, "full", "--epochs", "3")))
    monkeypatch.undo()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    [line] = [e for e in err if e.startswith("error")]
    path = tmp_path / "full" / train_toy.CHECKPOINT
    assert line.startswith(f"error: cannot write {path} (No space left on device): it needs ")
    assert "the previous checkpoint.pt is unchanged" in line
    assert load_checkpoint(path)["step"] == 4   # epoch 1's, loadable
    assert not list((tmp_path / "full").glob(".tmp-*"))


# --- defaults ---------------------------------------------------------------------------

# The argparse defaults of the public toy script (Jae-Moo/UOTM train_toy.py); it requires --exp,
# --source_name, --target_name, --tau and --savepath, and declares --kl_estimator without reading it.
PUBLIC_TOY_DEFAULTS = dict(num_data=4000, data_dim=1, p=0.0, phi1="linear", phi2="linear", regularize=False,
                           lmbda=0.01, epochs=1000, batch_size=256, lr=1e-5, save_every=100)
# defaults kept on purpose, each in the README's differences table
OURS = dict(p=0.01, exp="toy", source_name="noise", tau=0.1, savepath=os.path.join("train_logs", "toy"))


def test_the_defaults_are_the_public_scripts_except_those_the_readme_lists():
    ours = vars(train_toy.parse_args(["--target_name", "q"]))
    for key, public in PUBLIC_TOY_DEFAULTS.items():
        assert ours[key] == OURS.get(key, public), key
    for key, value in OURS.items():
        assert ours[key] == value, key
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    [row] = [line for line in readme.splitlines() if line.startswith("| `train_toy.py` defaults")]
    for flag in [*OURS, "kl_estimator"]:
        assert f"`--{flag}" in row, flag
