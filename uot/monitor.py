"""Watching a run: per-iteration statistics, the divergence guard, rank 0's log files, and
the stop signals of a preemption.

StepStats keeps the statistics of each iteration on the device (no host sync in the hot
loop) and remembers the first iteration whose statistics were not finite; `check` raises
Diverged on every rank once any rank met one, or once the weights are not finite.
RunLog owns what rank 0 writes as the run goes: log.txt, stats.jsonl, metrics.json, the
TensorBoard events and the progress bar. On the other ranks its methods do nothing.
"""
import math
import os
import signal
import time

import torch

from uot import dist as udist
from uot.io import RecordLog

# The exit codes of both trainers, besides 0 and a UsageError's 2
PREEMPTED_EXIT_CODE = 75   # EX_TEMPFAIL: "try again"; requeue with --resume auto
DIVERGED_EXIT_CODE = 3
RANK_LOST_EXIT_CODE = 4    # another rank died (uot.dist.lost_ranks_message); resume with --resume auto


class Diverged(Exception):
    """A non-finite loss, potential or weight: the run stops before writing anything more."""


class StepStats:
    NAMES = ("loss_D", "loss_G", "penalty", "v_real", "v_fake", "cost")

    def __init__(self, device, checkpoint="content.pth"):
        """`checkpoint`: the file that keeps the last good state, for the Diverged message."""
        self.checkpoint = checkpoint
        self.total = torch.zeros(len(self.NAMES), device=device)
        self.count = 0
        # the first iteration with a non-finite statistic: [its step, then the values of NAMES]
        self.first_bad = torch.full((1 + len(self.NAMES),), -1.0, dtype=torch.float64, device=device)
        self.since = time.time()

    @torch.no_grad()
    def add(self, step, **values):
        """The statistics of iteration `step` (1-based), 0-d tensors named as in NAMES."""
        row = torch.stack([values[name] for name in self.NAMES]).float()
        self.total += row
        self.count += 1
        bad = ~torch.isfinite(row).all() & (self.first_bad[0] < 0)
        marked = torch.cat([self.first_bad.new_tensor([step]), row.double()])
        self.first_bad.copy_(torch.where(bad, marked, self.first_bad))

    def check(self, checksum, where, hint):
        """Raise Diverged unless every rank's statistics and the weights (their `checksum`) are
        finite. `where(step)` names the step for the message; `hint` says what to try."""
        bad = [row for row in udist.all_gather_tensor(self.first_bad).tolist() if row[0] >= 0]
        if not bad and math.isfinite(checksum):
            return
        if bad:
            step, *values = min(bad)
            what = f"{where(int(step))}: non-finite " + ", ".join(f"{k} {v:.4g}" for k, v in zip(self.NAMES, values))
        else:
            what = "non-finite weights (the losses were finite)"
        raise Diverged(f"training diverged at {what}; {self.checkpoint} keeps the last good checkpoint. "
                       f"Likely cause: {hint}")

    def take_means(self):
        """{name: mean over the iterations since the last call, averaged over ranks}, the
        iteration count and the seconds they took; then starts over."""
        means = (udist.all_reduce_mean(self.total.clone()) / max(self.count, 1)).tolist()
        count, seconds = self.count, time.time() - self.since
        self.total.zero_()
        self.count, self.since = 0, time.time()
        return dict(zip(self.NAMES, means)), count, seconds


class RunLog:
    """Rank 0's running outputs in `run_dir`. A resume from `start_step` drops the records
    written after it, so no step appears twice."""

    def __init__(self, run_dir, total_steps, start_step, desc):
        self.enabled = udist.rank() == 0
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm
        self.stats = RecordLog(os.path.join(run_dir, "stats.jsonl"))
        self.metrics = RecordLog(os.path.join(run_dir, "metrics.json"))
        self.stats.keep_until(start_step)
        self.metrics.keep_until(start_step)
        self.tb = SummaryWriter(run_dir, purge_step=start_step)
        self.text = open(os.path.join(run_dir, "log.txt"), "a", buffering=1, encoding="utf-8")
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc=desc)

    def log(self, message):
        if self.enabled:
            self.bar.write(message)
            self.text.write(message + "\n")

    def record_stats(self, record, scalars):
        """A stats.jsonl line; the keys in `scalars` also go to TensorBoard."""
        if self.enabled:
            self.stats.append(record)
            for key in scalars:
                self.tb.add_scalar(key, record[key], record["step"])

    def record_metrics(self, record):
        if self.enabled:
            self.metrics.append(record)

    def advance(self, **postfix):
        if self.enabled:
            if postfix:
                self.bar.set_postfix(**postfix, refresh=False)
            self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """Also after an error: the bar ends its line before any message that follows."""
        if self.enabled:
            self.bar.close()
            self.tb.close()
            self.text.close()


class StopRequest:
    """SIGTERM / SIGUSR1 (what SLURM sends before the kill) ask the loop to stop cleanly:
    `signal` is None until one arrives.

    A context manager: the previous handlers come back on exit. Repeated signals are not
    escalated to a kill, because torchrun forwards the SIGTERM that SLURM also sends to
    each worker directly."""

    def __enter__(self):
        self.signal = None
        self.previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        self.signal = signum
