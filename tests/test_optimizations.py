"""train.py's speed flags keep the algorithm: bf16 autocast (R1's double backward included),
channels_last, and lazy R1 (--r1_every) on tiny networks, on CPU."""
import copy
from contextlib import nullcontext
import json
import shlex

import pytest
import torch

import train
from uot import steps
from tiny import TINY_IMAGE, TINY_TOY
from score_sde import build_generator, build_potential
from uot.losses import SemiDualLoss



def tiny_nets(channels_last=False):
    args = train.resolve_args(train.build_parser().parse_args(shlex.split(TINY_IMAGE)), 1)
    torch.manual_seed(0)
    G, D = build_generator(args), build_potential(args)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return args, G.to(memory_format=fmt), D.to(memory_format=fmt)


def batch(args, channels_last=False):
    g = torch.Generator().manual_seed(1)
    shape = (args.batch_size, args.num_channels, args.image_size, args.image_size)
    real, x = torch.rand(shape, generator=g) * 2 - 1, torch.randn(shape, generator=g)
    z = torch.randn(args.batch_size, args.nz, generator=g)
    if channels_last:
        real, x = (t.contiguous(memory_format=torch.channels_last) for t in (real, x))
    return real, x, z


def potential_step(G, D, real, x, z, r1_weight, autocast):
    """uot.steps.potential_step with lr 0, so D's gradient can be read after the call."""
    opt = torch.optim.Adam(D.parameters(), lr=0.0)
    out = steps.potential_step(G, D, opt, SemiDualLoss("kl", "kl"), real, x, z, x, 1e-3,
                               r1_weight=r1_weight, autocast=autocast)
    grad = torch.cat([p.grad.flatten() for p in D.parameters()])
    return out, grad


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_bf16_autocast_keeps_the_potential_loss_and_the_r1_double_backward():
    args, G, D = tiny_nets()
    # the residual branches and the last conv start at ~0 (init_scale 0), which makes grad_y v(y)
    # vanish at init; give them weights, as after some training, so that R1 is not ~1e-15
    torch.manual_seed(3)
    with torch.no_grad():
        for p in D.parameters():
            if p.abs().max() < 1e-5:
                p.normal_(0, 0.1)
    real, x, z = batch(args)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    r1_weight = 1e3   # R1's double-backward term then dominates D's gradient
    (loss32, pen32, vr32, vf32), grad32 = potential_step(G, copy.deepcopy(D), real, x, z, r1_weight, nullcontext())
    (loss16, pen16, vr16, vf16), grad16 = potential_step(G, copy.deepcopy(D), real, x, z, r1_weight, bf16())
    _, grad_no_r1 = potential_step(G, copy.deepcopy(D), real, x, z, 0.0, bf16())
    assert pen32 > 1e-5 and vr16.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: about 1% on the potential, its loss and R1 (measured: < 0.3%)
    torch.testing.assert_close(loss16, loss32, rtol=0.05, atol=0.005)
    torch.testing.assert_close(pen16, pen32, rtol=0.02, atol=0.0)
    assert relative_error(vr16, vr32) < 0.05 and relative_error(vf16, vf32) < 0.05
    # D's gradient under bf16 is the fp32 one (measured: 0.9% off), R1's term included ...
    assert relative_error(grad16, grad32) < 0.05
    # ... and that term is most of it: without R1 the gradient is another vector
    assert relative_error(grad_no_r1, grad32) > 0.5


def test_channels_last_gives_the_contiguous_numbers():
    args, G, D = tiny_nets()
    _, G_cl, D_cl = tiny_nets(channels_last=True)
    assert D_cl.state_dict().keys() == D.state_dict().keys()
    real, x, z = batch(args)
    real_cl, x_cl, _ = batch(args, channels_last=True)
    (loss, pen, v_real, _), grad = potential_step(G, D, real, x, z, 0.1, nullcontext())
    (loss_cl, pen_cl, v_real_cl, _), grad_cl = potential_step(G_cl, D_cl, real_cl, x_cl, z, 0.1, nullcontext())
    torch.testing.assert_close(loss_cl, loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pen_cl, pen, rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(v_real_cl, v_real, rtol=1e-4, atol=1e-5)
    assert relative_error(grad_cl, grad) < 1e-3
    opt_G = torch.optim.Adam(G_cl.parameters(), lr=0.0)
    loss_G, cost = steps.map_step(G_cl, D_cl, opt_G, SemiDualLoss("kl", "kl"), x_cl, z, x_cl, 1e-3)
    ref, ref_cost = steps.map_step(G, D, torch.optim.Adam(G.parameters(), lr=0.0), SemiDualLoss("kl", "kl"),
                                   x, z, x, 1e-3)
    torch.testing.assert_close(loss_G, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cost, ref_cost, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("flags", ["--r1_every 2", "--r1_every 2 --amp bf16 --channels_last"])
def test_lazy_r1_penalizes_every_kth_step_and_runs_with_the_speed_flags(flags, tmp_path):
    argv = shlex.split(TINY_IMAGE + " --num_phase 1 --init_num_iterations 3 --phi2 kl " + flags) + [
        "--outdir", str(tmp_path), "--exp", "t", "--device", "cpu"]
    assert train.main(argv) == 0
    stats = [json.loads(line) for line in open(tmp_path / "digits" / "t" / "stats.jsonl")]
    assert [r["step"] for r in stats] == [1, 2, 3]
    # steps 0 and 2 (records 1 and 3) carry R1, step 1 none
    assert stats[0]["penalty"] > 0 and stats[1]["penalty"] == 0 and stats[2]["penalty"] > 0
    assert all(torch.isfinite(torch.tensor([r["loss_D"], r["loss_G"]])).all() for r in stats)


def test_compile_keeps_the_losses_with_the_r1_double_backward_eager(tmp_path):
    # R1 on: the potential step runs D compiled for the fake batch and eager under the
    # double backward. Inductor reorders float sums, hence the tolerance.
    flags = TINY_TOY.replace("--reg_name none", "--reg_name r1") + " --num_phase 1 --phi2 kl --init_num_iterations 3"
    losses = {}
    for name, extra in (("eager", ""), ("compiled", " --compile")):
        argv = shlex.split(flags + extra) + ["--outdir", str(tmp_path), "--exp", name, "--device", "cpu"]
        assert train.main(argv) == 0
        with open(tmp_path / "8gaussian" / name / "stats.jsonl") as f:
            losses[name] = [(r["loss_D"], r["loss_G"], r["penalty"]) for r in map(json.loads, f)]
    assert len(losses["compiled"]) == 3 and losses["eager"][0][2] > 0
    torch.testing.assert_close(torch.tensor(losses["compiled"]), torch.tensor(losses["eager"]), rtol=1e-4, atol=1e-5)
