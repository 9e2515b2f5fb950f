"""torch.distributed helpers. One process without torchrun is world size 1.

Gradients are averaged by an explicit all-reduce after backward (as StyleGAN2-ADA
does) instead of a DistributedDataParallel wrapper: the potential step runs two
forward passes and an R1 double backward, and the map step runs the potential with
its parameters frozen, all of which DDP's hooks handle badly. One flat all-reduce per
step keeps every rank's parameters bit-identical.
"""
import datetime
import os

import torch
import torch.distributed as dist


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
    return rank, world, local_rank


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
    if is_distributed():
        dist.destroy_process_group()
