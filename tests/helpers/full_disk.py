"""A disk that fills up in the middle of a run (tests of train.py and train_toy.py)."""
import errno
import os


def disk_full(fd):
    """os.fsync on a full disk: the data written before it never reach the disk."""
    raise OSError(errno.ENOSPC, "No space left on device")


def fill_disk_at_save(monkeypatch, module, n):
    """From the n-th call of `module.atomic_torch_save` on, every fsync fails with ENOSPC."""
    save, saves = module.atomic_torch_save, []

    def saving(obj, path):
        saves.append(path)
        if len(saves) == n:
            monkeypatch.setattr(os, "fsync", disk_full)
        return save(obj, path)

    monkeypatch.setattr(module, "atomic_torch_save", saving)
