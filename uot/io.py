"""Crash-safe files: every write goes to a temporary file in the same directory,
is fsynced, then renamed over the target, so a kill at any moment leaves either the
old file or the new one, never half of one."""
import io
import json
import os
import tempfile

import numpy as np
import torch


def atomic_write_bytes(path, data):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # make the rename itself durable
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
