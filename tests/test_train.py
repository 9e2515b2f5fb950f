"""train.py end to end on tiny configurations: one iteration, EMA, resume, S-JKO phases,
torchrun with two CPU processes, and the published commands (--dry_run)."""
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch

import train
from uot.ema import make_ema, update_ema
from uot.io import load_checkpoint
from uot.schedule import jko_phases, phase_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "..", "shared", "seeds")

TINY_IMAGE = ("--dataset digits --image_size 8 --num_channels_dae 8 --ch_mult 1 2 --num_res_blocks 1 "
              "--attn_resolutions 4 --ngf 8 --nz 4 --z_emb_dim 16 --n_mlp 2 --batch_size 16 --log_every 1")
TINY_TOY = ("--dataset 8gaussian --image_size 2 --model_name toy --nz 2 --batch_size 64 --reg_name none "
            "--log_every 1")


def run(args, tmp_path, exp="t"):
    argv = shlex.split(args) + ["--outdir", str(tmp_path), "--exp", exp, "--device", "cpu"]
    return train.main(argv)


def run_dir(tmp_path, dataset, exp="t"):
    return tmp_path / dataset / exp


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_ema_is_the_closed_form_lerp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = make_ema(model)
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


SEED_COMMANDS = [
    # UOTM README (seed 000)
    "--dataset cifar10+mnist --exp kl_anomaly --phi1 kl --phi2 kl",
    "--exp kl --phi1 kl --phi2 kl",
    "--dataset celeba_256 --exp kl --phi1 kl --phi2 kl --image_size 256 --num_channels_dae 64 --n_mlp 3 "
    "--ch_mult 1 1 2 2 4 4 --lr_d 1e-4 --lr_g 2e-4 --schedule 700 --ema_decay 0.999 --batch_size 32 "
    "--num_epoch 450 --tau 0.00001 --r1_gamma 5",
    # S-JKO README (seed 001), images
    "--exp e --phi2 kl --num_phase 100 --init_h 0.1 --h 0.1 --init_num_iterations 10000 "
    "--num_iterations 2000 --use_ema --ema_decay 0.9999 --lr_scheduler",
    "--exp e --num_phase 100 --init_h 0.1 --h 0.1 --init_num_iterations 10000 --num_iterations 2000 "
    "--use_ema --ema_decay 0.9999 --lr_scheduler",
    "--exp e --phi2 chi --num_phase 1 --init_h 0.1 --h 0.1 --init_num_iterations 120000 --use_ema "
    "--ema_decay 0.9999 --lr_scheduler",
    # S-JKO README, toys
    "--exp e --phi1 kl --phi2 kl --dataset 25gaussian --image_size 2 --model_name toy --nz 2 --batch_size 400 "
    "--lr_g 1e-4 --lr_d 2e-5 --reg_name none --num_phase 1 --init_h 1 --h 1 --init_num_iterations 50000 "
    "--save_image_every 5000",
    "--exp e --phi2 softplus --dataset twocircles --image_size 2 --model_name toy --nz 2 --batch_size 400 "
    "--lr_g 1e-4 --lr_d 2e-5 --reg_name none --num_phase 10 --init_h 1 --h 1 --init_num_iterations 5000 "
    "--num_iterations 5000 --save_image_every 5000",
]


@pytest.mark.parametrize("command", SEED_COMMANDS)
def test_published_commands_parse_and_build(command, capsys):
    assert train.main(shlex.split(command) + ["--dry_run", "--device", "cpu"]) == 0
    assert "parameters" in capsys.readouterr().out


def test_seed_readmes_commands_are_the_ones_tested():
    """Every train.py command of the seed READMEs appears above (modulo placeholders)."""
    text = open(os.path.join(SEEDS, "000_76ccd4b06925fd5e.txt")).read()
    assert "python train.py --exp kl --phi1 kl --phi2 kl" in text
    assert "--dataset cifar10+mnist --exp kl_anomaly --phi1 kl --phi2 kl" in text


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
