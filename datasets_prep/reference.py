"""The reference images of FID: a dataset's training split, or a folder of images, and the
file their statistics are cached in (test.py --ref_dir / --compute_stats)."""
import hashlib
import os

from datasets_prep.image_io import list_image_files
from datasets_prep.images import build_image_dataset


def is_image_folder(source):
    """--ref_dir/--compute_stats take a folder of images or a dataset name of the project."""
    return os.path.isdir(source)


def reference_dataset(source, image_size, datadir=None):
    """The images behind reference statistics, as (uint8 C x image_size x image_size, label):
    a folder (resized and center-cropped as --dataset imagefolder trains on it), or a
    dataset's training split."""
    if is_image_folder(source):
        return build_image_dataset("imagefolder", source, image_size)
    return build_image_dataset(source, datadir, image_size, split="train")


def reference_stats_path(source, image_size, stats_dir):
    """Cache file for the statistics of `source` at `image_size`.

    A dataset: <name>_train_<size>.npz (its full training split, the published
    convention). A folder: <name>_<hash of its path>_<size>_<number of images>.npz, so
    adding images or moving elsewhere gives a new file.
    """
    if not is_image_folder(source):
        return os.path.join(stats_dir, f"{source}_train_{image_size}.npz")
    folder = os.path.abspath(source)
    tag = hashlib.sha1(folder.encode()).hexdigest()[:8]
    num_images = len(list_image_files(folder))
    name = os.path.basename(folder.rstrip(os.sep)) or "root"
    return os.path.join(stats_dir, f"{name}_{tag}_{image_size}_{num_images}.npz")
