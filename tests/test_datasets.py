"""Data layer: every --dataset read from tiny fakes in the real on-disk layouts, the LMDB
format and its CLIs, the offline errors, and the sharded batch order the trainer uses.

No test touches the network: the `offline` fixture makes any connection attempt fail at once.
"""
import importlib.util
import io
import os
import pickle
import socket
import struct
import urllib.error

import lmdb
import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist
import torchvision.transforms.functional as TF
from PIL import Image

from datasets_prep import DATASETS, OUTLIER_LABEL, as_uint8_tensor, build_image_dataset, dataset_info
from datasets_prep.images import outlier_fraction
from datasets_prep import celeba_to_lmdb, check_dataset, folder_to_lmdb, images as images_module
from datasets_prep.lmdb_dataset import LMDBImageDataset, write_image_lmdb
from datasets_prep.loader import ImageStream, ShardedBatches
from datasets_prep.reference import reference_dataset
from tiny import ROOT, one_line_usage_error


@pytest.fixture
def offline(monkeypatch):
    """Any DNS lookup or connection fails immediately, as on a machine with no internet."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def solid(colour, size=(8, 8)):
    return Image.new("RGB", size, colour)


# ----------------------------------------------------------------------------- fake torchvision layouts

def write_idx(path, array):
    """An MNIST idx file: magic (0, 0, uint8 type 0x08, ndim), big-endian dims, the bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_idx_images(raw, prefix, values, spot, labels):
    """<prefix>-images-idx3-ubyte, 28 x 28 images: image i filled with values[i], with the pixel
    (spot[0], spot[1]) = spot[2]; and <prefix>-labels-idx1-ubyte with `labels`."""
    images = np.repeat(np.asarray(values)[:, None, None], 28 * 28, axis=1).reshape(len(values), 28, 28)
    images[:, spot[0], spot[1]] = spot[2]
    write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
    write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.asarray(labels))


def fake_mnist(root, num_train=5, num_test=2):
    """MNIST/raw with the four idx files; image i is filled with value 10 * i + 1, pixel (3, 4) = 200."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        write_idx_images(raw, prefix, 10 * np.arange(n) + 1, (3, 4, 200), np.arange(n) % 10)
    return raw


def fake_emnist_letters(root, num_train=4, num_test=3):
    """EMNIST/raw with the four idx files of the letters split; image i is filled with
    20 * i + 5, pixel (2, 9) = 250, label i + 1 (letters are labelled 1-26)."""
    raw = root / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    for part, n in (("train", num_train), ("test", num_test)):
        write_idx_images(raw, f"emnist-letters-{part}", 20 * np.arange(n) + 5, (2, 9, 250), np.arange(n) % 26 + 1)
    return raw


def fake_cifar(root, per_batch=2):
    """cifar-10-batches-py with 5 train batches, test_batch and batches.meta (python pickles)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        data = np.zeros((per_batch, 3, 32, 32), np.uint8)
        for i in range(per_batch):
            data[i] = 100 + b * per_batch + i  # a value per image: order is checkable
        data[:, 0, 5, 7] = 0  # red channel, row 5, column 7
        data[:, 2, 5, 7] = 255  # blue channel
        entry = {"data": data.reshape(per_batch, 3 * 32 * 32), "labels": [(b + i) % 10 for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return folder


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """torchvision's CIFAR10 checks the md5 of every batch file against the real ones, which
    no fake can pass: accept the files as they are (the reading code itself is untouched)."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


# ----------------------------------------------------------------------------- small sets

def test_digits_shape_range_and_values():
    from sklearn.datasets import load_digits

    native = build_image_dataset("digits", None, 8)
    assert len(native) == 1797 and dataset_info("digits").channels == 1
    image, label = native[0]
    digits = load_digits()
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8) and label == digits.target[0]
    assert torch.equal(image[0], torch.from_numpy(np.rint(digits.images[0] * 255 / 16).astype(np.uint8)))
    resized = as_uint8_tensor(build_image_dataset("digits", None, 16))
    assert resized.shape == (1797, 1, 16, 16) and resized.dtype == torch.uint8
    assert resized.min() == 0 and resized.max() == 255


def test_digits_train_leaves_out_the_measures_held_out_digits_and_shapes_are_1_percent():
    from datasets_prep.images import digits_split as split
    from datasets_prep.images import NUM_SHAPE_OUTLIERS, stroke_shapes
    digits = as_uint8_tensor(build_image_dataset("digits", None, 8))
    train = build_image_dataset("digits_train", None, 8)
    held_out, kept = split(len(digits))
    assert len(train) == 1797 - 360 and torch.equal(as_uint8_tensor(train), digits[kept])
    assert set(held_out.tolist()).isdisjoint(kept.tolist()) and len(set(kept.tolist())) == 1437
    shapes = build_image_dataset("digits_train+shapes", None, 8)
    assert len(shapes) == 1437 + NUM_SHAPE_OUTLIERS == 1452
    outliers = as_uint8_tensor(shapes)[1437:]
    assert torch.equal(outliers, stroke_shapes(NUM_SHAPE_OUTLIERS, seed=0))
    assert all(shapes[i][1] == OUTLIER_LABEL for i in range(1437, 1452)) and shapes[0][1] != OUTLIER_LABEL
    # one-pixel strokes: a square's outline, an X, a plus, 4 to 6 pixels across
    square, cross, plus = (outliers[i, 0] > 0 for i in range(3))
    rows = square.any(1).nonzero().flatten()
    size = len(rows)
    assert 4 <= size <= 6 and square.sum() == 4 * size - 4
    assert plus.sum() in (7, 9, 11)    # a row and a column of n pixels that share one: 2n - 1
    assert cross.sum() in (8, 9, 12)   # two diagonals of n pixels, sharing the centre when n is odd


def test_digits_with_outliers_appends_1_percent_inverted_digits():
    digits = build_image_dataset("digits", None, 8)
    mixed = build_image_dataset("digits+outliers", None, 8)
    assert len(mixed) == 1797 + 18 and dataset_info("digits+outliers").channels == 1
    for i in range(18):   # the first 18 digits, inverted, labelled OUTLIER_LABEL
        image, label = mixed[1797 + i]
        assert label == OUTLIER_LABEL and torch.equal(image, 255 - digits[i][0])
    assert all(torch.equal(mixed[i][0], digits[i][0]) for i in (0, 1796))
    # the outlier measure tells them apart: mean intensity above half of full scale
    to_model = lambda images: images.float() / 127.5 - 1  # noqa: E731  (the trainer's scaling)
    assert outlier_fraction(to_model(as_uint8_tensor(digits))) == 0.0
    assert outlier_fraction(to_model(as_uint8_tensor(mixed))) == pytest.approx(18 / 1815)
    assert outlier_fraction(torch.ones(4, 1, 8, 8)) == 1.0 and outlier_fraction(-torch.ones(4, 1, 8, 8)) == 0.0


def test_one_table_gives_every_script_the_same_default_size(monkeypatch, capsys):
    import train
    for name, info in DATASETS.items():
        if info.image_size is not None:
            args = train.resolve_args(train.build_parser().parse_args(["--dataset", name]), 1)
            assert (args.image_size, args.num_channels) == (info.image_size, info.channels), name
    assert DATASETS["digits"].image_size == 8 and DATASETS["cifar10"].image_size == 32
    check_dataset.main(["--dataset", "digits"])
    assert "digits train: 1797 images, shape 1x8x8" in capsys.readouterr().out
    # test.py --compute_stats digits: the reference set it builds is the same 8 px one
    spec = importlib.util.spec_from_file_location("uotm_test_script", os.path.join(ROOT, "test.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sizes = []

    def stop_at_the_dataset(source, image_size, datadir):
        sizes.append(image_size)
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "reference_dataset", stop_at_the_dataset)
    with pytest.raises(KeyboardInterrupt):
        script.compute_stats(script.parse_args(["--compute_stats", "digits"]), torch.device("cpu"))
    assert sizes == [8]


def test_mnist_reads_the_raw_idx_files(tmp_path, offline):
    fake_mnist(tmp_path)
    train = build_image_dataset("mnist", str(tmp_path), 28, download=False)
    test = build_image_dataset("mnist", str(tmp_path), 28, split="test", download=False)
    assert len(train) == 5 and len(test) == 2
    image, label = train[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and label == 3
    assert image[0, 3, 4] == 200 and image[0, 0, 0] == 31
    small = build_image_dataset("mnist", str(tmp_path), 16, download=False)[2][0]
    assert small.shape == (1, 16, 16) and small[0, 10, 10] == 21  # a flat area keeps its value
    assert_resized_as_the_public_code("mnist", tmp_path, image)


def test_fashion_mnist_and_its_outlier_set_read_the_raw_idx_files(tmp_path, offline):
    """fashion_mnist reads FashionMNIST/raw as mnist reads MNIST/raw; fashion_mnist+mnist is its
    training images, then the first NUM_FASHION_MNIST_OUTLIERS MNIST training digits labelled
    OUTLIER_LABEL, all at 32 px (here 6 garments and the 5 digits the fake MNIST holds)."""
    from datasets_prep.images import NUM_FASHION_MNIST_OUTLIERS
    fake_mnist(tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 6), ("t10k", 3)):
        write_idx_images(raw, prefix, 7 * np.arange(n) + 3, (5, 6, 100), np.arange(n) % 10)
    train = build_image_dataset("fashion_mnist", str(tmp_path), 28, download=False)
    test = build_image_dataset("fashion_mnist", str(tmp_path), 28, split="test", download=False)
    assert len(train) == 6 and len(test) == 3 and train[2][0][0, 0, 0] == 17 and train[2][1] == 2
    mixed = build_image_dataset("fashion_mnist+mnist", str(tmp_path), 32, download=False)
    assert NUM_FASHION_MNIST_OUTLIERS == 600 and len(mixed) == 6 + 5 and dataset_info("fashion_mnist+mnist").splits == ("train",)
    assert mixed.labels.tolist() == [0, 1, 2, 3, 4, 5] + [OUTLIER_LABEL] * 5
    assert mixed.images.shape == (11, 1, 32, 32) and mixed[7][0][0, 16, 16] == 11   # MNIST image 1, filled with 11
    assert_resized_as_the_public_code("fashion_mnist", tmp_path, train[3][0])
    message = one_line_usage_error(lambda: build_image_dataset("fashion_mnist", str(tmp_path / "none"), 32,
                                                               download=False))
    assert "FashionMNIST" in message and "datasets_prep.fetch" in message


def assert_resized_as_the_public_code(name, root, native):
    """At the dataset's default size, item 3 is torchvision's Resize(size) of the native grey
    image, the public transform (to within one grey level: a uint8 tensor resize, not PIL's)."""
    size = dataset_info(name).image_size
    resized = build_image_dataset(name, str(root), size, download=False)[3][0]
    public = TF.pil_to_tensor(TF.resize(Image.fromarray(native[0].numpy()), size))
    assert size == 32 and resized.shape == (1, 32, 32) and (resized.int() - public.int()).abs().max() <= 1


def test_emnist_reads_the_letters_split_through_torchvision(tmp_path, offline):
    raw = fake_emnist_letters(tmp_path)
    train = build_image_dataset("emnist", str(tmp_path), 28, download=False)
    test = build_image_dataset("emnist", str(tmp_path), 28, split="test", download=False)
    assert len(train) == 4 and len(test) == 3 and dataset_info("emnist").channels == 1
    image, label = train[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and label == 4
    # as EMNIST stores it and torchvision reads it (the public code's images): not transposed
    assert image[0, 2, 9] == 250 and image[0, 9, 2] == 65 and test[1][0][0, 0, 0] == 25
    assert_resized_as_the_public_code("emnist", tmp_path, image)
    (raw / "emnist-letters-test-labels-idx1-ubyte").unlink()
    message = one_line_usage_error(lambda: build_image_dataset("emnist", str(tmp_path), 32, split="test",
                                                               download=False))
    assert "emnist-letters-test-labels-idx1-ubyte" in message and str(raw) in message


def test_celeba64_crops_140_then_resizes_as_the_public_code(tmp_path):
    """The public S-JKO code reads celeba64 with torchvision's ImageFolder (the aligned images in
    a subfolder) through CenterCrop(140) then Resize(64); the same images and pixels here."""
    root = tmp_path / "aligned_celeba"
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (218, 178, 3), dtype=np.uint8) for _ in range(2)]
    (root / "img_align_celeba").mkdir(parents=True)
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(root / "img_align_celeba" / f"{i + 1:06d}.png")
    dataset = build_image_dataset("celeba64", str(root), dataset_info("celeba64").image_size)
    public = torchvision.datasets.ImageFolder(str(root), transform=torchvision.transforms.Compose(
        [torchvision.transforms.CenterCrop(140), torchvision.transforms.Resize(64), TF.pil_to_tensor]))
    assert len(dataset) == len(public) == 2 and dataset_info("celeba64").flip
    for i in range(2):
        assert dataset[i][0].shape == (3, 64, 64) and torch.equal(dataset[i][0], public[i][0])
    assert "--datadir" in one_line_usage_error(lambda: build_image_dataset("celeba64", str(tmp_path / "no"), 64))


def test_emnist2mnist_maps_emnist_letters_to_mnist(tmp_path, offline):
    # the source's splits are the emnist dataset's; the dataset's own data is MNIST, its target
    from datasets_prep.translation import source_images
    fake_emnist_letters(tmp_path)
    fake_mnist(tmp_path)
    size = dataset_info("emnist2mnist").image_size
    assert size == 32 and dataset_info("emnist2mnist").channels == 1 and not dataset_info("emnist2mnist").flip
    for split in ("train", "test"):
        letters = build_image_dataset("emnist", str(tmp_path), size, split, download=False)
        source = source_images("emnist2mnist", str(tmp_path), size, split, download=False)
        assert torch.equal(source.images, letters.images) and torch.equal(source.labels, letters.labels)
        digits = build_image_dataset("mnist", str(tmp_path), size, split, download=False)
        assert torch.equal(build_image_dataset("emnist2mnist", str(tmp_path), size, split, download=False).images,
                           digits.images)
    assert len(source_images("emnist2mnist", str(tmp_path), size, "train", download=False)) == 4


def test_cifar10_reads_the_python_batches(tmp_path, skip_cifar_md5, offline):
    fake_cifar(tmp_path, per_batch=2)
    train = build_image_dataset("cifar10", str(tmp_path), 32, download=False)
    test = build_image_dataset("cifar10", str(tmp_path), 32, split="test", download=False)
    assert len(train) == 10 and len(test) == 2 and dataset_info("cifar10").channels == 3
    image, label = train[3]  # data_batch_2, its second image
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8 and label == 2
    assert image[:, 5, 7].tolist() == [0, 103, 255] and image[1, 0, 0] == 103
    assert test[1][0][0, 0, 0] == 111
    assert build_image_dataset("cifar10", str(tmp_path), 16, download=False)[0][0].shape == (3, 16, 16)


def test_cifar10_plus_mnist_is_all_cifar_then_the_first_mnist_images(tmp_path, skip_cifar_md5, offline,
                                                                      monkeypatch):
    fake_cifar(tmp_path, per_batch=2)
    fake_mnist(tmp_path, num_train=5)
    monkeypatch.setattr(images_module, "NUM_MNIST_OUTLIERS", 3)  # 500 in the paper; 3 of our 5 here
    dataset = build_image_dataset("cifar10+mnist", str(tmp_path), 32, download=False)
    assert len(dataset) == 10 + 3
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert labels[10:] == [OUTLIER_LABEL] * 3 and all(label < 10 for label in labels[:10])
    assert [dataset[i][0][0, 0, 0].item() for i in range(10)] == list(range(100, 110))
    for k in range(3):  # MNIST image k: grey repeated to 3 channels, resized 28 -> 32
        outlier = dataset[10 + k][0]
        assert outlier.shape == (3, 32, 32)
        assert torch.equal(outlier[0], outlier[1]) and torch.equal(outlier[0], outlier[2])
        assert outlier[0, 20, 20] == 10 * k + 1
    monkeypatch.setattr(images_module, "NUM_MNIST_OUTLIERS", 500)  # more than there are: all 5
    assert len(build_image_dataset("cifar10+mnist", str(tmp_path), 32, download=False)) == 15


# ----------------------------------------------------------------------------- offline errors

def test_missing_mnist_and_cifar_name_the_files_to_place(tmp_path, offline):
    message = one_line_usage_error(lambda: build_image_dataset("mnist", str(tmp_path), 28, download=False))
    assert "download is off" in message and "train-images-idx3-ubyte" in message
    assert os.path.join(str(tmp_path), "MNIST", "raw") in message
    message = one_line_usage_error(lambda: build_image_dataset("cifar10", str(tmp_path), 32, download=False))
    assert "cifar-10-batches-py" in message and "cifar-10-python.tar.gz" in message and str(tmp_path) in message


def test_failed_download_is_a_usage_error_not_a_hang(tmp_path, offline, monkeypatch):
    def no_internet(*args, **kwargs):
        raise urllib.error.URLError("name resolution failed")
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_internet)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_internet)
    message = one_line_usage_error(lambda: build_image_dataset("mnist", str(tmp_path), 28, download=True))
    assert "the download failed" in message and os.path.join(str(tmp_path), "MNIST", "raw") in message
    message = one_line_usage_error(lambda: build_image_dataset("cifar10+mnist", str(tmp_path), 32))
    assert "the download failed" in message and "cifar-10-batches-py" in message


def test_bad_names_splits_and_sizes():
    assert "imagenet" in one_line_usage_error(lambda: build_image_dataset("imagenet", "x", 32))
    assert "test" in one_line_usage_error(lambda: build_image_dataset("digits", None, 8, split="test"))
    assert "--image_size" in one_line_usage_error(lambda: build_image_dataset("digits", None, 0))
    assert "--datadir" in one_line_usage_error(lambda: build_image_dataset("mnist", None, 28))


@pytest.mark.parametrize("flags", [["--dataset", "celeba"], ["--dataset", "swissroll", "--model_name", "toy"]])
def test_an_unknown_dataset_lists_every_name(flags):
    import train
    from datasets_prep.toy import TOYS_2D
    message = one_line_usage_error(lambda: train.resolve_args(train.build_parser().parse_args(flags), 1))
    assert f"--dataset {flags[1]}" in message and all(name in message for name in (*DATASETS, *TOYS_2D))


# ----------------------------------------------------------------------------- image folders

def test_imagefolder_resizes_and_center_crops(tmp_path):
    (tmp_path / "sub").mkdir()
    # 12 x 6 (wide): left/right thirds red, middle green; the center crop keeps only green
    wide = np.zeros((6, 12, 3), np.uint8)
    wide[:, :3, 0] = wide[:, 9:, 0] = 255
    wide[:, 3:9, 1] = 255
    Image.fromarray(wide).save(tmp_path / "a.png")
    solid((0, 0, 255), (20, 20)).save(tmp_path / "sub" / "b.jpg", quality=100)
    solid((10, 20, 30), (3, 3)).convert("L").save(tmp_path / "c.tiff")  # greyscale -> RGB
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = build_image_dataset("imagefolder", str(tmp_path), 6)
    assert len(dataset) == 3
    a, c, b = (dataset[i][0] for i in range(3))  # sorted paths: a.png, c.tiff, sub/b.jpg
    assert all(x.shape == (3, 6, 6) and x.dtype == torch.uint8 for x in (a, b, c))
    assert (a[1] == 255).all() and (a[0] == 0).all()
    assert (b[2] >= 250).all() and (b[:2] <= 5).all()
    assert torch.equal(c[0], c[1]) and torch.equal(c[0], c[2]) and c[0, 0, 0] == 18  # L = 0.299 R + 0.587 G + ..
    reference = reference_dataset(str(tmp_path), 6)  # test.py --ref_dir FOLDER: the same uint8 items
    assert len(reference) == 3 and all(torch.equal(reference[i][0], dataset[i][0]) for i in range(3))


def test_imagefolder_errors_name_the_folder_or_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in one_line_usage_error(lambda: build_image_dataset("imagefolder", str(empty), 8))
    missing = str(tmp_path / "nowhere")
    assert missing in one_line_usage_error(lambda: build_image_dataset("imagefolder", missing, 8))
    broken = tmp_path / "broken"
    broken.mkdir()
    solid((1, 2, 3)).save(broken / "good.png")
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = build_image_dataset("imagefolder", str(broken), 8)
    message = one_line_usage_error(lambda: dataset[0])  # sorted: bad.png first
    assert str(broken / "bad.png") in message and "check_dataset" in message


# ----------------------------------------------------------------------------- LMDB

def random_images(folder, count, size=(10, 10), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{i:03d}.png")
    return arrays


@pytest.mark.parametrize("encode", ["png", "raw"])
def test_lmdb_round_trip_is_lossless(tmp_path, encode):
    arrays = random_images(tmp_path / "src", 4)
    paths = [str(tmp_path / "src" / f"{i:03d}.png") for i in range(4)]
    write_image_lmdb(str(tmp_path / "db"), paths, encode=encode)
    assert not os.path.exists(str(tmp_path / "db") + ".partial")
    with lmdb.open(str(tmp_path / "db"), readonly=True, lock=False) as env, env.begin() as txn:
        assert txn.get(b"length") == b"4"
    dataset = LMDBImageDataset(str(tmp_path / "db"), 10)
    assert len(dataset) == 4
    for i, array in enumerate(arrays):
        image, label = dataset[i]
        assert label == 0 and torch.equal(image, torch.from_numpy(array).permute(2, 0, 1))
    with pytest.raises(IndexError):
        dataset[4]
    # read here first and then by forked workers, as train.py does (dataset[0], then its
    # DataLoader): py-lmdb refuses a second open of the files in a process, inherited ones too
    loader = torch.utils.data.DataLoader(LMDBImageDataset(str(tmp_path / "db"), 10), batch_size=2, num_workers=2)
    assert torch.equal(torch.cat([images for images, _ in loader]),
                       torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
    assert "already exists" in one_line_usage_error(lambda: write_image_lmdb(str(tmp_path / "db"), paths))


def test_lmdb_with_other_keys_names_the_expected_format(tmp_path):
    path = str(tmp_path / "foreign")
    with lmdb.open(path, map_size=1 << 24) as env, env.begin(write=True) as txn:
        txn.put(b"00000", b"x")  # zero-padded keys: not this format
    message = one_line_usage_error(lambda: LMDBImageDataset(path, 8))
    assert path in message and "b'00000'" in message and "str(index).encode()" in message
    missing = one_line_usage_error(lambda: LMDBImageDataset(str(tmp_path), 8))
    assert os.path.join(str(tmp_path), "data.mdb") in missing


def test_folder_to_lmdb_and_check_dataset_clis(tmp_path, capsys):
    random_images(tmp_path / "src" / "nested", 3, size=(12, 16))
    random_images(tmp_path / "src", 2, size=(20, 20), seed=1)
    db = str(tmp_path / "db")
    folder_to_lmdb.main([str(tmp_path / "src"), db, "--image_size", "8", "--encode", "raw"])
    assert capsys.readouterr().out.strip() == f"wrote 5 images to {db}"
    check_dataset.main(["--dataset", "celeba_256", "--datadir", db, "--image_size", "8"])
    out = capsys.readouterr().out.strip()
    assert out.startswith("celeba_256 train: 5 images, shape 3x8x8, dtype uint8") and out.endswith("labels [0]")
    check_dataset.main(["--dataset", "imagefolder", "--datadir", str(tmp_path / "src"), "--image_size", "8"])
    assert "imagefolder train: 5 images, shape 3x8x8" in capsys.readouterr().out
    check_dataset.main(["--dataset", "digits"])
    assert capsys.readouterr().out.strip() == ("digits train: 1797 images, shape 1x8x8, dtype uint8, "
                                               "min 0, max 255, labels [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")
    (tmp_path / "src" / "zz.png").write_bytes(b"not a png")
    message = one_line_usage_error(lambda: check_dataset.main(
        ["--dataset", "imagefolder", "--datadir", str(tmp_path / "src"), "--image_size", "8"]))
    assert str(tmp_path / "src" / "zz.png") in message


# ----------------------------------------------------------------------------- CelebA-HQ and LSUN

def fake_celeba_hq(root, folder="CelebA-HQ-img", first=0):
    """6 HQ images (HQ index i has colour (40 i, 0, 0)) made from CelebA files whose partitions
    put HQ 0, 2, 5 in train, HQ 1, 4 in val and HQ 3 in test."""
    hq_dir = root / folder
    hq_dir.mkdir(parents=True)
    for i in range(6):
        name = f"{i + first}.jpg" if first == 0 else f"{i + first:05d}.jpg"
        solid((40 * i, 0, 0), (16, 16)).save(hq_dir / name, quality=100)
    celeba_of_hq = [17, 3, 250, 9, 120, 44]  # original CelebA file numbers
    partition_of_celeba = {17: 0, 3: 1, 250: 0, 9: 2, 120: 1, 44: 0, 5: 2}
    with open(root / "CelebA-HQ-to-CelebA-mapping.txt", "w") as f:
        f.write("idx         orig_idx  orig_file\n")
        f.writelines(f"{i} {n - 1} {n:06d}.jpg\n" for i, n in enumerate(celeba_of_hq))
    with open(root / "list_eval_partition.txt", "w") as f:
        f.writelines(f"{n:06d}.jpg {p}\n" for n, p in sorted(partition_of_celeba.items()))
    return hq_dir


def red_values(dataset):
    return [round(dataset[i][0][0].float().mean().item() / 40) for i in range(len(dataset))]


@pytest.mark.parametrize("folder, first", [("CelebA-HQ-img", 0), ("data256x256", 1)])
def test_celeba_hq_folder_splits(tmp_path, folder, first):
    hq_dir = fake_celeba_hq(tmp_path, folder, first)
    train = build_image_dataset("celeba_256", str(tmp_path), 8)
    assert [os.path.basename(p) for p in train.paths] == (
        ["0.jpg", "2.jpg", "5.jpg"] if first == 0 else ["00001.jpg", "00003.jpg", "00006.jpg"])
    assert os.path.dirname(train.paths[0]) == str(hq_dir)
    assert red_values(train) == [0, 2, 5] and train[0][0].shape == (3, 8, 8)
    assert red_values(build_image_dataset("celeba_256", str(tmp_path), 8, split="val")) == [1, 4]
    assert red_values(build_image_dataset("celeba_256", str(tmp_path), 8, split="test")) == [3]


def test_celeba_lmdb_route_and_missing_files(tmp_path, capsys):
    hq_dir = fake_celeba_hq(tmp_path / "raw")
    db = str(tmp_path / "celeba_train_lmdb")
    celeba_to_lmdb.main(["--hq_dir", str(hq_dir), "--mapping", str(tmp_path / "raw" / "CelebA-HQ-to-CelebA-mapping.txt"),
                         "--partition", str(tmp_path / "raw" / "list_eval_partition.txt"),
                         "--split", "val", db, "--image_size", "8"])
    assert capsys.readouterr().out.strip() == f"wrote the 2 CelebA-HQ val images to {db}"
    from_lmdb = build_image_dataset("celeba_256", db, 8)
    assert red_values(from_lmdb) == [1, 4] and from_lmdb[0][0].shape == (3, 8, 8)
    os.remove(tmp_path / "raw" / "list_eval_partition.txt")
    message = one_line_usage_error(lambda: build_image_dataset("celeba_256", str(tmp_path / "raw"), 8))
    assert "list_eval_partition.txt" in message and "celeba_to_lmdb" in message


def test_lsun_church_from_its_lmdb(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # to see that nothing is written to the working directory
    db = tmp_path / "lsun" / "church_outdoor_train_lmdb"
    db.parent.mkdir()
    colours = {b"f3a9c0de": (200, 0, 0), b"0b12ffee": (0, 200, 0), b"77aa0011": (0, 0, 200)}
    with lmdb.open(str(db), map_size=1 << 24) as env, env.begin(write=True) as txn:
        for key, colour in colours.items():  # LSUN: hash keys, WebP values
            buffer = io.BytesIO()
            solid(colour, (12, 9)).save(buffer, format="WEBP", lossless=True)
            txn.put(key, buffer.getvalue())
    dataset = build_image_dataset("lsun", str(tmp_path / "lsun"), 8)
    assert len(dataset) == 3 and dataset[0][0].dtype == torch.uint8 and dataset[0][1] == 0
    in_key_order = [colours[key] for key in sorted(colours)]
    assert [tuple(dataset[i][0][:, 4, 4].tolist()) for i in range(3)] == in_key_order
    check_dataset.main(["--dataset", "lsun", "--datadir", str(tmp_path / "lsun"), "--image_size", "8"])
    assert capsys.readouterr().out.startswith("lsun train: 3 images, shape 3x8x8, dtype uint8, min 0, max 200")
    assert os.listdir(tmp_path) == ["lsun"]  # torchvision's LSUN left a _cache_* pickle here
    message = one_line_usage_error(lambda: build_image_dataset("lsun", str(tmp_path / "lsun"), 8, split="val"))
    assert "church_outdoor_val_lmdb" in message


# ----------------------------------------------------------------------------- batch order

def epoch_batches(sharded, epoch, start=0):
    sharded.set_position(epoch, start)
    return list(sharded)


def test_sharded_batches_partition_resume_and_epochs():
    ranks = [ShardedBatches(23, 3, rank, 2, seed=7) for rank in range(2)]
    assert ranks[0].steps_per_epoch == 3  # 23 // 2 = 11 per rank, 3 whole batches of 3
    seen = [sum(epoch_batches(r, 0), []) for r in ranks]
    assert all(len(s) == 9 and len(set(s)) == 9 for s in seen) and not set(seen[0]) & set(seen[1])
    full = epoch_batches(ranks[0], 4)
    assert epoch_batches(ranks[0], 4, start=2) == full[2:] and len(ranks[0]) == 1
    assert epoch_batches(ShardedBatches(23, 3, 0, 2, seed=7), 4) == full  # deterministic
    assert epoch_batches(ranks[0], 5) != full and epoch_batches(ShardedBatches(23, 3, 0, 2, seed=8), 4) != full


def test_image_stream_device_and_loader_paths_agree():
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (26, 3, 4, 4), dtype=torch.uint8, generator=generator)
    dataset = images_module.TensorImageDataset(data, torch.zeros(26, dtype=torch.long))
    streams = [ImageStream(dataset, 4, 0, 1, seed=3, device=torch.device("cpu"), flip=False,
                           on_device=on_device, num_workers=0) for on_device in (True, False)]
    for epoch, start in ((0, 0), (1, 2)):
        on_device, loaded = (list(s.epoch(epoch, start)) for s in streams)
        assert len(on_device) == 6 - start and len(loaded) == 6 - start
        order = epoch_batches(ShardedBatches(26, 4, 0, 1, seed=3), epoch, start)
        for a, b, idx in zip(on_device, loaded, order):
            assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
            assert torch.allclose(a, data[idx].float() / 127.5 - 1)


def test_image_stream_flips_about_half():
    data = torch.arange(4, dtype=torch.uint8).repeat(400, 3, 4, 1)  # every row 0 1 2 3: asymmetric
    dataset = images_module.TensorImageDataset(data, torch.zeros(400, dtype=torch.long))
    stream = ImageStream(dataset, 400, 0, 1, seed=0, device=torch.device("cpu"), flip=True, on_device=True)
    torch.manual_seed(0)
    batch = next(stream.epoch(0))
    flipped = batch[:, 0, 0, 0] > batch[:, 0, 0, 3]
    assert 160 <= int(flipped.sum()) <= 240  # Binomial(400, 1/2): mean 200, sd 10
    assert torch.equal(batch[flipped], (data[:1].float() / 127.5 - 1).flip(3).expand(int(flipped.sum()), -1, -1, -1))
