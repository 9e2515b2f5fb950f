"""FID reference statistics files as a fuzzer would send them: truncated, with flipped bytes, or
crafted to exhaust memory or run code. Each is refused with one UsageError line, or (when the
damage left a valid file) loads what the original holds, and never costs more memory than the
statistics themselves.

The cases run in child processes, many per child (importing uot.fid imports torch: ~5 s). Each
child runs under an address-space limit (RLIMIT_AS) 1.5 GiB above what it holds after the imports
(~3.5 GiB of address space and ~0.7 GiB resident with torch), so that a runaway allocation fails
there instead of taking the machine's memory; a refusal that comes from a MemoryError fails the
test. After every case the child records the case's peak resident memory (VmHWM, reset before
the case: ru_maxrss is seeded at exec with the forking pytest's peak, so it measures nothing here)
and the child's peak address space (VmPeak, which also sees allocations never touched)."""
import codecs
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from uot import fid

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="measures memory in /proc (Linux)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
MEMORY_MARGIN_MIB = 100   # per case, over what the child held before it: sigma in float64 is 32 MiB
# over the whole child: a protocol-2 pickle (data as text) takes ~190 MiB of address space to read
ADDRESS_SPACE_MARGIN_MIB = 256

# The child: loads each case with fid.load_stats and prints one JSON line per case. A case is a
# file, or a truncation / a byte flip of a base file (applied in place to a working copy, so
# that the child's own memory holds no copy of a file per case). Any exception other than
# UsageError is reported as outcome "exception", and fails the test.
CHILD = r"""
import json, os, resource, sys, time, traceback
import numpy as np
from uot import fid
from uot.errors import UsageError

def status(field):   # bytes
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

def reset_peak_rss():   # VmHWM := VmRSS (Linux >= 4.0); False where not allowed
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

spec = json.load(open(sys.argv[1]))
bases = {}
for base, work in spec["bases"].items():   # each valid base file loads, before any mutation
    data = open(base, "rb").read()
    mu, sigma = fid.load_stats(base)
    with open(work, "wb") as f:
        f.write(data)
    bases[base] = data, work, mu, sigma
limit = status("VmSize") + spec["address_space_mib"] * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
vm_baseline, max_rss = status("VmPeak"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rss_mib": status("VmRSS") / 2**20, "ru_maxrss_mib": max_rss / 2**20,
                  "vm_peak_mib": vm_baseline / 2**20, "address_space_limit_mib": limit / 2**20}), flush=True)

def attempt(path, expected):
    try:
        mu, sigma = fid.load_stats(path)
    except UsageError as err:   # (no local for err.__context__: its traceback would make a cycle)
        return {"outcome": "refused", "message": str(err), "context": type(err.__context__).__name__}
    except BaseException as err:
        return {"outcome": "exception", "message": "".join(traceback.format_exception_only(err))[-600:]}
    if expected is None:
        return {"outcome": "loaded", "shapes": [mu.shape, sigma.shape], "dtypes": [str(mu.dtype), str(sigma.dtype)]}
    if np.array_equal(mu, expected[0]) and np.array_equal(sigma, expected[1]):
        return {"outcome": "equal"}
    # a pickle has no checksum: a flipped byte-order character loads the same bytes byte-swapped
    # (checked on mu and sigma's first row, to allocate nothing large)
    swap = lambda a: a.astype(np.float32).byteswap().astype(np.float64)
    swapped = np.array_equal(mu, swap(expected[0]), equal_nan=True) and \
        np.array_equal(sigma[0], swap(expected[1][0]), equal_nan=True)
    return {"outcome": "byteswapped" if swapped else "differs"}

for case in spec["cases"]:
    if "base" in case:
        data, path, mu, sigma = bases[case["base"]]
        expected = mu, sigma
        if "truncate" in case:
            os.truncate(path, case["truncate"])
        else:
            position, mask = case["flip"]
            with open(path, "r+b") as f:
                f.seek(position)
                f.write(bytes([data[position] ^ mask]))
    else:
        path, expected = case["path"], None
    rss, resettable, start = status("VmRSS"), reset_peak_rss(), time.perf_counter()
    result = attempt(path, expected)
    result["seconds"] = time.perf_counter() - start
    # ru_maxrss is no measure here: at exec the kernel seeds it with the forking parent's peak
    peak = status("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if "base" in case:   # restore the working copy
        with open(path, "r+b") as f:
            start = case.get("truncate", case.get("flip", [0])[0])
            f.seek(start)
            f.write(memoryview(data)[start:start + 1] if "flip" in case else memoryview(data)[start:])
    result.update(name=case["name"], peak_rss_mib=(peak - (rss if resettable else max_rss)) / 2**20,
                  vm_peak_mib=(status("VmPeak") - vm_baseline) / 2**20)
    print(json.dumps(result), flush=True)
"""


def run_child(tmp_path, cases, bases=(), timeout=240):
    """[(result dict)] of the cases, in order, and the child's first line (baseline, limit)."""
    spec = {"address_space_mib": 1536, "cases": cases,
            "bases": {str(base): str(tmp_path / f"work{i}_{os.path.basename(base)}") for i, base in enumerate(bases)}}
    with open(tmp_path / "spec.json", "w") as f:
        json.dump(spec, f)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "spec.json")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
    assert child.returncode == 0, f"the child failed (exit {child.returncode}):\n{child.stderr[-3000:]}"
    lines = [json.loads(line) for line in child.stdout.splitlines()]
    assert [r["name"] for r in lines[1:]] == [c["name"] for c in cases]
    return lines[1:], lines[0]


def check_refusal(result, path):
    """A refusal is one line that names the file, and not the catch of a failed allocation."""
    message = result["message"]
    assert message.startswith(str(path)) and "\n" not in message, result
    assert "MemoryError" not in f"{result['context']} {message}" and result["context"] != "RecursionError", result


def check_memory(results):
    """Each case's peak resident memory over what the child held before it, and the peak address
    space over the child's before the first case (it catches an allocation never touched)."""
    rss = [(r["name"], round(r["peak_rss_mib"], 1)) for r in results if r["peak_rss_mib"] > MEMORY_MARGIN_MIB]
    assert not rss, f"peak resident memory over {MEMORY_MARGIN_MIB} MiB: {rss}"
    vm = [(r["name"], round(r["vm_peak_mib"], 1)) for r in results if r["vm_peak_mib"] > ADDRESS_SPACE_MARGIN_MIB]
    assert not vm, f"peak address space over {ADDRESS_SPACE_MARGIN_MIB} MiB: {vm[:3]}"


def symmetric_stats(seed=0, dtype=np.float32):
    """pool3-shaped statistics; sigma exactly symmetric, so a fortran-order flag flip loads it equal."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(fid.FEATURE_DIM, fid.FEATURE_DIM)).astype(dtype)
    return rng.normal(size=fid.FEATURE_DIM).astype(dtype), (a + a.T) / 2


# ----------------------------------------------------------------------------- crafted files

NPY_OBJECT_HEADER = b"{'descr': '|O', 'fortran_order': False, 'shape': (), }"


def npy_of_pickle(payload):
    """A .npy of a 0-d object array whose pickle is `payload`, as np.save(allow_pickle=True) writes it."""
    header = NPY_OBJECT_HEADER + b" " * (117 - len(NPY_OBJECT_HEADER)) + b"\n"   # 128 bytes in all
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


class Call:
    """Unpickling this calls `function(*args)` (then BUILD with `state`, if given)."""

    def __init__(self, function, *args, state=None):
        self.function, self.args, self.state = function, args, state

    def __reduce__(self):
        return (self.function, self.args) if self.state is None else (self.function, self.args, self.state)


RECONSTRUCT = np.zeros(0).__reduce__()[0]
FROMBUFFER = np.zeros(3).__reduce_ex__(5)[0]


def npy_header(shape, descr="<f8", version=1, claimed_length=None):
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode() + b"\n"
    width = "<H" if version == 1 else "<I"
    return (b"\x93NUMPY" + bytes([version, 0]) + struct.pack(width, claimed_length or len(text)) + text)


def write_zip(path, members):
    """A zip64 archive of (name, method, crc, uncompressed_size, data) members, written by hand so
    that a member may inflate to 4 GiB (or declare any size) in a small file, in no time."""
    central, offset = b"", 0
    with open(path, "wb") as f:
        for name, method, crc, size, data in members:
            name = name.encode()
            local_extra = struct.pack("<HHQQ", 1, 16, size, len(data))
            f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 45, 0, method, 0, 33, crc, 0xFFFFFFFF,
                                0xFFFFFFFF, len(name), len(local_extra)) + name + local_extra + data)
            extra = struct.pack("<HHQQQ", 1, 24, size, len(data), offset)
            central += struct.pack("<4s6H3L5HLL", b"PK\x01\x02", 45, 45, 0, method, 0, 33, crc, 0xFFFFFFFF,
                                   0xFFFFFFFF, len(name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + name + extra
            offset = f.tell()
        f.write(central)
        count = len(members)
        f.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(central), offset))
        f.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, offset + len(central), 1))
        f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(central), 0xFFFFFFFF, 0))


def stored(name, data):
    return name, 0, zlib.crc32(data), len(data), data


def deflated_zeros(header, zeros, declared=None):
    """A raw deflate stream of `header` then `zeros` zero bytes (a multiple of 1 MiB), built from one
    compressed MiB repeated: after a full flush, deflate encodes the next MiB of zeros identically."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    mib = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH) == mib
    data = start + mib * (zeros // MiB - 1) + compressor.compress(bytes(MiB)) + compressor.flush()
    # the CRC is never reached: the reader stops at the header's size
    return "sigma.npy", 8, 0, declared if declared is not None else len(header) + zeros, data


def crafted_files(tmp_path, marker):
    """{name: (bytes or a zip's members, regex the refusal must match)}."""
    mu = npy_header((fid.FEATURE_DIM,)) + bytes(8 * fid.FEATURE_DIM)
    sigma_header = npy_header((fid.FEATURE_DIM, fid.FEATURE_DIM))
    sigma_stub = stored("sigma.npy", sigma_header)   # never reached: mu is refused first

    def pickled(obj, protocol=2):
        return npy_of_pickle(pickle.dumps(obj, protocol=protocol))

    def ndarrays(n):
        return pickled({"mu": Call(np.ndarray, (n,)), "sigma": Call(np.ndarray, (n,))})

    text = "a" * MiB
    return {
        "ndarray((2**25,))": (ndarrays(2**25), "numpy.ndarray"),
        "ndarray((2**27,))": (ndarrays(2**27), "numpy.ndarray"),
        "ndarray((2**33,))": (ndarrays(2**33), "numpy.ndarray"),
        "_reconstruct of shape 2**33": (pickled(Call(RECONSTRUCT, np.ndarray, (2**33,), b"b")), "_reconstruct"),
        "object array state of 2**33 items": (pickled(Call(RECONSTRUCT, np.ndarray, (0,), b"b", state=(
            1, (2**33,), np.dtype(object), False, []))), "object array"),
        "float array state of 2**33 items with 16 bytes": (pickled(Call(RECONSTRUCT, np.ndarray, (0,), b"b", state=(
            1, (2**33,), np.dtype("f8"), False, b"x" * 16))), "takes 68719476736 bytes"),
        "_frombuffer of an object dtype": (pickled(Call(FROMBUFFER, bytearray(8), np.dtype(object), (1,), "C"),
                                                   protocol=5), "object array"),
        "dtype state with fields": (pickled(Call(np.dtype, "f8", False, True, state=(
            3, "<", None, ("a",), {"a": (np.dtype("f8"), 0)}, 8, 1, 0))), "dtype's state"),
        "_codecs.encode with an unknown codec": (pickled(Call(codecs.encode, "x", "no-such-codec")), "latin1"),
        "_codecs.encode of one memoized MiB, 200 times": (
            pickled([Call(codecs.encode, text, "latin1") for _ in range(200)]), "rebuilds more bytes"),
        "memo index 2**32 - 1": (npy_of_pickle(b"\x80\x02Nr\xff\xff\xff\xff."), "memo index"),
        "BINBYTES8 claiming 1 TiB": (npy_of_pickle(b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"x."),
                                     "claims more bytes"),
        "frame claiming 1 TiB": (npy_of_pickle(b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N."), "frame"),
        "100,000 DUP opcodes": (npy_of_pickle(b"\x80\x02N" + b"2" * 100_000 + b"."), "opcodes"),
        "version-2 .npy header claiming 4 GiB": (npy_header((), "|O", 2, 2**32 - 1), "header"),
        "empty file": (b"", "empty"),
        "5-byte file": (b"hello", "starts with b'hello'"),
        "5-byte start of a .npy": (b"\x93NUMP", "starts with"),
        "zip signature, then zeros": (b"PK\x03\x04" + bytes(100), "npz"),
        "os.system": (pickled(Call(os.system, f"touch {marker}")), "posix.system|os.system"),
        "eval": (pickled(Call(eval, f"__import__('os').system('touch {marker}')")), ".eval,"),
        "os.system inside the dict": (pickled({"mu": Call(os.system, f"touch {marker}"), "sigma": 1}),
                                      "posix.system|os.system"),
        "npz: sigma of 2**29 floats, 4 GiB of zeros deflated": (
            [stored("mu.npy", mu), deflated_zeros(npy_header((2**29,)), 4096 * MiB)], "declares"),
        "npz: sigma inflates to 4 GiB (declared 32 MiB + 4 KiB)": (
            [stored("mu.npy", mu), deflated_zeros(sigma_header, 4096 * MiB, declared=32 * MiB + 4096)],
            "more bytes"),
        "npz: sigma header claims 2**33 floats": (
            [stored("mu.npy", mu), deflated_zeros(npy_header((2**33,)), 16 * MiB)], "takes 68719476736 bytes"),
        "npz: mu followed by 1 MiB more than its header": (
            [stored("mu.npy", mu + bytes(MiB)), sigma_stub], "holds more bytes"),
        "npz: version-2 header claiming 4 GiB": (
            [stored("mu.npy", npy_header((2,), version=2, claimed_length=2**32 - 1)), sigma_stub], "header"),
        "npz: bzip2 member": ([("mu.npy", 12, 0, len(mu), b"BZh9"), sigma_stub], "method 12"),
    }


def test_crafted_files_are_refused_in_one_line_within_memory_and_run_nothing(tmp_path):
    marker = tmp_path / "marker"
    cases = []
    for i, (name, (content, reason)) in enumerate(crafted_files(tmp_path, marker).items()):
        path = tmp_path / f"case{i}{'.npz' if isinstance(content, list) else '_stat.npy'}"
        if isinstance(content, list):
            write_zip(path, content)
        else:
            path.write_bytes(content)
        cases.append({"name": name, "path": str(path), "reason": reason})
    bomb = next(c["path"] for c in cases if c["name"].startswith("npz: sigma of 2**29 floats"))
    assert os.path.getsize(bomb) < 5 * MiB
    # valid files last (the address-space peak only grows): their peak is what reading statistics costs
    mu, sigma = symmetric_stats(dtype=np.float64)
    fid.save_stats(str(tmp_path / "valid.npz"), mu, sigma, 10)
    np.save(tmp_path / "valid_stat.npy", {"mu": mu, "sigma": sigma}, allow_pickle=True)
    (tmp_path / "python2_stat.npy").write_bytes(npy_of_pickle(pickle.dumps({key: Call(
        RECONSTRUCT, np.ndarray, (0,), b"b", state=(1, a.shape, a.dtype, False, a.tobytes().decode("latin1")))
        for key, a in (("mu", mu), ("sigma", sigma))}, protocol=2)))
    valid = ["valid.npz", "valid_stat.npy", "python2_stat.npy"]
    cases += [{"name": name, "path": str(tmp_path / name)} for name in valid]

    results, head = run_child(tmp_path, [{k: v for k, v in c.items() if k != "reason"} for c in cases])
    print(head, *results, sep="\n")
    for case, result in zip(cases, results):
        if case["name"] in valid:
            assert result["outcome"] == "loaded" and result["dtypes"] == ["float64"] * 2, result
            continue
        assert result["outcome"] == "refused", result
        check_refusal(result, case["path"])
        assert any(reason in result["message"] for reason in case["reason"].split("|")), result
    check_memory(results)
    assert not marker.exists()


# ----------------------------------------------------------------------------- fuzzing

def payload_ranges(data, arrays):
    """[(start, end)] of each array's raw bytes inside a file."""
    ranges = []
    for a in arrays:
        start = data.find(a.tobytes()[:64])   # (bytes.find of the whole array takes seconds)
        assert start > 0 and data[start:start + a.nbytes] == a.tobytes()
        ranges.append((start, start + a.nbytes))
    return ranges


def outside(ranges, size):
    """The positions of [0, size) outside the (start, end) ranges."""
    positions, previous = [], 0
    for start, end in sorted(ranges) + [(size, size)]:
        positions += range(previous, start)
        previous = end
    return positions


def fuzz_cases(path, arrays, rng, data_flips):
    """50 truncations and 200 single-byte flips of a valid file; a flip falls in the arrays' data
    only `data_flips` times (elsewhere a flip of random data tests nothing: the file stays valid)."""
    data = path.read_bytes()
    size, ranges = len(data), payload_ranges(data, arrays)
    cuts = set(rng.sample(range(0, 400), 20) + rng.sample(range(size - 400, size), 10)
               + [start + d for start, _ in ranges for d in (-1, 0, 1, 5, 8)])
    while len(cuts) < 50:
        cuts.add(rng.randrange(size))
    cases = [{"name": f"{path.name} cut at {n}", "base": str(path), "truncate": n} for n in sorted(cuts)]
    positions = rng.sample(outside(ranges, size), 200 - data_flips) + [
        rng.randrange(*ranges[i % len(ranges)]) for i in range(data_flips)]
    cases += [{"name": f"{path.name} byte {p} ^ {m}", "base": str(path), "flip": [p, m]}
              for p, m in zip(positions, (rng.randrange(1, 256) for _ in positions))]
    assert len(cases) == 250
    return cases, data


def test_truncated_and_flipped_files_are_refused_or_load_what_they_hold(tmp_path):
    """Byte flips in an npz's data break its CRC-32, so 20 of them are among the flips; a pickle has
    no checksum (a flip in its data loads other numbers), so its flips avoid the data."""
    rng = random.Random(0)
    mu, sigma = symmetric_stats()
    npz, npy = tmp_path / "ref.npz", tmp_path / "ref_stat.npy"
    fid.save_stats(str(npz), mu, sigma, 10)
    np.save(npy, {"mu": mu, "sigma": sigma}, allow_pickle=True)
    npz_cases, _ = fuzz_cases(npz, (mu, sigma), rng, data_flips=20)
    npy_cases, npy_data = fuzz_cases(npy, (mu, sigma), rng, data_flips=0)
    results, head = run_child(tmp_path, npz_cases + npy_cases, bases=(npz, npy))
    print(head)
    outcomes = {}
    for case, result in zip(npz_cases + npy_cases, results):
        outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
        if result["outcome"] == "refused":
            check_refusal(result, tmp_path / f"work{0 if case in npz_cases else 1}_{os.path.basename(case['base'])}")
        elif result["outcome"] == "byteswapped":   # a '<' of the pickle's dtype state turned '>'
            assert case in npy_cases and npy_data[case["flip"][0]] == ord("<"), (case, result)
        else:
            assert result["outcome"] == "equal", (case, result)
    print(outcomes)
    assert outcomes["refused"] > 250   # most damage is refused, not loaded
    check_memory(results)


# ----------------------------------------------------------------------------- the scripts

def test_train_refuses_an_empty_statistics_file_in_one_line(tmp_path):
    """--fid_ref_stats is read while the arguments are resolved, before anything is built."""
    (tmp_path / "empty_stat.npy").write_bytes(b"")
    result = subprocess.run([sys.executable, "train.py", "--fid_ref_stats", str(tmp_path / "empty_stat.npy"),
                             "--dry_run"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert str(tmp_path / "empty_stat.npy") in result.stderr and "empty" in result.stderr
