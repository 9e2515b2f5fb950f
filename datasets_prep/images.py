"""Image datasets by name: each yields (uint8 tensor C x H x W at image_size, int label).

No normalisation and no flips here: the trainer scales to [-1, 1] and flips on the device.
Small sets (catalog.DATASETS[...].small) are decoded and resized once into a
`TensorImageDataset`; large ones (celeba_256, celeba64, lsun, imagefolder) decode lazily, so a
corrupt file is reported by name when it is first read (check_dataset.py reads them all).

Splits (catalog.DATASETS): for imagefolder, the folder is the split;
celeba_256 has 'train', 'val' and 'test', which from a CelebA-HQ folder are the HQ images
whose original CelebA file is in partition 0, 1 and 2 of list_eval_partition.txt
(24,183 / 2,993 / 2,824 of the 30,000). An LMDB given directly as --datadir is used as it
is, whatever the split; an NVAE-style --datadir holding train.lmdb and validation.lmdb
gives 'train' and 'val'.
"""
import contextlib
import os
import socket

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
import torchvision.transforms.functional as TF
from torchvision.datasets import CIFAR10, EMNIST, MNIST, FashionMNIST
from tqdm import tqdm

from datasets_prep.catalog import dataset_info
from datasets_prep.image_io import decode_image, list_image_files, pil_to_uint8, resize_center_crop, resize_square
from datasets_prep.lmdb_dataset import KeyOrderLMDBDataset, LMDBImageDataset, is_lmdb
from uot.errors import UsageError

NUM_MNIST_OUTLIERS = 500  # the first MNIST training images: 1% of CIFAR-10's 50,000
# fashion_mnist+mnist: the first 600 MNIST training digits, 1% of Fashion-MNIST's 60,000
NUM_FASHION_MNIST_OUTLIERS = 600
OUTLIER_LABEL = 10  # label of the outliers in cifar10+mnist, fashion_mnist+mnist and digits+outliers (the classes keep 0..9)
# digits+outliers: the first 18 digits (1% of 1,797), inverted, appended to the digits. An
# inverted digit is a white 8x8 square with a dark stroke: its mean intensity is 0.58-0.82
# of full scale, a digit's 0.18-0.42, so the mean intensity tells them apart (OUTLIER_INTENSITY).
NUM_DIGIT_OUTLIERS = 18
OUTLIER_INTENSITY = 0.5
# digits_train: the digits but the DIGITS_HELD_OUT that the digits measure (datasets_prep.measures.digits) keeps
# as its real control, chosen by a fixed seeded permutation (digits_split). digits_train+shapes
# adds NUM_SHAPE_OUTLIERS stroke shapes (1% of the set: squares, crosses, plus signs), outliers
# that the N(0, I) source does not favour (docs/results.md: the nearest-source share)
DIGITS_HELD_OUT = 360
NUM_SHAPE_OUTLIERS = 15
# digits0-4to5-9 (datasets_prep.translation): its source and target classes, each side split 4:1
# into train and test by a fixed permutation
SOURCE_CLASSES, TARGET_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
DIGITS_TRANSLATION_SEED = 0
DIGITS_TRANSLATION_TEST_SHARE = 0.2

CELEBA_MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_PARTITION_IDS = {"train": 0, "val": 1, "test": 2}
CELEBA_HQ_FOLDERS = ("CelebA-HQ-img", "data256x256")  # CelebAMask-HQ's folder, the 256px zip's
NVAE_LMDBS = {"train": "train.lmdb", "val": "validation.lmdb"}
# celeba64: the public S-JKO code center-crops the 178 x 218 aligned CelebA images to 140 x 140
# (the face) before resizing them
CELEBA64_CROP = 140
DOWNLOAD_SOCKET_TIMEOUT = 60  # seconds; without one, a download behind a firewall hangs


class TensorImageDataset(Dataset):
    """Images held in one uint8 N x C x H x W tensor, with their int64 labels."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])


class ImageFileDataset(Dataset):
    """(uint8 3 x size x size, 0) for each image file, resized and center-cropped; with `crop`,
    first center-cropped to crop x crop (padded with black where the image is smaller)."""

    def __init__(self, paths, image_size, crop=None):
        self.paths, self.image_size, self.crop = paths, image_size, crop

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        img = decode_image(self.paths[index], self.paths[index])
        if self.crop is not None:
            img = TF.center_crop(img, [self.crop, self.crop])
        return pil_to_uint8(resize_center_crop(img, self.image_size)), 0


def build_image_dataset(name, root, image_size, split="train", download=True):
    """The dataset `name` at image_size x image_size (see the module docstring for splits)."""
    splits = dataset_info(name).splits
    if split not in splits:
        raise UsageError(f"{name} has no split {split!r}; choose one of {', '.join(splits)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise UsageError(f"--image_size {image_size} must be a positive integer")
    # a translation's data is its target side (its source: datasets_prep.translation)
    if name == "emnist2mnist":
        return build_image_dataset("mnist", root, image_size, split, download)
    if name == "digits0-4to5-9":
        return digit_classes(TARGET_CLASSES, split, image_size)
    if name == "digits":
        return _digits(image_size)
    if name == "digits+outliers":
        return _digits(image_size, NUM_DIGIT_OUTLIERS)
    if name in ("digits_train", "digits_train+shapes"):
        digits = _digits(image_size)
        train = digits_split(len(digits))[1]
        images, labels = digits.images[train], digits.labels[train]
        if name == "digits_train+shapes":
            images = torch.cat([images, resize_square(stroke_shapes(NUM_SHAPE_OUTLIERS, seed=0), image_size)])
            labels = torch.cat([labels, torch.full((NUM_SHAPE_OUTLIERS,), OUTLIER_LABEL)])
        return TensorImageDataset(images, labels)
    if not root:
        raise UsageError(f"--dataset {name} needs --datadir, the folder that holds (or will hold) the data")
    if name in ("celeba_256", "celeba64", "lsun", "imagefolder") and not os.path.isdir(root):
        raise UsageError(f"--datadir {root} does not exist; give the folder that holds the {name} data")
    if name == "mnist":
        images, labels = _mnist(root, split == "train", download)
        return TensorImageDataset(resize_square(images, image_size), labels)
    if name == "fashion_mnist":
        images, labels = _fashion_mnist(root, split == "train", download)
        return TensorImageDataset(resize_square(images, image_size), labels)
    if name == "fashion_mnist+mnist":
        fashion, fashion_labels = _fashion_mnist(root, True, download)
        digits = _mnist(root, True, download)[0][:NUM_FASHION_MNIST_OUTLIERS]
        images = resize_square(torch.cat([fashion, digits]), image_size)
        labels = torch.cat([fashion_labels, torch.full((len(digits),), OUTLIER_LABEL)])
        return TensorImageDataset(images, labels)
    if name == "emnist":
        images, labels = _emnist_letters(root, split == "train", download)
        return TensorImageDataset(resize_square(images, image_size), labels)
    if name == "cifar10":
        images, labels = _cifar10(root, split == "train", download)
        return TensorImageDataset(resize_square(images, image_size), labels)
    if name == "cifar10+mnist":
        cifar, cifar_labels = _cifar10(root, True, download)
        mnist = _mnist(root, True, download)[0][:NUM_MNIST_OUTLIERS].repeat(1, 3, 1, 1)
        images = torch.cat([resize_square(cifar, image_size), resize_square(mnist, image_size)])
        labels = torch.cat([cifar_labels, torch.full((len(mnist),), OUTLIER_LABEL)])
        return TensorImageDataset(images, labels)
    if name == "celeba_256":
        return _celeba(root, image_size, split)
    if name == "lsun":
        return _lsun(root, image_size, split)
    if name == "celeba64":
        return ImageFileDataset(list_image_files(root), image_size, crop=CELEBA64_CROP)
    return ImageFileDataset(list_image_files(root), image_size)


def as_uint8_tensor(dataset, batch_size=500, num_workers=0):
    """The whole dataset as one uint8 N x C x H x W tensor (for holding small sets on the GPU).

    A TensorImageDataset hands back its own tensor, without a copy."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.images
    out = torch.empty((len(dataset), *dataset[0][0].shape), dtype=torch.uint8)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    start = 0
    for images, _ in tqdm(loader, desc="loading images", unit="batch", disable=len(dataset) < 10_000):
        out[start:start + len(images)] = images
        start += len(images)
    return out


def _digits(image_size, num_outliers=0):
    """scikit-learn's 1,797 handwritten 8x8 digits (values 0..16, scaled to 0..255), then
    `num_outliers` inverted copies of the first digits with label OUTLIER_LABEL."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: works offline

    digits = load_digits()
    images = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None])
    labels = torch.from_numpy(digits.target).long()
    if num_outliers:
        images = torch.cat([images, 255 - images[:num_outliers]])
        labels = torch.cat([labels, torch.full((num_outliers,), OUTLIER_LABEL)])
    return TensorImageDataset(resize_square(images, image_size), labels)


def digit_classes(classes, split, image_size):
    """The digits of `classes`, in the train (4/5) or test (1/5) part of a fixed permutation
    (seed DIGITS_TRANSLATION_SEED): the two sides of digits0-4to5-9."""
    digits = _digits(image_size)
    index = torch.nonzero(torch.isin(digits.labels, torch.tensor(classes)))[:, 0]
    index = index[torch.randperm(len(index), generator=torch.Generator().manual_seed(DIGITS_TRANSLATION_SEED))]
    num_test = round(DIGITS_TRANSLATION_TEST_SHARE * len(index))
    index = index[num_test:] if split == "train" else index[:num_test]
    return TensorImageDataset(digits.images[index], digits.labels[index])


def to_model_range(uint8_images):
    """uint8 images (0..255) as the models see them: float in [-1, 1]."""
    return uint8_images.float().div_(127.5).sub_(1.0)


def digits_split(count, seed=0):
    """(held-out, train) indices of `count` digits: a fixed seeded permutation, its first
    DIGITS_HELD_OUT the held-out ones."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[:DIGITS_HELD_OUT], order[DIGITS_HELD_OUT:]


def stroke_shapes(count, seed):
    """`count` 8x8 uint8 images (N, 1, 8, 8) of one-pixel strokes on black, as the digits are
    drawn: in turn a hollow square, an X and a plus sign, each at a random size (4 to 6 pixels
    across: larger shapes are favoured by the N(0, I) source, 3-4x their share at 5 to 8) and
    position, from a generator of their own."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 1, 8, 8, dtype=torch.uint8)
    for i in range(count):
        size = int(torch.randint(4, 7, (1,), generator=gen))
        top, left = (int(torch.randint(0, 9 - size, (1,), generator=gen)) for _ in range(2))
        box = images[i, 0, top:top + size, left:left + size]
        if i % 3 == 0:   # hollow square
            box[[0, -1], :] = 255
            box[:, [0, -1]] = 255
        elif i % 3 == 1:   # X
            box[torch.arange(size), torch.arange(size)] = 255
            box[torch.arange(size), size - 1 - torch.arange(size)] = 255
        else:   # plus
            box[size // 2, :] = 255
            box[:, size // 2] = 255
    return images


def outlier_fraction(images):
    """Fraction of digits+outliers-like images in [-1, 1] (N x 1 x H x W) that are inverted:
    mean intensity above OUTLIER_INTENSITY of full scale."""
    intensity = (images.float().flatten(1).mean(1) + 1) / 2
    return float((intensity > OUTLIER_INTENSITY).float().mean())


@contextlib.contextmanager
def socket_timeout(seconds):
    """Socket operations time out after `seconds` inside the block: a download behind a firewall
    fails instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _torchvision(dataset_class, root, train, download, what_to_place, **options):
    """Build a torchvision dataset; turn 'not found' and failed downloads into a UsageError."""
    try:
        with socket_timeout(DOWNLOAD_SOCKET_TIMEOUT):
            return dataset_class(root, train=train, download=download, **options)
    except (RuntimeError, OSError) as err:  # torchvision's "not found or corrupted"; URLError
        lines = str(err).strip().splitlines() or [type(err).__name__]
        why = f"the download failed ({lines[0]})" if download else "download is off"
        raise UsageError(f"{dataset_class.__name__} not found in --datadir {root} and {why}; "
                         f"place {what_to_place}") from err


def _mnist(root, train, download):
    place = (f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
             f"t10k-labels-idx1-ubyte (or their .gz archives, with download on) in "
             f"{os.path.join(root, 'MNIST', 'raw')} (python -m datasets_prep.fetch mnist --datadir {root} "
             f"puts them there)")
    mnist = _torchvision(MNIST, root, train, download, place)
    return mnist.data[:, None], mnist.targets.long()


def _fashion_mnist(root, train, download):
    place = (f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
             f"t10k-labels-idx1-ubyte in {os.path.join(root, 'FashionMNIST', 'raw')} "
             f"(python -m datasets_prep.fetch fashion_mnist --datadir {root} puts them there)")
    fashion = _torchvision(FashionMNIST, root, train, download, place)
    return fashion.data[:, None], fashion.targets.long()


def _emnist_letters(root, train, download):
    """EMNIST's 'letters' split (labels 1-26), transposed as EMNIST stores its images and
    torchvision reads them: the images the public S-JKO code trains on."""
    raw = os.path.join(root, "EMNIST", "raw")
    place = (f"emnist-letters-train-images-idx3-ubyte, emnist-letters-train-labels-idx1-ubyte, "
             f"emnist-letters-test-images-idx3-ubyte and emnist-letters-test-labels-idx1-ubyte (unpacked from "
             f"EMNIST's gzip.zip) in {raw}")
    letters = _torchvision(EMNIST, root, train, download, place, split="letters")
    return letters.data[:, None], letters.targets.long()


def _cifar10(root, train, download):
    place = (f"cifar-10-python.tar.gz (with download on) or its extracted cifar-10-batches-py/ "
             f"folder in {root}")
    cifar = _torchvision(CIFAR10, root, train, download, place)
    return torch.from_numpy(cifar.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(cifar.targets)


def _celeba(root, image_size, split):
    if is_lmdb(root):
        return LMDBImageDataset(root, image_size)
    if any(is_lmdb(os.path.join(root, lmdb_name)) for lmdb_name in NVAE_LMDBS.values()):
        if split not in NVAE_LMDBS:
            raise UsageError(f"--datadir {root} holds NVAE-style LMDBs, which have no {split} split; "
                             f"use one of {', '.join(NVAE_LMDBS)}")
        return LMDBImageDataset(os.path.join(root, NVAE_LMDBS[split]), image_size)
    for listing in (CELEBA_MAPPING, CELEBA_PARTITION):
        if not os.path.isfile(os.path.join(root, listing)):
            raise UsageError(f"--datadir {root} holds no LMDB (data.mdb) and no {listing}; give an LMDB "
                             f"from datasets_prep/celeba_to_lmdb.py, or a CelebA-HQ image folder with "
                             f"{CELEBA_MAPPING} and {CELEBA_PARTITION} in it")
    hq_dir = next((os.path.join(root, folder) for folder in CELEBA_HQ_FOLDERS
                   if os.path.isdir(os.path.join(root, folder))), root)
    paths = celeba_hq_split_files(hq_dir, os.path.join(root, CELEBA_MAPPING),
                                  os.path.join(root, CELEBA_PARTITION), split)
    return ImageFileDataset(paths, image_size)


def _read_table(path, num_columns, header):
    """Whitespace-separated rows of a text file (skipping a first line that starts with `header`)."""
    with open(path) as f:
        rows = [line.split() for line in f if line.strip()]
    if header is not None and rows and rows[0][0] == header:
        rows = rows[1:]
    for row in rows:
        if len(row) != num_columns:
            raise UsageError(f"{path}: unexpected line {' '.join(row)!r}; expected {num_columns} columns")
    return rows


def _file_number(filename, listing):
    stem = os.path.splitext(filename)[0]
    if not stem.isdigit():
        raise UsageError(f"{listing}: {filename} is not a numbered CelebA file name like 000001.jpg")
    return int(stem)


def celeba_hq_split_files(hq_dir, mapping_file, partition_file, split):
    """Paths of the CelebA-HQ images of `split`, in HQ order.

    The mapping file (CelebAMask-HQ's CelebA-HQ-to-CelebA-mapping.txt, rows 'idx orig_idx
    orig_file') says which CelebA file each HQ index came from, and CelebA's
    list_eval_partition.txt (rows '000001.jpg 0') puts that file in train (0), val (1) or
    test (2). HQ images are found by number: 0.jpg .. 29999.jpg (CelebAMask-HQ) or
    00001.jpg .. 30000.jpg (the 256px data256x256.zip); the smallest number tells which.
    """
    if split not in CELEBA_PARTITION_IDS:
        raise UsageError(f"--split {split}: choose one of {', '.join(CELEBA_PARTITION_IDS)}")
    for listing in (mapping_file, partition_file):
        if not os.path.isfile(listing):
            raise UsageError(f"{listing} not found; give CelebAMask-HQ's {CELEBA_MAPPING} and "
                             f"CelebA's {CELEBA_PARTITION}")
    partition = {_file_number(name, partition_file): int(part)
                 for name, part in _read_table(partition_file, 2, header=None)}
    originals = {int(idx): _file_number(orig_file, mapping_file)
                 for idx, _, orig_file in _read_table(mapping_file, 3, header="idx")}
    numbered = {}
    for path in list_image_files(hq_dir, recursive=False):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem.isdigit():
            numbered[int(stem)] = path
    first = min(numbered, default=None)
    if first not in (0, 1):
        raise UsageError(f"{hq_dir}: expected CelebA-HQ images numbered from 0.jpg (CelebAMask-HQ) or "
                         f"00001.jpg (data256x256.zip); give the folder that holds them")
    wanted = CELEBA_PARTITION_IDS[split]
    paths = []
    for hq_index in sorted(originals):
        celeba_number = originals[hq_index]
        if celeba_number not in partition:
            raise UsageError(f"{partition_file} has no line for {celeba_number:06d}.jpg (named in "
                             f"{mapping_file}); give CelebA's complete {CELEBA_PARTITION}")
        if partition[celeba_number] == wanted:
            if hq_index + first not in numbered:
                raise UsageError(f"{hq_dir} has no image number {hq_index + first} (CelebA-HQ index "
                                 f"{hq_index}); give the folder with all CelebA-HQ images")
            paths.append(numbered[hq_index + first])
    if not paths:
        raise UsageError(f"{mapping_file} puts no CelebA-HQ image in the {split} split of {partition_file}")
    return paths


def _lsun(root, image_size, split):
    db = f"church_outdoor_{split}"
    if not is_lmdb(os.path.join(root, f"{db}_lmdb")):
        raise UsageError(f"--datadir {root} holds no {db}_lmdb/ (with data.mdb); download LSUN "
                         f"church_outdoor (download.py -c church_outdoor from github.com/fyu/lsun) "
                         f"and unzip it there")
    return KeyOrderLMDBDataset(os.path.join(root, f"{db}_lmdb"), image_size)
