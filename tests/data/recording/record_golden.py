"""Record tests/data/golden/ (but public_toys.json: record_toys.py) from the public UOTM and S-JKO code.

    OMP_NUM_THREADS=1 python tests/data/recording/record_golden.py UOTM_CHECKOUT SJKO_CHECKOUT

UOTM_CHECKOUT is a checkout (or an extracted tree) of Jae-Moo/Unbalanced-Optimal-Transport-Generative-Model,
SJKO_CHECKOUT one of Jae-Moo/Scalable-JKO (the commits are in tests/data/README.md). Their `models`
packages and `utils.py` are imported from there and run unchanged; nothing of them is copied here.
Their `models/op/*.py` compile CUDA kernels at import through torch.utils.cpp_extension.load; that
function is replaced by a stub first, so the files' own pure-PyTorch CPU paths run
(`upfirdn2d_native`, the CPU branch of `fused_leaky_relu`).

Every network is built by its public class (the S-JKO ones through its `models.get_model` where
that is how its train.py builds them), from the public scripts' argparse defaults (read from
their train.py with `ast`) and the small sizes below. The random initial weights are perturbed
with seeded Gaussian noise, so that layers initialised at (almost) zero also shape the outputs,
and the potentials' last linear layer is rescaled for outputs of unit spread. The loss values
and gradients are those of the public training loops' expressions (UOTM train.py and
train_toy.py, S-JKO train.py and train_JSD.py, each cited at its function below), evaluated on
the public networks with the public phi functions, gradients read from `.grad` after the same
`backward` calls the loops make, without optimizer steps. Everything runs on the CPU in
float32, one thread, from fixed seeds: a second run writes the same bytes.
"""
import argparse
import ast
import importlib
import json
import os
import sys

import torch
import torch.nn.functional as F
import torch.utils.cpp_extension

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden")
PERTURB_STD = 0.05

# Small public networks: options on top of the public argparse defaults (public option names).
NCSNPP_TINY = {
    "default": dict(image_size=16, num_channels_dae=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8],
                    nz=8, z_emb_dim=16, n_mlp=2),
    "outputskip_inputskipcat": dict(image_size=8, num_channels_dae=4, ch_mult=[1, 2], num_res_blocks=1,
                                    attn_resolutions=[4], nz=4, z_emb_dim=4, n_mlp=1, progressive="output_skip",
                                    progressive_input="input_skip", progressive_combine="cat", centered=False,
                                    not_use_tanh=True),
    "residual_nofir": dict(image_size=8, num_channels_dae=4, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8],
                           nz=4, z_emb_dim=4, n_mlp=1, progressive="residual", progressive_input="input_skip",
                           fir=False),
    "ddpm_nofir": dict(image_size=8, num_channels_dae=4, ch_mult=[1, 2], num_res_blocks=2, attn_resolutions=[4],
                       nz=4, z_emb_dim=4, n_mlp=1, resblock_type="ddpm", fir=False),
}
SJKO_TINY = {   # S-JKO get_model's other generators (its --model_name)
    "ddpm": dict(model_name="ddpm", image_size=8, num_channels_dae=4, ch_mult=[1, 2], num_res_blocks=1,
                 attn_resolutions=[4], nz=4, z_emb_dim=4, n_mlp=1, ngf=2),
    "drunet": dict(model_name="drunet", image_size=16, ngf=2, ch_mult=[1, 2, 2, 2], num_res_blocks=1),
}
OTM64_FEATURES = (4, 2)   # ResNet_G / ResNet_D widths of the small 64 px otm pair (public: 256 / 128)
UOTM_IMAGE_CASES = [("kl", "kl", 1e-3), ("kl", "kl", 5e-3), ("softplus", "softplus", 1e-3),
                    ("softplus", "softplus", 5e-3), ("linear", "kl", 1e-3)]
SJKO_TOY_CASES = {"kl_alpha1.0": ("kl", 1.0), "softplus_alpha1.0": ("softplus", 1.0),
                  "kl_alpha2.5": ("kl", 2.5), "chi_alpha1.0": ("chi", 1.0)}
UOTM_TOY_CASES = [("kl", "kl", 0.1, 0.01), ("kl", "kl", 2.0, 0.0), ("linear", "linear", 0.1, 0.01)]
TOY_GRADS = {"D": ("out_module.2.weight", "x_module.map.weight"), "G": ("out_module.2.weight", "z_module.0.weight")}
R1_GAMMA = 0.2   # UOTM --r1_gamma, S-JKO --lmbda (their defaults)
PUBLIC_PATHS = []   # the checkouts import_public put on sys.path


# ------------------------------------------------------------------------------------
# The public code

def import_public(checkout, names):
    """Import `names` from `checkout`. Both repositories have a top-level `models` package and
    `utils` module: those of a checkout imported before are forgotten first (the objects taken
    from them keep working), and this one stays on sys.path for the imports its functions make
    when called (S-JKO's get_model)."""
    torch.utils.cpp_extension.load = lambda *args, **kwargs: None
    for key in [k for k in sys.modules if k in ("models", "utils") or k.startswith("models.")]:
        del sys.modules[key]
    sys.path[:] = [checkout] + [p for p in sys.path if p not in PUBLIC_PATHS]
    PUBLIC_PATHS.append(checkout)
    return {name: importlib.import_module(name) for name in names}


def argparse_defaults(script):
    """The `default=` of every add_argument call in `script`, as a Namespace (public names)."""
    with open(script) as f:
        tree = ast.parse(f.read())
    defaults = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            keywords = {k.arg: k.value for k in node.keywords}
            if "default" in keywords:
                defaults[node.args[0].value.lstrip("-")] = ast.literal_eval(keywords["default"])
    return defaults


def options(defaults, **overrides):
    return argparse.Namespace(**{**defaults, **overrides})


# ------------------------------------------------------------------------------------
# Weights and inputs

def generator(seed):
    return torch.Generator().manual_seed(seed)


def perturbed(net, seed):
    with torch.no_grad():
        gen = generator(seed)
        for p in net.parameters():
            p.add_(PERTURB_STD * torch.randn(p.shape, generator=gen))
    return net


def unit_spread(net, last, y):
    """Scale the last linear layer so that the potential's outputs on `y` have unit spread."""
    with torch.no_grad():
        spread = net(y).std()
        last.weight.div_(spread)
        last.bias.div_(spread)
    return net


def parameters(net, drop=()):
    """Named parameters (no buffers), without those whose names contain a `drop` string."""
    return {k: v.detach().clone() for k, v in net.named_parameters() if not any(d in k for d in drop)}


def count(net, part=""):
    return sum(p.numel() for name, p in net.named_parameters() if part in name)


def grads(net, names):
    return {name: dict(net.named_parameters())[name].grad.detach().clone() for name in names}


# ------------------------------------------------------------------------------------
# The public training loops' expressions

def uotm_image_steps(G, D, phi_star1, phi_star2, tau, real, noise, z):
    """UOTM train.py, one iteration (its potential update, R1 included, then its generator
    update), at --tau `tau`; the same noise and z in both updates."""
    real = real.clone().requires_grad_(True)
    D.zero_grad()
    D_real = D(real)
    errD_real = phi_star2(-D_real).mean()
    errD_real.backward(retain_graph=True)
    grad_real = torch.autograd.grad(outputs=D_real.sum(), inputs=real, create_graph=True)[0]
    grad_penalty = R1_GAMMA / 2 * (grad_real.view(grad_real.size(0), -1).norm(2, dim=1) ** 2).mean()
    grad_penalty.backward()
    fake = G(noise, z)
    D_fake = D(fake)
    cost = torch.sum(((fake - noise).view(noise.size(0), -1)) ** 2, dim=1)
    errD_fake = phi_star1(D_fake - tau * cost).mean()     # (B, 1) - (B,): all pairs
    errD_fake.backward()
    case = dict(errD_real=errD_real, errD_fake=errD_fake, grad_penalty=grad_penalty, D_real=D_real, D_fake=D_fake,
                cost=cost, D_grads=grads(D, ("end_linear.weight", "start_conv.weight")))
    D.requires_grad_(False)
    G.zero_grad()
    fake = G(noise, z)
    err = (tau * torch.sum(((fake - noise).view(noise.size(0), -1)) ** 2, dim=1) - D(fake)).mean()
    err.backward()
    D.requires_grad_(True)
    case.update(err=err, G_grads=grads(G, ("all_modules.16.weight", "z_transform.1.weight")))
    return detached(case)


def sjko_steps(G, D, g2_real, g2_fake, map_term, h, real, eps, noise, z, fake_old):
    """S-JKO train.py (train_JSD.py with the softplus terms), phase 0, one iteration: the
    potential update with data noise 1/32 and R1, then the map update against `fake_old`.
    `g2_real`, `g2_fake`, `map_term`: the loss's terms on -D_real, D_fake and D_fake."""
    real = real.clone().requires_grad_(True)
    D.zero_grad()
    D_real = D(real + (1 / 32) * eps)
    errD_real = g2_real(-D_real).mean()
    errD_real.backward(retain_graph=True)
    grad_real = torch.autograd.grad(outputs=D_real.sum(), inputs=real, create_graph=True)[0]
    grad_penalty = R1_GAMMA / 2 * (grad_real.view(grad_real.size(0), -1).norm(2, dim=1) ** 2).mean()
    grad_penalty.backward()
    errD_fake = g2_fake(D(G(noise, z))).mean()
    errD_fake.backward()
    case = dict(errD_real=errD_real, errD_fake=errD_fake, grad_penalty=grad_penalty,
                D_grads=grads(D, TOY_GRADS["D"]))
    D.requires_grad_(False)
    G.zero_grad()
    fake = G(noise, z)
    c = torch.mean(((fake - fake_old).view(fake.size(0), -1)) ** 2, dim=1)
    err = (0.5 * c / h + map_term(D(fake))).mean()
    err.backward()
    D.requires_grad_(True)
    case.update(err=err, c=c, G_grads=grads(G, TOY_GRADS["G"]))
    return detached(case)


def uotm_toy_steps(G, D, phi1, phi2, tau, lmbda, x_src, x_tar, z):
    """UOTM train_toy.py: one potential update (with --regularize when lmbda > 0), one map update."""
    x_src = x_src.clone().requires_grad_(True)
    D.zero_grad()
    x_pred = G(x_src, z)
    logit = D(x_pred)
    errD = phi1(logit - 0.5 * tau * torch.sum((x_pred - x_src) ** 2, dim=1)) + phi2(-D(x_tar))   # (B, B)
    if lmbda > 0:
        reg = torch.autograd.grad(logit.sum(), x_src, create_graph=True)[0]
        errD = errD + lmbda * (reg.norm(2, dim=1) ** 2).mean()
    errD.mean().backward()
    case = dict(errD=errD.mean(), D_grads=grads(D, TOY_GRADS["D"]))
    G.zero_grad()
    x_pred = G(x_src, z)
    errG = (0.5 * tau * torch.sum((x_pred - x_src) ** 2, dim=1) - D(x_pred)).mean()
    errG.backward()
    case.update(errG=errG, G_grads=grads(G, TOY_GRADS["G"]))
    return detached(case)


def otm_map_step(G, D, x, h):
    """S-JKO train.py, the map update of phase 0 on the otm pair: fake_data_old = Q(x), the
    source upsampled bicubically to the image."""
    fake_old = otm_reference(x, 32)
    G.zero_grad()
    fake = G(x.view(x.size(0), -1), None)
    c = torch.mean(((fake - fake_old).view(fake.size(0), -1)) ** 2, dim=1)
    err = (0.5 * c / h - D(fake)).mean()
    err.backward()
    return detached(dict(err=err, c=c, G_grads=grads(G, ("dense.linear_layer.bias",
                                                          "network.5.conv_transpose_layer.weight"))))


def otm_reference(x, image_size):
    """S-JKO train.py's Q for --model_name otm."""
    return F.interpolate(x.reshape(-1, 3, 8, 8), image_size, mode="bicubic").detach()


def detached(tree):
    if isinstance(tree, dict):
        return {k: detached(v) for k, v in tree.items()}
    return tree.detach().clone()


# ------------------------------------------------------------------------------------
# The files

def record(uotm_dir, sjko_dir):
    torch.set_num_threads(1)
    uotm = import_public(uotm_dir, ["models.ncsnpp_generator_adagn", "models.discriminator", "models.toy", "utils"])
    sjko = import_public(sjko_dir, ["models", "models.toy.TOY", "models.otm.OTM", "utils"])
    uotm_defaults = argparse_defaults(os.path.join(uotm_dir, "train.py"))
    sjko_defaults = argparse_defaults(os.path.join(sjko_dir, "train.py"))
    NCSNpp = uotm["models.ncsnpp_generator_adagn"].NCSNpp
    disc = uotm["models.discriminator"]
    get_model = sjko["models"].get_model
    files, counts = {}, {"torch_version_used": torch.__version__}

    # NCSN++ (UOTM models/ncsnpp_generator_adagn.py); Dense_0: its time embedding, never called
    files["ncsnpp.pt"], nets = {}, {}
    for seed, (variant, opts) in enumerate(NCSNPP_TINY.items()):
        torch.manual_seed(seed)
        net = perturbed(NCSNpp(options(uotm_defaults, **opts)), 100 + seed)
        gen = generator(200 + seed)
        x = torch.randn(4, 3, opts["image_size"], opts["image_size"], generator=gen)
        z = torch.randn(4, opts["nz"], generator=gen)
        with torch.no_grad():
            out = net(x, z)
        files["ncsnpp.pt"][variant] = dict(options=opts, state_dict=parameters(net, ("Dense_0",)), x=x, z=z, out=out)
        nets[variant] = net
    counts["uotm_ncsnpp_tiny_default_total"] = count(nets["default"])
    counts["uotm_ncsnpp_tiny_default_time_embedding"] = count(nets["default"], "Dense_0")
    for name, opts in [("cifar10", {}), ("celeba256", dict(image_size=256, num_channels_dae=64, n_mlp=3,
                                                             ch_mult=[1, 1, 2, 2, 4, 4]))]:
        net = NCSNpp(options(uotm_defaults, **opts))
        counts[f"uotm_ncsnpp_{name}_total"], counts[f"uotm_ncsnpp_{name}_time_embedding"] = \
            count(net), count(net, "Dense_0")

    # Potentials (UOTM models/discriminator.py)
    torch.manual_seed(10)
    gen = generator(11)
    small_y, large_y = torch.randn(8, 3, 16, 16, generator=gen), torch.randn(4, 1, 64, 64, generator=gen)
    small = disc.Discriminator_small(nc=3, ngf=2, act=torch.nn.LeakyReLU(0.2))
    small = unit_spread(perturbed(small, 12), small.end_linear, small_y)
    large = disc.Discriminator_large(nc=1, ngf=2, act=torch.nn.LeakyReLU(0.2))
    large = unit_spread(perturbed(large, 13), large.end_linear, large_y)
    with torch.no_grad():
        files["potentials.pt"] = {name: dict(state_dict=parameters(net), y=y, out=net(y))
                                  for name, net, y in [("small", small, small_y), ("large", large, large_y)]}
    counts["uotm_potential_small_cifar10"] = count(disc.Discriminator_small(nc=3, ngf=64))
    counts["uotm_potential_large_celeba256"] = count(disc.Discriminator_large(nc=3, ngf=64))
    for size in (64, 256):
        netD, _ = get_model(options(sjko_defaults, image_size=size, ngf=64))
        counts[f"sjko_potential_large_{size}px"] = count(netD)

    # S-JKO toy nets (models/toy/TOY.py)
    toy = sjko["models.toy.TOY"]
    torch.manual_seed(20)
    toy_G = perturbed(toy.ToyGenerator(data_dim=2, hidden_dim=16, z_dim=2), 21)
    toy_D = toy.ToyDiscriminator(data_dim=2, hidden_dim=16)
    gen = generator(22)
    x, z, y = (torch.randn(16, 2, generator=gen) for _ in range(3))
    toy_D = unit_spread(perturbed(toy_D, 23), toy_D.out_module[2], y)
    with torch.no_grad():
        files["toy.pt"] = dict(G=dict(state_dict=parameters(toy_G), x=x, z=z, out=toy_G(x, z)),
                               D=dict(state_dict=parameters(toy_D), y=y, out=toy_D(y)))
    netD, netG = get_model(options(sjko_defaults, model_name="toy", image_size=2))
    counts["sjko_toy_generator"], counts["sjko_toy_potential"] = count(netG), count(netD)
    counts["uotm_toy_generator_1d"] = count(uotm["models.toy"].ToyGenerator(data_dim=1, z_dim=1))
    counts["uotm_toy_potential_1d"] = count(uotm["models.toy"].ToyDiscriminator(data_dim=1))

    # The otm pair at 32 px (S-JKO get_model), its phase-0 reference; counts at 32 and 64 px
    torch.manual_seed(30)
    otm_D, otm_G = get_model(options(sjko_defaults, model_name="otm", dataset="cifar10", image_size=32, ngf=4))
    otm_G = perturbed(otm_G, 31)
    x = torch.randn(4, 3, 8, 8, generator=generator(32))
    with torch.no_grad():
        otm_out = otm_G(x.view(4, -1), None)
    otm_D = unit_spread(perturbed(otm_D, 33), otm_D.final_layer[0], otm_out)
    with torch.no_grad():
        files["otm.pt"] = dict(G=dict(state_dict=parameters(otm_G), x=x, out=otm_out),
                               D=dict(state_dict=parameters(otm_D), out=otm_D(otm_out)),
                               reference=otm_reference(x, 32))
    for size, dataset in [(32, "cifar10"), (64, "celeba64")]:
        netD, netG = get_model(options(sjko_defaults, model_name="otm", dataset=dataset, image_size=size))
        name = "cifar10" if size == 32 else "64px"
        counts[f"sjko_otm_generator_{name}"], counts[f"sjko_otm_potential_{name}"] = count(netG), count(netD)
    counts["sjko_otm_potential_projection"] = count(
        get_model(options(sjko_defaults, model_name="otm", dataset="cifar10", image_size=32))[0], "projection")

    # S-JKO's other generators: ddpm and drunet (get_model), the 64 px otm pair (ResNet_G / ResNet_D)
    files["sjko_networks.pt"] = {}
    for seed, (name, opts) in enumerate(SJKO_TINY.items(), start=40):
        torch.manual_seed(seed)
        _, net = get_model(options(sjko_defaults, **opts))
        net = perturbed(net, seed + 100)
        gen = generator(seed + 200)
        x = torch.randn(4, 3, opts["image_size"], opts["image_size"], generator=gen)
        z = torch.randn(4, opts.get("nz", sjko_defaults["nz"]), generator=gen)
        with torch.no_grad():
            files["sjko_networks.pt"][name] = dict(options=opts, state_dict=parameters(net, ("Dense_0",)), x=x, z=z,
                                                   out=net(x, z))
        _, net = get_model(options(sjko_defaults, model_name=name))
        counts[f"sjko_{name}_generator_cifar10"] = count(net)
        if name == "ddpm":
            counts["sjko_ddpm_generator_cifar10_time_embedding"] = count(net, "Dense_0")
    otm = sjko["models.otm.OTM"]
    torch.manual_seed(50)
    G64 = perturbed(otm.ResNet_G(features=OTM64_FEATURES[0]), 51)
    D64 = otm.ResNet_D(features=OTM64_FEATURES[1])
    x = torch.randn(4, 3, 8, 8, generator=generator(52))
    with torch.no_grad():
        out = G64(x.view(4, -1), None)
    D64 = unit_spread(perturbed(D64, 53), D64.end_conv, out)
    with torch.no_grad():
        files["sjko_networks.pt"]["otm64"] = dict(features=list(OTM64_FEATURES), x=x,
                                                  G=dict(state_dict=parameters(G64), out=out),
                                                  D=dict(state_dict=parameters(D64), out=D64(out)))

    # UOTM train.py on the tiny default NCSN++ and the tiny small potential
    phi = uotm["utils"].select_phi
    gen = generator(60)
    real = torch.randn(8, 3, 16, 16, generator=gen).clamp(-1, 1)
    noise, z = torch.randn(8, 3, 16, 16, generator=gen), torch.randn(8, 8, generator=gen)
    files["uotm_image_losses.pt"] = dict(real=real, noise=noise, z=z, r1_gamma=R1_GAMMA, cases={
        f"{phi1}_{phi2}_tau{tau}": uotm_image_steps(nets["default"], small, phi(phi1), phi(phi2), tau, real, noise, z)
        for phi1, phi2, tau in UOTM_IMAGE_CASES})

    # S-JKO train.py and train_JSD.py on the toy nets; fake_old: a second map's output, as the
    # phases after the first use (the previous phase's map)
    Loss_inv = sjko["utils"].Loss_inv
    gen = generator(70)
    real, eps, noise, z, z_old = (torch.randn(16, 2, generator=gen) for _ in range(5))
    with torch.no_grad():
        fake_old = perturbed(toy.ToyGenerator(data_dim=2, hidden_dim=16, z_dim=2), 71)(noise, z_old)
    cases = {}
    for key, (phi2, alpha) in SJKO_TOY_CASES.items():
        g2 = Loss_inv(phi2)
        g2.alpha = alpha     # what its loss scheduler sets
        cases[key] = sjko_steps(toy_G, toy_D, g2, lambda v: v, lambda v: -v, 1.0, real, eps, noise, z, fake_old)
    cases["jsd"] = sjko_steps(toy_G, toy_D, F.softplus, F.softplus, lambda v: F.softplus(-v), 0.1, real, eps, noise,
                              z, fake_old)
    files["sjko_toy_losses.pt"] = dict(real=real, eps=eps, noise=noise, z=z, fake_old=fake_old, cases=cases)

    # UOTM train_toy.py on 1-D nets
    torch.manual_seed(80)
    uG = perturbed(uotm["models.toy"].ToyGenerator(data_dim=1, hidden_dim=16, z_dim=1), 81)
    uD = uotm["models.toy"].ToyDiscriminator(data_dim=1, hidden_dim=16)
    gen = generator(82)
    x_src, x_tar, z = torch.randn(16, 1, generator=gen), 1 + 0.5 * torch.randn(16, 1, generator=gen), \
        torch.randn(16, 1, generator=gen)
    uD = unit_spread(perturbed(uD, 83), uD.out_module[2], x_tar)
    files["uotm_toy_losses.pt"] = dict(
        G_state_dict=parameters(uG), D_state_dict=parameters(uD), x_src=x_src, x_tar=x_tar, z=z, cases={
            f"{phi1}_{phi2}_tau{tau}_lmbda{lmbda}": uotm_toy_steps(uG, uD, phi(phi1), phi(phi2), tau, lmbda, x_src,
                                                                   x_tar, z)
            for phi1, phi2, tau, lmbda in UOTM_TOY_CASES})

    files["otm_sjko_map_loss.pt"] = otm_map_step(otm_G, otm_D, files["otm.pt"]["G"]["x"], 0.1)
    return files, counts


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("uotm", help="checkout of Jae-Moo/Unbalanced-Optimal-Transport-Generative-Model")
    p.add_argument("sjko", help="checkout of Jae-Moo/Scalable-JKO")
    p.add_argument("--out", default=OUT, help="folder to write the files to (default: tests/data/golden)")
    args = p.parse_args()
    files, counts = record(os.path.abspath(args.uotm), os.path.abspath(args.sjko))
    os.makedirs(args.out, exist_ok=True)
    for name, content in files.items():
        torch.save(content, os.path.join(args.out, name))
    with open(os.path.join(args.out, "parameter_counts.json"), "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(files) + 1} files to {args.out}")


if __name__ == "__main__":
    main()
