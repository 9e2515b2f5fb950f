"""The measure of scikit-learn's 8x8 digits (`digits_fd` and the rest of grey_images' measures).

The classifier trains on the 1,437 digits outside a fixed held-out split of 360
(datasets_prep.images.digits_split): generators trained on `digits_train` never see the held-out
digits, which are the real control. Its Frechet distance is taken against all 1,797 digits (the
definition every digits record of this project was measured with). Outliers:

    inverted   digits+outliers' inverted digits, by their brightness (images.outlier_fraction)
    shapes     digits_train+shapes' stroke shapes, by a detector: a classifier of the training
               digits against 2,000 stroke shapes of seed 1 (the set's own shapes are seed 0,
               the detector's test shapes seed 2)
"""
import torch.nn as nn

from datasets_prep.images import (DIGITS_HELD_OUT, build_image_dataset, digits_split, outlier_fraction, stroke_shapes,
                                  to_model_range)
from datasets_prep.measures.grey_images import GreyImageMeasure, MeasureData, Recipe, blurred

SHAPES_TRAIN, SHAPES_TEST = 2000, 2000
SHAPE_EPOCHS = 5


def network(classes):
    """8x8 greyscale in [-1, 1] -> `classes` logits, through 64 penultimate features."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, classes))


def real_digits():
    """The 1,797 digits in [-1, 1], (N, 1, 8, 8), and their labels."""
    dataset = build_image_dataset("digits", None, 8)
    return to_model_range(dataset.images), dataset.labels


def data():
    images, labels = real_digits()
    held_out, train = digits_split(len(images))
    return MeasureData(train=images[train], train_labels=labels[train], held_out=images[held_out],
                       held_out_labels=labels[held_out], fd_reference=images)


def shapes(count, seed):
    """`count` stroke shapes of `seed` in [-1, 1], as a model sees them."""
    return to_model_range(stroke_shapes(count, seed))


def shape_share(measure, images):
    """The share of images that the shape detector calls a shape."""
    measure.detector("shape", shapes(SHAPES_TRAIN, seed=1), SHAPE_EPOCHS)
    return measure.detected_share("shape", images)


def shape_detector_rates(measure):
    """The detector's true-positive rate on shapes it never saw (seed 2), as drawn and half
    blurred (a generator's imperfect shapes), and its false-positive rate on the held-out digits."""
    new = shapes(SHAPES_TEST, seed=2)
    return {"true-positive rate, new shapes": shape_share(measure, new),
            "true-positive rate, new shapes half blurred": shape_share(measure, (new + blurred(new)) / 2),
            "false-positive rate, held-out digits": shape_share(measure, measure.data.held_out)}


RECIPE = Recipe(name="digits", size=8, classes=10, network=network, data=data, epochs=30,
                outliers={"inverted": lambda measure, images: outlier_fraction(images), "shapes": shape_share})
HELD_OUT = DIGITS_HELD_OUT


def measure():
    return GreyImageMeasure(RECIPE)
