"""train.py with an injected crash: rank FAIL_RANK raises in its FAIL_AT-th iteration (or, with
FAIL_KILL=1, kills itself with SIGKILL there: no exception, no cleanup, as the OOM killer does).

    FAIL_RANK=1 FAIL_AT=3 python -m torch.distributed.run --standalone --nproc_per_node 2 \
        tests/helpers/fail_on_rank.py <train.py flags>

FAIL_STAMP names a file that gets the time of the failure; FAIL_RANK=-1 never fails.
tests/test_reliability.py uses it to check that the other ranks do not hang.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import train  # noqa: E402
from uot.errors import exit_on_usage_error  # noqa: E402


def main():
    fail_rank, fail_at = int(os.environ["FAIL_RANK"]), int(os.environ["FAIL_AT"])
    map_step, calls = train.map_step, []

    def failing_map_step(*args, **kwargs):
        calls.append(None)
        if int(os.environ.get("RANK", 0)) == fail_rank and len(calls) == fail_at:
            if "FAIL_STAMP" in os.environ:
                with open(os.environ["FAIL_STAMP"], "w") as f:
                    f.write(repr(time.time()))
            if os.environ.get("FAIL_KILL") == "1":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected failure on rank {fail_rank} at iteration {fail_at}")
        return map_step(*args, **kwargs)

    train.map_step = failing_map_step
    sys.exit(exit_on_usage_error(lambda: train.main(sys.argv[1:])))


if __name__ == "__main__":
    main()
