"""train.py under failure: crash-safe files, kills and preemption with exact resume, the
divergence guard, user errors caught before anything is written, and a crashing DDP rank.

Subprocesses only where a real signal from outside, an exit code or two processes are the
point; everything else calls train.main in-process on tiny networks."""
import errno
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch

import train
from helpers.full_disk import disk_full, fill_disk_at_save
from tiny import TINY_IMAGE, TINY_TOY
from uot.errors import USAGE_EXIT_CODE, exit_on_usage_error
from uot.io import WriteFailed, atomic_write_bytes, load_checkpoint
from uot.phi import PHI, register_phi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAIL_ON_RANK = os.path.join(ROOT, "tests", "helpers", "fail_on_rank.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1")
SJKO = " --num_phase 1 --phi2 kl --init_num_iterations "   # + N: a run of N iterations


def argv(args, outdir, exp="t"):
    return shlex.split(args) + ["--outdir", str(outdir), "--exp", exp, "--device", "cpu"]


def start(command, stderr_path, **env):
    """`python command...` in the background; stderr to a file (a pipe left unread can fill and block)."""
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen([sys.executable] + command, cwd=ROOT, env=dict(ENV, **env),
                                stdout=subprocess.DEVNULL, stderr=stderr)


def stats_steps(run_dir):
    path = run_dir / "stats.jsonl"
    return [json.loads(line)["step"] for line in open(path)] if path.exists() else []


def assert_finite_checkpoint(ckpt):
    for key in ("G", "D", "G_ema"):
        assert all(torch.isfinite(v).all() for v in ckpt[key].values() if v.is_floating_point()), key


def assert_same_weights(a, b):
    assert a["step"] == b["step"]
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")
    torch.testing.assert_close(a["opt_D"]["state"], b["opt_D"]["state"], rtol=0, atol=0)


# ----------------------------------------------------------------------------------
# Files

def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_bytes(path, b"good")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(WriteFailed):
        atomic_write_bytes(path, b"half of the new")
    assert path.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["metrics.json"]   # no temporary file left behind


def test_a_full_disk_keeps_the_last_checkpoint_and_stops_in_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    """The disk fills up while content.pth is written a second time (step 4): no byte of it lands."""
    fill_disk_at_save(monkeypatch, train, 2)
    args = TINY_TOY + SJKO + "20 --save_content_every 2 --save_ckpt_every 1000 --save_image_every 1000"
    with pytest.raises(SystemExit) as exit_:
        exit_on_usage_error(lambda: train.main(argv(args, tmp_path)))
    monkeypatch.undo()
    assert exit_.value.code == USAGE_EXIT_CODE
    content = tmp_path / "8gaussian" / "t" / "content.pth"
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert line.startswith(f"error: cannot write {content} (No space left on device): it needs "), line
    assert "bytes free there; the previous content.pth is unchanged" in line and "--resume auto" in line
    ckpt = load_checkpoint(content)
    assert ckpt["step"] == 2
    assert_finite_checkpoint(ckpt)
    assert not list(content.parent.glob(".tmp-*"))


def test_a_read_only_folder_is_a_failed_write_naming_the_file(tmp_path, monkeypatch):
    """What a read-only mount or a folder without write permission answers (root ignores the mode bits)."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    atomic_write_bytes(tmp_path / "x.json", b"old")
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(WriteFailed, match=r"cannot write .*x\.json \(Read-only file system\): it needs 3 bytes"):
        atomic_write_bytes(tmp_path / "x.json", b"new")
    assert (tmp_path / "x.json").read_bytes() == b"old"


def test_an_outdir_that_cannot_be_created_is_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    makedirs, read_only = os.makedirs, tmp_path / "read_only"

    def refused_below_read_only(path, *args, **kwargs):
        if str(path).startswith(str(read_only)):
            raise OSError(errno.EROFS, "Read-only file system")
        return makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", refused_below_read_only)
    with pytest.raises(SystemExit) as exit_:
        exit_on_usage_error(lambda: train.main(argv(TINY_TOY + SJKO + "2", read_only)))
    assert exit_.value.code == USAGE_EXIT_CODE
    err = capsys.readouterr().err
    assert err == f"error: --outdir: cannot create {read_only}/8gaussian/t (Read-only file system)\n", err


@pytest.mark.parametrize("config, total", [(TINY_TOY, 300), (TINY_IMAGE, 40)], ids=["toy", "digits"])
def test_sigkill_at_a_random_point_leaves_a_checkpoint_that_resumes(config, total, tmp_path):
    # content.pth is rewritten after every iteration, so the kill often lands inside a write
    args = config + SJKO + str(total) + " --save_content_every 1"
    run_dir = tmp_path / config.split()[1] / "t"
    kill_after = random.randint(2, total // 2)
    proc = start(["train.py"] + argv(args, tmp_path), tmp_path / "stderr.txt")
    try:
        while proc.poll() is None and len(stats_steps(run_dir)) < kill_after:
            time.sleep(0.005)
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ckpt = load_checkpoint(run_dir / "content.pth")   # weights_only: no pickled code either
    assert 1 <= ckpt["step"] < total, f"killed after step {kill_after}"
    assert_finite_checkpoint(ckpt)

    assert train.main(argv(args + " --resume auto", tmp_path)) == 0
    assert load_checkpoint(run_dir / "content.pth")["step"] == total
    assert stats_steps(run_dir) == list(range(1, total + 1))   # no step lost, none twice
    assert not [name for name in os.listdir(run_dir) if name.startswith(".tmp-")]


# ----------------------------------------------------------------------------------
# Preemption

def test_sigterm_saves_the_current_step_and_exits_with_the_preemption_code(tmp_path):
    run_dir = tmp_path / "8gaussian" / "t"
    proc = start(["train.py"] + argv(TINY_TOY + SJKO + "100000", tmp_path), tmp_path / "stderr.txt")
    try:
        while proc.poll() is None and len(stats_steps(run_dir)) < 3:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == train.PREEMPTED_EXIT_CODE, (tmp_path / "stderr.txt").read_text()[-2000:]
    # the iteration running at the signal was finished and saved: content.pth is at the last step
    ckpt = load_checkpoint(run_dir / "content.pth")
    assert ckpt["step"] == stats_steps(run_dir)[-1] >= 3
    assert f"stopped by signal at step {ckpt['step']}" in (run_dir / "log.txt").read_text()


def signal_self(sig):
    os.kill(os.getpid(), sig)


@pytest.mark.parametrize("when", ["startup", "first iteration", "checkpoint write"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_at_any_moment_stops_cleanly(when, sig, tmp_path, monkeypatch):
    """The signal is sent by the process to itself from inside train.py, at a chosen moment."""
    saves = []
    if when == "startup":            # before the loop: the first iteration runs, then the stop
        build = train.build_generator
        monkeypatch.setattr(train, "build_generator", lambda cfg: (signal_self(sig), build(cfg))[1])
        stopped_at = 1
    elif when == "first iteration":
        step = train.map_step
        monkeypatch.setattr(train, "map_step", lambda *a, **k: (signal_self(sig), step(*a, **k))[1])
        stopped_at = 1
    else:                            # inside the periodic write of content.pth at step 2
        save = train.atomic_torch_save
        monkeypatch.setattr(train, "atomic_torch_save",
                            lambda obj, path: (saves.append(obj.get("step")), signal_self(sig), save(obj, path)))
        stopped_at = 2
    handler_before = signal.getsignal(sig)
    args = TINY_TOY + SJKO + "50 --save_content_every 2"
    assert train.main(argv(args, tmp_path)) == train.PREEMPTED_EXIT_CODE
    assert signal.getsignal(sig) is handler_before    # train.main puts the old handler back
    assert load_checkpoint(tmp_path / "8gaussian" / "t" / "content.pth")["step"] == stopped_at
    if when == "checkpoint write":
        assert saves == [2]          # the checkpoint just written is not written again


@pytest.mark.parametrize("config", [
    # 1797 digits / 256 = 7 iterations per epoch: stopped mid-epoch, resumed across the epoch end,
    # under the epoch-wise cosine LR
    TINY_IMAGE + " --batch_size 256 --num_epoch 2 --schedule 3",
    TINY_TOY + " --phi2 kl --num_phase 2 --init_num_iterations 6 --num_iterations 6 --lr_scheduler",
    TINY_IMAGE + " --batch_size 256 --num_epoch 2 --data_on_device off --num_workers 0",
], ids=["digits-uotm", "toy-sjko-2-phases", "digits-dataloader"])
def test_resume_after_sigterm_equals_an_uninterrupted_run(config, tmp_path, monkeypatch):
    assert train.main(argv(config, tmp_path, "straight")) == 0
    step, calls = train.map_step, []

    def stop_at_iteration_10(*args, **kwargs):
        calls.append(None)
        if len(calls) == 10:
            signal_self(signal.SIGTERM)
        return step(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train, "map_step", stop_at_iteration_10)
        assert train.main(argv(config, tmp_path, "resumed")) == train.PREEMPTED_EXIT_CODE
    dataset = config.split()[1]
    assert load_checkpoint(tmp_path / dataset / "resumed" / "content.pth")["step"] == 10
    assert train.main(argv(config + " --resume auto", tmp_path, "resumed")) == 0
    assert_same_weights(load_checkpoint(tmp_path / dataset / "straight" / "content.pth"),
                        load_checkpoint(tmp_path / dataset / "resumed" / "content.pth"))


# ----------------------------------------------------------------------------------
# Divergence

@pytest.fixture
def nan_phi():
    """--phi2 nan_from_5: Psi2* is exp until its 5th call (the 5th potential step), then NaN."""
    calls = []

    def nan_from_5(s):
        calls.append(None)
        return torch.expm1(s) * (float("nan") if len(calls) >= 5 else 1.0)

    register_phi("nan_from_5", nan_from_5)
    yield "nan_from_5"
    del PHI["nan_from_5"]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(nan_phi, tmp_path, capsys):
    args = TINY_TOY + f" --num_phase 1 --init_num_iterations 50 --phi1 kl --phi2 {nan_phi} --save_content_every 1"
    assert train.main(argv(args, tmp_path)) == train.DIVERGED_EXIT_CODE
    [err] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert err.startswith("error: training diverged at step 5 (phase 0): non-finite loss_D nan"), err
    assert "Psi* kl" in err and "lower --lr_d" in err and "--r1_gamma" in err and "softplus" in err
    run_dir = tmp_path / "8gaussian" / "t"
    ckpt = load_checkpoint(run_dir / "content.pth")
    assert ckpt["step"] == 4          # the bad step 5 was never saved
    assert_finite_checkpoint(ckpt)
    assert stats_steps(run_dir) == [1, 2, 3, 4]
    assert "training diverged at step 5" in (run_dir / "log.txt").read_text()


def test_non_finite_weights_behind_finite_losses_are_not_saved(tmp_path, monkeypatch, capsys):
    """An inf gradient turns the weights into NaN in Adam's step while the loss was still finite."""
    step, calls = train.map_step, []

    def poison_G_at_iteration_3(G, *args, **kwargs):
        loss = step(G, *args, **kwargs)
        calls.append(None)
        if len(calls) == 3:
            with torch.no_grad():
                next(G.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(train, "map_step", poison_G_at_iteration_3)
    args = TINY_TOY + SJKO + "20 --save_content_every 1 --log_every 20"
    assert train.main(argv(args, tmp_path)) == train.DIVERGED_EXIT_CODE
    assert "non-finite weights" in capsys.readouterr().err
    ckpt = load_checkpoint(tmp_path / "8gaussian" / "t" / "content.pth")
    assert ckpt["step"] == 2
    assert_finite_checkpoint(ckpt)


# ----------------------------------------------------------------------------------
# User errors: one line on stderr, exit code 2, nothing written

def write_png(path, size=10):
    from PIL import Image
    Image.new("RGB", (size, size), (200, 30, 30)).save(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Bad data folders and an output directory that holds a one-iteration run (ngf 8)."""
    root = tmp_path_factory.mktemp("inputs")
    for folder in ("empty", "corrupt", "two_images"):
        (root / folder).mkdir()
    (root / "corrupt" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    write_png(root / "corrupt" / "001.png")
    write_png(root / "two_images" / "0.png")
    write_png(root / "two_images" / "1.png")
    import lmdb
    with lmdb.open(str(root / "bad_keys"), map_size=1 << 20) as env, env.begin(write=True) as txn:
        txn.put(b"image_000", b"\x00" * 12)
    runs = root / "runs"
    assert train.main(argv(TINY_IMAGE + SJKO + "1 --save_content_every 1", runs, "ngf8")) == 0
    # a run killed before its first checkpoint: options.json only
    (runs / "digits" / "killed").mkdir()
    (runs / "digits" / "ngf8" / "options.json").rename(runs / "digits" / "killed" / "options.json")
    (runs / "digits" / "broken").mkdir()
    (runs / "digits" / "broken" / "content.pth").write_bytes(b"PK\x03\x04 truncated")
    return root


IMAGEFOLDER = TINY_IMAGE.replace("digits", "imagefolder")
USER_ERRORS = [
    # (flags, text the one-line message must hold); {in} is the folder of the inputs fixture
    pytest.param(TINY_IMAGE + " --phi2 klx", "unknown Psi* 'klx'", id="unknown Psi*"),
    pytest.param(TINY_IMAGE + " --tau 0", "--tau must be > 0", id="tau"),
    pytest.param(TINY_IMAGE + " --num_phase 2 --h -0.1", "--h must be > 0", id="h"),
    pytest.param(TINY_IMAGE + " --lr_d 0", "--lr_d must be > 0", id="lr_d"),
    pytest.param(TINY_IMAGE + " --lr_g=-1e-4", "--lr_g must be > 0", id="lr_g"),
    pytest.param(TINY_IMAGE + " --num_epoch ten", "argument --num_epoch: invalid int value: 'ten'", id="argparse"),
    pytest.param(TINY_IMAGE + " --image_size 12", "--image_size 12 does not fit --ch_mult 1 2", id="image_size"),
    pytest.param(TINY_IMAGE + " --num_channels 3", "--num_channels 3: --dataset digits has 1 channel", id="num_channels"),
    pytest.param(TINY_IMAGE + " --batch_size 15", "--batch_size 15 is the global batch", id="batch vs world"),
    pytest.param(IMAGEFOLDER + " --datadir {in}/nowhere", "{in}/nowhere does not exist", id="missing datadir"),
    pytest.param(IMAGEFOLDER + " --datadir {in}/empty", "{in}/empty holds no images", id="empty folder"),
    pytest.param(IMAGEFOLDER + " --datadir {in}/corrupt --batch_size 2", "{in}/corrupt/000.png is not a readable image",
                 id="corrupt image"),
    pytest.param(IMAGEFOLDER + " --datadir {in}/two_images", "--batch_size 16 is larger", id="dataset < batch"),
    pytest.param(TINY_IMAGE.replace("digits", "celeba_256") + " --datadir {in}/bad_keys",
                 "LMDB {in}/bad_keys has keys like b'image_000'", id="LMDB keys"),
    pytest.param(TINY_IMAGE + " --outdir {in}/runs --exp new --resume",
                 "--resume: no checkpoint at {in}/runs/digits/new/content.pth", id="resume from nothing"),
    pytest.param(TINY_IMAGE + " --outdir {in}/runs --exp ngf8 --resume --ngf 16",
                 "ngf8/content.pth was made with --ngf 8, this run has 16", id="other architecture"),
    pytest.param(TINY_IMAGE + " --outdir {in}/runs --exp killed --resume auto --nz 8",
                 "killed/options.json was made with --nz 4", id="other architecture, no checkpoint yet"),
    pytest.param(TINY_IMAGE + " --outdir {in}/runs --exp broken --resume",
                 "broken/content.pth is not a readable checkpoint", id="unreadable checkpoint"),
    pytest.param(TINY_IMAGE + " --outdir {in}/runs --exp ngf8", "already holds a run", id="run directory in use"),
    pytest.param(TINY_IMAGE + " --exp new --init_from {in}/runs/digits/ngf8/content.pth --ngf 16",
                 "--init_from: {in}/runs/digits/ngf8/content.pth was made with --ngf 8, this run has 16",
                 id="init_from another architecture"),
    pytest.param(TINY_IMAGE + " --init_from {in}/nowhere.pth", "--init_from {in}/nowhere.pth: no such file",
                 id="init_from nothing"),
    pytest.param(TINY_IMAGE + " --num_phase 2 --phi2 kl --init_num_iterations 0",
                 "--init_num_iterations 0 skips phase 0, which needs a map to start from", id="phase 0 from nothing"),
    pytest.param(TINY_IMAGE + " --device cuda", "--device cuda: no CUDA device", id="no CUDA",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is visible")),
]


def tree(folder):
    """Every path under `folder` with its size and modification time."""
    return {os.path.join(parent, name): (os.stat(os.path.join(parent, name)).st_size,
                                         os.stat(os.path.join(parent, name)).st_mtime_ns)
            for parent, dirs, names in os.walk(folder) for name in dirs + names}


@pytest.mark.parametrize("flags, message", USER_ERRORS)
def test_user_errors_are_one_line_and_exit_code_2(flags, message, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")   # only --batch_size 15 cares: 15 does not split over 2 ranks
    before = tree(inputs)
    args = shlex.split(flags.format(**{"in": inputs}))
    if "--outdir" not in args:
        args += ["--outdir", str(tmp_path / "runs")]
    args = ["--device", "cpu"] + args        # a --device in the case comes later and wins
    with pytest.raises(SystemExit) as exit_:
        exit_on_usage_error(lambda: train.main(args))
    assert exit_.value.code == USAGE_EXIT_CODE
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and out.err.startswith("error: "), out.err
    assert message.format(**{"in": inputs}) in out.err
    assert not (tmp_path / "runs").exists() and tree(inputs) == before   # nothing written


def test_the_script_prints_no_traceback_for_a_user_error(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "--phi1", "klx", "--outdir", str(tmp_path)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == USAGE_EXIT_CODE
    assert proc.stderr.startswith("error: --phi1: unknown Psi* 'klx'") and proc.stderr.count("\n") == 1, proc.stderr
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------
# Several processes

DDP_RUN = TINY_IMAGE + SJKO + "200"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_crashing_rank_under_torchrun_ends_the_job(tmp_path):
    stamp = tmp_path / "failed_at"
    env = dict(ENV, FAIL_RANK="1", FAIL_AT="3", FAIL_STAMP=str(stamp))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           FAIL_ON_RANK] + argv(DDP_RUN, tmp_path), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    ended = time.time()
    assert proc.returncode != 0
    assert "injected failure on rank 1 at iteration 3" in proc.stderr
    assert ended - float(stamp.read_text()) < 60


def launch_ranks(args, tmp_path, **env):
    """Two ranks started by hand, as a cluster launcher (srun) does, without torchrun."""
    port = str(free_port())
    return [start([FAIL_ON_RANK] + argv(args, tmp_path), tmp_path / f"rank{r}.txt", RANK=str(r), LOCAL_RANK=str(r),
                  WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **env) for r in range(2)]


def test_a_crashing_rank_without_torchrun_ends_every_rank(tmp_path):
    stamp = tmp_path / "failed_at"
    ranks = launch_ranks(DDP_RUN, tmp_path, FAIL_RANK="1", FAIL_AT="3", FAIL_STAMP=str(stamp))
    ended = []
    for proc in ranks:
        try:
            proc.wait(timeout=300)
        finally:
            proc.kill()
        ended.append(time.time())
    assert [proc.returncode != 0 for proc in ranks] == [True, True]
    assert "injected failure" in (tmp_path / "rank1.txt").read_text()
    assert "Connection closed by peer" in (tmp_path / "rank0.txt").read_text()   # gloo sees the dead peer at once
    assert max(ended) - float(stamp.read_text()) < 60


def test_sigterm_to_every_rank_saves_once_and_every_rank_exits_75(tmp_path):
    run_dir = tmp_path / "digits" / "t"
    ranks = launch_ranks(DDP_RUN, tmp_path, FAIL_RANK="-1", FAIL_AT="0")
    try:
        while all(proc.poll() is None for proc in ranks) and len(stats_steps(run_dir)) < 2:
            time.sleep(0.01)
        for proc in ranks:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=120) for proc in ranks]
    finally:
        for proc in ranks:
            proc.kill()
    assert codes == [train.PREEMPTED_EXIT_CODE] * 2, (tmp_path / "rank0.txt").read_text()[-2000:]
    step = load_checkpoint(run_dir / "content.pth")["step"]
    assert step % 10 == 0 and step == stats_steps(run_dir)[-1]   # ranks agree on stopping every 10 steps


# A rank killed with SIGKILL (no exception, no cleanup), under torchrun: at a chosen save of
# content.pth between its temporary file and the rename (uot.io's UOT_KILL_BEFORE_RENAME), and
# at a random iteration. 60 iterations of the toy, content.pth every 5.
FAULT_RUN = TINY_TOY + SJKO + "60 --save_content_every 5 --save_image_every 1000 --save_ckpt_every 1000"


def torchrun_pair(tmp_path, exp, log_name, *flags, **env):
    """Both ranks of FAULT_RUN under torchrun (through FAIL_ON_RANK); returns the exit code, the
    seconds it took and what the ranks and torchrun wrote on stderr."""
    env = dict(dict(FAIL_RANK="-1", FAIL_AT="0"), **env)
    began = time.time()
    proc = start(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", FAIL_ON_RANK]
                 + argv(FAULT_RUN + " " + " ".join(flags), tmp_path, exp), tmp_path / log_name, **env)
    try:
        code = proc.wait(timeout=240)
    finally:
        proc.kill()
    return code, time.time() - began, (tmp_path / log_name).read_text()


def assert_no_half_written_file(run_dir):
    """Every file the run writes whole is whole: the checkpoint loads, the JSON files parse."""
    assert_finite_checkpoint(load_checkpoint(run_dir / "content.pth"))
    json.loads((run_dir / "options.json").read_text())
    assert stats_steps(run_dir) == list(range(1, len(stats_steps(run_dir)) + 1))


@pytest.mark.slow
def test_sigkill_of_a_rank_mid_save_and_mid_run_stops_the_survivor_and_resume_auto_is_bit_exact(tmp_path):
    code, _, err = torchrun_pair(tmp_path, "straight", "straight.txt")
    assert code == 0, err[-3000:]
    run_dir = tmp_path / "8gaussian" / "faulty"

    # rank 0 dies inside its second write of content.pth (step 10): the survivor names it
    code, seconds, err = torchrun_pair(tmp_path, "faulty", "mid_save.txt", UOT_KILL_BEFORE_RENAME="content.pth:2")
    assert code != 0 and "rank 1: rank 0 stopped" in err, err[-3000:]
    assert load_checkpoint(run_dir / "content.pth")["step"] == 5     # the previous checkpoint, whole
    assert_no_half_written_file(run_dir)

    # resumed, then rank 1 dies at a random iteration of the resumed run
    stamp = tmp_path / "killed_at"
    kill_at = random.randint(1, 40)
    code, _, err = torchrun_pair(tmp_path, "faulty", "mid_run.txt", "--resume auto", FAIL_RANK="1",
                                 FAIL_AT=str(kill_at), FAIL_KILL="1", FAIL_STAMP=str(stamp))
    stopped = time.time() - float(stamp.read_text())
    assert code != 0 and "rank 0: rank 1 stopped" in err, err[-3000:]
    assert stopped < 30, f"the survivor took {stopped:.0f} s to stop"   # --dist_timeout is the bound: 600
    assert load_checkpoint(run_dir / "content.pth")["step"] == 5 + (kill_at - 1) // 5 * 5
    assert_no_half_written_file(run_dir)

    code, _, err = torchrun_pair(tmp_path, "faulty", "resumed.txt", "--resume auto")
    assert code == 0, err[-3000:]
    assert_same_weights(load_checkpoint(tmp_path / "8gaussian" / "straight" / "content.pth"),
                        load_checkpoint(run_dir / "content.pth"))
    assert stats_steps(run_dir) == list(range(1, 61))
    assert not list(run_dir.glob(".tmp-*"))


# ----------------------------------------------------------------------------------
# SLURM: scripts/slurm_train.sh under a stand-in srun (the task runs here, and gets the
# signals srun forwards) and scontrol (it records a requeue)

SLURM_SCRIPT = os.path.join(ROOT, "scripts", "slurm_train.sh")
FAKE_SRUN = """#!/usr/bin/env bash
while [[ $1 == --* ]]; do shift; done
"$@" & task=$!
trap 'kill -USR1 $task' USR1
trap 'kill -TERM $task' TERM
while kill -0 $task 2>/dev/null; do wait $task; done
wait $task
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
if [ "$1" = show ]; then echo localhost; else echo "$@" >> "$(dirname "$0")/scontrol.log"; fi
"""


def test_the_slurm_script_parses():
    assert subprocess.run(["bash", "-n", SLURM_SCRIPT], capture_output=True).returncode == 0


def test_the_slurm_scripts_signal_stops_train_py_which_it_requeues(tmp_path):
    text = open(SLURM_SCRIPT).read()
    name, lead = re.search(r"^#SBATCH --signal=B:(\w+)@(\d+)$", text, re.M).groups()
    assert 120 <= int(lead) <= 600 and re.search(r"^#SBATCH --requeue$", text, re.M)
    assert "--resume auto" in text and f"PREEMPTED={train.PREEMPTED_EXIT_CODE}" in text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / tool).write_text(body)
        (bin_dir / tool).chmod(0o755)
    env = dict(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="1",
               SLURM_JOB_NODELIST="localhost", GPUS_PER_NODE="2", SLURM_SUBMIT_DIR=ROOT, PYTHON=sys.executable,
               MASTER_PORT=str(free_port()))
    run_dir = tmp_path / "8gaussian" / "t"
    with open(tmp_path / "job.txt", "w") as log:
        job = subprocess.Popen(["bash", SLURM_SCRIPT] + argv(TINY_TOY + SJKO + "100000", tmp_path), cwd=tmp_path,
                               env=dict(ENV, **env), stdout=log, stderr=log)
    try:
        while job.poll() is None and len(stats_steps(run_dir)) < 3:
            time.sleep(0.05)
        job.send_signal(getattr(signal, "SIG" + name))   # what SLURM sends the batch shell before the limit
        code = job.wait(timeout=120)
    finally:
        job.kill()
    log = (tmp_path / "job.txt").read_text()
    assert code == 0, log[-3000:]
    assert (bin_dir / "scontrol.log").read_text() == "requeue 4242\n", log[-3000:]
    step = load_checkpoint(run_dir / "content.pth")["step"]
    assert step % 10 == 0 and step == stats_steps(run_dir)[-1]
    assert f"stopped by signal at step {step}" in (run_dir / "log.txt").read_text()
