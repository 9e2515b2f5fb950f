"""FID: the Frechet distance against closed forms, PNG-exact quantization, and the whole
test.py path (single process and torchrun on CPU) with a randomly initialised Inception
of the FID architecture stored where the real weights are looked up."""
import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from scipy import linalg

from score_sde import add_model_args, build_generator
from uot import fid
from tiny import INCEPTION_WEIGHTS_NAME as WEIGHTS_NAME
from uot.errors import UsageError

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

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with a tiny DCGAN generator (netG_1 and a newer netG_3) and 5 reference PNGs."""
    base = tmp_path_factory.mktemp("fid_run")
    run_dir, ref_dir = base / "run", base / "ref"
    os.makedirs(run_dir)
    os.makedirs(ref_dir)
    cfg = add_model_args(argparse.ArgumentParser()).parse_args(
        ["--model_name", "dcgan", "--ngf", "8", "--nz", "4", "--image_size", "16"])
    options = {**vars(cfg), "dataset": "cifar10", "datadir": str(base / "no_data")}
    with open(run_dir / "options.json", "w") as f:
        json.dump(options, f)
    torch.manual_seed(0)
    torch.save(build_generator(cfg).state_dict(), run_dir / "netG_1.pth")
    torch.save(build_generator(cfg).state_dict(), run_dir / "netG_3.pth")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(ref_dir / f"{i}.png")
    return argparse.Namespace(dir=run_dir, ref=ref_dir, base=base, cfg=argparse.Namespace(**options))


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


# ----------------------------------------------------------------------------- test.py

def test_checkpoint_selection_and_content_format(run, tmp_path):
    script = load_test_script()
    assert script.find_checkpoint(str(run.dir)).endswith("netG_3.pth")
    G, G_ema = build_generator(run.cfg), build_generator(run.cfg)
    torch.save({"G": G.state_dict(), "G_ema": None, "epoch": 7, "step": 70, "args": {}},
               tmp_path / "content.pth")
    assert script.find_checkpoint(str(tmp_path)) == str(tmp_path / "content.pth")
    state, epoch = script.generator_state(str(tmp_path / "content.pth"))
    assert epoch == 7 and all(torch.equal(state[k], v) for k, v in G.state_dict().items())
    torch.save({"G": G.state_dict(), "G_ema": {f"module.{k}": v for k, v in G_ema.state_dict().items()},
                "epoch": 8, "step": 80, "args": {}}, tmp_path / "content.pth")
    state, _ = script.generator_state(str(tmp_path / "content.pth"))
    assert all(torch.equal(state[k], v) for k, v in G_ema.state_dict().items())


def test_bad_inputs_are_one_line_usage_errors(run, tmp_path):
    script = load_test_script()
    with pytest.raises(UsageError, match="no such file or directory"):
        script.main([str(tmp_path / "missing_run"), "--device", "cpu"])
    with pytest.raises(UsageError, match="no netG"):
        script.main([str(tmp_path), "--device", "cpu"])
    with pytest.raises(UsageError, match="--options"):
        script.main([str(run.dir / "netG_1.pth"), "--options", str(tmp_path / "options.json"),
                     "--device", "cpu"])


def test_script_without_inception_weights_exits_with_code_2(run, tmp_path):
    result = run_script([run.dir, "--device", "cpu", "--num_samples", "2",
                         "--ref_stats", tmp_path / "unused.npz"], torch_home=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and WEIGHTS_NAME in lines[0]


def test_script_end_to_end(run, torch_home, tmp_path):
    common = ["--device", "cpu", "--num_workers", "0", "--batch_size", "3"]
    stats_dir = tmp_path / "stats"

    # 1. reference statistics computed from the folder and cached; precision/recall asked
    result = run_script([run.dir, "--num_samples", 4, "--ref_dir", run.ref, "--stats_dir", stats_dir,
                         "--precision_recall"] + common, torch_home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("FID ")
    [first] = read_records(run.dir)
    assert first["checkpoint"].endswith("netG_3.pth") and first["epoch"] == 3
    assert first["num_samples"] == 4 and first["seed"] == 0
    assert math.isfinite(first["fid"]) and first["fid"] > 0
    assert 0 <= first["precision"] <= 1 and 0 <= first["recall"] <= 1
    [cached] = os.listdir(stats_dir)
    assert cached.startswith("ref_") and cached.endswith("_16_5.npz")

    # 2. same seed against the cached statistics, weights passed by path (empty hub cache)
    samples = tmp_path / "samples"
    result = run_script([run.dir, "--num_samples", 4, "--ref_stats", stats_dir / cached,
                         "--inception_weights", torch_home / "hub" / "checkpoints" / WEIGHTS_NAME,
                         "--save_samples", samples] + common, torch_home=tmp_path)
    assert result.returncode == 0, result.stderr
    second = read_records(run.dir)[-1]
    assert len(read_records(run.dir)) == 2
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert sorted(os.listdir(samples)) == [f"{i:06d}.png" for i in range(4)]
    with Image.open(samples / "000000.png") as png:
        assert png.size == (16, 16) and png.mode == "RGB"

    # 3. torchrun, 2 ranks: uneven shares (3 reference images + 2; 2 samples + 1), one record
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
