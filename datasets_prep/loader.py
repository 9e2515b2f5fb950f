"""Feeding batches to the trainer: the same sharded order on every data path.

`ShardedBatches` turns torch's DistributedSampler order (seeded, set per epoch) into
per-rank index batches and can start mid-epoch, which makes resume exact. `ImageStream`
serves those batches either from a uint8 tensor held on the device (small datasets: no
workers, no host-to-device copies) or through DataLoader workers (large ones), then
scales to [-1, 1] and flips on the device. `ToyStream` draws fresh batches of a toy
distribution. Both give `batches(step)`: the real batches from global step `step` on.
"""
import torch
from torch.utils.data import DataLoader, DistributedSampler

from datasets_prep.images import to_model_range
from datasets_prep.toy import sample_toy


class ShardedBatches:
    """Index batches of this rank for one epoch, from a given batch on; drops the ragged end."""

    def __init__(self, num_items, batch_per_rank, rank, world, seed):
        self.sampler = DistributedSampler(range(num_items), num_replicas=world, rank=rank,
                                          shuffle=True, seed=seed, drop_last=True)
        self.batch = batch_per_rank
        self.steps_per_epoch = len(self.sampler) // batch_per_rank
        self.epoch, self.start = 0, 0

    def set_position(self, epoch, start_batch=0):
        self.sampler.set_epoch(epoch)
        self.epoch, self.start = epoch, start_batch

    def __iter__(self):
        indices = list(self.sampler)
        for b in range(self.start, self.steps_per_epoch):
            yield indices[b * self.batch:(b + 1) * self.batch]

    def __len__(self):
        return self.steps_per_epoch - self.start


class ImageStream:
    """Batches of real images as float tensors in [-1, 1] on `device`."""

    def __init__(self, dataset, batch_per_rank, rank, world, seed, device, flip,
                 on_device, num_workers=4, channels_last=False):
        if len(dataset) < batch_per_rank * world:
            raise ValueError(f"the dataset has {len(dataset)} images, fewer than one global batch")
        self.order = ShardedBatches(len(dataset), batch_per_rank, rank, world, seed)
        self.steps_per_epoch = self.order.steps_per_epoch
        self.device, self.flip, self.channels_last = device, flip, channels_last
        if on_device:
            from datasets_prep import as_uint8_tensor
            self.images = as_uint8_tensor(dataset).to(device)
            self.loader = None
        else:
            self.images = None
            # its own generator: each DataLoader iterator draws a worker base seed, which
            # must not come from (and shift) the global RNG that resume restores
            self.loader = DataLoader(dataset, batch_sampler=self.order, num_workers=num_workers,
                                     pin_memory=device.type == "cuda",
                                     persistent_workers=num_workers > 0,
                                     generator=torch.Generator().manual_seed(seed + rank))

    def batches(self, step):
        """Real batches from global step `step` on, epoch after epoch."""
        epoch, start = divmod(step, self.steps_per_epoch)
        while True:
            yield from self.epoch(epoch, start)
            epoch, start = epoch + 1, 0

    def epoch(self, epoch, start_batch=0):
        """Iterate this rank's batches of `epoch`, starting at batch `start_batch`."""
        self.order.set_position(epoch, start_batch)
        if self.loader is None:
            for idx in self.order:
                yield self._to_model_input(self.images[torch.as_tensor(idx, device=self.device)])
        else:
            for images, _ in self.loader:
                yield self._to_model_input(images.to(self.device, non_blocking=True))

    def _to_model_input(self, uint8_images):
        x = to_model_range(uint8_images)
        if self.flip:
            flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
            x = torch.where(flip, x.flip(3), x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class ToyStream:
    """Fresh batches of the toy distribution `name` in `dim` dimensions, drawn on `device`
    from the global RNG (whose state a checkpoint keeps). The data is a distribution, not a
    finite set: an "epoch" (UOTM mode counts in epochs) is a fixed number of steps."""
    steps_per_epoch = 100

    def __init__(self, name, dim, batch_per_rank, device):
        self.name, self.dim, self.batch, self.device = name, dim, batch_per_rank, device

    def batches(self, step):
        while True:
            yield sample_toy(self.name, self.batch, dim=self.dim, device=self.device)
