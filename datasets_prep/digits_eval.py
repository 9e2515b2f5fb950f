"""A quality measure for generated 8x8 digits. It is NOT FID, and its numbers are not
comparable with any FID.

FID compares Inception features of 299 px photographs; scikit-learn's 8x8 digits need a
feature extractor of their own. This module trains a small classifier on the 1,797
digits and measures generated samples with it:

    digits_fd        Frechet distance between the Gaussians fitted to the classifier's 64-d
                     penultimate features of the generated samples and of the real digits
                     (the FID formula on other features; lower is better)
    precision,       improved precision and recall (uot.fid.precision_recall, k = 3) in the
    recall           same features against the classifier's training digits: the share of
                     samples on the digits' manifold, and the share of digits the samples cover
    accepted_share   the share of samples the reject accepts as digits: a sample is "not a
                     digit" when it is farther from its 3rd-nearest training digit, in pixels
                     or in features (each over the held-out digits' median), than 99% of the
                     held-out digits are
    train_distance_ratio  the median distance (pixels) of the samples to their nearest
                     training digit over the same median for the held-out digits: 1 for new
                     real digits, 0 for copies of training digits, above 1 off the digits
    classes_covered  how many of the 10 classes get at least 2% of the samples as accepted
                     samples of that class (argmax class): noise covers none
    class_entropy    -sum(p log p) / log 10 over p, the share of the samples accepted in each
                     class: 1 when every sample is accepted and every class equally frequent,
                     0 when one class is all there is; rejected samples add nothing (noise ~0)
    outlier_fraction on digits+outliers: the share of samples that look like its inverted
                     digits (datasets_prep.images.outlier_fraction, a brightness rule); on
                     digits_train and digits_train+shapes: the share that the shape detector
                     (`shape_fraction`, a classifier of digits against stroke shapes, whose
                     true- and false-positive rates `python -m datasets_prep.digits_eval`
                     prints) calls a shape; on digits_train it is the false-positive rate on
                     a generator that never saw a shape

The classifier trains on the digits but a fixed held-out split of 360 (`split`): generators
are compared with those training digits, and the held-out digits are the real control that
calibrates the reject and the memorisation ratio. `controls()` builds sets the measure must
rank (real held-out digits, copies, one image per class, blurred, noise, ...).

The classifier trains deterministically (fixed seed and split, one thread, fixed order) in
about ten seconds the first time it is needed and is cached in
$UOTM_CACHE (default ~/.cache/uotm)/digits_classifier-<key>.pt, the key a hash of what its
training reads (so a cache made by another recipe is never read); with the cache every process
of a study measures with the same network. The shape detector is cached the same way.
docs/results.md gives the scale of digits_fd
(real digits against real digits, against noise and against blurred digits) and every
measure on the controls (`python -m datasets_prep.digits_eval` prints both).
"""
import hashlib
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets_prep.images import DIGITS_HELD_OUT as HELD_OUT
from datasets_prep.images import OUTLIER_LABEL, build_image_dataset, outlier_fraction, stroke_shapes, to_model_range
# (held-out, train) indices: the held-out digits are never trained on, by the classifier or by a
# generator trained on digits_train
from datasets_prep.images import digits_split as split
from uot.fid import frechet_distance, precision_recall, statistics
from uot.io import atomic_torch_save

# the datasets this measure applies to, and the outliers it counts in their samples:
# None, "inverted" (digits+outliers' inverted digits) or "shapes" (stroke shapes)
MEASURED_DATASETS = {"digits": None, "digits+outliers": "inverted", "digits_train": "shapes",
                     "digits_train+shapes": "shapes"}
SAMPLES = 2000          # generated samples per measurement (train.py's saves)
FEATURES = 64
SHAPES_TRAIN, SHAPES_TEST = 2000, 2000   # the shape detector's training and test shapes (seeds 1, 2)
CLASSIFIER_EPOCHS, SHAPE_EPOCHS = 30, 5
MIN_CLASS_SHARE = 0.02  # a class is covered when at least 2% of the samples fall in it
NEIGHBOURS = 3          # the k of the k-NN measures (precision, recall, the reject)
REJECT_QUANTILE = 0.99  # the share of held-out digits the reject accepts, by construction


def classifier(seed=0, classes=10):
    """8x8 greyscale in [-1, 1] -> `classes` logits; `features` is its 64-d penultimate layer.
    Its initial weights come from `seed` through a forked copy of the global generator: a
    measurement taken during training must not move the run's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, FEATURES), nn.ReLU(), nn.Linear(FEATURES, classes))


def real_digits():
    """The 1,797 digits in [-1, 1], (N, 1, 8, 8), and their labels."""
    dataset = build_image_dataset("digits", None, 8)
    return to_model_range(dataset.images), dataset.labels


def fit(net, images, labels, epochs, seed):
    """Deterministic Adam training of `net` in place (fixed batch order, one thread: the same
    numbers on every machine load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        batches = torch.Generator().manual_seed(seed + 1)
        for _ in range(epochs):
            for index in torch.randperm(len(images), generator=batches).split(64):
                loss = F.cross_entropy(net(images[index]), labels[index])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)


def shapes_in_model_range(count, seed):
    """`count` stroke shapes of `seed` in [-1, 1], as a model sees them."""
    return to_model_range(stroke_shapes(count, seed))


def cache_path(name):
    return os.path.join(os.environ.get("UOTM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "uotm")),
                        f"{name}.pt")


_loaded = {}


def trained(name, build, images, labels, epochs, seed=0):
    """`build()` fitted on (images, labels) by fit(), read from the cache when this very recipe
    trained it before: the file name holds a hash of the images, labels, epochs and seed, so a
    cache made from other data or by another recipe is never read instead. Every process of a
    study thus measures with the same network."""
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes() + repr((epochs, seed)).encode())
    path = cache_path(f"{name}-{digest.hexdigest()[:12]}")
    net = build()
    if os.path.isfile(path):
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    else:
        fit(net, images, labels, epochs, seed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_torch_save(dict(state_dict=net.state_dict()), path)
    return net.eval().requires_grad_(False)


def digits_classifier(seed=0):
    """The classifier trained on all digits but the held-out ones; returns (net, held-out accuracy)."""
    images, labels = real_digits()
    held_out, train = split(len(images), seed)
    net = trained("digits_classifier", lambda: classifier(seed), images[train], labels[train], CLASSIFIER_EPOCHS, seed)
    with torch.no_grad():
        accuracy = (net(images[held_out]).argmax(1) == labels[held_out]).float().mean().item()
    return net, accuracy


def shape_detector(seed=0):
    """A classifier of the training digits (class 0) against stroke shapes (class 1, SHAPES_TRAIN
    of seed 1; the shapes of digits_train+shapes are seed 0, the test shapes seed 2)."""
    digits = real_digits()[0]
    images = torch.cat([digits[split(len(digits))[1]], shapes_in_model_range(SHAPES_TRAIN, seed=1)])
    labels = (torch.arange(len(images)) >= len(images) - SHAPES_TRAIN).long()
    return trained("digits_shape_detector", lambda: classifier(seed, classes=2), images, labels, SHAPE_EPOCHS, seed)


def load_classifier():
    """The cached classifier (trained and cached at first use), in eval mode, on the CPU, and
    the statistics (mean, covariance) of the real digits' features."""
    if "net" not in _loaded:
        net = _loaded["net"] = digits_classifier()[0]
        images = real_digits()[0]
        feats = features(net, images)
        _loaded["real"] = statistics(feats)
        held_out, train = split(len(images))
        pixels = as_digits(images).flatten(1)
        _loaded["reference"] = calibrate(pixels[train], feats[train], pixels[held_out], feats[held_out])
    return _loaded["net"], _loaded["real"]


def shape_fraction(images):
    """The share of images in [-1, 1], (N, 1, H, W), that the shape detector calls a shape."""
    if "shapes" not in _loaded:
        _loaded["shapes"] = shape_detector()
    with torch.no_grad():
        return float((_loaded["shapes"](as_digits(images)).argmax(1) == 1).float().mean())


def shape_detector_rates():
    """The detector's true-positive rate on shapes it never saw (seed 2), as drawn and blurred
    (3x3 box, halfway: a generator's imperfect shapes), and its false-positive rate on the
    held-out digits."""
    digits = real_digits()[0]
    held_out = digits[split(len(digits))[0]]
    shapes = shapes_in_model_range(SHAPES_TEST, seed=2)
    return {"true-positive rate, new shapes": shape_fraction(shapes),
            "true-positive rate, new shapes half blurred": shape_fraction((shapes + blurred(shapes)) / 2),
            "false-positive rate, held-out digits": shape_fraction(held_out)}


def train_distances(train_rows, rows):
    """(nearest, NEIGHBOURS-th nearest) distance of every row of `rows` to the rows of
    `train_rows`; chunked, so that memory is 1,000 x the training digits."""
    nearest = torch.cat([torch.cdist(chunk, train_rows).topk(NEIGHBOURS, dim=1, largest=False).values
                         for chunk in rows.split(1000)])
    return nearest[:, 0], nearest[:, NEIGHBOURS - 1]


def reject_distances(ref, pixels, feats):
    """(the distance of each image to its nearest training digit in pixels, its reject score):
    the larger of its NEIGHBOURS-th nearest training digit's distances in pixels and in the
    classifier's features, each over the held-out digits' median of the same. Features alone
    are not enough: how near noise lands to the digits in them depends on the classifier's
    training (2% to 33% of clamped noise accepted by classifiers of four seeds); in pixels
    noise and inverted digits are far from every digit whatever the classifier."""
    nearest, pixel_kth = train_distances(ref["train_pixels"], pixels)
    feature_kth = train_distances(ref["train_features"], feats)[1]
    return nearest, torch.maximum(pixel_kth / ref["pixel_scale"], feature_kth / ref["feature_scale"])


def calibrate(train_pixels, train_feats, held_out_pixels, held_out_feats):
    """The reference of the k-NN measures: the training digits (pixels and features), the
    held-out digits' median distance to their nearest training digit, the reject's threshold
    (the REJECT_QUANTILE of their reject scores) and the reject's false-reject rate on real
    digits that did not set the threshold (one half of the held-out digits sets it, the other
    half counts, both ways; a threshold from half as many digits is noisier, so this errs high)."""
    ref = dict(train_pixels=train_pixels, train_features=train_feats,
               pixel_scale=float(train_distances(train_pixels, held_out_pixels)[1].median()),
               feature_scale=float(train_distances(train_feats, held_out_feats)[1].median()))
    nearest, score = reject_distances(ref, held_out_pixels, held_out_feats)
    halves = score[0::2], score[1::2]
    false_reject = sum(float((b > torch.quantile(a, REJECT_QUANTILE)).float().mean())
                       for a, b in (halves, halves[::-1])) / 2
    return dict(ref, median_nearest=float(nearest.median()), threshold=float(torch.quantile(score, REJECT_QUANTILE)),
                false_reject=false_reject)


def reference():
    """calibrate()'s dict for the cached classifier."""
    load_classifier()
    return _loaded["reference"]


def as_digits(images):
    """Images in [-1, 1], (N, 1, H, W), as the measure reads them: on the CPU, 8x8 (other sizes
    are resized), clamped to [-1, 1]."""
    images = images.detach().float().cpu()
    if images.shape[-1] != 8:
        images = F.interpolate(images, size=(8, 8), mode="area")
    return images.clamp(-1, 1)


def features(net, images):
    """(N, 64) penultimate features of images in [-1, 1], (N, 1, H, W), read by as_digits."""
    with torch.no_grad():
        return net[:-1](as_digits(images))


def predicted_classes(images, feats=None):
    """The classifier's class (argmax) of each image in [-1, 1], (N, 1, H, W); `feats`: their
    features(), when already computed."""
    net = load_classifier()[0]
    with torch.no_grad():
        return net[-1](features(net, images) if feats is None else feats).argmax(1)


def digits_metrics(images, outliers=None):
    """The measures of the module docstring for generated images in [-1, 1], (N, 1, H, W)."""
    net, (mu_real, sigma_real) = load_classifier()
    ref = reference()
    feats = features(net, images)
    nearest, score = reject_distances(ref, as_digits(images).flatten(1), feats)
    accepted = score <= ref["threshold"]
    # the share of all samples that are accepted and in each class: rejected samples count in none
    share = torch.bincount(predicted_classes(images, feats)[accepted], minlength=10).double() / len(feats)
    nonzero = share[share > 0]
    precision, recall = precision_recall(ref["train_features"], feats, k=NEIGHBOURS)
    metrics = dict(digits_fd=frechet_distance(*statistics(feats), mu_real, sigma_real),
                   precision=precision, recall=recall, accepted_share=float(accepted.float().mean()),
                   train_distance_ratio=float(nearest.median()) / ref["median_nearest"],
                   classes_covered=int((share >= MIN_CLASS_SHARE).sum()),
                   class_entropy=float(-(nonzero * nonzero.log()).sum() / math.log(10)) + 0.0)  # no -0.0
    if outliers == "inverted":
        metrics["outlier_fraction"] = outlier_fraction(images)
    elif outliers == "shapes":
        metrics["outlier_fraction"] = shape_fraction(images)
    return metrics


def blurred(images):
    """The 3x3 box blur of images, (N, 1, H, W), edges replicated."""
    return F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def clamped_noise(shape, seed):
    """N(0, I) draws of `shape` clamped to [-1, 1], from a generator of their own."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def metric_scale(seed=0):
    """digits_fd of reference sets against the real digits: two halves of the real digits,
    Gaussian noise, the digits blurred (3x3 box), and one class only; for the docs."""
    net, (mu_real, sigma_real) = load_classifier()
    images, labels = real_digits()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    half_a, half_b = images[order[: len(images) // 2]], images[order[len(images) // 2:]]

    def fd(a, b):
        return frechet_distance(*statistics(features(net, a)), *statistics(features(net, b)))

    real = lambda x: frechet_distance(*statistics(features(net, x)), mu_real, sigma_real)  # noqa: E731
    return {"real half vs other half": fd(half_a, half_b), "real vs real (all)": real(images),
            "half blurred (mean of the digit and its 3x3 box blur) vs real": real((images + blurred(images)) / 2),
            "blurred (3x3 box) vs real": real(blurred(images)), "one class (zeros) vs real": real(images[labels == 0]),
            "Gaussian noise vs real": real(clamped_noise(images.shape, seed))}


def controls(seed=0):
    """Sets the measure must rank, as many images as the held-out digits (the 5-class set
    about half): the held-out digits (real and new: the best a generator can do), copies of
    training digits (drawn with replacement), one typical held-out digit per class repeated
    (the one nearest in pixels to its class's mean held-out digit), the held-out digits of
    classes 0-4, the held-out digits blurred (3x3 box), clamped noise, and the held-out digits
    inverted (-x). Only local generators: the global random stream does not move."""
    images, labels = real_digits()
    held_out, train = split(len(images))
    count = len(held_out)
    draws = torch.randint(len(train), (count,), generator=torch.Generator().manual_seed(seed))
    real = images[held_out]
    typical = []
    for c in range(10):
        members = held_out[labels[held_out] == c]
        typical.append(members[(images[members] - images[members].mean(0)).flatten(1).norm(dim=1).argmin()])
    return {"real held-out digits": real,
            "copies of training digits": images[train[draws]],
            "one held-out image per class, repeated": images[torch.stack(typical).repeat_interleave(count // 10)],
            "5 classes only (held-out 0-4)": real[labels[held_out] < 5],
            "blurred held-out digits (3x3 box)": blurred(real),
            "clamped Gaussian noise": clamped_noise(real.shape, seed),
            "inverted held-out digits (-x)": -real}


def nearest_source_share(dataset, draws=50000, seed=0):
    """(the share of N(0, I) source draws whose nearest image of `dataset` (pixels in [-1, 1])
    is an outlier, the outliers' share of the dataset). A ratio far above 1 means the source
    favours the outliers: a map that sends each draw to a near image sends them to outliers."""
    data = build_image_dataset(dataset, None, 8)
    pixels = to_model_range(data.images).flatten(1)
    is_outlier = data.labels == OUTLIER_LABEL
    source = torch.randn(draws, pixels.shape[1], generator=torch.Generator().manual_seed(seed))
    nearest = torch.cat([torch.cdist(chunk, pixels).argmin(1) for chunk in source.split(5000)])
    return float(is_outlier[nearest].float().mean()), float(is_outlier.float().mean())


CONTROL_COLUMNS = ("digits_fd", "precision", "recall", "train_distance_ratio", "accepted_share",
                   "classes_covered", "class_entropy")


def controls_table(seed=0):
    """A markdown table of every measure on every control."""
    lines = ["| control | n | " + " | ".join(CONTROL_COLUMNS) + " |", "|---|" + "---:|" * (len(CONTROL_COLUMNS) + 1)]
    for name, images in controls(seed).items():
        metrics = digits_metrics(images)
        lines.append(f"| {name} | {len(images)} | " + " | ".join(
            f"{metrics[c]}" if isinstance(metrics[c], int) else f"{metrics[c]:.3f}" for c in CONTROL_COLUMNS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":   # python -m datasets_prep.digits_eval: the scale of the measure and its controls
    net, accuracy = digits_classifier()
    print(f"classifier: held-out accuracy {accuracy:.4f} ({HELD_OUT} digits)")
    for name, value in metric_scale().items():
        print(f"digits_fd, {name}: {value:.3f}")
    ref = reference()
    print(f"reject: threshold {ref['threshold']:.3f} (the {REJECT_QUANTILE:.0%} quantile of the held-out digits' "
          f"scores); false-reject rate on held-out digits that did not set it: {ref['false_reject']:.3f}")
    print(controls_table())
    for name, rate in shape_detector_rates().items():
        print(f"shape detector: {name} {rate:.4f}")
    for dataset in ("digits+outliers", "digits_train+shapes"):
        share, outliers = nearest_source_share(dataset)
        print(f"{dataset}: {share:.4f} of 50,000 N(0, I) draws have an outlier as nearest image; outliers are "
              f"{outliers:.4f} of the set ({share / outliers:.1f}x)")
