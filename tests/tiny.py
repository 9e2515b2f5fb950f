"""Settings and helpers shared by the test modules (no test module imports another).

TINY_IMAGE and TINY_TOY are train.py flags for networks small enough to train in
seconds on a CPU: a two-level NCSN++ on the 8x8 digits, and the 2-D toy MLPs.
"""
import json
import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")

TINY_IMAGE = ("--dataset digits --image_size 8 --num_channels_dae 8 --ch_mult 1 2 --num_res_blocks 1 "
              "--attn_resolutions 4 --ngf 8 --nz 4 --z_emb_dim 16 --n_mlp 2 --batch_size 16 --log_every 1 --ema")
TINY_TOY = ("--dataset 8gaussian --image_size 2 --model_name toy --nz 2 --batch_size 64 --reg_name none "
            "--log_every 1 --ema")   # --ema: S-JKO mode keeps no EMA unless asked

# file name of the FID Inception weights in torch hub's cache (conftest's torch_home fixture)
INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


def argv(args, outdir, exp="t"):
    """train.py's argv for `args` (a flag string), writing under `outdir`, on the CPU."""
    return shlex.split(args) + ["--outdir", str(outdir), "--exp", exp, "--device", "cpu"]


def run(args, tmp_path, exp="t"):
    """train.main in this process; returns its exit code."""
    import train
    return train.main(argv(args, tmp_path, exp))


def run_dir(tmp_path, dataset, exp="t"):
    return tmp_path / dataset / exp


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def torchrun(nproc, script, args):
    """The command line that runs `script` (relative to the repository) under torchrun on the CPU."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            os.path.join(ROOT, script)] + list(args)


def one_line_usage_error(call):
    """The message of the UsageError that `call()` raises, checked to be one line."""
    import pytest
    from uot.errors import UsageError
    with pytest.raises(UsageError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    return message
