"""Network flags (UOTM's CLI, CIFAR-10 defaults) and the builders that read them.

The networks are rebuilt from a plain `argparse.Namespace(**options)`, so every
option lives in the config and nothing else is needed.
"""
import argparse
import math

import torch.nn as nn

from uot.cli import Refused
from uot.errors import UsageError

MODEL_NAMES = ("ncsnpp", "ddpm", "drunet", "otm", "dcgan", "mlp", "toy")
NCSNPP_POTENTIAL = ("ncsnpp", "ddpm", "drunet")   # the maps whose potential is the public residual one


def add_on_by_default(group, name, feature, help):
    """A switch that is on by default: --no-NAME turns it off. Both public train.py declare
    --NAME itself store_false, so a command copied from them that passes --NAME means *off*:
    here the bare --NAME stops with that meaning instead of silently keeping it on."""
    group.add_argument(f"--no-{name}", dest=name, action="store_false", help=help)
    group.add_argument(f"--{name}", action=Refused, reason=(
        f"in the public UOTM and S-JKO train.py, passing --{name} turns {feature} off (store_false); here it is "
        f"on by default: write --no-{name} to turn it off, or drop --{name} to keep it on"))


def add_model_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the generator/potential flags of the UOTM CLI with its CIFAR-10 defaults."""
    g = parser.add_argument_group("networks")
    g.add_argument("--model_name", default="ncsnpp", choices=MODEL_NAMES,
                   help="ncsnpp: NCSN++ map + residual potential; ddpm: the same NCSN++ code with DDPM blocks and "
                        "no FIR (as the public S-JKO code builds it: --fir and --resblock_type are set); drunet: "
                        "the DRUNet U-Net map (widths ngf x ch_mult, 4 of them) + the residual potential; otm: the "
                        "S-JKO tables' 'Small' pair (a 192-d source for RGB; the public ResNet pair at 64 px); "
                        "dcgan: a ~0.4M-parameter pair; mlp: plain MLPs on flattened images (--mlp_width, --mlp_depth), "
                        "the digits study's pair; toy: MLPs for the 2-D toys")
    g.add_argument("--image_size", type=int, default=None,
                   help="image resolution in pixels (default: the dataset's, e.g. 32 for CIFAR-10); "
                        "for the 2-D toys (--model_name toy), the data dimension: 2")
    g.add_argument("--num_channels", type=int, default=3, help="image channels")
    add_on_by_default(g, "centered", "centered inputs (data in [-1, 1])",
                      "take inputs in [0, 1] and map them to [-1, 1] (on: inputs already in [-1, 1])")
    g.add_argument("--num_channels_dae", type=int, default=128, help="base width of the NCSN++ generator")
    g.add_argument("--n_mlp", type=int, default=4, help="hidden layers of the z mapping network")
    g.add_argument("--ch_mult", nargs="+", type=int, default=[1, 2, 2, 2], help="width multiplier per resolution")
    g.add_argument("--num_res_blocks", type=int, default=2, help="residual blocks per resolution")
    g.add_argument("--attn_resolutions", nargs="*", type=int, default=[16], help="resolutions with self-attention")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout in the residual blocks")
    add_on_by_default(g, "resamp_with_conv", "the learned convolutions of the up/down layers",
                      "no learned conv in the up/down layers (used with --resblock_type ddpm)")
    g.add_argument("--no-conditional", dest="conditional", action="store_false",
                   help="no AdaGN conditioning on z: a deterministic T(x)")
    g.add_argument("--conditional", action=Refused, reason=(
        "the public UOTM train.py declares it store_false, but its generator never reads it: passing it changes "
        "nothing there; drop it (here --no-conditional drops the generator's conditioning on z)"))
    add_on_by_default(g, "fir", "FIR resampling", "nearest / average-pool resampling instead of FIR")
    g.add_argument("--fir_kernel", nargs="+", type=int, default=[1, 3, 3, 1], help="FIR filter taps")
    add_on_by_default(g, "skip_rescale", "the 1/sqrt(2) rescale of residual sums",
                      "do not divide residual sums by sqrt(2)")
    g.add_argument("--resblock_type", default="biggan", choices=["biggan", "ddpm"], help="residual block type")
    g.add_argument("--progressive", default="none", choices=["none", "output_skip", "residual"],
                   help="output pyramid of the generator")
    g.add_argument("--progressive_input", default="residual", choices=["none", "input_skip", "residual"],
                   help="input pyramid of the generator")
    g.add_argument("--progressive_combine", default="sum", choices=["sum", "cat"],
                   help="how --progressive_input input_skip merges the pyramid")
    g.add_argument("--embedding_type", default="positional", choices=["positional", "fourier"],
                   help="z enters the mapping network as is (positional) or as random Fourier features")
    g.add_argument("--fourier_scale", type=float, default=16.0, help="frequency scale of the Fourier features")
    g.add_argument("--not_use_tanh", action="store_true", help="no tanh on the generator output")
    g.add_argument("--z_emb_dim", type=int, default=256, help="width of the z mapping network")
    g.add_argument("--nz", type=int, default=100, help="dimension of the auxiliary latent z")
    g.add_argument("--ngf", type=int, default=64, help="base width of the potential (and of the dcgan pair)")
    g.add_argument("--mlp_width", type=int, default=512, help="--model_name mlp: units per hidden layer")
    g.add_argument("--mlp_depth", type=int, default=3, help="--model_name mlp: hidden layers of the map and potential")
    return parser


def check_image_size(cfg):
    """UsageError unless the NCSN++ generator and its potential can both halve --image_size enough."""
    gen_factor = 2 ** (len(cfg.ch_mult) - 1)
    pot_factor = 2 ** (3 if cfg.image_size <= 32 else 4 if cfg.image_size <= 64 else 6)
    need = math.lcm(gen_factor, pot_factor)
    if cfg.image_size < need or cfg.image_size % need:
        raise UsageError(
            f"--image_size {cfg.image_size} does not fit --ch_mult {' '.join(map(str, cfg.ch_mult))}: the generator "
            f"halves the resolution {len(cfg.ch_mult) - 1} times and the potential {int(math.log2(pot_factor))} "
            f"times, so --image_size must be a multiple of {need} (or change --ch_mult)")


def source_shape(cfg):
    """Shape of one source sample x (without the batch): the image's, but for the otm map's
    C x 8 x 8 noise and the toys' data dimension."""
    if cfg.model_name == "toy":
        return (cfg.image_size,)
    if cfg.model_name == "otm":
        from .otm import otm_source_shape
        return otm_source_shape(cfg.num_channels)
    return (cfg.num_channels, cfg.image_size, cfg.image_size)


def initial_reference(cfg):
    """The reference map of the first phase, which the cost measures T(x) against: the identity,
    or for the otm map the source upsampled to the image size."""
    if cfg.model_name == "otm":
        from .otm import otm_reference
        return lambda x: otm_reference(x, cfg.image_size)
    return lambda x: x


def build_generator(cfg) -> nn.Module:
    """The transport map T(x, z) selected by cfg.model_name."""
    if cfg.model_name == "toy":
        from .toy import ToyGenerator
        return ToyGenerator(cfg.image_size, cfg.nz)
    if cfg.model_name == "otm":
        from .otm import RESNET_SIZE, OTMGenerator, ResNetGenerator, check_otm_image_size
        check_otm_image_size(cfg.image_size)
        if cfg.image_size == RESNET_SIZE:
            return ResNetGenerator(cfg.num_channels, 4 * cfg.ngf)
        return OTMGenerator(cfg.num_channels, cfg.image_size, cfg.ngf)
    if cfg.model_name == "dcgan":
        from .dcgan import DCGANGenerator, check_dcgan_image_size
        check_dcgan_image_size(cfg.image_size)
        return DCGANGenerator(cfg.num_channels, cfg.nz, cfg.ngf, use_tanh=not cfg.not_use_tanh)
    if cfg.model_name == "mlp":
        from .mlp import MLPGenerator
        return MLPGenerator(source_shape(cfg), cfg.nz, cfg.mlp_width, cfg.mlp_depth, use_tanh=not cfg.not_use_tanh)
    if cfg.model_name in ("ncsnpp", "ddpm"):
        from .ncsnpp import NCSNpp
        check_image_size(cfg)
        return NCSNpp(ddpm_form(cfg) if cfg.model_name == "ddpm" else cfg)
    if cfg.model_name == "drunet":
        from .drunet import DRUNet, check_drunet_config
        check_drunet_config(cfg.ch_mult, cfg.image_size)
        check_image_size(cfg)
        return DRUNet(cfg.num_channels, [cfg.ngf * m for m in cfg.ch_mult], cfg.num_res_blocks)
    raise UsageError(f"--model_name {cfg.model_name!r} is not one of {', '.join(MODEL_NAMES)}")


def build_potential(cfg) -> nn.Module:
    """The potential v(y) -> (B,) selected by cfg.model_name (and cfg.image_size for ncsnpp)."""
    if cfg.model_name == "toy":
        from .toy import ToyPotential
        return ToyPotential(cfg.image_size)
    if cfg.model_name == "otm":
        from .otm import RESNET_SIZE, OTMPotential, ResNetPotential, check_otm_image_size
        check_otm_image_size(cfg.image_size)
        if cfg.image_size == RESNET_SIZE:
            return ResNetPotential(cfg.num_channels, 2 * cfg.ngf)
        return OTMPotential(cfg.num_channels, cfg.ngf)
    if cfg.model_name == "dcgan":
        from .dcgan import DCGANPotential, check_dcgan_image_size
        check_dcgan_image_size(cfg.image_size)
        return DCGANPotential(cfg.num_channels, cfg.ngf)
    if cfg.model_name == "mlp":
        from .mlp import MLPPotential
        return MLPPotential(source_shape(cfg), cfg.mlp_width, cfg.mlp_depth)
    if cfg.model_name in NCSNPP_POTENTIAL:
        from .potentials import LargePotential, SmallPotential
        check_image_size(cfg)
        if cfg.image_size <= 32:   # both public codes: CIFAR-10 and MNIST at 32 px
            return SmallPotential(cfg.num_channels, cfg.ngf, tuple(cfg.fir_kernel))
        return LargePotential(cfg.num_channels, cfg.ngf, tuple(cfg.fir_kernel), cfg.image_size)
    raise UsageError(f"--model_name {cfg.model_name!r} is not one of {', '.join(MODEL_NAMES)}")


def ddpm_form(cfg):
    """The options of --model_name ddpm: the public S-JKO get_model sets fir off and DDPM blocks."""
    return argparse.Namespace(**{**vars(cfg), "fir": False, "resblock_type": "ddpm"})


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not); buffers such as FIR filters are not counted."""
    return sum(p.numel() for p in module.parameters())
