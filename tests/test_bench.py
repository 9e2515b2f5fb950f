"""scripts/bench_train.py: every variant is reported, with figures that add up, its
baseline EMA is the same average as uot.ema's, and its FLOP counts and matmul peak are
the hand-computed ones."""
import importlib.util
import json
import os

import torch

from tiny import ROOT
from uot.ema import frozen_copy, update_ema


def load_script(name):
    """A script of scripts/ as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_train = load_script("bench_train")

NAMES = ["baseline", "bf16", "channels_last", "compile", "adam_foreach", "adam_fused", "ema_foreach", "tf32_cudnn",
         "lazy_r1", "default", "all", "all+lazy_r1"]


def test_toy_run_reports_every_variant(tmp_path):
    path = tmp_path / "bench.json"
    # compiling takes a minute on CPU: the compile variants are reported as n/a here
    bench_train.main(["--config", "toy", "--device", "cpu", "--warmup", "1", "--iters", "1", "--repeats", "1",
                      "--compile", "off", "--json", str(path)])
    report = json.load(open(path))
    assert report["config"] == "toy" and report["batch_size"] == 400 and report["device"] == "cpu"
    assert report["torch"] == torch.__version__ and "--config toy" in report["command"]
    variants = {v["name"]: v for v in report["variants"]}
    assert list(variants) == NAMES
    not_here = {"channels_last", "compile", "tf32_cudnn"}   # 2-D data, compile off, CPU
    for name, v in variants.items():
        if name in not_here:
            assert v["status"] == "n/a" and v["reason"], name
            continue
        assert v["status"] == "ok" and v["losses_finite"], name
        assert v["images_per_s"] > 0 and v["ms_per_iter"] > 0 and v["vs_baseline"] > 0, name
        assert abs(v["images_per_s"] * v["ms_per_iter"] - 400 * 1e3) < 1e-6 * 400 * 1e3
        assert abs(v["vs_baseline"] - v["images_per_s"] / variants["baseline"]["images_per_s"]) < 1e-9
    assert variants["baseline"]["vs_baseline"] == 1.0
    # FLOPs over seconds: GFLOP/s, and its share of the matmul peak measured in the same run
    peak = report["matmul_peak"]
    assert peak["gflops"] > 0 and peak["seconds"] >= 0.05 and peak["threads"] == report["torch_threads"]
    assert abs(peak["gflops"] - 2 * peak["n"] ** 3 / peak["seconds"] / 1e9) < 1e-9 * peak["gflops"]
    for name, v in variants.items():
        if name in not_here:
            continue
        assert v["flops_per_iter"] > 0, name
        assert abs(v["gflop_per_s"] - v["flops_per_iter"] / (v["ms_per_iter"] / 1e3) / 1e9) < 1e-9 * v["gflop_per_s"]
        assert abs(v["of_matmul_peak"] - v["gflop_per_s"] / peak["gflops"]) < 1e-9 * v["of_matmul_peak"]
        # one count per R1 period: bf16 and the optimizer and EMA variants run the same matmuls
        same = variants["lazy_r1" if v["settings"]["r1_every"] > 1 else "baseline"]["flops_per_iter"]
        assert v["flops_per_iter"] == same, name
    # lazy R1 skips R1's gradient and double backward on 3 potential steps of 4
    assert variants["lazy_r1"]["flops_per_iter"] < variants["baseline"]["flops_per_iter"]
    # lazy R1 times whole R1 periods; the default is train.py's: fused Adam, foreach EMA, fp32, R1 every step
    assert variants["lazy_r1"]["iters"] == 4 and variants["lazy_r1"]["settings"]["r1_every"] == 4
    assert variants["default"]["settings"] == dict(bench_train.BASELINE, adam="fused", ema="foreach")
    # with compile off, "all" is every other flag that applies to 2-D data on CPU
    assert variants["all"]["settings"] == dict(bench_train.BASELINE, amp="bf16", adam="fused", ema="foreach")


def test_baseline_ema_loop_is_the_foreach_lerp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema_loop, ema_lerp = frozen_copy(model), frozen_copy(model)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))   # moves the BatchNorm buffers
        bench_train.update_ema_loop(ema_loop, model, 0.9)
        update_ema(ema_lerp, model, 0.9)
    for a, b in zip(ema_loop.state_dict().values(), ema_lerp.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_flop_count_of_a_linear_layer():
    """The counter on hand-counted passes of x W^T + b (B x n_in by n_in x n_out: 2 B n_in n_out
    FLOPs per matmul; bias sums and elementwise work are not counted)."""
    batch, n_in, n_out = 5, 3, 4
    linear = torch.nn.Linear(n_in, n_out)
    x = torch.randn(batch, n_in, requires_grad=True)
    # forward, then the gradients of the input and of the weight: 3 matmuls
    assert bench_train.count_flops(lambda: linear(x).sum().backward()) == 6 * batch * n_in * n_out

    def r1_step():
        value = linear(x).sum()
        (grad,) = torch.autograd.grad(value, x, create_graph=True)   # 1 matmul: ones @ W
        (value + grad.pow(2).sum()).backward()   # 2 for the value, 1 for the weight gradient of ones @ W

    # R1's torch.autograd.grad to the leaf x is counted too (plain FlopCounterMode raises there)
    assert bench_train.count_flops(r1_step) == 10 * batch * n_in * n_out


def test_matmul_peak_is_positive():
    peak = bench_train.matmul_peak(torch.device("cpu"), min_seconds=0.01, repeats=2)
    assert peak["n"] % 256 == 0 and peak["seconds"] >= 0.01 and peak["calls"] == 2
    assert peak["gflops"] == 2 * peak["n"] ** 3 / peak["seconds"] / 1e9 > 0
    assert peak["threads"] == torch.get_num_threads()
