#!/usr/bin/env bash
# UOTM (kl, kl) on scikit-learn's bundled 8x8 handwritten digits (1,797 images, no
# download): the CPU demo of the README's quick start. scripts/digits.flags is the digits
# configuration, the one definition that the demo, the digits study (scripts/study_digits.py)
# and the benchmarks (scripts/bench_train.py --config digits, bench_threads.py,
# bench_sjko_phases.py --digits) read: a small NCSN++ map (0.25M parameters) and potential
# (0.19M) at the digits' own 8 px, batch 32; the published CIFAR-10 optimiser and R1; tau 0.048,
# the published cost weight per pixel (tau 1e-3 at CIFAR-10's 3,072 dimensions is 0.048 at the
# digits' 64: docs/results.md shows 1e-3 collapsing here); an EMA of decay 0.99 (0.9999 needs far
# more than these 40 epochs x 56 iterations to leave its initial weights).
# Samples: train_logs/digits/demo/samples_<epoch>.png. Extra flags are appended and win.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2046  # the flags file is split into words on purpose
${PYTHON:-python} train.py $(cat scripts/digits.flags) --exp demo --phi1 kl --phi2 kl \
    --num_epoch 40 --schedule 40 --save_image_every 5 --save_ckpt_every 10 "$@"
