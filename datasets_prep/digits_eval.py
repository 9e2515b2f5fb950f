"""A quality measure for generated 8x8 digits. It is NOT FID, and its numbers are not
comparable with any FID.

FID compares Inception features of 299 px photographs; scikit-learn's 8x8 digits need a
feature extractor of their own. This module trains a small classifier on the 1,797
digits and measures generated samples with it:

    digits_fd        Frechet distance between the Gaussians fitted to the classifier's 64-d
                     penultimate features of the generated samples and of the real digits
                     (the FID formula on other features; lower is better)
    classes_covered  how many of the 10 classes get at least 2% of the samples (argmax class)
    class_entropy    entropy of the histogram of predicted classes over log 10: 1 when every
                     class is generated equally often, 0 when one class is all there is
    outlier_fraction on digits+outliers: the share of samples that look like its inverted
                     digits (datasets_prep.images.outlier_fraction)

The classifier trains deterministically (fixed seed and split, one thread, fixed order) in
about ten seconds the first time it is needed and is cached in
$UOTM_CACHE (default ~/.cache/uotm)/digits_classifier.pt; with the cache every process
of a study measures with the same network. docs/results.md gives the scale of digits_fd:
real digits against real digits, against noise and against blurred digits.
"""
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from datasets_prep.images import build_image_dataset, outlier_fraction
from uot.fid import frechet_distance, statistics
from uot.io import atomic_torch_save

# the datasets this measure applies to, and whether they hold outliers to count
MEASURED_DATASETS = {"digits": False, "digits+outliers": True}
SAMPLES = 2000          # generated samples per measurement (train.py's saves)
FEATURES = 64
HELD_OUT = 360          # of the 1,797 digits, for the accuracy the docs report
MIN_CLASS_SHARE = 0.02  # a class is covered when at least 2% of the samples fall in it


def classifier(seed=0):
    """8x8 greyscale in [-1, 1] -> 10 logits; `features` is its 64-d penultimate layer.
    Its initial weights come from `seed` through a forked copy of the global generator: a
    measurement taken during training must not move the run's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, FEATURES), nn.ReLU(), nn.Linear(FEATURES, 10))


def real_digits():
    """The 1,797 digits in [-1, 1], (N, 1, 8, 8), and their labels."""
    dataset = build_image_dataset("digits", None, 8)
    return dataset.images.float() / 127.5 - 1, dataset.labels


def train_classifier(epochs=30, seed=0):
    """Deterministic training on all digits but a fixed held-out set; returns (net, held-out accuracy)."""
    images, labels = real_digits()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    held_out, train = order[:HELD_OUT], order[HELD_OUT:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the same numbers on every machine load
    try:
        net = classifier(seed)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        batches = torch.Generator().manual_seed(seed + 1)
        for _ in range(epochs):
            for index in train[torch.randperm(len(train), generator=batches)].split(64):
                loss = F.cross_entropy(net(images[index]), labels[index])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            accuracy = (net(images[held_out]).argmax(1) == labels[held_out]).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    return net, accuracy


def cache_path():
    return os.path.join(os.environ.get("UOTM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "uotm")),
                        "digits_classifier.pt")


_loaded = {}


def load_classifier():
    """The cached classifier (trained and cached at first use), in eval mode, on the CPU."""
    if "net" not in _loaded:
        path = cache_path()
        net = classifier()
        if os.path.isfile(path):
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        else:
            net, accuracy = train_classifier()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_torch_save(dict(state_dict=net.state_dict(), held_out_accuracy=accuracy), path)
        net.eval().requires_grad_(False)
        _loaded["net"] = net
        _loaded["real"] = statistics(features(net, real_digits()[0]))
    return _loaded["net"], _loaded["real"]


def features(net, images):
    """(N, 64) penultimate features of images in [-1, 1], (N, 1, 8, 8) (other sizes are resized)."""
    images = images.detach().float().cpu()
    if images.shape[-1] != 8:
        images = F.interpolate(images, size=(8, 8), mode="area")
    with torch.no_grad():
        return net[:-1](images.clamp(-1, 1))


def predicted_classes(images, feats=None):
    """The classifier's class (argmax) of each image in [-1, 1], (N, 1, H, W); `feats`: their
    features(), when already computed."""
    net = load_classifier()[0]
    with torch.no_grad():
        return net[-1](features(net, images) if feats is None else feats).argmax(1)


def digits_metrics(images, outliers=False):
    """The measures of the module docstring for generated images in [-1, 1], (N, 1, H, W)."""
    net, (mu_real, sigma_real) = load_classifier()
    feats = features(net, images)
    classes = predicted_classes(images, feats)
    share = torch.bincount(classes, minlength=10).double() / len(classes)
    nonzero = share[share > 0]
    metrics = dict(digits_fd=frechet_distance(*statistics(feats), mu_real, sigma_real),
                   classes_covered=int((share >= MIN_CLASS_SHARE).sum()),
                   class_entropy=float(-(nonzero * nonzero.log()).sum() / math.log(10)) + 0.0)  # no -0.0
    if outliers:
        metrics["outlier_fraction"] = outlier_fraction(images)
    return metrics


def metric_scale(seed=0):
    """digits_fd of reference sets against the real digits: two halves of the real digits,
    Gaussian noise, the digits blurred (3x3 box), and one class only; for the docs."""
    net, (mu_real, sigma_real) = load_classifier()
    images, labels = real_digits()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    half_a, half_b = images[order[: len(images) // 2]], images[order[len(images) // 2:]]

    def fd(a, b):
        return frechet_distance(*statistics(features(net, a)), *statistics(features(net, b)))

    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    real = lambda x: frechet_distance(*statistics(features(net, x)), mu_real, sigma_real)  # noqa: E731
    return {"real half vs other half": fd(half_a, half_b), "real vs real (all)": real(images),
            "half blurred (mean of the digit and its 3x3 box blur) vs real": real((images + blurred) / 2),
            "blurred (3x3 box) vs real": real(blurred), "one class (zeros) vs real": real(images[labels == 0]),
            "Gaussian noise vs real": real(noise)}


if __name__ == "__main__":   # python -m datasets_prep.digits_eval: the scale of the measure
    net, accuracy = train_classifier()
    print(f"classifier: held-out accuracy {accuracy:.4f} ({HELD_OUT} digits)")
    for name, value in metric_scale().items():
        print(f"digits_fd, {name}: {value:.3f}")
