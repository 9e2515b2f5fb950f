"""Measures of generated images, by classifiers trained on the data (not FID).

A measure of a dataset stands above the dataset: this package imports the data code
(datasets_prep.images, translation) and nothing of the data code imports it; train.py and the
scripts do.

    grey_images.py  the measure of a labelled set of small grey images, its floors and controls
    digits.py       its recipe for scikit-learn's 8x8 digits (digits_fd)
    mnist.py        its recipes for MNIST and Fashion-MNIST at 32 px (mnist_fd, fashion_mnist_fd)

`python -m datasets_prep.measures NAME` prints a measure's classifier accuracy, its floor and
its controls table (docs/results.md).
"""
import torch

from datasets_prep.measures import digits, mnist
from datasets_prep.images import TARGET_CLASSES
from datasets_prep.translation import target_images, to_model_input, transport_cost
from uot.errors import UsageError
from uot.fid import frechet_distance, statistics

# dataset -> (measure, the outliers counted in its samples: None or a kind of the measure's recipe)
MEASURED_DATASETS = {"digits": ("digits", None), "digits+outliers": ("digits", "inverted"),
                     "digits_train": ("digits", "shapes"), "digits_train+shapes": ("digits", "shapes"),
                     "mnist": ("mnist", None), "fashion_mnist": ("fashion_mnist", "mnist_digits"),
                     "fashion_mnist+mnist": ("fashion_mnist", "mnist_digits")}
MEASURES = ("digits", "mnist", "fashion_mnist")
_built = {}


def measure(name, datadir=None):
    """The measure `name` (one per process and data folder: its classifier loads once)."""
    if name not in MEASURES:
        raise UsageError(f"no measure {name!r}; choose one of {', '.join(MEASURES)}")
    key = (name, None if name == "digits" else datadir)
    if key not in _built:
        if name == "digits":
            _built[key] = digits.measure()
        elif not datadir:
            raise UsageError(f"the {name} measure reads the data: give --datadir")
        else:
            _built[key] = mnist.measure(name, datadir)
    return _built[key]


def dataset_measure(dataset, datadir=None):
    """(the measure of `dataset`, its outlier kind), or (None, None) when it has none."""
    if dataset not in MEASURED_DATASETS:
        return None, None
    name, outliers = MEASURED_DATASETS[dataset]
    return measure(name, datadir), outliers


def translation_metrics(name, sources, images):
    """What a save records for the translation `name`: its transport cost and, on the digits,
    measures of the digits classifier: the share of images it puts in the target classes, the
    same share among the sources (the level before any transport), and target_fd, the Frechet
    distance of its features between the images and the target's training digits."""
    metrics = dict(transport_cost=transport_cost(sources, images))
    if name == "digits0-4to5-9":
        digits_measure, target = measure("digits"), torch.tensor(TARGET_CLASSES)
        metrics["target_class_share"] = float(torch.isin(digits_measure.predicted_classes(images), target).float().mean())
        metrics["source_target_class_share"] = float(
            torch.isin(digits_measure.predicted_classes(sources), target).float().mean())
        target_digits = to_model_input(target_images(name, None, images.shape[-1]))
        metrics["target_fd"] = frechet_distance(*statistics(digits_measure.features(images)),
                                                *statistics(digits_measure.features(target_digits)))
    return metrics


def nearest_source_share(dataset, datadir=None, draws=50000, seed=0):
    """(the share of N(0, I) draws whose nearest image of `dataset` (pixels in [-1, 1], at its
    training size) is an outlier, the outliers' share of the dataset): grey_images.nearest_source_share."""
    from datasets_prep import OUTLIER_LABEL, build_image_dataset, default_image_size
    from datasets_prep.images import to_model_range
    from datasets_prep.measures.grey_images import nearest_source_share as share
    data = build_image_dataset(dataset, datadir, default_image_size(dataset), download=False)
    return share(to_model_range(data.images), data.labels == OUTLIER_LABEL, draws, seed)
