"""FID: the Frechet distance against closed forms, PNG-exact quantization, and the whole
test.py path (single process and torchrun on CPU) with a randomly initialised Inception
of the FID architecture stored where the real weights are looked up."""
import argparse
import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from scipy import linalg

import train
from uot import fid
from tiny import INCEPTION_WEIGHTS_NAME as WEIGHTS_NAME
from tiny import argv
from uot.errors import UsageError
from uot.io import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Any download attempt fails at once (connection refused) instead of reaching the network.
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "no_proxy": "", "NO_PROXY": ""}


def load_test_script():
    spec = importlib.util.spec_from_file_location("uotm_test_script", os.path.join(ROOT, "test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(args, torch_home, nproc=1):
    env = {**os.environ, **OFFLINE, "TORCH_HOME": str(torch_home), "PYTHONPATH": ROOT}
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run(launcher + [os.path.join(ROOT, "test.py")] + [str(a) for a in args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def read_records(run_dir):
    with open(os.path.join(run_dir, "fid.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f.read().splitlines()]


# ----------------------------------------------------------------------------- fixtures

TINY_RUN = ("--dataset digits --model_name dcgan --ngf 8 --nz 4 --image_size 8 --batch_size 256 --log_every 100 "
            "--save_image_every 1000")


def read_options(run_dir):
    with open(run_dir / "options.json", encoding="utf-8") as f:
        return argparse.Namespace(**json.load(f))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real train.py run directory (a tiny DCGAN on the 8x8 digits, UOTM mode, EMA on:
    netG_1..netG_3 and content.pth after 3 epochs of 7 iterations) and 5 reference PNGs."""
    base = tmp_path_factory.mktemp("fid_run")
    ref_dir = base / "ref"
    os.makedirs(ref_dir)
    assert train.main(argv(TINY_RUN + " --num_epoch 3 --save_ckpt_every 1 --save_content_every 3", base, "uotm")) == 0
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(ref_dir / f"{i}.png")
    run_dir = base / "digits" / "uotm"
    return argparse.Namespace(dir=run_dir, ref=ref_dir, base=base, cfg=read_options(run_dir))


# ----------------------------------------------------------------------------- Frechet distance

def test_frechet_distance_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # sum_i (m1 - m2)^2 + (sqrt v1 - sqrt v2)^2 = 1 + 6.25 + (4 + 1 + 0)
    expected = 1 + 6.25 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, abs=1e-9)


def test_frechet_distance_commuting_covariances():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # shared eigenvectors: the sqrt is explicit
    a, b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = fid.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert value == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_singular_product_takes_the_eps_retry(capsys, monkeypatch):
    """Whether scipy's sqrtm breaks on a singular product depends on the LAPACK build (some
    return non-finite values, others a finite root). Both paths must give the right distance:
    the build's own, and the retry, forced by a sqrtm that fails as the breaking builds do."""
    u, v = np.array([-1.0, -1.0, -1.0]), np.array([2.0, 2.0, -1.0])
    sigma1, sigma2 = np.outer(u, u), np.outer(v, v)  # rank one each
    # sigma1 sigma2 = (u.v) u v^T has one eigenvalue (u.v)^2, so Tr sqrt = |u.v| = 3
    expected = u @ u + v @ v - 2 * abs(u @ v)
    assert fid.frechet_distance(np.zeros(3), sigma1, np.zeros(3), sigma2) == pytest.approx(expected, abs=1e-2)
    capsys.readouterr()

    calls, real_sqrtm = [], linalg.sqrtm

    def sqrtm_breaking_on_singular(a):
        calls.append(a.copy())
        if np.linalg.matrix_rank(a) < len(a):
            return np.full_like(a, np.nan)
        return real_sqrtm(a)

    monkeypatch.setattr(fid.linalg, "sqrtm", sqrtm_breaking_on_singular)
    value = fid.frechet_distance(np.zeros(3), sigma1, np.zeros(3), sigma2, eps=1e-6)
    assert value == pytest.approx(expected, abs=1e-2)
    assert "singular product" in capsys.readouterr().out
    assert len(calls) == 2   # the retry: the product of the covariances with eps added to their diagonals
    np.testing.assert_allclose(calls[1], (sigma1 + 1e-6 * np.eye(3)) @ (sigma2 + 1e-6 * np.eye(3)))


def test_fid_of_features_against_themselves_is_zero_and_grows_with_noise():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8)) + 3.0
    reference = fid.statistics(torch.from_numpy(features))
    assert fid.frechet_distance(*reference, *reference) == pytest.approx(0.0, abs=1e-8)
    values = [fid.frechet_distance(*fid.statistics(features + scale * rng.normal(size=features.shape)),
                                   *reference) for scale in (0.1, 0.5, 2.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_statistics_are_float64_mean_and_unbiased_covariance():
    features = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]])
    mu, sigma = fid.statistics(features)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [3.0, 4.0])
    np.testing.assert_allclose(sigma, [[4.0, 2.0], [2.0, 4.0]])


# ----------------------------------------------------------------------------- precision / recall

def test_precision_recall_by_hand():
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    fake = torch.tensor([[0.5, 0.0], [10.0, 0.0]])
    # k=1: every real ball has radius 1, so only (0.5, 0) is inside the real manifold; both
    # fake balls have radius 9.5, which covers all real points.
    assert fid.precision_recall(real, fake, k=1, chunk=3) == pytest.approx((0.5, 1.0))
    assert fid.precision_recall(real, real, k=3, chunk=2) == pytest.approx((1.0, 1.0))


# ----------------------------------------------------------------------------- quantization

def test_quantize_to_uint8_matches_png_round_trip(tmp_path):
    torch.manual_seed(0)
    # out of range values, every half step of 1/255 (rounding ties), and random values
    values = torch.cat([torch.linspace(-1.2, 1.2, 3 * 20 * 20), torch.linspace(-1, 1, 511),
                        torch.rand(3 * 400 - 511) * 2 - 1])
    images = values[torch.randperm(len(values))].reshape(2, 3, 20, 20)
    quantized = fid.quantize_to_uint8(images)
    for i, image in enumerate(images):
        torchvision.utils.save_image((image + 1) / 2, tmp_path / f"{i}.png")
        with Image.open(tmp_path / f"{i}.png") as png:
            stored = torch.from_numpy(np.asarray(png).copy()).permute(2, 0, 1)
        assert torch.equal(quantized[i], stored)


# ----------------------------------------------------------------------------- Inception

def test_features_and_statistics_do_not_depend_on_the_batch_size(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    inception = fid.load_inception(device="cpu")  # from the hub cache, as pytorch-fid does
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    whole = fid.inception_features(inception, [images], "cpu")
    split = fid.inception_features(inception, [images[:1], images[1:]], "cpu")
    assert whole.shape == (3, fid.FEATURE_DIM) and whole.std() > 0
    torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-5)
    for a, b in zip(fid.statistics(whole), fid.statistics(split)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_missing_inception_weights_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UsageError) as err:
        fid.load_inception(device="cpu")
    message = str(err.value)
    assert os.path.join(str(tmp_path), "hub", "checkpoints", WEIGHTS_NAME) in message
    assert "--inception_weights" in message and "\n" not in message
    with pytest.raises(UsageError, match="no such file"):
        fid.load_inception(weights=str(tmp_path / "nowhere.pth"))


def test_load_stats_rejects_missing_and_malformed_files(tmp_path):
    with pytest.raises(UsageError, match="--compute_stats"):
        fid.load_stats(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(UsageError, match="mu and sigma"):
        fid.load_stats(str(tmp_path / "bad.npz"))


def random_stats(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(fid.FEATURE_DIM, 8))
    return rng.normal(size=fid.FEATURE_DIM), features @ features.T


def save_pickled_stats(path, stats, protocol=4, module="numpy._core.multiarray"):
    """A .npy of a pickled dict, as np.save(allow_pickle=True) writes it; `module` names numpy's
    array-rebuilding function (numpy 1 wrote numpy.core.multiarray; protocols 2-3 spell globals as text)."""
    data = pickle.dumps(np.array(stats, dtype=object), protocol=protocol)
    if protocol < 4:
        data = data.replace(np.zeros(0).__reduce__()[0].__module__.encode(), module.encode())
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(data)


@pytest.mark.parametrize("protocol, module", [(4, None), (3, "numpy.core.multiarray"), (2, "numpy.core.multiarray"),
                                              (5, None)], ids=["numpy2", "numpy1", "protocol2", "protocol5"])
def test_public_repositories_pickled_stats_load_like_the_npz(tmp_path, protocol, module):
    mu, sigma = random_stats()
    fid.save_stats(str(tmp_path / "ref.npz"), mu, sigma, 10)
    if module is None:   # exactly what the public fid_score.py reads back with np.load(...).item()
        np.save(tmp_path / "ref_stat.npy", {"mu": mu, "sigma": sigma}, allow_pickle=True)
    else:
        save_pickled_stats(tmp_path / "ref_stat.npy", {"mu": mu, "sigma": sigma}, protocol, module)
    for loaded, expected in zip(fid.load_stats(str(tmp_path / "ref_stat.npy")),
                                fid.load_stats(str(tmp_path / "ref.npz"))):
        assert loaded.dtype == np.float64 and np.array_equal(loaded, expected)


class RunsCode:
    """Unpickling this calls `function(*args)`: what a hostile statistics file would do."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("payload", [
    lambda marker: RunsCode(os.system, f"touch {marker}"),
    lambda marker: RunsCode(open, str(marker), "w"),
    lambda marker: {"mu": RunsCode(os.system, f"touch {marker}"), "sigma": np.eye(2)},
], ids=["os.system", "builtins.open", "inside the dict"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "marker"
    path = tmp_path / "cifar10_train_stat.npy"
    np.save(path, np.array(payload(marker), dtype=object), allow_pickle=True)
    with pytest.raises(UsageError) as err:
        fid.load_stats(str(path))
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "refused" in message
    assert not marker.exists()


@pytest.mark.parametrize("stats, reason", [
    ({"mu": np.zeros(fid.FEATURE_DIM)}, "exactly the keys mu and sigma"),
    ({"mu": np.zeros(fid.FEATURE_DIM), "sigma": np.eye(3), "extra": 1}, "exactly the keys mu and sigma"),
    ({"mu": np.zeros(fid.FEATURE_DIM, int), "sigma": np.eye(3)}, "mu is not a float array"),
    ({"mu": np.zeros(3), "sigma": np.eye(3)}, r"mu \(3,\) and sigma \(3, 3\) are not pool3"),
], ids=["key missing", "extra key", "integers", "shapes"])
def test_pickled_stats_of_another_layout_are_refused(tmp_path, stats, reason):
    np.save(tmp_path / "stat.npy", stats, allow_pickle=True)
    with pytest.raises(UsageError, match=reason):
        fid.load_stats(str(tmp_path / "stat.npy"))


# ----------------------------------------------------------------------------- test.py

def test_every_checkpoint_kind_of_a_real_run(run, tmp_path):
    """What train.py writes is what test.py reads: the newest netG_<n>.pth of a run directory
    (the EMA generator, at epoch n in UOTM mode, iteration n in S-JKO mode) and content.pth
    (its G_ema, or G when the run keeps no EMA, at its step)."""
    script = load_test_script()
    content = load_checkpoint(str(run.dir / "content.pth"))
    assert script.find_checkpoint(str(run.dir)) == str(run.dir / "netG_3.pth")
    for name, where in (("netG_3.pth", {"epoch": 3}), ("content.pth", {"step": 21})):
        state, found = script.generator_state(str(run.dir / name), run.cfg)
        assert found == where
        assert all(torch.equal(state[k], v) for k, v in content["G_ema"].items())
        G, found = script.load_generator(str(run.dir / name), run.cfg, "options.json", torch.device("cpu"))
        assert found == where and not G.training

    # S-JKO mode without EMA: netG_<iteration>.pth and content.pth hold G
    assert train.main(argv(TINY_RUN + " --phi2 kl --num_phase 1 --init_num_iterations 4 --save_ckpt_every 2",
                           tmp_path, "sjko")) == 0
    sjko_dir, cfg = tmp_path / "digits" / "sjko", read_options(tmp_path / "digits" / "sjko")
    content = load_checkpoint(str(sjko_dir / "content.pth"))
    assert content["G_ema"] is None
    assert script.find_checkpoint(str(sjko_dir)) == str(sjko_dir / "netG_4.pth")
    for name in ("netG_4.pth", "content.pth"):
        state, found = script.generator_state(str(sjko_dir / name), cfg)
        assert found == {"step": 4}
        assert all(torch.equal(state[k], v) for k, v in content["G"].items())
    (tmp_path / "weights.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        script.generator_state(str(tmp_path / "weights.pth"), cfg)


def test_bad_inputs_are_one_line_usage_errors(run, tmp_path):
    script = load_test_script()
    with pytest.raises(UsageError, match="no such file or directory"):
        script.main([str(tmp_path / "missing_run"), "--device", "cpu"])
    with pytest.raises(UsageError, match="no netG"):
        script.main([str(tmp_path), "--device", "cpu"])
    with pytest.raises(UsageError, match="--options"):
        script.main([str(run.dir / "netG_1.pth"), "--options", str(tmp_path / "options.json"),
                     "--device", "cpu"])


def test_a_translation_run_is_refused_in_one_line(run, tmp_path):
    """A translation's map takes the source's images: FID from noise would measure something else."""
    options = {**vars(run.cfg), "dataset": "digits0-4to5-9"}
    with open(tmp_path / "options.json", "w", encoding="utf-8") as f:
        json.dump(options, f)
    with pytest.raises(UsageError, match="digits0-4to5-9 is a translation"):
        load_test_script().main([str(run.dir / "netG_3.pth"), "--options", str(tmp_path / "options.json"),
                                 "--device", "cpu"])


def test_script_without_inception_weights_exits_with_code_2(run, tmp_path):
    result = run_script([run.dir, "--device", "cpu", "--num_samples", "2",
                         "--ref_stats", tmp_path / "unused.npz"], torch_home=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and WEIGHTS_NAME in lines[0]


@pytest.mark.slow
def test_script_end_to_end(run, torch_home, tmp_path, monkeypatch, capsys):
    common = ["--device", "cpu", "--num_workers", "0", "--batch_size", "3"]
    stats_dir = tmp_path / "stats"
    script = load_test_script()

    def in_process(args, home):   # test.py's main in this process, with TORCH_HOME=home
        monkeypatch.setenv("TORCH_HOME", str(home))
        script.main([str(a) for a in args])
        return capsys.readouterr().out

    # 1. reference statistics computed from the folder and cached; precision/recall asked;
    # the weights passed by path (the hub cache is empty); the samples also written as PNGs
    samples = tmp_path / "samples"
    out = in_process([run.dir, "--num_samples", 4, "--ref_dir", run.ref, "--stats_dir", stats_dir,
                      "--precision_recall", "--inception_weights", torch_home / "hub" / "checkpoints" / WEIGHTS_NAME,
                      "--save_samples", samples] + common, tmp_path)
    assert out.strip().splitlines()[-1].startswith("FID ")
    [first] = read_records(run.dir)
    assert first["checkpoint"].endswith("netG_3.pth") and first["epoch"] == 3
    assert first["num_samples"] == 4 and first["seed"] == 0
    assert math.isfinite(first["fid"]) and first["fid"] > 0
    assert 0 <= first["precision"] <= 1 and 0 <= first["recall"] <= 1
    [cached] = os.listdir(stats_dir)
    assert cached.startswith("ref_") and cached.endswith("_8_5.npz")
    assert sorted(os.listdir(samples)) == [f"{i:06d}.png" for i in range(4)]
    with Image.open(samples / "000000.png") as png:
        assert png.size == (8, 8) and png.mode == "L"

    # 2. the same seed against the cached statistics in the public repositories' layout (a
    # pickled dict in a .npy), from the hub cache: the same FID
    mu, sigma = fid.load_stats(str(stats_dir / cached))
    np.save(tmp_path / "ref_stat.npy", {"mu": mu, "sigma": sigma}, allow_pickle=True)
    in_process([run.dir, "--num_samples", 4, "--ref_stats", tmp_path / "ref_stat.npy"] + common, torch_home)
    assert len(read_records(run.dir)) == 2
    assert read_records(run.dir)[-1]["fid"] == pytest.approx(first["fid"], rel=1e-6)

    # 3. torchrun, 2 ranks (a new process each, as a user runs it): uneven shares (3 reference images + 2; 2 samples + 1), one record
    result = run_script([run.dir, "--num_samples", 3, "--ref_dir", run.ref,
                         "--stats_dir", tmp_path / "stats2"] + common, torch_home, nproc=2)
    assert result.returncode == 0, result.stderr
    records = read_records(run.dir)
    assert len(records) == 3 and records[-1]["num_samples"] == 3 and records[-1]["device"] == "cpu x2"
    assert result.stdout.count("FID ") == 1
    for a, b in zip(fid.load_stats(str(stats_dir / cached)),
                    fid.load_stats(str(tmp_path / "stats2" / cached))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_pytorch_fid_folder_does_not_shadow_the_installed_package():
    assert not [name for name in os.listdir(os.path.join(ROOT, "pytorch_fid")) if name.endswith(".py")]
    result = subprocess.run([sys.executable, "-c", "import pytorch_fid.inception; print(pytorch_fid.__file__)"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    location = os.path.realpath(result.stdout.strip())
    # (the README's venv lives inside the clone: what matters is that it is not our folder)
    assert "site-packages" in location
    assert not location.startswith(os.path.join(os.path.realpath(ROOT), "pytorch_fid") + os.sep)
