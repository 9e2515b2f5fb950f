"""Parity with the public UOTM and S-JKO code, on numbers recorded from it once.

tests/data/golden/ holds weights, inputs, outputs, loss values and gradients that the
public repositories' own networks and training-loop expressions produced (how: see
tests/data/README.md and tests/data/recording/record_golden.py). Each test loads the
public weights into this project's network, maps the public parameter names onto ours,
and checks that our networks, losses and training steps give the same numbers. Nothing
here imports the public code.

How close is "the same": the tolerances
---------------------------------------
The recorded numbers are float32 results of one CPU. Another CPU (or ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA) picks other kernels, which sum in another order, so float32 can promise
agreement only up to the rounding error of the computation, which depends on the sizes of
the reductions, the depth of the network, the cancellations inside it and the magnitude of
the values, not on any fixed rtol/atol. Each comparison therefore measures that rounding
error with our own code: it runs the same computation (same weights, same inputs) twice,
in float32 and in float64, and takes

    err = rms(ours_float32 - ours_float64)      (the float32 rounding error's size here)
    tol = SAFETY * max(err, floor)
    dev = rms(ours_float32 - public)            must be <= tol

rms is over the whole compared tensor (norm-wise, not element-wise: a near-zero element of
a tensor is judged against the tensor's scale, not against itself). The floor guards a
quantity whose measured err happens to be near zero: for a tensor, EPS32 * its rms; for a
scalar (a loss, a penalty), its scale times the relative rounding level that the same
evaluation shows on its tensors (outputs, gradients), whose rms errors are stable measures
where one scalar's error is a single draw. The scale of a loss is the magnitude of the
terms it sums (a difference of two large terms is only as exact as the terms, not as its
small result). The public float32 result carries a rounding error of the same kind as ours,
so dev is about sqrt(2) * err, and larger by the spread between kernels' accumulation
orders (blocked, pairwise or sequential sums differ by up to about sqrt(reduction size));
SAFETY = 32 covers that: the largest dev / err seen under the four kernel settings of
tests/data/README.md was about 6, on numbers recorded on another CPU as on numbers recorded
here. A real difference shifts dev without changing err: the negative tests (every element
of one weight tensor moved by 1e-3, a cost scale off by 1 %, the per-sample pairing) must
give dev / tol above 2 through the same check (they give 5 or more).
Run with -s to print the largest dev / tol of the parity checks and the smallest of the
negative tests.
"""
import argparse
import contextlib
import json
import os
import types

import pytest
import torch

import train
import train_toy
from score_sde import add_model_args, build_generator, build_potential, count_parameters, initial_reference
from score_sde.otm import OTMGenerator, OTMPotential, ResNetGenerator, ResNetPotential
from score_sde.potentials import LargePotential, SmallPotential
from score_sde.toy import ToyGenerator, ToyPotential
from uot.losses import JSDLoss, SemiDualLoss, image_cost_scale, jko_cost_scale, quadratic_cost, \
    source_gradient_penalty
from uot.phi import ScaledPhi, select_phi
from uot.schedule import Phase, jko_phases
from uot.steps import map_step, potential_step

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden")
EPS32 = torch.finfo(torch.float32).eps
SAFETY = 32.0
WORST = {"ratio": 0.0, "where": ""}                 # the parity checks' largest dev / tol
CLOSEST_MISS = {"ratio": float("inf"), "where": ""}  # the negative tests' smallest


def golden(name):
    return torch.load(os.path.join(GOLDEN, name), weights_only=True)


with open(os.path.join(GOLDEN, "parameter_counts.json")) as f:
    COUNTS = json.load(f)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)   # for the few draws the tests make themselves (the ignored otm z)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    print(f"\ntest_golden: largest dev / tol of a parity check {WORST['ratio']:.3g} ({WORST['where']}); "
          f"smallest of a real difference {CLOSEST_MISS['ratio']:.3g} ({CLOSEST_MISS['where']})")


# ------------------------------------------------------------------------------------
# The comparison (see the module docstring)

@contextlib.contextmanager
def float_keeps_float64():
    """Tensor.float() keeps a float64 tensor float64: the steps cast the potentials' outputs to
    float32 (for autocast), which would put float32 roundings into the float64 evaluation."""
    to_float32 = torch.Tensor.float
    torch.Tensor.float = lambda self, *args, **kwargs: \
        self if self.dtype == torch.float64 else to_float32(self, *args, **kwargs)
    try:
        yield
    finally:
        del torch.Tensor.float    # back to the inherited method


def rms(t):
    return t.detach().double().pow(2).mean().sqrt().item()


def evaluate(run):
    """run(dtype) -> {name: tensor}, evaluated in float32 and in float64."""
    ours32 = run(torch.float32)
    with float_keeps_float64():
        ours64 = run(torch.float64)
    assert all(v.dtype == torch.float64 for v in ours64.values()), "a float32 step in the float64 evaluation"
    return ours32, ours64


def worst_ratio(run, public, scales=None):
    """The largest dev / tol (module docstring) over the quantities named in `public`
    ({name: recorded tensor}); `scales` gives a loss's term magnitude by name."""
    ours32, ours64 = evaluate(run)
    ours32 = {name: ours32[name].detach().reshape(want.shape).double() for name, want in public.items()}
    ours64 = {name: ours64[name].detach().reshape(want.shape) for name, want in public.items()}
    err = {name: rms(ours32[name] - ours64[name]) for name in public}
    # the relative rounding level of the evaluation, measured on its tensors
    level = max([EPS32] + [err[name] / rms(ours64[name]) for name in public
                           if public[name].numel() > 1 and rms(ours64[name]) > 0])
    ratios = {}
    for name, want in public.items():
        scale = (scales or {}).get(name, rms(want))
        floor = (EPS32 if want.numel() > 1 else level) * scale
        ratios[name] = rms(ours32[name] - want.double()) / (SAFETY * max(err[name], floor))
    name = max(ratios, key=ratios.get)
    return ratios[name], name


def current_test(name):
    return f"{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0].split('::')[-1]}: {name}"


def assert_matches(run, public, scales=None):
    ratio, name = worst_ratio(run, public, scales)
    if ratio > WORST["ratio"]:
        WORST.update(ratio=ratio, where=current_test(name))
    assert ratio <= 1.0, f"{name}: deviation from the public value is {ratio:.3g} x the float32 tolerance"


def assert_differs(run, public, scales=None, margin=2.0):
    """A real difference must fail the same check, by a margin."""
    ratio, name = worst_ratio(run, public, scales)
    if ratio < CLOSEST_MISS["ratio"]:
        CLOSEST_MISS.update(ratio=ratio, where=current_test(name))
    assert ratio > margin, f"a real difference passes as rounding: {name} at {ratio:.3g} x the tolerance"


def model_cfg(*flags):
    return add_model_args(argparse.ArgumentParser()).parse_args([str(f) for f in flags])


def frozen_adam(module):
    """Adam with lr 0: a step leaves the weights where they are, the gradients stay readable."""
    return torch.optim.Adam(module.parameters(), lr=0.0)


def grads(prefix, named, keys):
    return {f"{prefix}.{k}": named[k].grad for k in keys}


# ------------------------------------------------------------------------------------
# Loading public weights into our networks

def load_pairs(pairs):
    """Copy public tensors into our parameters; `pairs` is [(public_name, tensor, our_parameter)]."""
    with torch.no_grad():
        for name, tensor, param in pairs:
            if name.endswith(".W"):   # score_sde's NIN stores (in, out); ours is a 1x1 conv (out, in, 1, 1)
                tensor = tensor.t().reshape(param.shape)
            assert tensor.shape == param.shape, (name, tuple(tensor.shape), tuple(param.shape))
            param.copy_(tensor)


def load_renamed(module, state, rename, drop=()):
    """Load `state` into `module` through `rename` (public name -> our name); every parameter
    of ours must be set exactly once."""
    ours = dict(module.named_parameters())
    pairs = [(k, v, ours[rename(k)]) for k, v in state.items() if not any(d in k for d in drop)]
    assert sorted(id(p) for _, _, p in pairs) == sorted(id(p) for p in ours.values())
    load_pairs(pairs)
    return {k: p for k, _, p in pairs}


def load_in_order(module, state, drop=()):
    """Load `state` (public registration order, `drop` left out) into our parameters in
    registration order, checking every shape."""
    public = [(k, v) for k, v in state.items() if not any(d in k for d in drop)]
    ours = list(module.parameters())
    assert len(public) == len(ours), (len(public), len(ours))
    load_pairs([(k, v, p) for (k, v), p in zip(public, ours)])
    return {k: p for (k, _), p in zip(public, ours)}


def params_in_use_order(module, *inputs):
    """Our parameters in the order the forward pass first uses the layers that own them."""
    order, seen = [], set()

    def hook(mod, args):
        if id(mod) not in seen:
            seen.add(id(mod))
            order.extend(mod.parameters(recurse=False))

    handles = [m.register_forward_pre_hook(hook) for m in module.modules()
               if next(m.parameters(recurse=False), None) is not None]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    assert len(order) == len(list(module.parameters())), "some parameters were not used"
    return order


def load_public_ncsnpp(model, state, x, z):
    """The public NCSNpp keeps its layers in one list, `all_modules`, in the order its forward
    pass uses them, and its z mapping network (`z_transform`, used first) at the end. Sorted
    that way, the public parameters line up with ours in use order. The public time-embedding
    layers (Dense_0), which we do not build, are not in the recorded files."""
    def use_rank(item):
        position, name = item
        top, index = name.split(".")[:2]
        return {"z_transform": 0, "all_modules": 1}[top], int(index), position
    names = [name for _, name in sorted(enumerate(state), key=use_rank)]
    ours = params_in_use_order(model, x, z)
    assert len(names) == len(ours), (len(names), len(ours))
    pairs = [(name, state[name], p) for name, p in zip(names, ours)]
    load_pairs(pairs)
    return {name: p for name, _, p in pairs}


def potential_rename(name):
    """Public Discriminator_small/_large names -> SmallPotential/LargePotential names."""
    parts = name.split(".")
    if parts[0] == "start_conv":
        return "stem." + parts[1]
    if parts[0] == "end_linear":
        return "linear." + parts[1]
    if parts[0] == "final_conv":
        return name
    block = int(parts[0][len("conv"):]) - 1          # convN.conv1.0.weight -> blocks.N-1.conv1.weight
    return f"blocks.{block}.{parts[1]}.{parts[3]}"


TOY_PREFIXES = {"x_module.map": "trunk.lift", "x_module.res_blocks": "trunk.blocks",
                "z_module": "embed_z", "out_module": "head"}


def toy_rename(name):
    for public, ours in TOY_PREFIXES.items():
        if name.startswith(public + "."):
            return ours + name[len(public):]
    raise KeyError(name)


# ------------------------------------------------------------------------------------
# 1. NCSN++

NCSNPP_TINY = {  # the options the recorded public networks were built with
    "default": ["--image_size", 16, "--num_channels_dae", 8, "--ch_mult", 1, 2, "--num_res_blocks", 1,
                "--attn_resolutions", 8, "--nz", 8, "--z_emb_dim", 16, "--n_mlp", 2],
    "outputskip_inputskipcat": ["--image_size", 8, "--num_channels_dae", 4, "--ch_mult", 1, 2,
                                "--num_res_blocks", 1, "--attn_resolutions", 4, "--nz", 4, "--z_emb_dim", 4,
                                "--n_mlp", 1, "--progressive", "output_skip", "--progressive_input", "input_skip",
                                "--progressive_combine", "cat", "--no-centered", "--not_use_tanh"],
    "residual_nofir": ["--image_size", 8, "--num_channels_dae", 4, "--ch_mult", 1, 2, "--num_res_blocks", 1,
                       "--attn_resolutions", 8, "--nz", 4, "--z_emb_dim", 4, "--n_mlp", 1,
                       "--progressive", "residual", "--progressive_input", "input_skip", "--no-fir"],
    "ddpm_nofir": ["--image_size", 8, "--num_channels_dae", 4, "--ch_mult", 1, 2, "--num_res_blocks", 2,
                   "--attn_resolutions", 4, "--nz", 4, "--z_emb_dim", 4, "--n_mlp", 1,
                   "--resblock_type", "ddpm", "--no-fir"],
}
# A real difference for the negative tests: every element of one weight tensor in the middle
# of the network moved by this much.
WEIGHT_SHIFT = 1e-3


def same_options(cfg, recorded):
    """Our flags build what the public options the network was recorded with say (same names)."""
    ours = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in vars(cfg).items()}
    return {k: ours[k] for k in recorded} == recorded


def tiny_ncsnpp(variant="default"):
    rec = golden("ncsnpp.pt")[variant]
    cfg = model_cfg("--model_name", "ncsnpp", *NCSNPP_TINY[variant])
    assert same_options(cfg, rec["options"])
    G = build_generator(cfg)
    return G, load_public_ncsnpp(G, rec["state_dict"], rec["x"], rec["z"]), rec


def ncsnpp_output(variant, shift=0.0):
    """The output on the recorded inputs; `shift` moves the attention's values (all_modules.5.NIN_2.W)."""
    def run(dtype):
        G, names, rec = tiny_ncsnpp(variant)
        with torch.no_grad():
            if shift:
                names["all_modules.5.NIN_2.W"].add_(shift)
            return {"out": G.to(dtype)(rec["x"].to(dtype), rec["z"].to(dtype))}
    return run, {"out": golden("ncsnpp.pt")[variant]["out"]}


@pytest.mark.parametrize("variant", list(NCSNPP_TINY))
def test_ncsnpp_output_matches_public(variant):
    assert_matches(*ncsnpp_output(variant))


def test_ncsnpp_golden_can_fail():
    """The comparison is sensitive: a weight off by 1e-3 in one layer changes the output."""
    assert_differs(*ncsnpp_output("default", shift=WEIGHT_SHIFT))


def meta_count(build, cfg):
    with torch.device("meta"):
        return count_parameters(build(cfg))


def test_ncsnpp_parameter_counts():
    """Ours = the public NCSNpp minus its time-embedding layers (Dense_0), which it builds but
    never calls; CIFAR-10 48.10M public, 44.82M here."""
    cifar = model_cfg("--image_size", 32)
    assert meta_count(build_generator, cifar) == \
        COUNTS["uotm_ncsnpp_cifar10_total"] - COUNTS["uotm_ncsnpp_cifar10_time_embedding"]
    celeba = model_cfg("--image_size", 256, "--num_channels_dae", 64, "--n_mlp", 3, "--ch_mult", 1, 1, 2, 2, 4, 4)
    assert meta_count(build_generator, celeba) == \
        COUNTS["uotm_ncsnpp_celeba256_total"] - COUNTS["uotm_ncsnpp_celeba256_time_embedding"]
    tiny = model_cfg(*NCSNPP_TINY["default"])
    assert count_parameters(build_generator(tiny)) == \
        COUNTS["uotm_ncsnpp_tiny_default_total"] - COUNTS["uotm_ncsnpp_tiny_default_time_embedding"]


# ------------------------------------------------------------------------------------
# 2. Potentials

def tiny_potential(which):
    rec = golden("potentials.pt")[which]
    net = SmallPotential(3, 2) if which == "small" else LargePotential(1, 2)
    names = load_renamed(net, rec["state_dict"], potential_rename)
    return net, names, rec


def shift_middle_weight(names, shift):
    """Move every element of the weight tensor in the middle of the public list by `shift`."""
    weights = [name for name in names if name.endswith("weight")]
    names[weights[len(weights) // 2]].add_(shift)


def potential_output(which, shift=0.0):
    def run(dtype):
        net, names, rec = tiny_potential(which)
        with torch.no_grad():
            shift_middle_weight(names, shift)
            out = net.to(dtype)(rec["y"].to(dtype))
        assert out.shape == rec["y"].shape[:1]          # ours (B,), the public (B, 1)
        return {"out": out}
    return run, {"out": golden("potentials.pt")[which]["out"].squeeze(1)}


@pytest.mark.parametrize("which", ["small", "large"])
def test_potential_output_matches_public(which):
    assert_matches(*potential_output(which))


def test_build_potential_picks_the_public_small_and_large():
    assert isinstance(build_potential(model_cfg("--image_size", 16, "--ngf", 2)), SmallPotential)
    assert isinstance(build_potential(model_cfg("--image_size", 256, "--ngf", 2)), LargePotential)


def test_potential_parameter_counts():
    assert meta_count(build_potential, model_cfg("--image_size", 32)) == COUNTS["uotm_potential_small_cifar10"]
    assert meta_count(build_potential, model_cfg("--image_size", 256)) == COUNTS["uotm_potential_large_celeba256"]
    assert COUNTS["sjko_potential_large_256px"] == COUNTS["uotm_potential_large_celeba256"]


def test_potential_at_64px_matches_sjko():
    assert meta_count(build_potential, model_cfg("--image_size", 64)) == COUNTS["sjko_potential_large_64px"]


# ------------------------------------------------------------------------------------
# 3. Toy networks (S-JKO models/toy/TOY.py, the same as UOTM models/toy.py)

def load_toy(net, state):
    return load_renamed(net, state, toy_rename)


def toy_outputs(shift=0.0):
    rec = golden("toy.pt")

    def run(dtype):
        G, D = ToyGenerator(2, 2, hidden=16), ToyPotential(2, hidden=16)
        g_names, d_names = load_toy(G, rec["G"]["state_dict"]), load_toy(D, rec["D"]["state_dict"])
        with torch.no_grad():
            shift_middle_weight(g_names, shift)
            shift_middle_weight(d_names, shift)
            return {"G": G.to(dtype)(rec["G"]["x"].to(dtype), rec["G"]["z"].to(dtype)),
                    "D": D.to(dtype)(rec["D"]["y"].to(dtype))}
    return run, {"G": rec["G"]["out"], "D": rec["D"]["out"].squeeze(1)}


def test_toy_networks_match_public():
    assert_matches(*toy_outputs())


def test_toy_parameter_counts():
    assert count_parameters(build_generator(model_cfg("--model_name", "toy", "--image_size", 2, "--nz", 2))) == \
        COUNTS["sjko_toy_generator"]
    assert count_parameters(build_potential(model_cfg("--model_name", "toy", "--image_size", 2))) == \
        COUNTS["sjko_toy_potential"]
    assert count_parameters(ToyGenerator(1, 1)) == COUNTS["uotm_toy_generator_1d"]
    assert count_parameters(ToyPotential(1)) == COUNTS["uotm_toy_potential_1d"]


# ------------------------------------------------------------------------------------
# 4. The otm "Small" pair (S-JKO models/otm/OTM.py)

OTM_TINY = ["--model_name", "otm", "--image_size", 32, "--ngf", 4]


def tiny_otm():
    rec = golden("otm.pt")
    cfg = model_cfg(*OTM_TINY)
    G, D = build_generator(cfg), build_potential(cfg)
    assert isinstance(G, OTMGenerator) and isinstance(D, OTMPotential)
    g_names = load_in_order(G, rec["G"]["state_dict"])
    d_names = load_in_order(D, rec["D"]["state_dict"], drop=("projection",))  # built, never called
    return G, D, g_names, d_names, rec


def otm_outputs(shift=0.0):
    def run(dtype):
        G, D, g_names, d_names, rec = tiny_otm()
        with torch.no_grad():
            shift_middle_weight(g_names, shift)
            shift_middle_weight(d_names, shift)
            x = rec["G"]["x"].to(dtype)
            return {"G": G.to(dtype)(x, torch.randn(4, 100, dtype=dtype)),   # z is ignored; batch statistics
                    "D": D.to(dtype)(rec["G"]["out"].to(dtype))}
    rec = golden("otm.pt")
    return run, {"G": rec["G"]["out"], "D": rec["D"]["out"].squeeze(1)}


def test_otm_networks_match_public():
    assert_matches(*otm_outputs())


def test_otm_reference_map_matches_public():
    rec = golden("otm.pt")
    assert_matches(lambda dtype: {"Q": initial_reference(model_cfg(*OTM_TINY))(rec["G"]["x"].to(dtype))},
                   {"Q": rec["reference"]})


def test_otm_parameter_counts():
    cfg = model_cfg("--model_name", "otm", "--image_size", 32, "--ngf", 64)
    assert count_parameters(build_generator(cfg)) == COUNTS["sjko_otm_generator_cifar10"]
    assert count_parameters(build_potential(cfg)) == \
        COUNTS["sjko_otm_potential_cifar10"] - COUNTS["sjko_otm_potential_projection"]


# ------------------------------------------------------------------------------------
# 4b. S-JKO's other networks (its models.get_model): --model_name ddpm (the NCSN++ code with
# DDPM blocks, no FIR), --model_name drunet (models/drunet), and the otm pair at 64 px
# (models/otm/OTM.py ResNet_G / ResNet_D, recorded at widths 4 and 2: our --ngf 1)

SJKO_TINY = {  # the options the recorded public networks were built with
    "ddpm": ["--model_name", "ddpm", "--image_size", 8, "--num_channels_dae", 4, "--ch_mult", 1, 2,
             "--num_res_blocks", 1, "--attn_resolutions", 4, "--nz", 4, "--z_emb_dim", 4, "--n_mlp", 1, "--ngf", 2],
    "drunet": ["--model_name", "drunet", "--image_size", 16, "--ngf", 2, "--ch_mult", 1, 2, 2, 2,
               "--num_res_blocks", 1],
}
OTM64_TINY = ["--model_name", "otm", "--image_size", 64, "--ngf", 1]


def sjko_generator_output(name, shift=0.0):
    rec = golden("sjko_networks.pt")[name]

    def run(dtype):
        cfg = model_cfg(*SJKO_TINY[name])
        assert same_options(cfg, rec["options"])
        G = build_generator(cfg)
        if name == "ddpm":
            names = load_public_ncsnpp(G, rec["state_dict"], rec["x"], rec["z"])
        else:
            names = load_in_order(G, rec["state_dict"])
        with torch.no_grad():
            shift_middle_weight(names, shift)
            return {"out": G.to(dtype)(rec["x"].to(dtype), rec["z"].to(dtype))}
    return run, {"out": rec["out"]}


@pytest.mark.parametrize("name", list(SJKO_TINY))
def test_sjko_generators_match_public(name):
    assert_matches(*sjko_generator_output(name))


def otm64_outputs(shift=0.0):
    rec = golden("sjko_networks.pt")["otm64"]

    def run(dtype):
        cfg = model_cfg(*OTM64_TINY)
        G, D = build_generator(cfg), build_potential(cfg)
        assert isinstance(G, ResNetGenerator) and isinstance(D, ResNetPotential)
        assert rec["features"] == [4 * cfg.ngf, 2 * cfg.ngf]
        g_names, d_names = load_in_order(G, rec["G"]["state_dict"]), load_in_order(D, rec["D"]["state_dict"])
        with torch.no_grad():
            shift_middle_weight(g_names, shift)
            shift_middle_weight(d_names, shift)
            return {"G": G.to(dtype)(rec["x"].to(dtype)), "D": D.to(dtype)(rec["G"]["out"].to(dtype))}
    return run, {"G": rec["G"]["out"], "D": rec["D"]["out"].flatten()}


def test_otm_at_64px_matches_the_public_resnet_pair():
    assert_matches(*otm64_outputs())


def test_sjko_other_networks_parameter_counts():
    """At the CIFAR-10 defaults (and 64 px for otm), the public counts; ddpm without the
    time-embedding layers its NCSN++ code builds and never calls."""
    assert meta_count(build_generator, model_cfg("--model_name", "ddpm", "--image_size", 32)) == \
        COUNTS["sjko_ddpm_generator_cifar10"] - COUNTS["sjko_ddpm_generator_cifar10_time_embedding"]
    assert meta_count(build_generator, model_cfg("--model_name", "drunet", "--image_size", 32)) == \
        COUNTS["sjko_drunet_generator_cifar10"]
    celeba64 = model_cfg("--model_name", "otm", "--image_size", 64)
    assert meta_count(build_generator, celeba64) == COUNTS["sjko_otm_generator_64px"]
    assert meta_count(build_potential, celeba64) == COUNTS["sjko_otm_potential_64px"]


SHIFTED_NETWORKS = {"potential_small": lambda: potential_output("small", WEIGHT_SHIFT),
                    "potential_large": lambda: potential_output("large", WEIGHT_SHIFT),
                    "toy": lambda: toy_outputs(WEIGHT_SHIFT), "otm": lambda: otm_outputs(WEIGHT_SHIFT),
                    "ddpm": lambda: sjko_generator_output("ddpm", WEIGHT_SHIFT),
                    "drunet": lambda: sjko_generator_output("drunet", WEIGHT_SHIFT),
                    "otm64": lambda: otm64_outputs(WEIGHT_SHIFT)}


@pytest.mark.parametrize("network", list(SHIFTED_NETWORKS))
def test_network_parity_can_fail(network):
    """Each network comparison rejects a weight tensor moved by 1e-3 (see test_ncsnpp_golden_can_fail)."""
    assert_differs(*SHIFTED_NETWORKS[network]())


# ------------------------------------------------------------------------------------
# 5. Training steps. Each compares the loss values, the penalty and two gradients per
# network after the step. The scale of a loss is the magnitude of the terms it sums: for the
# potential loss its two means, for the map loss E c - E v its cost and potential means.

def step_scales(errD_real, errD_fake, err, v_fake_mean):
    return {"value": abs(errD_real) + abs(errD_fake), "err": abs(err + v_fake_mean) + abs(v_fake_mean)}


def recorded_step(value, penalty, err, case):
    return {"value": value, "penalty": penalty, "err": err,
            **{f"D.{k}": v for k, v in case["D_grads"].items()}, **{f"G.{k}": v for k, v in case["G_grads"].items()}}


def run_steps(G, D, g_names, d_names, case, loss, real, x, z, refs, cost_scale, r1_weight):
    """potential_step then map_step with frozen optimizers: the values and gradients to compare.
    `refs`: the cost's reference in the potential step (None: S-JKO's potential loss has no
    cost) and in the map step."""
    potential_ref, map_ref = refs
    value, penalty, _, _ = potential_step(G, D, frozen_adam(D), loss, real, x, z, potential_ref, cost_scale,
                                          r1_weight=r1_weight)
    d_grads = grads("D", d_names, case["D_grads"])
    err, _ = map_step(G, D, frozen_adam(G), loss, x, z, map_ref, cost_scale)
    return {"value": value, "penalty": r1_weight * penalty, "err": err, **d_grads,
            **grads("G", g_names, case["G_grads"])}


# 5a. UOTM image losses (UOTM train.py): tiny NCSN++ map, tiny small potential, 16 px

UOTM_CASES = [("kl", "kl", 1e-3), ("kl", "kl", 5e-3), ("softplus", "softplus", 1e-3),
              ("softplus", "softplus", 5e-3), ("linear", "kl", 1e-3)]
# Our kl is exp(s) - 1, the UOTM code's exp(s): per kl term, our loss is lower by exactly 1.
KL_OFFSET = {"kl": 1.0, "softplus": 0.0, "linear": 0.0}


def uotm_image_steps(loss, cost_scale, r1_weight, reference, phi1, phi2, tau):
    rec = golden("uotm_image_losses.pt")
    case = rec["cases"][f"{phi1}_{phi2}_tau{tau}"]

    def run(dtype):
        G, g_names, _ = tiny_ncsnpp()
        D, d_names, _ = tiny_potential("small")
        x, z, real = (rec[k].to(dtype) for k in ("noise", "z", "real"))
        return run_steps(G.to(dtype), D.to(dtype), g_names, d_names, case, loss, real, x, z,
                         (reference(x), reference(x)), cost_scale, r1_weight)
    offset = KL_OFFSET[phi1] + KL_OFFSET[phi2]
    public = recorded_step(case["errD_real"] + case["errD_fake"] - offset, case["grad_penalty"], case["err"], case)
    return run, public, step_scales(case["errD_real"], case["errD_fake"], case["err"], case["D_fake"].mean())


@pytest.mark.parametrize("phi1,phi2,tau", UOTM_CASES)
def test_uotm_image_steps_match_public(phi1, phi2, tau):
    """potential_step / map_step with the all-pairs loss: the public loss values, R1 penalty and
    gradients (potential: end_linear and start_conv weights; map: output conv and first z layer)."""
    rec = golden("uotm_image_losses.pt")
    assert_matches(*uotm_image_steps(SemiDualLoss(phi1, phi2, pairing="all_pairs"), image_cost_scale(tau),
                                     0.5 * rec["r1_gamma"], lambda x: x, phi1, phi2, tau))


def uotm_train_args(phi1, phi2, tau):
    flags = ["--dataset", "cifar10", "--phi1", phi1, "--phi2", phi2, "--tau", tau, "--ngf", 2,
             *NCSNPP_TINY["default"]]
    return train.resolve_args(train.build_parser().parse_args([str(f) for f in flags]), 1)


def phase_setup(args, phases):
    """train.enter_phase for the first phase, on the parts of a Run it reads."""
    run = types.SimpleNamespace(args=args, state=types.SimpleNamespace(G_ref=None, step=0), phases=phases,
                                source_shape=train.source_shape(args),
                                initial_reference=initial_reference(args))
    return train.enter_phase(run, phases[0], lambda *a: None)


@pytest.mark.parametrize("phi1,phi2,tau", [UOTM_CASES[0], UOTM_CASES[3], UOTM_CASES[4]])
def test_uotm_image_steps_as_train_py_configures_them(phi1, phi2, tau):
    """The loss, cost scale, reference and R1 weight train.py picks in UOTM mode."""
    args = uotm_train_args(phi1, phi2, tau)
    ps = phase_setup(args, [Phase(0, 0, 10, None)])
    assert ps.data_noise == 0.0
    assert_matches(*uotm_image_steps(ps.loss, ps.cost_scale, 0.5 * args.r1_gamma * args.r1_every, ps.reference,
                                     phi1, phi2, tau))


def test_per_sample_pairing_differs_from_public_uotm():
    """The golden values tell the two pairings apart: with kl and costs that differ across the
    batch, the per-sample potential loss is not the public one (the all-pairs loss is)."""
    rec = golden("uotm_image_losses.pt")
    for tau in (1e-3, 5e-3):
        case = rec["cases"][f"kl_kl_tau{tau}"]
        assert case["cost"].std() > 0.01 * case["cost"].mean()
        public = {"value": case["errD_real"] + case["errD_fake"] - 2.0}
        scales = {"value": abs(case["errD_real"]) + abs(case["errD_fake"])}

        def potential_loss(pairing):
            return lambda dtype: {"value": SemiDualLoss("kl", "kl", pairing).potential(
                *(case[k].squeeze(-1).to(dtype) for k in ("D_fake", "D_real")), tau * case["cost"].to(dtype))}
        assert_matches(potential_loss("all_pairs"), public, scales)
        assert_differs(potential_loss("per_sample"), public, scales)
        # and the step comparison itself rejects the per-sample loss
        assert_differs(*uotm_image_steps(SemiDualLoss("kl", "kl", "per_sample"), image_cost_scale(tau),
                                         0.5 * rec["r1_gamma"], lambda x: x, "kl", "kl", tau))


def test_uotm_image_steps_reject_a_cost_off_by_one_percent():
    rec = golden("uotm_image_losses.pt")
    assert_differs(*uotm_image_steps(SemiDualLoss("kl", "kl", "all_pairs"), 1.01 * image_cost_scale(1e-3),
                                     0.5 * rec["r1_gamma"], lambda x: x, "kl", "kl", 1e-3))


def test_quadratic_cost_matches_public():
    rec = golden("uotm_image_losses.pt")

    def run(dtype):
        G, _, _ = tiny_ncsnpp()
        x = rec["noise"].to(dtype)
        with torch.no_grad():
            return {"cost": quadratic_cost(x, G.to(dtype)(x, rec["z"].to(dtype)), image_cost_scale(1.0))}
    assert_matches(run, {"cost": rec["cases"]["kl_kl_tau0.001"]["cost"]})


# 5b. S-JKO losses on the toy networks (S-JKO train.py, train_JSD.py)

SJKO_CASES = {"kl_alpha1.0": ("kl", 1.0), "softplus_alpha1.0": ("softplus_sjko", 1.0),
              "kl_alpha2.5": ("kl", 2.5), "chi_alpha1.0": ("chi", 1.0)}
TOY_GRAD_NAMES = {"D": ("out_module.2.weight", "x_module.map.weight"),
                  "G": ("out_module.2.weight", "z_module.0.weight")}


def toy_pair():
    rec = golden("toy.pt")
    G, D = ToyGenerator(2, 2, hidden=16), ToyPotential(2, hidden=16)
    return G, D, load_toy(G, rec["G"]["state_dict"]), load_toy(D, rec["D"]["state_dict"])


def sjko_steps(key, loss, cost_scale, data_noise, r1_weight):
    rec = golden("sjko_toy_losses.pt")
    case = rec["cases"][key]

    def run(dtype):
        G, D, g_names, d_names = toy_pair()
        real = (rec["real"] + data_noise * rec["eps"]).to(dtype)   # the S-JKO code's noise on real data (phase 0)
        return run_steps(G.to(dtype), D.to(dtype), g_names, d_names, case, loss, real, rec["noise"].to(dtype),
                         rec["z"].to(dtype), (None, rec["fake_old"].to(dtype)), cost_scale, r1_weight)
    public = recorded_step(case["errD_real"] + case["errD_fake"], case["grad_penalty"], case["err"], case)
    return run, public, step_scales(case["errD_real"], case["errD_fake"], case["err"], case["errD_fake"])


@pytest.mark.parametrize("key", list(SJKO_CASES))
def test_sjko_steps_match_public(key):
    phi2, alpha = SJKO_CASES[key]
    phi = select_phi(phi2) if alpha == 1.0 else ScaledPhi(select_phi(phi2), alpha)
    assert_matches(*sjko_steps(key, SemiDualLoss("linear", phi), jko_cost_scale(1.0, 2), 1 / 32, 0.5 * 0.2))


def test_sjko_jsd_steps_match_public():
    assert_matches(*sjko_steps("jsd", JSDLoss(), jko_cost_scale(0.1, 2), 1 / 32, 0.5 * 0.2))


def test_sjko_steps_reject_a_cost_off_by_one_percent():
    assert_differs(*sjko_steps("kl_alpha1.0", SemiDualLoss("linear", "kl"), 1.01 * jko_cost_scale(1.0, 2), 1 / 32,
                               0.5 * 0.2))


def sjko_train_args(*flags):
    base = ["--dataset", "25gaussian", "--model_name", "toy", "--image_size", 2, "--nz", 2, "--num_phase", 1,
            "--init_num_iterations", 10]
    return train.resolve_args(train.build_parser().parse_args([str(f) for f in base + list(flags)]), 1)


@pytest.mark.parametrize("key,flags", [("kl_alpha1.0", ["--phi2", "kl", "--init_h", 1]),
                                       ("softplus_alpha1.0", ["--phi2", "softplus", "--init_h", 1]),
                                       ("chi_alpha1.0", ["--phi2", "chi", "--init_h", 1]),
                                       ("jsd", ["--init_h", 0.1])])
def test_sjko_steps_as_train_py_configures_them(key, flags):
    """The loss, JKO cost scale, data noise and R1 weight train.py picks in S-JKO mode."""
    args = sjko_train_args(*flags)
    ps = phase_setup(args, jko_phases(1, args.init_h, args.h, 10, 10))
    assert_matches(*sjko_steps(key, ps.loss, ps.cost_scale, ps.data_noise, 0.5 * args.r1_gamma * args.r1_every))


# ------------------------------------------------------------------------------------
# 5c. UOTM 1-D toy losses (UOTM train_toy.py): its (B, 1) potential minus a (B,) cost
# broadcasts to (B, B), i.e. the all-pairs loss, and the penalty is on grad_x v(T(x))

UOTM_TOY_CASES = [("kl", "kl", 0.1, 0.01), ("kl", "kl", 2.0, 0.0), ("linear", "linear", 0.1, 0.01)]


def uotm_toy_pair():
    rec = golden("uotm_toy_losses.pt")
    G, D = ToyGenerator(1, 1, hidden=16), ToyPotential(1, hidden=16)
    return G, D, load_toy(G, rec["G_state_dict"]), load_toy(D, rec["D_state_dict"]), rec


def uotm_toy_case(phi1, phi2, tau, lmbda):
    return golden("uotm_toy_losses.pt")["cases"][f"{phi1}_{phi2}_tau{tau}_lmbda{lmbda}"]


def recorded_potential(case, phi1, phi2):
    return {"value": case["errD"] - KL_OFFSET[phi1] - KL_OFFSET[phi2],
            **{f"D.{name}": case["D_grads"][name] for name in TOY_GRAD_NAMES["D"]}}


def uotm_toy_losses(phi1, phi2, tau, lmbda, cost_factor=1.0):
    def run(dtype):
        G, D, g_names, d_names, rec = uotm_toy_pair()
        G, D = G.to(dtype), D.to(dtype)
        x = rec["x_src"].to(dtype).requires_grad_(True)
        z = rec["z"].to(dtype)
        v_fake = D(G(x, z))
        cost = quadratic_cost(x, G(x, z), cost_factor * 0.5 * tau).detach()
        value = SemiDualLoss(phi1, phi2, "all_pairs").potential(v_fake, D(rec["x_tar"].to(dtype)), cost)
        if lmbda > 0:
            value = value + lmbda * source_gradient_penalty(v_fake, x)
        value.backward()
        return {"value": value, **grads("D", d_names, TOY_GRAD_NAMES["D"])}
    return run, recorded_potential(uotm_toy_case(phi1, phi2, tau, lmbda), phi1, phi2)


@pytest.mark.parametrize("phi1,phi2,tau,lmbda", UOTM_TOY_CASES)
def test_uotm_toy_losses_match_public_with_all_pairs(phi1, phi2, tau, lmbda):
    assert_matches(*uotm_toy_losses(phi1, phi2, tau, lmbda))


def test_uotm_toy_losses_reject_a_cost_off_by_one_percent():
    assert_differs(*uotm_toy_losses(*UOTM_TOY_CASES[0], cost_factor=1.01))


def toy_trainer(phi1, phi2, tau, lmbda, dtype=torch.float32, pairing="all_pairs"):
    G, D, _, _, rec = uotm_toy_pair()
    argv = ["--target_name", "outlier", "--phi1", phi1, "--phi2", phi2, "--tau", str(tau), "--lmbda", str(lmbda),
            "--hidden", "16", "--num_data", "64", "--batch_size", "16", "--device", "cpu",
            "--potential_pairing", pairing]
    trainer = train_toy.ToyTrainer(train_toy.parse_args(argv + (["--regularize"] if lmbda > 0 else [])))
    trainer.netG.load_state_dict(G.state_dict())
    trainer.netD.load_state_dict(D.state_dict())
    trainer.netG.to(dtype)
    trainer.netD.to(dtype)
    for opt in (trainer.optG, trainer.optD):
        for group in opt.param_groups:
            group["lr"] = 0.0
    return trainer, {k: rec[k].to(dtype) for k in ("x_src", "z", "x_tar")}


def trainer_grads(prefix, net, keys):
    """The gradients of our parameters, under the public names `keys`."""
    ours = dict(net.named_parameters())
    return grads(prefix, {name: ours[toy_rename(name)] for name in keys}, keys)


@pytest.mark.parametrize("phi1,phi2,tau,lmbda", UOTM_TOY_CASES)
def test_train_toy_potential_step_matches_public(phi1, phi2, tau, lmbda):
    # --potential_pairing all_pairs: the public toy script's (B, 1) potential minus a (B,) cost
    def run(dtype):
        trainer, rec = toy_trainer(phi1, phi2, tau, lmbda, dtype)
        value = trainer.potential_step(rec["x_src"], rec["z"], rec["x_tar"])
        return {"value": value, **trainer_grads("D", trainer.netD, TOY_GRAD_NAMES["D"])}
    assert_matches(run, recorded_potential(uotm_toy_case(phi1, phi2, tau, lmbda), phi1, phi2))


def test_train_toy_defaults_to_the_per_sample_pairing_which_differs_from_the_public_value():
    phi1, phi2, tau, lmbda = UOTM_TOY_CASES[1]
    assert train_toy.parse_args(["--target_name", "q"]).potential_pairing == "per_sample"

    def run(dtype):
        trainer, rec = toy_trainer(phi1, phi2, tau, lmbda, dtype, pairing="per_sample")
        return {"value": trainer.potential_step(rec["x_src"], rec["z"], rec["x_tar"])}
    public = recorded_potential(uotm_toy_case(phi1, phi2, tau, lmbda), phi1, phi2)
    assert_differs(run, {"value": public["value"]})


@pytest.mark.parametrize("phi1,phi2,tau,lmbda", UOTM_TOY_CASES)
def test_train_toy_map_step_matches_public(phi1, phi2, tau, lmbda):
    case = uotm_toy_case(phi1, phi2, tau, lmbda)

    def run(dtype):
        trainer, rec = toy_trainer(phi1, phi2, tau, lmbda, dtype)
        err = trainer.map_step(rec["x_src"], rec["z"])
        return {"err": err, **trainer_grads("G", trainer.netG, TOY_GRAD_NAMES["G"])}
    assert_matches(run, {"err": case["errG"], **{f"G.{name}": case["G_grads"][name] for name in TOY_GRAD_NAMES["G"]}})


# ------------------------------------------------------------------------------------
# 5d. S-JKO phase-0 map loss on the otm pair: y_ref = Q(x), c = 0.5 mean (T(x) - Q(x))^2 / h
# over the image's 3 x 32 x 32 values, h = 0.1

def otm_map(cost_scale, reference):
    case = golden("otm_sjko_map_loss.pt")

    def run(dtype):
        G, D, g_names, _, rec = tiny_otm()
        x = rec["G"]["x"].to(dtype)
        err, _ = map_step(G.to(dtype), D.to(dtype), frozen_adam(G), SemiDualLoss("linear", "kl"), x,
                          torch.randn(4, 100, dtype=dtype), reference(x), cost_scale)
        return {"err": err, **grads("G", g_names, case["G_grads"])}
    return run, {"err": case["err"], **{f"G.{k}": v for k, v in case["G_grads"].items()}}


def test_otm_sjko_map_step_matches_public():
    assert_matches(*otm_map(jko_cost_scale(0.1, 3 * 32 * 32), initial_reference(model_cfg(*OTM_TINY))))


def test_otm_sjko_map_step_rejects_a_cost_off_by_one_percent():
    assert_differs(*otm_map(1.01 * jko_cost_scale(0.1, 3 * 32 * 32), initial_reference(model_cfg(*OTM_TINY))))


def test_otm_sjko_map_step_as_train_py_configures_it():
    """train.py's JKO cost must divide by the image's dimension (3 x 32 x 32), not the otm
    source's (3 x 8 x 8): the latter gives a cost 16 times the public one."""
    args = train.resolve_args(train.build_parser().parse_args(
        [str(f) for f in ["--dataset", "cifar10", "--phi2", "kl", "--num_phase", 1, "--init_h", 0.1,
                          "--init_num_iterations", 10, *OTM_TINY]]), 1)
    ps = phase_setup(args, jko_phases(1, args.init_h, args.h, 10, 10))
    assert_matches(*otm_map(ps.cost_scale, ps.reference))
