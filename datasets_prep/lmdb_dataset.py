"""Images in an LMDB, in the layout of the NVAE / DDGAN CelebA LMDBs.

Layout: a directory holding data.mdb; image i is stored under the key str(i).encode()
(b"0", b"1", ...), its value either an encoded image (PNG, JPEG, WebP, ...) or the raw
bytes of a square H x W x 3 uint8 RGB array. The count is the value of the key b"length"
when there is one, else the number of entries (NVAE's LMDBs have no length key).

`write_image_lmdb` writes this layout into DST.partial, puts b"length" in the last
transaction and only then renames the directory to DST: a crash mid-write leaves
DST.partial, never something at DST that looks complete.
"""
import io
import math
import os
import shutil

import lmdb
import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from datasets_prep.image_io import decode_image, pil_to_uint8, resize_center_crop
from uot.errors import UsageError

LENGTH_KEY = b"length"
LMDB_FORMAT = ("keys b'0', b'1', ... (str(index).encode()) with encoded-image or raw HxWx3 uint8 "
               "values, as written by datasets_prep/folder_to_lmdb.py")
COMMIT_EVERY = 1000  # images per write transaction
MAP_SIZE = 1 << 40  # the most the file may grow to; data.mdb only takes the space it uses


def is_lmdb(path):
    return os.path.isfile(os.path.join(path, "data.mdb"))


def image_key(index):
    return str(index).encode()


_open_envs = {}  # real path -> (id of the process that opened it, read-only environment)


def _open(path):
    """This process's read-only environment of `path`, shared by every dataset on it.

    py-lmdb refuses to open the same files twice in one process, and counts an environment
    inherited through fork: a DataLoader worker of a process that has read the LMDB closes
    its inherited copy (its own mapping; lock=False holds no locks) and opens its own, since
    an environment must not be used across a fork."""
    real = os.path.realpath(path)
    pid, env = _open_envs.get(real, (None, None))
    if pid != os.getpid():
        if env is not None:
            env.close()
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False)
        _open_envs[real] = (os.getpid(), env)
    return env


def _read_length(txn, path):
    stored = txn.get(LENGTH_KEY)
    length = int(stored) if stored is not None else txn.stat()["entries"]
    if length == 0:
        raise UsageError(f"LMDB {path} is empty; rebuild it with datasets_prep/folder_to_lmdb.py")
    if txn.get(image_key(0)) is None or txn.get(image_key(length - 1)) is None:
        first_key = next(txn.cursor().iternext(keys=True, values=False))
        raise UsageError(f"LMDB {path} has keys like {bytes(first_key)[:40]!r}, expected {LMDB_FORMAT}")
    return length


def decode_lmdb_value(value, name):
    """An LMDB value (encoded image bytes, or raw square RGB bytes) -> RGB PIL image."""
    side = math.isqrt(len(value) // 3)
    encoded = value[:8] == b"\x89PNG\r\n\x1a\n" or value[:3] == b"\xff\xd8\xff" or value[8:12] == b"WEBP"
    if not encoded and len(value) == 3 * side * side:
        return Image.fromarray(np.frombuffer(value, dtype=np.uint8).reshape(side, side, 3))
    return decode_image(io.BytesIO(value), name)


class LMDBImageDataset(Dataset):
    """(uint8 3 x size x size, 0) for each image of an LMDB in the layout above."""

    def __init__(self, path, image_size):
        if not is_lmdb(path):
            raise UsageError(f"{os.path.join(path, 'data.mdb')} not found; --datadir must hold an "
                             "LMDB made by datasets_prep/folder_to_lmdb.py or celeba_to_lmdb.py")
        self.path, self.image_size = path, image_size
        with _open(path).begin() as txn:
            self.length = self._count(txn)

    def _count(self, txn):
        return _read_length(txn, self.path)

    def _key(self, index):
        return image_key(index)

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        if not 0 <= index < self.length:
            raise IndexError(index)
        key = self._key(index)
        with _open(self.path).begin() as txn:
            value = txn.get(key)
        name = f"LMDB {self.path} key {key.decode(errors='replace')}"
        if value is None:
            raise UsageError(f"{name} is missing; rebuild the LMDB with datasets_prep/folder_to_lmdb.py")
        return pil_to_uint8(resize_center_crop(decode_lmdb_value(value, name), self.image_size)), 0


class KeyOrderLMDBDataset(LMDBImageDataset):
    """(uint8 3 x size x size, 0) for every entry of an LMDB, in key order, whatever the keys.

    For LSUN's LMDBs, which key each WebP image by a hash id. The keys are listed once when
    the dataset is built (torchvision's LSUN instead caches them in a pickle in the working
    directory, which concurrent ranks race on and which goes stale when a path changes)."""

    def _count(self, txn):
        self.keys = list(txn.cursor().iternext(keys=True, values=False))
        if not self.keys:
            raise UsageError(f"LMDB {self.path} is empty; download and unzip it again")
        return len(self.keys)

    def _key(self, index):
        return self.keys[index]


def encode_image(img, encode, name):
    """RGB PIL image -> LMDB value: PNG bytes, or the raw H x W x 3 bytes of a square image."""
    if encode == "raw":
        if img.width != img.height:
            raise UsageError(f"{name} is {img.width}x{img.height}; raw LMDB values must be square, "
                             "pass --image_size N")
        return np.asarray(img, dtype=np.uint8).tobytes()
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_lmdb(dst, paths, image_size=None, encode="png"):
    """Write the images at `paths` (in order, resized and center-cropped to image_size when
    given) to a new LMDB at `dst`."""
    if encode not in ("png", "raw"):
        raise UsageError(f"--encode {encode}: choose png or raw")
    if os.path.exists(dst):
        raise UsageError(f"{dst} already exists; delete it or choose another destination")
    if not paths:
        raise UsageError(f"no images to write to {dst}")
    partial = os.path.normpath(dst) + ".partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by an earlier crash
    try:
        with lmdb.open(partial, map_size=MAP_SIZE) as env:
            progress = tqdm(total=len(paths), desc=f"writing {dst}", unit="img")
            for start in range(0, len(paths), COMMIT_EVERY):
                with env.begin(write=True) as txn:
                    for index in range(start, min(start + COMMIT_EVERY, len(paths))):
                        img = decode_image(paths[index], paths[index])
                        if image_size is not None:
                            img = resize_center_crop(img, image_size)
                        txn.put(image_key(index), encode_image(img, encode, paths[index]))
                        progress.update()
            progress.close()
            with env.begin(write=True) as txn:
                txn.put(LENGTH_KEY, str(len(paths)).encode())
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.rename(partial, dst)
