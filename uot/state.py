"""What a training run is made of, and what a resume restores.

TrainState holds the map G, the potential D, the EMA of G, the frozen reference map of
the current JKO phase, both optimizers and the step. `state_dict()` / `load_state_dict()`
are the one description of that state: checkpoints are written from the first and
resumes read through the second. Random number generator states are per rank and are
gathered / restored separately (rng_state_dict, load_rng_state_dict).
"""
import torch

from uot import dist as udist
from uot.ema import frozen_copy, update_ema
from uot.errors import UsageError


class TrainState:
    def __init__(self, G, D, lr_g, lr_d, betas, ema_decay=None):
        """`ema_decay`: keep an EMA of G with this decay; None keeps none."""
        self.G, self.D = G, D
        self.ema_decay = ema_decay
        self.G_ema = frozen_copy(G) if ema_decay is not None else None
        self.G_ref = None   # the frozen map of the previous JKO phase; None: the phase-0 reference
        # fused Adam: one kernel per optimizer step on CUDA; on the CPU as fast as foreach
        self.opt_G = torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas, fused=True)
        self.opt_D = torch.optim.Adam(D.parameters(), lr=lr_d, betas=betas, fused=True)
        self.step = 0

    @property
    def G_eval(self):
        """The generator to sample from: the EMA when there is one."""
        return self.G_ema if self.G_ema is not None else self.G

    def freeze_reference(self):
        """A new JKO phase: T of the phase that ends becomes the frozen reference map."""
        self.G_ref = frozen_copy(self.G)

    def update_ema(self):
        if self.G_ema is not None:
            update_ema(self.G_ema, self.G, self.ema_decay)

    def set_learning_rates(self, lr_g, lr_d):
        for opt, lr in ((self.opt_G, lr_g), (self.opt_D, lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr

    def weights_checksum(self):
        """Sum of every weight of G and D in float64: finite iff the weights are, and equal on
        every rank iff their copies agree."""
        return sum(p.detach().double().sum() for p in list(self.G.parameters()) + list(self.D.parameters()))

    def state_dict(self):
        return dict(step=self.step, G=self.G.state_dict(), D=self.D.state_dict(),
                    G_ema=self.G_ema.state_dict() if self.G_ema is not None else None,
                    G_ref=self.G_ref.state_dict() if self.G_ref is not None else None,
                    opt_G=self.opt_G.state_dict(), opt_D=self.opt_D.state_dict())

    def start_from(self, state):
        """Another run's networks (its state_dict()): G and the EMA start as the map it evaluated
        (its EMA when it kept one), D as it was; the step count and the optimisers stay fresh."""
        evaluated = state["G_ema"] if state["G_ema"] is not None else state["G"]
        self.G.load_state_dict(evaluated)
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(evaluated)

    def load_state_dict(self, state):
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:   # a run that had no EMA: start it from G
            self.G_ema.load_state_dict(state["G_ema"] if state["G_ema"] is not None else state["G"])
        self.G_ref = None
        if state["G_ref"] is not None:
            self.freeze_reference()
            self.G_ref.load_state_dict(state["G_ref"])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.step = state["step"]


def rng_state_dict(device):
    """Every rank's RNG states, gathered (a collective: all ranks must call it)."""
    cpu = udist.all_gather_tensor(torch.get_rng_state().to(device)).cpu()
    cuda = udist.all_gather_tensor(torch.cuda.get_rng_state().to(device)).cpu() if device.type == "cuda" else None
    return dict(rng_cpu=cpu, rng_cuda=cuda, world_size=udist.world_size())


def load_rng_state_dict(state, device, fallback_seed):
    """Restore this rank's RNG states. With another number of processes the streams cannot be
    replayed: seed from `fallback_seed` (and the rank) instead."""
    rank = udist.rank()
    if state["world_size"] != udist.world_size():
        torch.manual_seed(fallback_seed + rank)
        return
    # a row of the gathered (world, n) state is a view at a storage offset, and
    # set_rng_state on such a view segfaults (torch 2.14, every rank but 0): copy it
    torch.set_rng_state(state["rng_cpu"][rank].clone())
    if device.type == "cuda" and state["rng_cuda"] is not None:
        torch.cuda.set_rng_state(state["rng_cuda"][rank].clone())


def check_compatible(ckpt_args, args, source, keys, flag="--resume"):
    """Refuse to resume `source` (a checkpoint or options file holding `ckpt_args`), or to start
    from it (`flag` --init_from), when one of `keys`, the arguments its weights and data depend
    on, differs in `args`."""
    for key in keys:
        if key in ckpt_args and ckpt_args[key] != getattr(args, key):
            raise UsageError(f"{flag}: {source} was made with --{key} {ckpt_args[key]}, "
                             f"this run has {getattr(args, key)}; use the same value, or start a new run elsewhere")
