"""FID (and improved precision/recall) the way pytorch-fid computes it, without files.

Generated images are quantized to uint8 exactly as saving a PNG would, then fed from
memory to pytorch-fid's InceptionV3 (FID weights, pool3 2048-d features, bilinear
resize to 299). Saving samples as JPEG biases FID; going through uint8 keeps the
number identical to "save PNGs, then run pytorch-fid on the folder".

Everything here is distributed-aware: under torchrun each rank generates (or reads)
its share and the features are all-gathered, so every rank ends with all of them.
"""
import io
import math
import os
import pickle
import pickletools
import socket
import urllib.error
import warnings
import zipfile
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from scipy import linalg
from tqdm import tqdm

import pytorch_fid.inception
from pytorch_fid.inception import FID_WEIGHTS_URL, InceptionV3

from uot import dist as udist
from uot.errors import UsageError
from uot.io import atomic_savez

FEATURE_DIM = 2048
DOWNLOAD_SOCKET_TIMEOUT_S = 20


# ----------------------------------------------------------------------------- Inception

def hub_inception_path():
    """Where torch hub (hence pytorch-fid) keeps the FID Inception weights."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(FID_WEIGHTS_URL))


def _fetch_hub_weights():
    """The hub checkpoint path, downloading the file first if it is missing."""
    path = hub_inception_path()
    if os.path.isfile(path):
        return path
    how_to_fix = (f"FID Inception weights not found: put {FID_WEIGHTS_URL} at {path} "
                  f"or pass --inception_weights PATH")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # A per-operation socket timeout: an offline machine fails in seconds instead of hanging.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        print(f"downloading the FID Inception weights to {path}", flush=True)
        torch.hub.download_url_to_file(FID_WEIGHTS_URL, path, progress=udist.rank() == 0)
    except (urllib.error.URLError, OSError) as err:
        raise UsageError(f"{how_to_fix} (download failed: {err})") from None
    finally:
        socket.setdefaulttimeout(previous)
    return path


def load_inception(weights=None, device="cpu"):
    """pytorch-fid's InceptionV3 (pool3, FID weights), in eval mode on `device`.

    `weights`: a local copy of pt_inception-2015-12-05-6726825d.pth; None uses (and, when
    online, first downloads) the torch hub cache, where pytorch-fid itself looks.
    """
    path = weights if weights is not None else _fetch_hub_weights()
    if not os.path.isfile(path):
        raise UsageError(f"--inception_weights {path}: no such file")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"cannot read the FID Inception weights {path}: {err}") from None
    # pytorch-fid builds the FID architecture and then fetches the weights by URL; hand it
    # the local state dict instead, so its own strict load_state_dict checks the file.
    with mock.patch.object(pytorch_fid.inception, "load_state_dict_from_url",
                           lambda *args, **kwargs: state_dict):
        try:
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]],
                                resize_input=True, normalize_input=True)
        except RuntimeError as err:
            first_line = str(err).splitlines()[0]
            raise UsageError(f"{path} is not the FID Inception checkpoint: {first_line}") from None
    return model.eval().to(device)


# ----------------------------------------------------------------------------- features

def quantize_to_uint8(images):
    """[-1, 1] floats -> uint8, rounding as torchvision.utils.save_image does for a PNG."""
    return images.add(1).div(2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def inception_features(inception, batches, device, total=None, desc="features"):
    """Pool3 features (N, 2048) on `device` of an iterable of uint8 (B, C, H, W) batches."""
    features = []
    with tqdm(total=total, desc=desc, unit="img", disable=udist.rank() != 0,
              dynamic_ncols=True) as bar:
        for images in batches:
            x = images.to(device, non_blocking=True).float().div(255)
            if x.shape[1] == 1:  # greyscale: repeat to RGB, as PIL's convert("RGB") does
                x = x.expand(-1, 3, -1, -1)
            features.append(inception(x)[0].flatten(1).float())
            bar.update(images.shape[0])
    if not features:
        return torch.empty(0, FEATURE_DIM, device=device)
    return torch.cat(features)


def gather_rows(tensor):
    """Concatenate every rank's rows (counts may differ between ranks), in rank order."""
    if not udist.is_distributed():
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:n] for rows, n in zip(gathered, counts)])


def statistics(features):
    """Mean and covariance (float64 numpy) of (N, D) features, as pytorch-fid computes them."""
    features = torch.as_tensor(features).detach().cpu().double().numpy()
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _rank_share(num_items, rank, world):
    """(offset, count) of this rank's contiguous share of `num_items`."""
    base, extra = divmod(num_items, world)
    return rank * base + min(rank, extra), base + (rank < extra)


def _save_pngs(images, directory, first_index):
    for i, image in enumerate(images.cpu()):
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(
            os.path.join(directory, f"{first_index + i:06d}.png"))


@torch.no_grad()
def generator_features(G, num_samples, batch_size, source_shape, nz, device, seed=0,
                       inception=None, save_dir=None):
    """Inception features (num_samples, 2048) of G(x, z), x ~ N(0, I) of `source_shape`, z ~ N(0, I).

    Under torchrun each rank draws its share from its own seed; every rank returns all
    num_samples features. `save_dir`: also write the samples there as PNGs.
    """
    inception = inception if inception is not None else load_inception(device=device)
    rank, world = udist.rank(), udist.world_size()
    offset, count = _rank_share(num_samples, rank, world)
    rank_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    noise = torch.Generator(device).manual_seed(rank_seed)
    if save_dir is not None:
        os.makedirs(save_dir, exist_ok=True)

    def sample_batches():
        for start in range(0, count, batch_size):
            b = min(batch_size, count - start)
            x = torch.randn((b, *source_shape), generator=noise, device=device)
            z = torch.randn((b, nz), generator=noise, device=device)
            images = quantize_to_uint8(G(x, z).float())
            if save_dir is not None:
                _save_pngs(images, save_dir, offset + start)
            yield images

    was_training = G.training
    G.eval()
    try:
        features = inception_features(inception, sample_batches(), device, total=count,
                                      desc="generated")
    finally:
        G.train(was_training)
    return gather_rows(features)


# ----------------------------------------------------------------------------- distances

def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as pytorch-fid computes it."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1 = np.atleast_2d(sigma1).astype(np.float64)
    sigma2 = np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A singular product (e.g. fewer samples than dimensions) can break the Schur
        # method; a small ridge on both covariances makes it well posed.
        print(f"FID: singular product, adding {eps} to the diagonal of the covariances")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):  # rounding can leave a tiny imaginary part
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.abs(covmean.imag).max()} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def kth_neighbour_radii(features, k=3, chunk=1000, device="cpu"):
    """Distance of every row to its k-th nearest other row: the radii of a set's k-NN balls."""
    reference = features.to(device)
    radii = [torch.cdist(reference[i:i + chunk], reference).kthvalue(k + 1, dim=1).values
             for i in range(0, len(reference), chunk)]  # k + 1: each row is its own nearest
    return torch.cat(radii)


def _fraction_inside(queries, centres, radii, chunk, device):
    """Fraction of `queries` inside at least one ball (centres, radii)."""
    centres, radii = centres.to(device), radii.to(device)
    inside = [(torch.cdist(queries[i:i + chunk].to(device), centres) <= radii).any(dim=1)
              for i in range(0, len(queries), chunk)]
    return torch.cat(inside).float().mean().item()


@torch.no_grad()
def precision_recall(real_features, fake_features, k=3, chunk=1000, device="cpu", real_radii=None):
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls.

    precision: share of generated samples inside the real manifold estimate;
    recall: share of real samples inside the generated one. Chunked: memory is
    chunk x N distances. `real_radii`: kth_neighbour_radii(real_features, k) when already
    computed (a measure that scores many sets against one reference computes them once).
    """
    real, fake = real_features.float(), fake_features.float()
    if real_radii is None:
        real_radii = kth_neighbour_radii(real, k, chunk, device)
    fake_radii = kth_neighbour_radii(fake, k, chunk, device)
    return (_fraction_inside(fake, real, real_radii, chunk, device),
            _fraction_inside(real, fake, fake_radii, chunk, device))


# ----------------------------------------------------------------------------- reference data
# (which images make a reference set is datasets_prep.reference's business)

def dataset_features(dataset, inception, batch_size, device, num_workers=0, desc="reference"):
    """Inception features of every image of a dataset yielding (uint8 CxHxW, label); all ranks get all."""
    offset, count = _rank_share(len(dataset), udist.rank(), udist.world_size())
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(offset, offset + count)), batch_size=batch_size,
        num_workers=num_workers, pin_memory=torch.device(device).type == "cuda")
    features = inception_features(inception, (images for images, _ in loader), device,
                                  total=count, desc=desc)
    return gather_rows(features)


def save_stats(path, mu, sigma, num_images):
    """Write reference statistics (pytorch-fid's mu/sigma npz layout) atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_savez(path, mu=mu, sigma=sigma, num_images=num_images)


# Statistics files come from elsewhere (the public repositories ship theirs as pickles), so they
# are read defensively: no length, shape or size a file claims is allocated before it is checked
# against what pool3 statistics need (a 2048 vector and a 2048 x 2048 matrix, ~32 MiB in float64),
# and any fault of a file becomes one UsageError line that names it.
_MAX_ARRAY_BYTES = FEATURE_DIM * FEATURE_DIM * 8     # sigma in float64, the largest array read
_STATS_BYTES = _MAX_ARRAY_BYTES + FEATURE_DIM * 8    # mu and sigma in float64
# protocol 2 stores bytes as text, up to 2 bytes of UTF-8 per byte: the largest valid pickle
_MAX_PICKLE_FILE = 2 * _STATS_BYTES + (1 << 20)
_MAX_PICKLE_OPS = 10_000      # numpy's pickle of the {'mu', 'sigma'} dict takes ~160 opcodes
_MAX_PICKLE_LINE = 1024       # a text argument (protocol 2's module and class names) is short
_MAX_NPY_HEADER = 10_000      # numpy's own limit on a .npy header
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _one_line(err):
    """An exception as a short single line, for a refusal message."""
    return " ".join(str(err)[:1000].split())[:200] or type(err).__name__


def _read_npy_header(f):
    """(shape, fortran_order, dtype) of the .npy header at f's position. numpy's own reader reads
    as many bytes as the header claims (a version-2 header may claim 4 GiB): bounded here first."""
    magic = f.read(8)
    version = (magic[6], magic[7]) if len(magic) == 8 else None
    if magic[:6] != np.lib.format.MAGIC_PREFIX or version not in _NPY_HEADER_READERS:
        raise ValueError(f"it is not a .npy of format 1.0 or 2.0 (it starts with {magic!r})")
    width = 2 if version == (1, 0) else 4
    size = f.read(width)
    length = int.from_bytes(size, "little")
    if len(size) < width or length > _MAX_NPY_HEADER:
        raise ValueError(f"its .npy header is cut short or claims {length} bytes (numpy writes at most "
                         f"{_MAX_NPY_HEADER})")
    header = f.read(length)
    if len(header) < length:
        raise ValueError("its .npy header is cut short")
    return _NPY_HEADER_READERS[version](io.BytesIO(size + header))


def _nbytes(shape, dtype):
    """The bytes an array of `shape` and `dtype` takes, refused above sigma's."""
    # sizes bounded before multiplying them: a pickle's int may have millions of digits
    if not (type(shape) is tuple and len(shape) <= 32
            and all(type(n) is int and 0 <= n < 2**63 for n in shape)):
        raise ValueError("an array's shape is not a tuple of at most 32 sizes")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _MAX_ARRAY_BYTES:
        raise ValueError(f"an array of shape {shape} and dtype {dtype} takes {nbytes} bytes, more than "
                         f"sigma's {_MAX_ARRAY_BYTES}")
    return nbytes


def _array_from_bytes(data, dtype, shape, fortran):
    """The array of `shape` over `data` (a view, no copy), once its byte count is checked."""
    nbytes = _nbytes(shape, dtype)
    if type(data) not in (bytes, bytearray) or len(data) != nbytes:
        raise ValueError(f"an array of shape {shape} and dtype {dtype} does not come with its {nbytes} bytes")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


# ----- npz

class _BoundedFile(io.FileIO):
    """A file that refuses any single read over `limit` bytes: zipfile reads the central directory
    in one read of the length the file claims."""

    def __init__(self, path, limit):
        super().__init__(path, "rb")
        self.limit = limit

    def read(self, size=-1):
        if size is None or size < 0:
            size = os.fstat(self.fileno()).st_size - self.tell()
        if size > self.limit:
            raise ValueError(f"it makes the zip reader ask for {size} bytes at once")
        return super().read(size)


def _read_npz_stats(path):
    """(mu, sigma) of an npz. Each member's declared size, .npy header and dtype are checked before its
    data is read, and the data is read with a bounded read: a deflated member may inflate to more than
    it declares (a 4 MiB file can hold 4 GiB of zeros)."""
    with _BoundedFile(path, _MAX_ARRAY_BYTES + (1 << 20)) as raw, zipfile.ZipFile(raw) as archive:
        names = set(archive.namelist())
        missing = [key for key in ("mu", "sigma") if key + ".npy" not in names]
        if missing:
            raise ValueError(f"it has no array {' or '.join(missing)}")
        arrays = []
        for key in ("mu", "sigma"):
            info = archive.getinfo(key + ".npy")
            if info.file_size > _MAX_ARRAY_BYTES + _MAX_NPY_HEADER + 12:   # + magic, version, length
                raise ValueError(f"its {key} declares {info.file_size} bytes, more than pool3 "
                                 f"statistics take")
            # zipfile bounds what it inflates per read for deflate only (np.savez stores, and
            # np.savez_compressed deflates); bzip2 or lzma would inflate a whole chunk at once
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError(f"its {key} is compressed with method {info.compress_type}, not "
                                 f"stored or deflated")
            with archive.open(info) as member:
                shape, fortran, dtype = _read_npy_header(member)
                if dtype.kind != "f" or dtype.itemsize > 8:
                    raise ValueError(f"its {key} is an array of {dtype}, not of floats")
                nbytes = _nbytes(shape, dtype)
                # one byte more than the header declares, to notice more data than that; reaching the
                # end of the member also makes zipfile check its CRC
                data = member.read(nbytes + 1)
                if len(data) != nbytes:
                    raise ValueError(f"its {key} holds {'more' if len(data) > nbytes else len(data)} bytes "
                                     f"of data, not the {nbytes} its header declares")
            arrays.append(_array_from_bytes(data, dtype, shape, fortran))
        return arrays


# ----- the public repositories' pickled dict
# The public UOTM and S-JKO repositories ship their statistics as `np.save` of a dict
# {'mu', 'sigma'}: a .npy whose payload is a pickle. Unpickling runs whatever callables a file names,
# and numpy's own reconstruction allocates any shape it is given, so nothing of numpy is called:
# each name an array pickle uses resolves to a stand-in that checks its arguments and builds the
# array over bytes that are already in the file. The names (numpy 1 and numpy 2 spellings):
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",   # every array, protocols 2-4
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",         # float arrays, protocol 5
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): None,                                 # only as _reconstruct's argument
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",                            # bytes, in protocol 2
}
_UNSET = object()


class _Global:
    """What a name in a statistics pickle resolves to. __setstate__ refuses, so that the pickle
    cannot alter it (BUILD on it)."""
    __slots__ = ("name", "call")

    def __init__(self, name, call):
        self.name, self.call = name, call

    def __call__(self, *args):
        if self.call is None:
            raise ValueError(f"it calls {self.name}, which numpy's pickles never call")
        return self.call(*args)

    def __setstate__(self, state):
        raise ValueError(f"it alters {self.name}")


class _PickledDtype:
    """np.dtype(name) as numpy pickles it; of its BUILD state only the byte order is taken."""
    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        # numpy writes (3, byteorder, None, None, None, elsize, alignment, flags); a subarray, field
        # names or fields (state[2:5]) would make it another dtype than the name says
        if not (type(state) is tuple and len(state) in (8, 9) and state[1] in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)):
            raise ValueError("a dtype's state is not the one numpy writes for a plain dtype")
        self.dtype = self.dtype.newbyteorder(state[1])


class _PickledArray:
    """numpy's _reconstruct(ndarray, (0,), b'b'): an empty stand-in until BUILD gives its state
    (1, shape, dtype, fortran_order, data), then `value`: the checked array, or for the 0-d object
    array np.save wraps the dict in, that dict."""
    __slots__ = ("builder", "value")

    def __init__(self, builder):
        self.builder, self.value = builder, _UNSET

    def __setstate__(self, state):
        if self.value is not _UNSET or not (type(state) is tuple and len(state) == 5 and state[0] == 1):
            raise ValueError("an array's state is not the one numpy writes")
        _, shape, dtype, fortran, data = state
        self.value = self.builder.array(data, dtype, shape, fortran)


class _ArrayBuilder:
    """The checking stand-ins of _PICKLE_GLOBALS for one file. (Apart from the unpickler, so that
    no reference cycle keeps the unpickler's memo, with the file's data, alive after loading.)"""

    def __init__(self):
        # bytes the file's text may still be turned into (protocol 2, Python 2): one copy of mu and
        # sigma, however often the pickle repeats the call on the same memoized text
        self.text_budget = _STATS_BYTES + 4096

    def reconstruct(self, subtype, shape, dtype):
        # numpy pickles every array as _reconstruct(ndarray, (0,), b'b') followed by BUILD of its state
        if not (isinstance(subtype, _Global) and subtype.name == "numpy.ndarray" and shape == (0,)
                and dtype in (b"b", "b")):
            raise ValueError("it calls numpy's _reconstruct with other arguments than numpy's pickles")
        return _PickledArray(self)

    def frombuffer(self, data, dtype, shape, order):
        if order not in ("C", "F"):
            raise ValueError("it calls numpy's _frombuffer with an order other than C or F")
        return self.array(data, dtype, shape, order == "F")

    def dtype(self, name, align=False, copy=False):
        dtype = np.dtype(name) if type(name) is str and len(name) <= 8 else None
        if dtype is None or dtype.kind not in "biufcO" or dtype.fields or dtype.subdtype:
            raise ValueError("it pickles a dtype other than a number or object type")
        return _PickledDtype(dtype)

    def encode(self, text, encoding):
        # how protocol 2 rebuilds bytes: _codecs.encode(text, 'latin1'), and nothing else
        if type(text) is not str or encoding != "latin1":
            raise ValueError("it calls _codecs.encode other than with text and latin1")
        self.text_budget -= len(text)
        if self.text_budget < 0:
            raise ValueError("it rebuilds more bytes than mu and sigma take")
        return text.encode("latin1")

    def array(self, data, dtype, shape, fortran):
        if not isinstance(dtype, _PickledDtype) or not (type(fortran) is bool or fortran in (0, 1)):
            raise ValueError("an array's dtype or order is not what numpy writes")
        dtype = dtype.dtype
        if dtype.hasobject:   # only the 0-d object array holding the dict
            if shape != () or type(data) is not list or len(data) != 1:
                raise ValueError("an object array is not the one np.save wraps a dict in")
            return data[0]
        if type(data) is str and len(data) == _nbytes(shape, dtype):   # Python 2's bytes, read as latin1
            data = self.encode(data, "latin1")
        return _array_from_bytes(data, dtype, shape, fortran)


class _StatsUnpickler(pickle.Unpickler):
    """Resolves only the names of _PICKLE_GLOBALS, each to a checking stand-in of _ArrayBuilder."""

    def __init__(self, f):
        # latin1: the encoding numpy documents for arrays pickled by Python 2
        super().__init__(f, encoding="latin1")
        self.builder = _ArrayBuilder()

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:   # (protocol 4 names may be any length: cut)
            raise pickle.UnpicklingError(f"it names {module[:100]}.{name[:100]}, which a pickled mu/sigma "
                                         f"dict never needs")
        method = _PICKLE_GLOBALS[(module, name)]
        return _Global(f"{module}.{name}", method and getattr(self.builder, method))


_PICKLE_OPCODES = {op.code.encode("latin1"): op for op in pickletools.opcodes}
_LENGTH_WIDTHS = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                  pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}


class _ShortLines:
    """f for pickletools' argument readers, its lines bounded."""

    def __init__(self, f):
        self.f = f

    def read(self, size):
        return self.f.read(size)

    def readline(self):
        return self.f.readline(_MAX_PICKLE_LINE)


def _scan_pickle(f, end):
    """Walk the opcodes of the pickle at f's position up to STOP, building nothing and skipping
    payloads. Python's C unpickler allocates whatever a length, a frame or a memo index claims
    before reading it, and a short opcode can push a reference to a large object: so each claim is
    checked against the bytes left in the file, memo indices and the number of opcodes are bounded."""
    lines = _ShortLines(f)
    for _ in range(_MAX_PICKLE_OPS):
        code = f.read(1)
        op = _PICKLE_OPCODES.get(code)
        if op is None:
            raise ValueError(f"byte {code!r} at {f.tell() - 1} is not a pickle opcode" if code
                             else "its pickle is cut short")
        value = None
        if op.arg is not None and op.arg.n in _LENGTH_WIDTHS:   # a length, then that many bytes
            width = _LENGTH_WIDTHS[op.arg.n]
            size = f.read(width)
            value = int.from_bytes(size, "little", signed=op.arg.n == pickletools.TAKEN_FROM_ARGUMENT4)
            if len(size) < width or not 0 <= value <= end - f.tell():
                raise ValueError(f"its {op.name} at {f.tell() - len(size) - 1} claims more bytes than the file holds")
            f.seek(value, io.SEEK_CUR)
        elif op.arg is not None:   # a fixed-size or newline-ended argument
            value = op.arg.reader(lines)
        if op.name == "FRAME" and value > end - f.tell():
            raise ValueError("its pickle frame claims more bytes than the file holds")
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= value < _MAX_PICKLE_OPS:
            raise ValueError(f"its pickle memo index {value} is out of range")
        if op.name == "STOP":
            return
    raise ValueError(f"its pickle has more than {_MAX_PICKLE_OPS} opcodes")


def _read_pickled_stats(path):
    """(mu, sigma) of a .npy holding a pickled {'mu', 'sigma'} dict, unpickled with _StatsUnpickler
    once _scan_pickle found every claim of the file within bounds."""
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        if end > _MAX_PICKLE_FILE:
            raise ValueError(f"it has {end} bytes, more than a pickle of mu and sigma takes")
        shape, _, dtype = _read_npy_header(f)
        if not dtype.hasobject or shape != ():
            raise ValueError(f"it holds a {dtype} array of shape {shape}, not a pickled dict")
        start = f.tell()
        _scan_pickle(f, end)
        f.seek(start)
        stats = _StatsUnpickler(f).load()
    if isinstance(stats, _PickledArray):   # np.save's 0-d object array around the dict
        stats = stats.value
    if not isinstance(stats, dict) or set(stats) != {"mu", "sigma"}:
        raise ValueError("it is not a dict with exactly the keys mu and sigma")
    arrays = []
    for key in ("mu", "sigma"):
        value = stats[key].value if isinstance(stats[key], _PickledArray) else stats[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise ValueError(f"its {key} is not a float array")
        arrays.append(value)
    return arrays


def load_stats(path):
    """(mu, sigma) float64 from reference statistics: an npz with arrays mu and sigma
    (pytorch-fid's and TTUR's layout, and what save_stats writes), or the public repositories'
    .npy of a pickled {'mu', 'sigma'} dict, read without running anything from the file.
    A file of any other content is refused with one UsageError line, having allocated at most
    about what the statistics take."""
    if not os.path.isfile(path):
        raise UsageError(f"reference statistics {path} not found: make them with "
                         f"`python test.py --compute_stats DATASET --datadir ROOT`, or pass "
                         f"--ref_dir DATASET_OR_FOLDER")
    with open(path, "rb") as f:
        head = f.read(len(np.lib.format.MAGIC_PREFIX))
    if head == np.lib.format.MAGIC_PREFIX:
        read, what = _read_pickled_stats, "a .npy of a pickled {'mu', 'sigma'} dict of float arrays"
    elif head.startswith(b"PK"):
        read, what = _read_npz_stats, "an npz with arrays mu and sigma"
    else:
        raise UsageError(f"{path} is neither an npz nor a .npy of reference statistics: "
                         + (f"it starts with {head!r}" if head else "it is empty"))
    try:
        with warnings.catch_warnings():   # numpy may warn about a malformed header: the refusal says it
            warnings.simplefilter("ignore")
            mu, sigma = read(path)
    except Exception as err:   # whatever a malformed file makes fail, it is a refusal of the file
        raise UsageError(f"{path} is not {what} ({_one_line(err)}); refused without running it") from None
    if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        raise UsageError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not pool3 "
                         f"statistics ({FEATURE_DIM},) and ({FEATURE_DIM}, {FEATURE_DIM})")
    return mu.astype(np.float64), sigma.astype(np.float64)


@torch.no_grad()
def compute_fid(G, source_shape, nz, num_samples, ref_stats, device, batch_size=500, seed=0,
                inception=None):
    """FID of `num_samples` samples of G against reference statistics (npz path or (mu, sigma)).

    Distributed-aware; every rank returns the same value. Pass `inception` (from
    load_inception) to reuse the network between calls.
    """
    mu_ref, sigma_ref = load_stats(ref_stats) if isinstance(ref_stats, (str, os.PathLike)) \
        else ref_stats
    features = generator_features(G, num_samples, batch_size, source_shape, nz, device,
                                  seed=seed, inception=inception)
    value = [frechet_distance(*statistics(features), mu_ref, sigma_ref)
             if udist.rank() == 0 else None]
    if udist.is_distributed():
        dist.broadcast_object_list(value, src=0)
    return value[0]
