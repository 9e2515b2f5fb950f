"""CPU threading defaults of the training scripts: import this module before torch.

libgomp, the OpenMP runtime of PyTorch's x86 wheels, lets a thread that waits for work spin
on its core before it sleeps. Alone on a machine that costs nothing; when other processes
share the cores, the spinning threads take the cores the threads doing the work need, and a
run with 2 threads beside one other job on 2 cores ran many times slower than with 1 thread
(scripts/bench_threads.py; figures in docs/performance.md). OMP_WAIT_POLICY=PASSIVE makes a
waiting thread sleep at once. OpenMP reads it when torch loads, so it must be set before;
a value already in the environment wins.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
