"""FID (and improved precision/recall) the way pytorch-fid computes it, without files.

Generated images are quantized to uint8 exactly as saving a PNG would, then fed from
memory to pytorch-fid's InceptionV3 (FID weights, pool3 2048-d features, bilinear
resize to 299). Saving samples as JPEG biases FID; going through uint8 keeps the
number identical to "save PNGs, then run pytorch-fid on the folder".

Everything here is distributed-aware: under torchrun each rank generates (or reads)
its share and the features are all-gathered, so every rank ends with all of them.
"""
import codecs
import os
import pickle
import socket
import urllib.error
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


def _kth_neighbour_radii(features, k, chunk, device):
    """Distance of every row to its k-th nearest other row."""
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
def precision_recall(real_features, fake_features, k=3, chunk=1000, device="cpu"):
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls.

    precision: share of generated samples inside the real manifold estimate;
    recall: share of real samples inside the generated one. Chunked: memory is
    chunk x N distances.
    """
    real, fake = real_features.float(), fake_features.float()
    real_radii = _kth_neighbour_radii(real, k, chunk, device)
    fake_radii = _kth_neighbour_radii(fake, k, chunk, device)
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


# The public UOTM and S-JKO repositories ship their statistics as `np.save` of a dict
# {'mu', 'sigma'}: a .npy whose payload is a pickle. Unpickling runs whatever callables a
# file names, so only what numpy's array reconstruction calls is resolved: the
# `_reconstruct` helper (under its numpy 1 and numpy 2 module names), the ndarray and dtype
# classes, and `_codecs.encode`, which protocol-2 pickles use to rebuild bytes.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}

_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class _StatsUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a pickled mu/sigma dict never needs")
        return _PICKLE_GLOBALS[(module, name)]


def _read_pickled_stats(path):
    """(mu, sigma) of a .npy holding a pickled {'mu', 'sigma'} dict, unpickled with _StatsUnpickler."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADER_READERS:
            raise ValueError(f".npy format version {version} is not one numpy writes for a pickled dict")
        shape, _, dtype = _NPY_HEADER_READERS[version](f)
        if not dtype.hasobject or shape != ():
            raise ValueError(f"it holds a {dtype} array of shape {shape}, not a pickled dict")
        # latin1: the encoding numpy documents for arrays pickled by Python 2
        stats = _StatsUnpickler(f, encoding="latin1").load()
    if isinstance(stats, np.ndarray) and stats.dtype.hasobject and stats.shape == ():
        stats = stats.item()
    if not isinstance(stats, dict) or set(stats) != {"mu", "sigma"}:
        raise ValueError("it is not a dict with exactly the keys mu and sigma")
    for key, value in stats.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise ValueError(f"its {key} is not a float array")
    return stats["mu"], stats["sigma"]


def load_stats(path):
    """(mu, sigma) float64 from reference statistics: an npz with arrays mu and sigma
    (pytorch-fid's and TTUR's layout, and what save_stats writes), or the public repositories'
    .npy of a pickled {'mu', 'sigma'} dict, read without running anything from the file."""
    if not os.path.isfile(path):
        raise UsageError(f"reference statistics {path} not found: make them with "
                         f"`python test.py --compute_stats DATASET --datadir ROOT`, or pass "
                         f"--ref_dir DATASET_OR_FOLDER")
    with open(path, "rb") as f:
        is_npy = f.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX
    if is_npy:
        try:
            mu, sigma = _read_pickled_stats(path)
        except (pickle.UnpicklingError, ValueError, TypeError, EOFError, AttributeError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UsageError(f"{path} is not a .npy of a pickled {{'mu', 'sigma'}} dict of float arrays "
                             f"({reason}); refused without running it") from None
    else:
        try:
            with np.load(path) as stats:
                mu, sigma = stats["mu"], stats["sigma"]
        except (KeyError, ValueError, OSError) as err:
            raise UsageError(f"{path} is not an npz with arrays mu and sigma: {err}") from None
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        raise UsageError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not pool3 "
                         f"statistics ({FEATURE_DIM},) and ({FEATURE_DIM}, {FEATURE_DIM})")
    return mu, sigma


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
