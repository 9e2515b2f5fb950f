"""Shared test set-up: the repository on sys.path, and a stand-in for the FID Inception weights."""
import os
import sys
import tempfile

import pytest
import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# scripts/ as well, as when a script runs as a file: the scripts that build on another one
# (study_toys_exact.py and exact_uot_tau.py on exact_uot.py) import it by name
if os.path.join(ROOT, "scripts") not in sys.path:
    sys.path.append(os.path.join(ROOT, "scripts"))

from tiny import INCEPTION_WEIGHTS_NAME  # noqa: E402

# torch.compile's on-disk kernel cache (torch 2.14.1) is not keyed on ATEN_CPU_CAPABILITY: a
# kernel built under one setting and reused under another gave wrong numbers (avx2: a toy map
# off by 0.41) or C++ compile errors (default). One cache per kernel setting, kept between runs
# (assigned, not defaulted: importing torch's packages may already have set torch's default).
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
    tempfile.gettempdir(), f"uotm-inductor-{os.getuid()}-{torch.backends.cpu.get_cpu_capability()}-"
                           f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}")

# Under pytest-xdist (-n N) every worker is a process of its own: one torch thread each, or
# N pools of threads fight over the cores (docs/performance.md measured a 20x slowdown)
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def uotm_cache(tmp_path_factory):
    """The measures' classifiers and floors (datasets_prep.measures) are trained and cached once
    per test run, in a temporary folder (subprocesses inherit it), not in the user's cache; the
    pytest-xdist workers share it (the measures lock their cache: one worker trains, the other
    waits and reads)."""
    previous = os.environ.get("UOTM_CACHE")
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "uotm_cache"
    shared.mkdir(exist_ok=True)
    os.environ["UOTM_CACHE"] = str(shared)
    yield os.environ["UOTM_CACHE"]
    if previous is None:
        del os.environ["UOTM_CACHE"]
    else:
        os.environ["UOTM_CACHE"] = previous


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """TORCH_HOME whose hub cache holds a random-weights Inception of the FID architecture."""
    home = tmp_path_factory.mktemp("torch_home")
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                          init_weights=False)
    torch.manual_seed(0)
    for module in net.modules():  # He init keeps activations O(1) through the 94 layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    os.makedirs(home / "hub" / "checkpoints")
    torch.save(net.state_dict(), home / "hub" / "checkpoints" / INCEPTION_WEIGHTS_NAME)
    return home


@pytest.fixture(scope="session")
def real_data():
    """The folder of the real MNIST and Fashion-MNIST files, from the environment variable
    UOTM_DATA. Without it, or without the files there, the test is skipped, or fails when the
    environment variable CI is set (CI must not pass by skipping)."""
    from datasets_prep.fetch import FILES, FOLDERS

    datadir = os.environ.get("UOTM_DATA")
    why = None if datadir else "UOTM_DATA is not set"
    if datadir:
        absent = [os.path.join(folder, "raw", name) for folder in FOLDERS.values() for name in FILES
                  if not os.path.isfile(os.path.join(datadir, folder, "raw", name))]
        why = f"{datadir} lacks {', '.join(absent)}" if absent else None
    if why:
        message = (f"real data: {why}; fetch it with `python -m datasets_prep.fetch mnist fashion_mnist "
                   f"--datadir DIR`, then set UOTM_DATA=DIR")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return datadir
