"""The one table of facts about the image datasets: every other module reads it.

    channels    image channels
    image_size  the resolution used when none is given: train.py --image_size,
                test.py --compute_stats and check_dataset (None: --image_size required)
    splits      the splits build_image_dataset accepts
    small       decoded once and held in memory (on the GPU under --data_on_device auto)
    flip        random horizontal flips in training (the public code flips these)

MNIST, Fashion-MNIST and EMNIST are trained at 32 px, as the public codes resize MNIST. The 2-D toy datasets of
train.py are in datasets_prep.toy.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

from uot.errors import UsageError


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    image_size: Optional[int]
    splits: Tuple[str, ...]
    small: bool
    flip: bool


DATASETS = {
    "digits": DatasetInfo(1, 8, ("train",), small=True, flip=False),
    "digits+outliers": DatasetInfo(1, 8, ("train",), small=True, flip=False),
    "digits_train": DatasetInfo(1, 8, ("train",), small=True, flip=False),
    "digits_train+shapes": DatasetInfo(1, 8, ("train",), small=True, flip=False),
    "mnist": DatasetInfo(1, 32, ("train", "test"), small=True, flip=False),
    "emnist": DatasetInfo(1, 32, ("train", "test"), small=True, flip=False),
    "fashion_mnist": DatasetInfo(1, 32, ("train", "test"), small=True, flip=False),
    "fashion_mnist+mnist": DatasetInfo(1, 32, ("train",), small=True, flip=False),
    "cifar10": DatasetInfo(3, 32, ("train", "test"), small=True, flip=True),
    "cifar10+mnist": DatasetInfo(3, 32, ("train",), small=True, flip=True),
    "celeba_256": DatasetInfo(3, 256, ("train", "val", "test"), small=False, flip=True),
    "celeba64": DatasetInfo(3, 64, ("train",), small=False, flip=True),
    "lsun": DatasetInfo(3, 256, ("train", "val"), small=False, flip=True),
    "imagefolder": DatasetInfo(3, None, ("train",), small=False, flip=False),
    # translations (datasets_prep.translation): the target's facts, which the source shares
    "emnist2mnist": DatasetInfo(1, 32, ("train", "test"), small=True, flip=False),
    "digits0-4to5-9": DatasetInfo(1, 8, ("train", "test"), small=True, flip=False),
}
IMAGE_DATASETS = tuple(DATASETS)


def dataset_info(name):
    if name not in DATASETS:
        raise UsageError(f"--dataset {name} is not an image dataset; choose one of {', '.join(IMAGE_DATASETS)}")
    return DATASETS[name]


def default_image_size(name, image_size=None):
    """`image_size` when given, else the dataset's default resolution."""
    if image_size is not None:
        return image_size
    size = dataset_info(name).image_size
    if size is None:
        raise UsageError(f"--dataset {name} has no default size: pass --image_size N")
    return size
