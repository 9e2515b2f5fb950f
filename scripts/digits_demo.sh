#!/usr/bin/env bash
# UOTM (kl, kl) on scikit-learn's bundled 8x8 handwritten digits (no download): the CPU demo
# of the README's quick start, and the digits study's uotm_kl row at seed 0
# (scripts/study_digits.py). scripts/digits_mlp.flags is its configuration, the one
# definition that the study reads too: plain MLPs (3 hidden layers of 512, SiLU; 0.60M + 0.56M
# parameters) on the flattened 8x8 images, trained on the 1,437 digits outside the 360 that
# the digits measure holds out; batch 128, Adam lr 1e-3 for both networks with the published
# betas, cosine decay and R1; an EMA of decay 0.99; tau 0.024 (the study's tau sweep:
# docs/results.md). 180 epochs of 11 iterations.
# Samples: train_logs/digits_train/demo/samples_<epoch>.png, measures in metrics.json.
# Extra flags are appended and win.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2046  # the flags file is split into words on purpose
${PYTHON:-python} train.py $(cat scripts/digits_mlp.flags) --exp demo --phi1 kl --phi2 kl --seed 0 \
    --num_epoch 180 --schedule 180 --save_image_every 20 --save_ckpt_every 60 "$@"
