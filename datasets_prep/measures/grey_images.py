"""The quality measure of a labelled set of small grey images, by a classifier of its own.

FID compares Inception features of 299 px photographs; 8x8 digits or 28 px MNIST need a feature
extractor of their own. A `GreyImageMeasure` trains a small classifier on the set's training
images (a `Recipe` per dataset: its network, epochs, sizes) and measures generated samples in
[-1, 1] with it:

    <name>_fd        Frechet distance between the Gaussians fitted to the classifier's
                     penultimate features of the samples and of the reference images (the FID
                     formula on other features: not FID, not comparable with any FID)
    precision,       improved precision and recall (uot.fid.precision_recall, k = 3) in the same
    recall           features against the k-NN reference (training images): the share of
                     samples on the data's manifold, and the share of the data the samples cover
    accepted_share   the share of samples the reject accepts as images of the set: a sample is
                     rejected when its 3rd-nearest k-NN reference image, in pixels or in features
                     (each over the held-out images' median), is farther than for 99% of the
                     held-out images
    train_distance_ratio  the median distance (pixels) of the samples to their nearest training
                     image over the same median for the held-out images: 1 for new real images,
                     0 for copies of training images, above 1 off the data (memorisation)
    classes_covered  how many classes get at least 2% of the samples as accepted samples of that
                     class (the classifier's argmax)
    class_entropy    -sum(p log p) / log(classes) over p, the share of the samples accepted in
                     each class: 1 when all are accepted and the classes equally frequent
    outlier_fraction for sets with outliers: the share of samples the recipe's outlier rule
                     (a brightness rule, or a detector: a classifier of the training images
                     against the outliers) calls an outlier

A score means something only beside its floor at the same n: `floor(n)` measures sets of n
held-out real images (drawn with replacement unless the held-out set holds 2n or more) and gives the
mean and standard deviation of every measure over its draws. A Frechet distance falls with the
size of the sets compared; so do the k-NN measures' radii.

Training is deterministic (fixed seed, one thread, fixed batch order) and cached in $UOTM_CACHE
(default ~/.cache/uotm) under a name holding a hash of everything the training reads (images,
labels, network, epochs, batch size, seed): a cache made by another recipe is never read.
Floors are cached the same way. Nothing here moves the global random stream.
"""
import contextlib
import fcntl
import hashlib
import json
import math
import os
import statistics as stats
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from uot.fid import frechet_distance, kth_neighbour_radii, precision_recall, statistics
from uot.io import atomic_torch_save, atomic_write_text

NEIGHBOURS = 3          # the k of the k-NN measures (precision, recall, the reject)
REJECT_QUANTILE = 0.99  # the share of held-out images the reject accepts, by construction
MIN_CLASS_SHARE = 0.02  # a class is covered when at least 2% of the samples fall in it
FLOOR_DRAWS = 10
# part of a floor's cache key: raise it when a measure's definition changes, so that floors
# cached by the earlier definition are not read
MEASURES_VERSION = 1


@dataclass
class MeasureData:
    """A set's images in [-1, 1] (N, 1, size, size) with their labels: `train` is what the
    classifier and the generators train on, `held_out` the real control (never trained on),
    `fd_reference` the images the Frechet distance is taken against, `knn` the indices of the
    training images that are the k-NN reference (all of them when the set is small)."""
    train: torch.Tensor
    train_labels: torch.Tensor
    held_out: torch.Tensor
    held_out_labels: torch.Tensor
    fd_reference: torch.Tensor
    knn: Optional[torch.Tensor] = None


@dataclass
class Recipe:
    """How a set is measured: `name` names its Frechet distance (<name>_fd) and its caches,
    `network(classes)` builds the classifier (an nn.Sequential whose last module maps the
    penultimate features to the logits), `data()` loads a MeasureData; `outliers` maps an
    outlier kind to a rule (measure, images) -> share of outliers."""
    name: str
    size: int
    classes: int
    network: Callable[[int, int], nn.Sequential]
    data: Callable[[], MeasureData]
    epochs: int
    batch_size: int = 64
    final_epoch_lr: Optional[float] = None   # the classifier's last epoch at this lr (a step decay)
    samples: int = 2000     # generated samples per measurement (train.py's saves)
    outliers: Dict[str, Callable] = field(default_factory=dict)


def fit(net, images, labels, epochs, batch_size, seed, final_epoch_lr=None):
    """Deterministic Adam training of `net` in place at lr 1e-3, the last epoch at
    `final_epoch_lr` when given (fixed batch order, one thread: the same numbers on every machine
    load); with gradients on, as it may first be needed under no_grad."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            batches = torch.Generator().manual_seed(seed + 1)
            for epoch in range(epochs):
                if final_epoch_lr is not None and epoch == epochs - 1:
                    for group in opt.param_groups:
                        group["lr"] = final_epoch_lr
                for index in torch.randperm(len(images), generator=batches).split(batch_size):
                    loss = F.cross_entropy(net(images[index]), labels[index])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
    finally:
        torch.set_num_threads(threads)


def cache_path(name, suffix=".pt"):
    root = os.environ.get("UOTM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "uotm"))
    return os.path.join(root, name + suffix)


def recipe_key(*parts):
    """A short hash of tensors and plain values: the cache key of what a computation reads."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.numpy().tobytes() if isinstance(part, torch.Tensor) else repr(part).encode())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def cache_lock(path):
    """Hold an exclusive lock on `path`.lock: of several processes that need the same cached
    result (a study's runs, test workers), one computes it and the others wait and read it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def trained(name, build, images, labels, epochs, batch_size, seed=0, final_epoch_lr=None):
    """`build()` fitted on (images, labels), read from the cache when this very recipe trained
    it before (the file name holds a hash of the data, the network and the training settings)."""
    net = build()
    settings = (epochs, batch_size, seed) + (() if final_epoch_lr is None else (final_epoch_lr,))
    path = cache_path(f"{name}-{recipe_key(images, labels, str(net), *settings)}")
    with cache_lock(path):
        if os.path.isfile(path):
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        else:
            fit(net, images, labels, epochs, batch_size, seed, final_epoch_lr)
            atomic_torch_save(dict(state_dict=net.state_dict()), path)
    return net.eval().requires_grad_(False)


def seeded(build, seed):
    """`build()` with its initial weights drawn from `seed` through a forked copy of the global
    generator: a measurement taken during training must not move the run's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def nearest_distances(reference, rows, k=NEIGHBOURS, chunk=1000):
    """(nearest, k-th nearest) distance of every row of `rows` to the rows of `reference`,
    chunked: memory is chunk x len(reference)."""
    nearest = torch.cat([torch.cdist(part, reference).topk(k, dim=1, largest=False).values
                         for part in rows.split(chunk)])
    return nearest[:, 0], nearest[:, k - 1]


def blurred(images):
    """The 3x3 box blur of images, (N, 1, H, W), edges replicated."""
    return F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def clamped_noise(shape, seed):
    """N(0, I) draws of `shape` clamped to [-1, 1], from a generator of their own."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def mean_sd(values):
    return stats.mean(values), (stats.stdev(values) if len(values) > 1 else 0.0)


class GreyImageMeasure:
    """The measures of the module docstring for one Recipe; loads and trains lazily."""

    def __init__(self, recipe):
        self.recipe = recipe
        self._data = None
        self._net = None
        self._reference = None
        self._detectors = {}

    # -- what the measure is built from

    @property
    def data(self):
        if self._data is None:
            self._data = self.recipe.data()
        return self._data

    @property
    def fd_key(self):
        return f"{self.recipe.name}_fd"

    def classifier(self):
        """The classifier trained on the training images (cached)."""
        if self._net is None:
            recipe, data = self.recipe, self.data
            self._net = trained(f"{recipe.name}_classifier", lambda: seeded(lambda: recipe.network(recipe.classes), 0),
                                data.train, data.train_labels, recipe.epochs, recipe.batch_size,
                                final_epoch_lr=recipe.final_epoch_lr)
        return self._net

    def held_out_accuracy(self):
        data = self.data
        return float((self.predicted_classes(data.held_out) == data.held_out_labels).float().mean())

    def detector(self, name, outlier_images, epochs, seed=0):
        """A classifier of the training images (class 0) against `outlier_images` (class 1), cached."""
        if name not in self._detectors:
            recipe, data = self.recipe, self.data
            images = torch.cat([data.train, outlier_images])
            labels = (torch.arange(len(images)) >= len(data.train)).long()
            self._detectors[name] = trained(f"{recipe.name}_{name}_detector",
                                            lambda: seeded(lambda: recipe.network(2), seed),
                                            images, labels, epochs, recipe.batch_size, seed)
        return self._detectors[name]

    def detected_share(self, name, images):
        """The share of `images` that the detector `name` (built before) calls an outlier."""
        with torch.no_grad():
            return float((self._detectors[name](self.as_input(images)).argmax(1) == 1).float().mean())

    def as_input(self, images):
        """Images in [-1, 1], (N, 1, H, W), as the measure reads them: on the CPU, at the recipe's
        size (larger images averaged down by area, smaller ones resized up bilinearly), clamped."""
        images = images.detach().float().cpu()
        size = self.recipe.size
        if images.shape[-1] > size:
            images = F.interpolate(images, size=(size, size), mode="area")
        elif images.shape[-1] < size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        return images.clamp(-1, 1)

    def features(self, images, chunk=1000):
        """The classifier's penultimate features, in chunks (a 60,000-image forward at once is
        memory-bound: 10x slower)."""
        body = self.classifier()[:-1]
        with torch.no_grad():
            return torch.cat([body(self.as_input(part)) for part in images.split(chunk)])

    def predicted_classes(self, images, feats=None):
        with torch.no_grad():
            return self.classifier()[-1](self.features(images) if feats is None else feats).argmax(1)

    def knn_reference(self):
        data = self.data
        return data.train if data.knn is None else data.train[data.knn]

    def reference(self):
        """The reference of the measures: the Frechet statistics, the k-NN reference (pixels and
        features), the scales and threshold of the reject, the held-out images' median distance to
        their nearest training image, and the reject's false-reject rate on held-out images that did
        not set its threshold (one half sets it, the other counts, both ways; errs high). What is
        computed from the classifier's features and the distances (a minute on MNIST) is cached
        like the floors; the pixel views are rebuilt from the data."""
        if self._reference is None:
            data = self.data
            knn = self.knn_reference()
            ref = dict(knn_pixels=self.as_input(knn).flatten(1),
                       # memorisation is judged against every training image, not the k-NN subset
                       train_pixels=None if data.knn is None else self.as_input(data.train).flatten(1))
            key = recipe_key(data.train, data.held_out, data.fd_reference, knn, str(self.classifier()),
                             self.recipe.epochs, MEASURES_VERSION)
            path = cache_path(f"{self.recipe.name}_reference-{key}")
            with cache_lock(path):
                if os.path.isfile(path):
                    cached = torch.load(path, map_location="cpu", weights_only=True)
                else:
                    cached = self._computed_reference(ref)
                    atomic_torch_save(cached, path)
            ref.update({k: v.item() if v.dim() == 0 else v for k, v in cached.items() if k != "fd"},
                       fd=tuple(x.numpy() for x in cached["fd"]))
            self._reference = ref
        return self._reference

    def _computed_reference(self, ref):
        """reference()'s cached part, as tensors: computed from the pixel views in `ref`."""
        data = self.data
        ref = dict(ref, fd=statistics(self.features(data.fd_reference)), knn_features=self.features(self.knn_reference()))
        ref["knn_radii"] = kth_neighbour_radii(ref["knn_features"].float(), NEIGHBOURS)
        held_pixels, held_features = self.as_input(data.held_out).flatten(1), self.features(data.held_out)
        ref["pixel_scale"] = float(nearest_distances(ref["knn_pixels"], held_pixels)[1].median())
        ref["feature_scale"] = float(nearest_distances(ref["knn_features"], held_features)[1].median())
        nearest, score = self._distances(held_pixels, held_features, ref)
        halves = score[0::2], score[1::2]
        ref["false_reject"] = sum(float((b > torch.quantile(a, REJECT_QUANTILE)).float().mean())
                                  for a, b in (halves, halves[::-1])) / 2
        ref["threshold"] = float(torch.quantile(score, REJECT_QUANTILE))
        ref["median_nearest"] = float(nearest.median())
        return dict(fd=tuple(torch.from_numpy(x) for x in ref["fd"]),
                    knn_features=ref["knn_features"], knn_radii=ref["knn_radii"],
                    **{k: torch.tensor(ref[k], dtype=torch.float64)   # python floats, exactly
                       for k in ("pixel_scale", "feature_scale", "false_reject", "threshold", "median_nearest")})

    def _distances(self, pixels, feats, ref=None):
        """(each image's distance to its nearest training image in pixels, its reject score): the
        larger of its k-th nearest k-NN reference image's distances in pixels and in features,
        each over the held-out images' median. Features alone are not enough: how near noise lands
        to the data in them depends on the classifier's training; in pixels noise and inverted
        images are far from every real image whatever the classifier. `ref`: the reference's
        parts as they are being computed (default: the built reference)."""
        ref = self._reference if ref is None else ref
        nearest, pixel_kth = nearest_distances(ref["knn_pixels"], pixels)
        if ref["train_pixels"] is not None:
            nearest = nearest_distances(ref["train_pixels"], pixels, k=1)[0]
        feature_kth = nearest_distances(ref["knn_features"], feats)[1]
        return nearest, torch.maximum(pixel_kth / ref["pixel_scale"], feature_kth / ref["feature_scale"])

    # -- the measures

    def metrics(self, images, outliers=None):
        """The measures of the module docstring for images in [-1, 1], (N, 1, H, W)."""
        ref = self.reference()
        classes = self.recipe.classes
        feats = self.features(images)
        nearest, score = self._distances(self.as_input(images).flatten(1), feats)
        accepted = score <= ref["threshold"]
        # the share of all samples that are accepted and in each class: rejected samples count in none
        share = torch.bincount(self.predicted_classes(images, feats)[accepted], minlength=classes).double() / len(feats)
        nonzero = share[share > 0]
        precision, recall = precision_recall(ref["knn_features"], feats, k=NEIGHBOURS, real_radii=ref["knn_radii"])
        metrics = {self.fd_key: frechet_distance(*statistics(feats), *ref["fd"]),
                   "precision": precision, "recall": recall, "accepted_share": float(accepted.float().mean()),
                   "train_distance_ratio": float(nearest.median()) / ref["median_nearest"],
                   "classes_covered": int((share >= MIN_CLASS_SHARE).sum()),
                   "class_entropy": float(-(nonzero * nonzero.log()).sum() / math.log(classes)) + 0.0}  # no -0.0
        if outliers is not None:
            metrics["outlier_fraction"] = self.recipe.outliers[outliers](self, images)
        return metrics

    def held_out_draw(self, n, generator):
        """n held-out images: drawn without replacement when the held-out set holds at least 2n
        (the draws then differ enough to show the spread of a set of n), with replacement
        otherwise (a bootstrap; its repeated images shrink the k-NN radii of the set, so recall
        reads low on such draws)."""
        count = len(self.data.held_out)
        index = (torch.randperm(count, generator=generator)[:n] if 2 * n <= count
                 else torch.randint(count, (n,), generator=generator))
        return self.data.held_out[index]

    def floor(self, n, draws=FLOOR_DRAWS, seed=0):
        """{measure: (mean, sd)} over `draws` sets of n held-out real images (held_out_draw): what
        new real images score with n samples. Cached under a hash of the recipe's data and network."""
        data = self.data
        key = recipe_key(data.train, data.held_out, data.fd_reference, str(self.classifier()), self.recipe.epochs,
                         MEASURES_VERSION, n, draws, seed)
        path = cache_path(f"{self.recipe.name}_floor-{key}", ".json")
        with cache_lock(path):
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    return {k: tuple(v) for k, v in json.load(f).items()}
            generator = torch.Generator().manual_seed(seed)
            runs = [self.metrics(self.held_out_draw(n, generator)) for _ in range(draws)]
            floor = {k: mean_sd([float(r[k]) for r in runs]) for k in runs[0]}
            atomic_write_text(path, json.dumps(floor))
        return floor

    def controls(self, n, seed=0):
        """Sets the measure must rank, n images each (the 5-class set about half): held-out
        images (real and new: the best a generator can do), copies of training images (drawn with
        replacement), one typical held-out image per class repeated (the one nearest in pixels to
        its class's mean), the held-out images of classes 0-4, the held-out images blurred (3x3
        box), clamped noise, and the held-out images inverted (-x). Local generators only."""
        data = self.data
        generator = torch.Generator().manual_seed(seed)
        real_index = (torch.randperm(len(data.held_out), generator=generator)[:n] if n <= len(data.held_out)
                      else torch.randint(len(data.held_out), (n,), generator=generator))
        real, labels = data.held_out[real_index], data.held_out_labels[real_index]
        copies = data.train[torch.randint(len(data.train), (n,), generator=generator)]
        classes = self.recipe.classes
        typical = []
        for c in range(classes):
            members = data.held_out[data.held_out_labels == c]
            typical.append(members[(members - members.mean(0)).flatten(1).norm(dim=1).argmin()])
        repeats = -(-n // classes)
        return {"real held-out images": real,
                "copies of training images": copies,
                "one held-out image per class, repeated": torch.stack(typical).repeat_interleave(repeats, 0)[:n],
                f"{classes // 2} classes only (held-out 0-{classes // 2 - 1})": real[labels < classes // 2],
                "blurred held-out images (3x3 box)": blurred(real),
                "clamped Gaussian noise": clamped_noise(real.shape, seed),
                "inverted held-out images (-x)": -real}

    def controls_table(self, n, seed=0):
        """A markdown table of every measure on every control, and the floor at n beside them."""
        columns = (self.fd_key, "precision", "recall", "train_distance_ratio", "accepted_share",
                   "classes_covered", "class_entropy")
        lines = ["| set | n | " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) + 1)]
        floor = self.floor(n, seed=seed)
        lines.append(f"| floor: held-out real images, mean +- sd of {FLOOR_DRAWS} draws | {n} | " +
                     " | ".join(f"{floor[c][0]:.3f} +- {floor[c][1]:.3f}" for c in columns) + " |")
        for name, images in self.controls(n, seed).items():
            metrics = self.metrics(images)
            lines.append(f"| {name} | {len(images)} | " + " | ".join(
                f"{metrics[c]}" if isinstance(metrics[c], int) else f"{metrics[c]:.3f}" for c in columns) + " |")
        return "\n".join(lines)


def nearest_source_share(images, is_outlier, draws=50000, seed=0, chunk=2000):
    """(the share of N(0, I) draws whose nearest image (pixels in [-1, 1]) is an outlier, the
    outliers' share of the images). A ratio far above 1 means the source favours the outliers:
    a map that sends each draw to a near image sends them to outliers."""
    pixels = images.flatten(1)
    source = torch.randn(draws, pixels.shape[1], generator=torch.Generator().manual_seed(seed))
    nearest = torch.cat([torch.cdist(part, pixels).argmin(1) for part in source.split(chunk)])
    return float(is_outlier[nearest].float().mean()), float(is_outlier.float().mean())
