"""Networks: FIR resampling against a direct computation, shapes, z-conditioning, flags,
double backward through the potentials, parameter counts against the published ones."""
import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from score_sde import (add_model_args, build_generator, build_potential, count_parameters, initial_reference,
                       source_shape)
from score_sde.dcgan import DCGANGenerator, DCGANPotential
from score_sde.drunet import DRUNet
from score_sde.layers import (FIRDownConv, FIRDownsample, FIRUpConv, FIRUpsample, ResnetBlockBigGAN,
                              ResnetBlockDDPM, fir_kernel_2d, upfirdn2d)
from score_sde.otm import OTMGenerator, ResNetGenerator, ResNetPotential
from score_sde.potentials import LargePotential, SmallPotential
from uot.errors import UsageError


def parse(*argv):
    """Network options as train.py parses them; --image_size 32 (CIFAR-10's) unless given."""
    cfg = add_model_args(argparse.ArgumentParser()).parse_args(list(argv))
    cfg.image_size = cfg.image_size or 32
    return cfg


def tiny(size=16, *extra):
    """A small NCSN++ config: width 8, two resolutions, attention at the lower one."""
    return parse("--image_size", str(size), "--num_channels_dae", "8", "--ngf", "8",
                 "--ch_mult", "1", "2", "--attn_resolutions", str(size // 2), "--nz", "6",
                 "--z_emb_dim", "16", *extra)


def perturb(model, seed=0, std=0.05):
    """Move every parameter off its init: score_sde starts residual branches and the
    output conv at ~0, so a fresh generator ignores both x and z."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


# ----------------------------------------------------------------------------- FIR

def upfirdn_reference(x, k, up=1, down=1, pad=(0, 0)):
    """Direct upfirdn2d on one 2-D array: zero insertion, pad/crop, true convolution, subsample."""
    h, w = x.shape
    u = np.zeros((h * up, w * up))
    u[::up, ::up] = x
    p0, p1 = pad
    u = np.pad(u, [(max(p0, 0), max(p1, 0))] * 2)
    u = u[max(-p0, 0):u.shape[0] - max(-p1, 0), max(-p0, 0):u.shape[1] - max(-p1, 0)]
    kh, kw = k.shape
    out = np.zeros((u.shape[0] - kh + 1, u.shape[1] - kw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.sum(u[i:i + kh, j:j + kw] * k[::-1, ::-1])  # convolution flips the kernel
    return out[::down, ::down]


def apply_per_channel(fn, x):
    return np.stack([np.stack([fn(c) for c in sample]) for sample in x])


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (2, 1, (0, -1)), (2, 1, (3, 3)),
                                         (1, 2, (1, 1)), (1, 2, (2, 0)), (1, 1, (1, 2)), (2, 2, (1, 2))])
def test_upfirdn2d_matches_direct_computation(up, down, pad):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 7, generator=gen, dtype=torch.float64)
    k = torch.rand(4, 4, generator=gen, dtype=torch.float64)  # not symmetric: catches a missing flip
    ours = upfirdn2d(x, k, up=up, down=down, pad=pad).numpy()
    ref = apply_per_channel(lambda c: upfirdn_reference(c, k.numpy(), up, down, pad), x.numpy())
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_fir_kernel_is_normalised_outer_product():
    k = fir_kernel_2d([1, 3, 3, 1])
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    np.testing.assert_allclose(k.numpy(), expected, rtol=1e-7)


def test_fir_up_and_down_match_stylegan2_padding():
    """upsample_2d: gain 4, pads (2, 1); downsample_2d: pads (1, 1) (StyleGAN2 / score_sde)."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    k = (np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0)
    up = FIRUpsample().double()(x)
    down = FIRDownsample().double()(x)
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(up.numpy(), apply_per_channel(
        lambda c: upfirdn_reference(c, 4 * k, up=2, pad=(2, 1)), x.numpy()), atol=1e-12)
    np.testing.assert_allclose(down.numpy(), apply_per_channel(
        lambda c: upfirdn_reference(c, k, down=2, pad=(1, 1)), x.numpy()), atol=1e-12)


def test_fir_resampling_keeps_a_constant_image_constant_inside():
    x = torch.full((1, 2, 12, 12), 0.7, dtype=torch.float64)
    up = FIRUpsample().double()(x)
    down = FIRDownsample().double()(x)
    # the filter reaches 2 output pixels (up) / 1 output pixel (down) into the zero padding
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 0.7))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 0.7))
    assert not torch.allclose(up[..., 0, 0], torch.tensor(0.7, dtype=torch.float64))  # borders see zeros


def test_fir_up_conv_is_zero_insertion_conv_then_filter():
    layer = FIRUpConv(3, 5).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    # insert zeros (no trailing zero), pad 2, correlate with the 3x3 weight: (2H+1)^2
    u = torch.zeros(2, 3, 11, 11, dtype=torch.float64)
    u[..., ::2, ::2] = x
    u = F.conv2d(F.pad(u, [2, 2, 2, 2]), layer.weight)
    k = 4 * np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    ref = apply_per_channel(lambda c: upfirdn_reference(c, k, pad=(1, 1)), u.detach().numpy())
    ref = ref + layer.bias.detach().numpy()[:, None, None]
    out = layer(x)
    assert out.shape == (2, 5, 12, 12)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-12)


def test_fir_down_conv_is_filter_then_strided_conv():
    layer = FIRDownConv(3, 5).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    filtered = torch.from_numpy(apply_per_channel(lambda c: upfirdn_reference(c, k, pad=(2, 2)), x.numpy()))
    ref = F.conv2d(filtered, layer.weight, layer.bias, stride=2)
    out = layer(x)
    assert out.shape == (2, 5, 4, 4)
    torch.testing.assert_close(out, ref)


def test_fir_second_derivatives():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    for layer in (FIRUpsample(), FIRDownsample(), FIRUpConv(2, 2), FIRDownConv(2, 2)):
        layer = layer.double()
        assert torch.autograd.gradgradcheck(lambda t: layer(t).pow(2), (x,))


# ----------------------------------------------------------------------------- shapes and z

SIZES = {  # size: (ch_mult, attention resolution)
    8: (["1", "2"], "4"),
    16: (["1", "2", "2"], "8"),
    32: (["1", "2", "2", "2"], "16"),
    256: (["1", "1", "2", "2", "2", "2"], "16"),
}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_ncsnpp_shapes_and_z_conditioning(size):
    ch_mult, attn = SIZES[size]
    cfg = parse("--image_size", str(size), "--num_channels_dae", "8", "--ngf", "8", "--ch_mult", *ch_mult,
                "--attn_resolutions", attn, "--nz", "10", "--z_emb_dim", "16")
    torch.manual_seed(0)
    gen, pot = perturb(build_generator(cfg)), build_potential(cfg)
    assert isinstance(pot, SmallPotential if size <= 64 else LargePotential)
    x, z1, z2 = torch.randn(2, 3, size, size), torch.randn(2, 10), torch.randn(2, 10)
    with torch.no_grad():
        y1, y1_again, y2 = gen(x, z1), gen(x, z1), gen(x, z2)
        v = pot(y1)
    assert y1.shape == x.shape and v.shape == (2,)
    assert y1.abs().max() < 1  # tanh output
    torch.testing.assert_close(y1, y1_again)
    assert (y1 - y2).abs().max() > 1e-3, "same x, different z must give a different output"


@pytest.mark.parametrize("size,channels", [(32, 3), (28, 1), (16, 3)])
def test_dcgan_shapes_and_z_conditioning(size, channels):
    cfg = parse("--model_name", "dcgan", "--image_size", str(size), "--num_channels", str(channels), "--ngf", "8")
    gen, pot = build_generator(cfg), build_potential(cfg)
    assert isinstance(gen, DCGANGenerator) and isinstance(pot, DCGANPotential)
    x = torch.randn(3, channels, size, size)
    y1, y2 = gen(x, torch.randn(3, 100)), gen(x, torch.randn(3, 100))
    assert y1.shape == x.shape and pot(y1).shape == (3,)
    assert (y1 - y2).abs().max() > 1e-3


@pytest.mark.parametrize("size", [30, 4, 18])
def test_dcgan_rejects_sizes_it_cannot_halve_twice(size):
    with pytest.raises(UsageError, match="--image_size"):
        build_generator(parse("--model_name", "dcgan", "--image_size", str(size)))


def test_mlp_pair_shapes_z_conditioning_and_parameter_count():
    cfg = parse("--model_name", "mlp", "--image_size", "8", "--num_channels", "1", "--nz", "16")
    gen, pot = build_generator(cfg), build_potential(cfg)
    x = torch.randn(3, 1, 8, 8)
    y1, y2 = gen(x, torch.randn(3, 16)), gen(x, torch.randn(3, 16))
    assert y1.shape == x.shape and pot(y1).shape == (3,) and y1.abs().max() < 1   # tanh output
    assert (y1 - y2).abs().max() > 1e-3
    # 3 hidden layers of 512: G (64 + 16) -> 512 -> 512 -> 512 -> 64, D 64 -> 512 -> 512 -> 512 -> 1
    assert count_parameters(gen) == 80 * 512 + 512 + 2 * (512 * 512 + 512) + 512 * 64 + 64 == 599_616
    assert count_parameters(pot) == 64 * 512 + 512 + 2 * (512 * 512 + 512) + 512 + 1 == 559_105
    narrow = parse("--model_name", "mlp", "--image_size", "4", "--num_channels", "3", "--nz", "2",
                   "--mlp_width", "8", "--mlp_depth", "1", "--not_use_tanh")
    gen = build_generator(narrow)
    assert count_parameters(gen) == (48 + 2) * 8 + 8 + 8 * 48 + 48
    assert gen(4 * torch.ones(2, 3, 4, 4), torch.zeros(2, 2)).shape == (2, 3, 4, 4)


def test_toy_dispatch():
    cfg = parse("--model_name", "toy", "--image_size", "2", "--nz", "2")
    gen, pot = build_generator(cfg), build_potential(cfg)
    x = torch.randn(5, 2)
    y = gen(x, torch.randn(5, 2))
    assert y.shape == (5, 2) and pot(y).shape == (5,)


# ----------------------------------------------------------------------------- flags

def test_defaults_match_the_uotm_cifar10_cli():
    cfg = parse()
    assert (cfg.model_name, cfg.image_size, cfg.num_channels, cfg.num_channels_dae, cfg.n_mlp) == ("ncsnpp", 32, 3, 128, 4)
    assert cfg.ch_mult == [1, 2, 2, 2] and cfg.attn_resolutions == [16] and cfg.fir_kernel == [1, 3, 3, 1]
    assert cfg.centered and cfg.resamp_with_conv and cfg.conditional and cfg.fir and cfg.skip_rescale
    assert not cfg.not_use_tanh and cfg.dropout == 0.0
    assert (cfg.resblock_type, cfg.progressive, cfg.progressive_input, cfg.progressive_combine) == \
        ("biggan", "none", "residual", "sum")
    assert (cfg.embedding_type, cfg.fourier_scale, cfg.z_emb_dim, cfg.nz, cfg.ngf) == ("positional", 16.0, 256, 100, 64)
    # (a bare --fir etc. stops with its public meaning: tests/test_published_commands.py)
    assert not parse("--no-fir").fir and not parse("--no-centered").centered
    # options.json round trip
    assert argparse.Namespace(**vars(cfg)) == cfg


FLAG_CHANGES = [  # (base flags, changed flags): the change must alter the network
    ((), ("--no-fir",)),
    ((), ("--fir_kernel", "1", "2", "1")),
    ((), ("--no-skip_rescale",)),
    ((), ("--not_use_tanh",)),
    ((), ("--dropout", "0.5")),
    ((), ("--resblock_type", "ddpm")),
    (("--resblock_type", "ddpm"), ("--resblock_type", "ddpm", "--no-resamp_with_conv")),
    (("--resblock_type", "ddpm", "--no-fir"), ("--resblock_type", "ddpm", "--no-fir", "--no-resamp_with_conv")),
    ((), ("--progressive", "output_skip")),
    ((), ("--progressive", "residual")),
    ((), ("--progressive_input", "none")),
    ((), ("--progressive_input", "input_skip")),
    (("--progressive_input", "input_skip"), ("--progressive_input", "input_skip", "--progressive_combine", "cat")),
    ((), ("--embedding_type", "fourier")),
    ((), ("--attn_resolutions",)),
    ((), ("--num_res_blocks", "1")),
    ((), ("--n_mlp", "2")),
    ((), ("--no-conditional",)),
]


def _state_shapes(model):
    return {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("base,changed", FLAG_CHANGES, ids=[" ".join(c) for _, c in FLAG_CHANGES])
def test_every_generator_flag_changes_the_network(base, changed):
    torch.manual_seed(0)
    g0 = perturb(build_generator(tiny(16, *base)))
    g1 = build_generator(tiny(16, *changed))
    x, z = torch.randn(4, 3, 16, 16), torch.randn(4, 6)
    assert g1(x, z).shape == x.shape
    if _state_shapes(g0) == _state_shapes(g1):  # same parameters: the flag must change the computation
        g1.load_state_dict(g0.state_dict())
        assert (g0(x, z) - g1(x, z)).abs().max() > 1e-4


def test_no_conditional_ignores_z_and_fourier_scale_sets_frequencies():
    gen = perturb(build_generator(tiny(16, "--no-conditional")))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(gen(x, torch.randn(2, 6)), gen(x, torch.randn(2, 6)))
    torch.manual_seed(0)
    freqs = build_generator(tiny(16, "--embedding_type", "fourier", "--fourier_scale", "3")).mapping[0].freqs
    assert 2.5 < freqs.std() < 3.5


def test_not_centered_maps_unit_interval_inputs():
    centered = perturb(build_generator(tiny(16)))
    uncentered = build_generator(tiny(16, "--no-centered"))
    uncentered.load_state_dict(centered.state_dict())
    x01, z = torch.rand(2, 3, 16, 16), torch.randn(2, 6)
    torch.testing.assert_close(uncentered(x01, z), centered(2 * x01 - 1, z))


@pytest.mark.parametrize("size,ch_mult", [(30, ["1", "2", "2", "2"]), (32, ["1", "2", "2", "2", "2", "2", "2"]),
                                          (4, ["1"]), (96, ["1", "2"])])
def test_image_size_incompatible_with_ch_mult_is_a_usage_error(size, ch_mult):
    cfg = parse("--image_size", str(size), "--ch_mult", *ch_mult)
    for build in (build_generator, build_potential):
        with pytest.raises(UsageError) as err:
            build(cfg)
        message = str(err.value)
        assert "--image_size" in message and "--ch_mult" in message and "\n" not in message


# ----------------------------------------------------------------------------- R1 double backward

POTENTIALS = {
    "small": lambda: (SmallPotential(3, 4), 16),
    "large": lambda: (LargePotential(3, 2), 128),
    "dcgan": lambda: (DCGANPotential(3, 8), 32),
    "toy": lambda: (build_potential(parse("--model_name", "toy", "--image_size", "2")), None),
}


@pytest.mark.parametrize("name", sorted(POTENTIALS))
def test_r1_double_backward_through_potential(name):
    torch.manual_seed(0)
    pot, size = POTENTIALS[name]()
    perturb(pot)
    y = torch.randn(4, 2) if size is None else torch.randn(4, 3, size, size)
    y.requires_grad_(True)
    (grad,) = torch.autograd.grad(pot(y).sum(), y, create_graph=True)
    penalty = grad.flatten(1).pow(2).sum(1).mean()
    penalty.backward()
    grads = [p.grad for p in pot.parameters() if p.grad is not None]
    assert penalty.item() > 0 and grads
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_small_potential_second_derivatives_are_exact():
    torch.manual_seed(0)
    pot = perturb(SmallPotential(num_channels=1, ngf=1), std=0.3).double()
    y = torch.randn(4, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(pot, (y,), fast_mode=True)


def test_potential_traces_as_one_graph():
    """No data-dependent Python control flow: dynamo captures the whole forward.
    (Double backward through a *compiled* module is not supported by torch.compile:
    the R1 pass must call the eager module.)"""
    pot = perturb(SmallPotential(3, 4))
    y = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(torch.compile(pot, backend="eager", fullgraph=True)(y), pot(y))


def test_minibatch_stddev_groups_samples_like_stylegan():
    from score_sde.potentials import minibatch_stddev
    h = torch.randn(8, 3, 2, 2)
    out = minibatch_stddev(h)
    groups = h.reshape(4, 2, 3, 2, 2)  # sample j is grouped with j + 2, j + 4, j + 6
    expected = groups.std(0, unbiased=False).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out[:, 3, 0, 0], expected.repeat(4), atol=1e-4, rtol=1e-4)
    assert minibatch_stddev(torch.randn(6, 3, 2, 2)).shape == (6, 4, 2, 2)  # 6 = 2 groups of 3


# ----------------------------------------------------------------------------- parameter counts

def test_parameter_counts_at_cifar10_settings():
    cfg = parse()
    with torch.device("meta"):  # count without allocating 45M parameters
        gen, pot = build_generator(cfg), build_potential(cfg)
    n_gen, n_pot = count_parameters(gen), count_parameters(pot)
    # The public NCSN++ keeps, in every residual block, a Linear(4 * nf, out_ch) for a time
    # embedding that UOTM never feeds (temb=None): 3.28M parameters that cannot affect the
    # output. We leave them out; with them added back the count is the published 48.10M
    # (rounded to 10k parameters; n_mlp 3 or 5 would give 48.04M / 48.17M).
    dead = sum(4 * cfg.num_channels_dae * b.conv0.out_channels + b.conv0.out_channels
               for b in gen.modules() if isinstance(b, (ResnetBlockBigGAN, ResnetBlockDDPM)))
    print(f"\ngenerator {n_gen / 1e6:.2f}M (+ {dead / 1e6:.2f}M unused in the public code = "
          f"{(n_gen + dead) / 1e6:.2f}M), small potential {n_pot / 1e6:.2f}M")
    assert round((n_gen + dead) / 1e6, 2) == 48.10
    assert n_gen == 44_820_611
    assert round(n_pot / 1e6, 2) == 12.25 and n_pot == 12_247_809


def test_dcgan_pair_is_about_0_4m_parameters():
    cfg = parse("--model_name", "dcgan")
    total = count_parameters(build_generator(cfg)) + count_parameters(build_potential(cfg))
    print(f"\ndcgan pair {total / 1e6:.3f}M")
    assert 0.3e6 < total < 0.5e6


def test_celeba_hq_256_builds_with_large_potential():
    cfg = parse("--image_size", "256", "--num_channels_dae", "64", "--n_mlp", "3",
                "--ch_mult", "1", "1", "2", "2", "4", "4")
    with torch.device("meta"):
        gen, pot = build_generator(cfg), build_potential(cfg)
    assert isinstance(pot, LargePotential) and pot.num_downsamples == 6
    print(f"\nceleba-hq-256: generator {count_parameters(gen) / 1e6:.2f}M, potential {count_parameters(pot) / 1e6:.2f}M")
    assert count_parameters(pot) == 26_881_537


# ----------------------------------------------------------------------------- the "Small" (otm) pair

def test_otm_pair_shapes_sizes_and_source():
    cfg = parse("--model_name", "otm")
    G, D = build_generator(cfg), build_potential(cfg)
    # the S-JKO tables' small model at CIFAR-10 settings (ngf 64): counted by hand from its layers:
    # dense 192 -> 4*4*64, three up-blocks of 2 x (BN + 3x3 conv), BN, a 3x3 conv to RGB
    up_block = 2 * (2 * 64 + 64 * 64 * 9 + 64)
    assert count_parameters(G) == (192 * 1024 + 1024) + 3 * up_block + 128 + (64 * 3 * 9 + 3) == 421_827
    assert count_parameters(D) == 264_769
    assert source_shape(cfg) == (3, 8, 8)
    x = torch.randn(6, 3, 8, 8)
    y = G(x, torch.randn(6, 100))
    assert y.shape == (6, 3, 32, 32) and y.abs().max() <= 1 and D(y).shape == (6,)
    torch.testing.assert_close(G(x, torch.zeros(6, 100)), y)            # z is ignored
    assert not torch.allclose(G(x[:3], None), y[:3])                     # batch statistics, always
    G.eval()
    torch.testing.assert_close(G(x, None), y)                            # also in eval mode
    # the phase-0 reference: the source upsampled bicubically to the image size
    reference = initial_reference(cfg)(x)
    torch.testing.assert_close(reference, torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic"))
    assert torch.equal(initial_reference(parse())(x), x)                 # other maps: the identity


def test_otm_potential_has_an_r1_double_backward():
    D = build_potential(parse("--model_name", "otm", "--ngf", "8"))
    y = torch.randn(4, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(D(y).sum(), y, create_graph=True)
    weight_grads = torch.autograd.grad(grad.square().sum(), list(D.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in weight_grads)


def test_otm_at_64px_is_the_public_resnet_pair_and_other_large_sizes_stop():
    cfg = parse("--model_name", "otm", "--image_size", "64", "--ngf", "2")
    G, D = build_generator(cfg), build_potential(cfg)
    assert isinstance(G, ResNetGenerator) and isinstance(D, ResNetPotential)
    assert source_shape(cfg) == (3, 8, 8)
    x = torch.randn(4, 3, 8, 8)
    y = G(x, None)
    assert y.shape == (4, 3, 64, 64) and y.abs().max() <= 1
    torch.testing.assert_close(initial_reference(cfg)(x), F.interpolate(x, size=(64, 64), mode="bicubic"))
    y = y.detach().requires_grad_(True)                  # R1 needs a double backward through the potential
    (grad,) = torch.autograd.grad(D(y).sum(), y, create_graph=True)
    assert D(y).shape == (4,) and grad.square().sum().requires_grad
    for size in ("48", "128"):                           # the public code has no otm networks there
        with pytest.raises(UsageError, match="--model_name otm .* 64"):
            build_generator(parse("--model_name", "otm", "--image_size", size))
    assert isinstance(build_generator(parse("--model_name", "otm", "--image_size", "16", "--ngf", "4")), OTMGenerator)


def test_ddpm_is_the_ncsnpp_code_with_ddpm_blocks_and_no_fir():
    """--model_name ddpm = --resblock_type ddpm --no-fir, whatever those flags say (as the public
    S-JKO get_model sets them): the same layers, the same output."""
    torch.manual_seed(0)
    ddpm = perturb(build_generator(tiny(16, "--model_name", "ddpm")))
    same = build_generator(tiny(16, "--resblock_type", "ddpm", "--no-fir"))
    same.load_state_dict(ddpm.state_dict())
    assert not any(isinstance(m, (ResnetBlockBigGAN, FIRUpsample, FIRDownsample, FIRUpConv, FIRDownConv))
                   for m in ddpm.modules())
    x, z = torch.randn(2, 3, 16, 16), torch.randn(2, 6)
    torch.testing.assert_close(ddpm(x, z), same(x, z), rtol=0, atol=0)
    assert isinstance(build_potential(tiny(16, "--model_name", "ddpm")), SmallPotential)


def test_drunet_map_shapes_flags_and_potential():
    cfg = parse("--model_name", "drunet", "--image_size", "16", "--ngf", "2")
    G = build_generator(cfg)
    assert isinstance(G, DRUNet) and isinstance(build_potential(cfg), SmallPotential)
    assert [level[-1].out_channels for level in G.down] == [4, 4, 4]     # ngf * ch_mult (1 2 2 2)
    x = torch.randn(2, 3, 16, 16)
    y = G(x, torch.randn(2, 100))
    assert y.shape == x.shape
    torch.testing.assert_close(G(x, None), y)                            # z is ignored
    assert isinstance(build_potential(parse("--model_name", "drunet", "--image_size", "64", "--ngf", "2")),
                      LargePotential)
    with pytest.raises(UsageError, match="--ch_mult"):
        build_generator(parse("--model_name", "drunet", "--ch_mult", "1", "2", "2"))
    with pytest.raises(UsageError, match="multiple of 8"):
        build_generator(parse("--model_name", "drunet", "--image_size", "12"))
