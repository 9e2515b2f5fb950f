"""torch.distributed helpers. One process without torchrun is world size 1.

Gradients are averaged by an explicit all-reduce after backward (as StyleGAN2-ADA
does) instead of a DistributedDataParallel wrapper: the potential step runs two
forward passes and an R1 double backward, and the map step runs the potential with
its parameters frozen, all of which DDP's hooks handle badly. One flat all-reduce per
step keeps every rank's parameters bit-identical.

A rank killed outright (SIGKILL, the OOM killer, a lost node) says nothing; the others only
see a collective fail. Each rank therefore beats in the rendezvous store, and a survivor
names the ranks whose beat stopped (lost_ranks_message).
"""
import datetime
import os
import re
import threading
import time

import torch
import torch.distributed as dist

# Every rank bumps its counter in the rendezvous store this often, from a thread: after a failed
# collective, the ranks whose counter stopped are the dead ones (lost_ranks_message)
HEARTBEAT_S = 1.0
_heartbeat = None


def init_distributed(device_kind, timeout_s=600):
    """Start the process group under torchrun; returns (rank, world_size, local_rank)."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    _start_heartbeat(rank)
    return rank, world, local_rank


class _Heartbeat(threading.Thread):
    def __init__(self, rank):
        super().__init__(daemon=True, name="uot-heartbeat")
        # the default store is torchrun's agent store (or rank 0's without torchrun); no public getter
        self.store = dist.PrefixStore("uot/heartbeat/", dist.distributed_c10d._get_default_store())
        self.key, self.stopped = str(rank), threading.Event()

    def run(self):
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                self.store.add(self.key, 1)
            except Exception:   # the store is gone: the job is ending
                return

    def counters(self, world):
        return [self.store.add(str(r), 0) for r in range(world)]


def _start_heartbeat(rank):
    global _heartbeat
    _heartbeat = _Heartbeat(rank)
    _heartbeat.store.add(_heartbeat.key, 1)
    _heartbeat.start()


def lost_ranks_message(err):
    """After `err` in a collective: one line naming the ranks that stopped beating, or None when
    every rank is alive (then `err` is not a lost peer). Waits a few heartbeats to tell."""
    if _heartbeat is None:
        return None
    me, world = rank(), world_size()
    try:
        before = _heartbeat.counters(world)
        time.sleep(3 * HEARTBEAT_S)
        after = _heartbeat.counters(world)
    except Exception:   # without torchrun rank 0 hosts the store: its loss takes the store along
        lost = "rank 0 (it hosted the rendezvous store, which is gone)"
    else:
        dead = [r for r in range(world) if r != me and after[r] == before[r]]
        if not dead:
            return None
        lost = f"rank{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))}"
    # gloo's first sentence without its source location: "Connection closed by peer [host]:port"
    reason = re.sub(r"^\[[^\]]*\]\s*", "", (str(err).strip().splitlines() or [type(err).__name__])[0])
    return (f"rank {me}: {lost} stopped (killed, out of memory, or its node failed), and a collective failed "
            f"({reason.split('. ')[0][:160]}); the last checkpoint is whole: run the same command with "
            f"--resume auto")


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def rank():
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def broadcast_module(module, src=0):
    """Make every rank start from rank `src`'s weights."""
    if is_distributed():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor, src)


@torch.no_grad()
def average_gradients(params):
    """All-reduce and average .grad of `params` in one flat buffer."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    chunks = torch.split(flat, [g.numel() for g in grads])
    torch._foreach_copy_(grads, [c.view_as(g) for c, g in zip(chunks, grads)])


def all_reduce_mean(tensor):
    if is_distributed():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def any_rank(flag, device):
    """True on every rank when `flag` is True on at least one."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_tensor(tensor):
    """Every rank's `tensor` (same shape everywhere), stacked along a new first dim."""
    if not is_distributed():
        return tensor.unsqueeze(0)
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return torch.stack(out)


def cleanup():
    global _heartbeat
    if _heartbeat is not None:   # stopped before the store it beats in goes
        _heartbeat.stopped.set()
        _heartbeat.join(timeout=2 * HEARTBEAT_S)
        _heartbeat = None
    if is_distributed():
        dist.destroy_process_group()
