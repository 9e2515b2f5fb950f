"""train.py end to end on tiny configurations: one iteration, EMA, resume, S-JKO phases,
torchrun with two CPU processes, and the published commands (--dry_run)."""
import json
import math
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from uot.ema import frozen_copy, update_ema
from uot.errors import UsageError
from uot.io import load_checkpoint
from uot.schedule import jko_phases, phase_at
from tiny import ROOT, TINY_IMAGE, TINY_TOY, read_jsonl, run, run_dir, torchrun


def test_ema_is_the_closed_form_lerp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = frozen_copy(model)
    decay, history = 0.9, [p.detach().clone() for p in model.parameters()]
    expected = [p.clone() for p in history]
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        update_ema(ema, model, decay)
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for e, p in zip(expected, ema.parameters()):
        torch.testing.assert_close(p, e)
    assert not any(p.requires_grad for p in ema.parameters())


def test_one_iteration_moves_G_D_and_the_ema(tmp_path):
    # S-JKO schedule flags count iterations, so one iteration is one call
    assert run(TINY_IMAGE + " --num_phase 1 --init_num_iterations 1 --phi2 kl --ema_decay 0.9 "
               "--save_content_every 1", tmp_path) == 0
    torch.manual_seed(1024)   # train.py builds the networks right after this seed
    args = train.build_parser().parse_args(shlex.split(TINY_IMAGE))
    train.resolve_args(args, 1)
    from score_sde import build_generator, build_potential
    G0, D0 = build_generator(args), build_potential(args)
    ckpt = load_checkpoint(run_dir(tmp_path, "digits") / "content.pth")
    assert ckpt["step"] == 1
    for key, model in (("G", G0), ("D", D0)):
        changed = [not torch.equal(v, ckpt[key][k]) for k, v in model.state_dict().items()
                   if v.is_floating_point()]
        assert sum(changed) > len(changed) // 2, f"{key} did not move"
    # after one step the EMA is 0.9 * G0 + 0.1 * G1
    for k, v in G0.state_dict().items():
        if v.is_floating_point() and "weight" in k:
            torch.testing.assert_close(ckpt["G_ema"][k], 0.9 * v + 0.1 * ckpt["G"][k])


def test_uotm_run_writes_the_run_directory(tmp_path):
    # 1797 digits / global batch 16 -> 112 iterations per epoch
    assert run(TINY_IMAGE + " --num_epoch 1 --log_every 50", tmp_path) == 0
    d = run_dir(tmp_path, "digits")
    opts = json.load(open(d / "options.json"))
    assert opts["phi1"] == "kl" and opts["sjko"] is False and opts["num_channels"] == 1
    stats = read_jsonl(d / "stats.jsonl")
    assert [r["step"] for r in stats] == [50, 100, 112]
    assert all(k in stats[0] for k in ("loss_D", "loss_G", "lr_g", "images_per_s", "penalty", "v_real"))
    for name in ("log.txt", "content.pth", "netG_1.pth", "samples_1.png"):
        assert (d / name).exists(), name
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(d))
    # the EMA weights alone, loadable without pickled code
    assert "G" not in load_checkpoint(d / "netG_1.pth")


def test_resume_equals_an_uninterrupted_run(tmp_path):
    common = TINY_IMAGE + " --num_phase 1 --init_num_iterations 6 --phi2 kl --save_content_every 3"
    assert run(common, tmp_path, exp="straight") == 0
    # the same run stopped after 3 iterations, then resumed
    assert run(TINY_IMAGE + " --num_phase 1 --init_num_iterations 3 --phi2 kl --save_content_every 3",
               tmp_path, exp="resumed") == 0
    assert run(common + " --resume", tmp_path, exp="resumed") == 0
    a = load_checkpoint(run_dir(tmp_path, "digits", "straight") / "content.pth")
    b = load_checkpoint(run_dir(tmp_path, "digits", "resumed") / "content.pth")
    assert a["step"] == b["step"] == 6
    for key in ("G", "D", "G_ema"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=1e-6)
    steps = [r["step"] for r in read_jsonl(run_dir(tmp_path, "digits", "resumed") / "stats.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_phase_schedule():
    phases = jko_phases(3, init_h=1.0, h=0.1, init_num_iterations=5, num_iterations=2)
    assert [(p.index, p.start, p.iterations, p.h) for p in phases] == [(0, 0, 5, 1.0), (1, 5, 2, 0.1), (2, 7, 2, 0.1)]
    assert [phase_at(phases, s).index for s in range(9)] == [0, 0, 0, 0, 0, 1, 1, 2, 2]


def test_reference_map_is_T_frozen_at_the_phase_boundary(tmp_path):
    args = TINY_TOY + " --phi2 kl --num_phase 2 --init_num_iterations 3 --num_iterations 2 --save_content_every 1"
    assert run(args, tmp_path) == 0
    d = run_dir(tmp_path, "8gaussian")
    # content.pth holds the last step; rerun a copy that stops at the boundary to read G there
    assert run(TINY_TOY + " --phi2 kl --num_phase 1 --init_num_iterations 3 --save_content_every 1",
               tmp_path, exp="boundary") == 0
    at_boundary = load_checkpoint(run_dir(tmp_path, "8gaussian", "boundary") / "content.pth")
    final = load_checkpoint(d / "content.pth")
    assert at_boundary["G_ref"] is None        # phase 0: identity reference
    for k, v in at_boundary["G"].items():       # phase 1: T_0, frozen at the boundary
        torch.testing.assert_close(final["G_ref"][k], v, rtol=0, atol=0)
    assert any(not torch.equal(final["G"][k], v) for k, v in at_boundary["G"].items())
    log = open(d / "log.txt").read()
    assert "phase 1: steps 3-5" in log and "reference T_0" in log


TRAIN_SCRIPTS = sorted(name for name in os.listdir(os.path.join(ROOT, "scripts"))
                       if name.endswith(".sh") and "train.py" in open(os.path.join(ROOT, "scripts", name)).read())


@pytest.mark.parametrize("script", TRAIN_SCRIPTS)
def test_experiment_scripts_run_as_written(script, capsys):
    """bash runs the script as written, with its launcher (PYTHON, or LAUNCH for torchrun)
    replaced by printf, which prints the argv it would have started; train.py then checks
    that argv and builds its networks (--dry_run) in this process."""
    env = dict(os.environ, PYTHON="printf %s\\n", LAUNCH="printf %s\\n")
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", script), "--dry_run", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    program, *flags = proc.stdout.splitlines()
    assert program == "train.py" and flags[-3:] == ["--dry_run", "--device", "cpu"]
    assert train.main(flags) == 0
    assert "parameters" in capsys.readouterr().out


def test_torchrun_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(ROOT, "train.py")] + shlex.split(TINY_IMAGE) + [
        "--batch_size", "256", "--num_epoch", "1", "--outdir", str(tmp_path), "--exp", "ddp", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = read_jsonl(run_dir(tmp_path, "digits", "ddp") / "stats.jsonl")
    # 1797 // 256 = 7 iterations: the global batch was split over the two ranks
    assert stats[-1]["step"] == 7
    assert all(r["rank_param_spread"] == 0.0 for r in stats)


@pytest.mark.slow
def test_torchrun_resume_equals_an_uninterrupted_run(tmp_path):
    """Two processes: one epoch, then --resume to the second, ends with the weights of a run of
    two epochs straight (rank 1 once crashed in set_rng_state on resume)."""
    def torchrun_train(exp, flags):
        argv = shlex.split(TINY_IMAGE + " --batch_size 256 --save_content_every 1 " + flags)
        proc = subprocess.run(torchrun(2, "train.py", argv + ["--outdir", str(tmp_path), "--exp", exp,
                                                              "--device", "cpu"]),
                              cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun_train("straight", "--num_epoch 2")
    torchrun_train("resumed", "--num_epoch 1")
    torchrun_train("resumed", "--num_epoch 2 --resume")
    a, b = (load_checkpoint(run_dir(tmp_path, "digits", exp) / "content.pth") for exp in ("straight", "resumed"))
    assert a["step"] == b["step"] == 14   # 7 iterations of 2 x 128 images per epoch
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")
    assert [r["step"] for r in read_jsonl(run_dir(tmp_path, "digits", "resumed") / "stats.jsonl")] == \
        list(range(1, 15))


def test_torchrun_init_from_runs_the_jko_steps_on_two_processes(tmp_path):
    """--init_from under torchrun: both ranks load the run, phase 1 measures against its map,
    and the ranks stay identical."""
    assert run(TINY_IMAGE + " --batch_size 256 --num_epoch 1", tmp_path, "phase0") == 0
    source = run_dir(tmp_path, "digits", "phase0") / "content.pth"
    argv = shlex.split(TINY_IMAGE + " --batch_size 256 --num_phase 2 --init_num_iterations 0 --num_iterations 4 "
                       f"--phi2 kl --log_every 2 --init_from {source}")
    proc = subprocess.run(torchrun(2, "train.py", argv + ["--outdir", str(tmp_path), "--exp", "jko", "--device", "cpu"]),
                          cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded, jko = load_checkpoint(str(source)), load_checkpoint(str(run_dir(tmp_path, "digits", "jko") / "content.pth"))
    assert jko["step"] == 4
    for name, value in loaded["G_ema"].items():
        assert torch.equal(value, jko["G_ref"][name]), name
    stats = read_jsonl(run_dir(tmp_path, "digits", "jko") / "stats.jsonl")
    assert [r["step"] for r in stats] == [2, 4] and all(r["rank_param_spread"] == 0.0 for r in stats)


def test_fid_every_logs_the_fid_of_the_ema_generator(tmp_path, torch_home, monkeypatch):
    # the Inception stand-in of conftest sits in the hub cache, where the real weights are looked up
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048))
    assert run(TINY_IMAGE + f" --num_phase 1 --init_num_iterations 2 --phi2 kl --fid_every 2 --fid_samples 4 "
               f"--fid_ref_stats {ref}", tmp_path) == 0
    [record] = [r for r in read_jsonl(run_dir(tmp_path, "digits") / "stats.jsonl") if "fid" in r]
    assert record["step"] == 2 and record["fid_samples"] == 4
    assert math.isfinite(record["fid"]) and record["fid"] > 0
    assert "FID (4 samples)" in open(run_dir(tmp_path, "digits") / "log.txt").read()


@pytest.mark.parametrize("flags, expected", [
    ("", True), ("--ema", True), ("--no_use_ema", False), ("--no_ema", False),   # UOTM: on unless turned off
    ("--num_phase 2", False), ("--num_phase 2 --use_ema", True), ("--num_phase 2 --ema", True),   # S-JKO: off
])
def test_ema_default_follows_each_papers_code(flags, expected):
    args = train.resolve_args(train.build_parser().parse_args(shlex.split(flags)), 1)
    assert args.use_ema is expected


@pytest.mark.parametrize("environment, flag, expected", [({}, [], 1), ({"OMP_NUM_THREADS": "2"}, [], 2),
                                                         ({"OMP_NUM_THREADS": "2"}, ["--num_threads", "3"], 3)])
def test_a_cpu_run_uses_one_torch_thread_unless_told_otherwise(environment, flag, expected, tmp_path, monkeypatch):
    """One thread is the fastest for the small networks trained on CPUs and the most robust
    beside other jobs (scripts/bench_threads.py); OMP_NUM_THREADS or --num_threads win."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2 if expected == 1 else 1)   # so that the run must change it
        assert run(TINY_TOY + " --num_phase 1 --init_num_iterations 1 --phi2 kl " + " ".join(flag), tmp_path) == 0
        assert torch.get_num_threads() == expected
        log = (run_dir(tmp_path, "8gaussian") / "log.txt").read_text()
        assert f"device cpu, {expected} torch thread(s)" in log
    finally:
        torch.set_num_threads(threads)


def test_init_from_starts_the_jko_steps_from_the_runs_evaluated_map(tmp_path):
    """S-JKO with --init_num_iterations 0: the loaded run's EMA map is phase 0's result, so
    phase 1 measures its cost against it (G_ref) from step 0."""
    assert run(TINY_IMAGE + " --batch_size 256 --num_epoch 1", tmp_path, "phase0") == 0
    source = run_dir(tmp_path, "digits", "phase0") / "content.pth"
    assert run(TINY_IMAGE + f" --batch_size 256 --num_phase 2 --init_num_iterations 0 --num_iterations 3 --phi2 kl "
               f"--init_from {source}", tmp_path, "jko") == 0
    loaded, jko = load_checkpoint(str(source)), load_checkpoint(str(run_dir(tmp_path, "digits", "jko") / "content.pth"))
    assert jko["step"] == 3 and loaded["G_ema"].keys() == jko["G_ref"].keys()
    for name, value in loaded["G_ema"].items():
        assert torch.equal(value, jko["G_ref"][name]), name
    log = (run_dir(tmp_path, "digits", "jko") / "log.txt").read_text()
    assert "phase 1: steps 0-3" in log and "phase 0:" not in log and f"networks from {source}" in log


def test_init_from_continues_uotm_with_fresh_optimisers(tmp_path):
    """G and the EMA start as the loaded EMA, D as the loaded D; the step count and Adam restart
    (at lr 1e-12 one epoch moves no weight by more than about 7 x 1e-12)."""
    assert run(TINY_IMAGE + " --batch_size 256 --num_epoch 1", tmp_path, "first") == 0
    source = run_dir(tmp_path, "digits", "first") / "content.pth"
    assert run(TINY_IMAGE + f" --batch_size 256 --num_epoch 1 --lr_g 1e-12 --lr_d 1e-12 --eta_min 1e-12 "
               f"--init_from {source}", tmp_path, "continued") == 0
    loaded = load_checkpoint(str(source))
    continued = load_checkpoint(str(run_dir(tmp_path, "digits", "continued") / "content.pth"))
    assert continued["step"] == 7 and continued["opt_G"]["state"][0]["step"] == 7   # not 14: fresh
    for mine, theirs in (("G", "G_ema"), ("G_ema", "G_ema"), ("D", "D")):
        for name, value in loaded[theirs].items():
            torch.testing.assert_close(continued[mine][name], value, rtol=0, atol=1e-9, msg=f"{mine}.{name}")
    fresh = load_checkpoint(str(source))["G"]   # the first run's own G had moved away from its EMA
    assert any(not torch.allclose(fresh[n], loaded["G_ema"][n]) for n in fresh)


def test_the_digits_measure_does_not_move_the_runs_random_stream(tmp_path, monkeypatch):
    """A save at epoch 1 measures the digits; whether the measure's classifier is trained
    then (empty cache) or read from the cache, the run must end with the same weights."""
    from datasets_prep import measures
    config = TINY_IMAGE + " --batch_size 256 --num_epoch 2 --save_image_every 1"
    weights = []
    for exp in ("empty_cache", "warm_cache"):   # the first run trains and caches the classifier
        monkeypatch.setenv("UOTM_CACHE", str(tmp_path / "cache"))
        measures._built.clear()
        assert run(config, tmp_path, exp) == 0
        weights.append(load_checkpoint(str(run_dir(tmp_path, "digits", exp) / "content.pth"))["G"])
    cached = sorted(f.split("-")[0] for f in os.listdir(tmp_path / "cache") if not f.endswith(".lock"))
    assert cached == ["digits_classifier", "digits_floor", "digits_reference"]
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def test_the_digits_configurations_have_one_definition_each():
    """scripts/digits_mlp.flags (the demo's and the study's) and scripts/digits.flags (NCSN++:
    the study's cross-check and the benchmarks) are read where they are used: no copy of
    either's network flags is written anywhere else in scripts/."""
    def read(name):
        with open(os.path.join(ROOT, "scripts", name), encoding="utf-8") as f:
            return f.read().strip()

    mlp, ncsnpp = read("digits_mlp.flags"), read("digits.flags")
    env = dict(os.environ, PYTHON="printf %s\\n")
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "digits_demo.sh")], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    assert " ".join(proc.stdout.split()).startswith("train.py " + mlp)
    networks = [mlp[mlp.index("--model_name"):mlp.index("--batch_size")],
                ncsnpp[ncsnpp.index("--num_channels_dae"):ncsnpp.index("--batch_size")]]
    scripts = os.path.join(ROOT, "scripts")
    for name in (n for n in os.listdir(scripts) if n.endswith((".sh", ".py"))):
        with open(os.path.join(scripts, name), encoding="utf-8") as f:
            text = " ".join(f.read().replace('"', " ").split())
        assert not any(network in text for network in networks), name


def test_fid_every_without_inception_weights_stops_before_writing(tmp_path):
    ref = tmp_path / "ref.npz"
    np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(UsageError, match="--inception_weights .*missing.pth: no such file"):
        run(TINY_IMAGE + f" --num_phase 1 --init_num_iterations 2 --phi2 kl --fid_every 2 --fid_ref_stats {ref} "
            f"--inception_weights {tmp_path / 'missing.pth'}", tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_dry_run_builds_the_networks_on_the_meta_device(monkeypatch, capsys):
    """--dry_run counts parameters without allocating or initialising them: the published
    CIFAR-10 NCSN++ (44.82M parameters) is built on the meta device."""
    built, build = [], train.build_generator
    monkeypatch.setattr(train, "build_generator", lambda args: built.append(build(args)) or built[-1])
    assert train.main(["--exp", "kl", "--phi1", "kl", "--phi2", "kl", "--dry_run", "--device", "cpu"]) == 0
    assert {p.device.type for p in built[0].parameters()} == {"meta"}
    assert "ncsnpp: G 44.82M parameters, D 12.25M parameters" in capsys.readouterr().out
