"""Unpaired translation datasets: the source of the map is data, not N(0, I).

A dataset named <source>2<target> trains T to carry the source distribution onto the target
one, with the same losses, cost and reference maps as from noise: the phase-0 reference is the
identity, so the cost measures each image against its own source sample. Its data (what
build_image_dataset and ToyStream give under its name) is the target; the source comes from
here. As in the public S-JKO code, the source of training is the source's training split and
the source of every evaluation (the saved samples) its test split.

    moon2spiral, spiral2moon  the 2-D toys `moon` and `spiral` (datasets_prep.toy), 2-D
    emnist2mnist              the datasets `emnist` (EMNIST letters, transposed as EMNIST stores
                              them, which is what the public code trains on) to `mnist`, both at
                              32 px
    digits0-4to5-9            scikit-learn's 8 x 8 digits: those of classes 0-4 to those of 5-9
                              (the CPU-scale analogue); each side split 4:1 into train and test
                              by a fixed permutation (datasets_prep.images.digit_classes)
"""
import torch

from datasets_prep.images import (SOURCE_CLASSES, TARGET_CLASSES, as_uint8_tensor, build_image_dataset,  # noqa: F401
                                  digit_classes, to_model_range)
from datasets_prep.toy import TOY_TRANSLATIONS, sample_toy

IMAGE_TRANSLATIONS = ("emnist2mnist", "digits0-4to5-9")
TRANSLATIONS = tuple(TOY_TRANSLATIONS) + IMAGE_TRANSLATIONS
MEASURED = ("digits0-4to5-9",)   # every source test image is mapped and measured at each save
# (what a save records: datasets_prep.measures.translation_metrics)


def target_images(name, root, image_size, split="train", download=True):
    """The target side of the image translation `name`: what build_image_dataset gives for `name`."""
    return build_image_dataset(name, root, image_size, split, download)


def source_images(name, root, image_size, split="train", download=True):
    """The source side of the image translation `name`."""
    if name == "emnist2mnist":
        return build_image_dataset("emnist", root, image_size, split, download)
    return digit_classes(SOURCE_CLASSES, split, image_size)


def to_model_input(dataset):
    """A whole (small) image dataset as float images in [-1, 1], the trainer's scaling."""
    return to_model_range(as_uint8_tensor(dataset))


def toy_source(name, n, dim, generator=None, device="cpu"):
    """n points of the source toy of the 2-D translation `name`."""
    return sample_toy(TOY_TRANSLATIONS[name][0], n, dim, generator=generator, device=device)


def transport_cost(sources, images):
    """The mean over samples of mean((T(x) - x)^2) over coordinates: the S-JKO cost at h = 1/2."""
    return float((images.float() - sources.float()).flatten(1).pow(2).mean(1).mean())


def beside_sources(sources, images, per_row=8, rows=4):
    """Tiles for an image grid of `per_row` columns: `rows` rows of sources, each followed by
    the row of their images."""
    n = per_row * rows
    pairs = torch.stack([sources[:n].reshape(rows, per_row, *sources.shape[1:]),
                         images[:n].reshape(rows, per_row, *images.shape[1:]).to(sources)], 1)
    return pairs.flatten(0, 2)
