"""Crash-safe files: every write goes to a temporary file in the same directory,
is fsynced, then renamed over the target, so a kill at any moment leaves either the
old file or the new one, never half of one. A write the file system refuses (full,
over quota, read-only, no permission) raises WriteFailed, a one-line UsageError."""
import errno
import io
import json
import os
import shutil
import signal
import tempfile

import numpy as np
import torch

from uot.errors import UsageError

# errors a user fixes by freeing space or fixing the folder, not by changing the code
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
# Tests set UOT_KILL_BEFORE_RENAME=<file name>:<n> to SIGKILL the process at its n-th write of
# that file, after the temporary file is complete and before the rename: the moment a kill
# mid-save must not corrupt (tests/test_reliability.py)
_KILL_BEFORE_RENAME = os.environ.get("UOT_KILL_BEFORE_RENAME", "")
_writes = {}


class WriteFailed(UsageError):
    """A file could not be written for lack of space or permission; the previous one is kept."""


def _write_failed(path, size, err):
    directory = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(directory).free:,} bytes free there"
    except OSError:
        free = "free space unknown"
    return WriteFailed(f"cannot write {path} ({err.strerror}): it needs {size:,} bytes, {free}; the previous "
                       f"{os.path.basename(path)} is unchanged. Free space (or fix the folder's permissions) and "
                       f"continue with --resume auto")


def _maybe_killed_before_rename(path):
    name, _, count = _KILL_BEFORE_RENAME.rpartition(":")
    if name == os.path.basename(path):
        _writes[name] = _writes.get(name, 0) + 1
        if _writes[name] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path, data):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if _KILL_BEFORE_RENAME:
            _maybe_killed_before_rename(path)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in _STORAGE_ERRORS:
            raise _write_failed(path, len(data), err) from None
        raise
    # make the rename itself durable
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def prepare_folder(path, flag):
    """Create the output folder `path` (a one-line UsageError naming `flag` when it cannot be) and
    remove the temporary files of a write that a kill interrupted."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag}: cannot create {path} ({err.strerror})") from None
    for name in os.listdir(path):
        if name.startswith(".tmp-"):
            os.remove(os.path.join(path, name))


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_savez(path, **arrays):
    """np.savez(path, **arrays), atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_torch_save(obj, path):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint without unpickling code (weights_only): safe for downloaded files."""
    return torch.load(path, map_location=map_location, weights_only=True)


def read_checkpoint(path):
    """A training checkpoint (a dict with the run's 'args'), or a one-line UsageError for a file
    that is not one: truncated, not a torch file, or holding anything but tensors and numbers."""
    try:
        ckpt = load_checkpoint(path)
    except Exception as err:  # what torch.load raises varies: zip, unpickling (weights_only), EOF errors
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"{path} is not a readable checkpoint ({reason}); delete it to start over") from None
    if not isinstance(ckpt, dict) or "args" not in ckpt:
        raise UsageError(f"{path} is not a training checkpoint of this version (no 'args'); delete it to start over")
    return ckpt


class RecordLog:
    """Records (dicts) kept in memory and rewritten atomically on every append.

    `x.jsonl` is written one JSON object per line, `x.json` as one JSON list. On resume,
    `keep_until(step)` drops the records written after the checkpoint, so a file never
    holds the same step twice.
    """

    def __init__(self, path):
        self.path = path
        self.records = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if path.endswith(".jsonl"):
                self.records = [json.loads(line) for line in text.splitlines() if line.strip()]
            elif text.strip():
                self.records = json.loads(text)

    def keep_until(self, step, key="step"):
        self.records = [r for r in self.records if r.get(key, -1) <= step]

    def append(self, record):
        self.records.append(record)
        if self.path.endswith(".jsonl"):
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        else:
            text = json.dumps(self.records, indent=1, sort_keys=True) + "\n"
        atomic_write_text(self.path, text)
