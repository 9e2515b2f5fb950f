#!/usr/bin/env bash
# UOTM (kl, kl) on MNIST on a CPU: the first real-data run of docs/results.md ("UOTM on MNIST").
# Plain MLPs (3 hidden layers of 1024, SiLU; G 4.21M, D 3.15M parameters) on the flattened
# 32 x 32 images, batch 128, Adam at lr 4e-4 for both networks (of three learning rates tried:
# docs/results.md) with the published betas, cosine decay and R1 (0.2), an EMA of
# decay 0.999, tau 0.003 (the published CIFAR-10 cost weight per pixel, 1e-3 x 3072 / 1024),
# 16 epochs of 468 iterations; about 30 minutes on one core of a 2-core AMD EPYC. Every second
# epoch it measures 2,000 samples (datasets_prep.measures: mnist_fd, precision, ...) and, once,
# the same measures of 2,000 held-out test digits (floor.json).
# The data: python -m datasets_prep.fetch mnist --datadir DATADIR (DATADIR defaults to ./data).
# Extra flags are appended and win.
set -euo pipefail
cd "$(dirname "$0")/.."
${PYTHON:-python} train.py --dataset mnist --datadir "${DATADIR:-./data}" --model_name mlp --mlp_width 1024 \
    --mlp_depth 3 --nz 16 --batch_size 128 --lr_g 4e-4 --lr_d 4e-4 --eta_min 1e-5 --ema_decay 0.999 --tau 0.003 \
    --phi1 kl --phi2 kl --seed 0 --exp uotm --num_epoch 16 --schedule 16 --save_image_every 2 \
    --save_ckpt_every 8 "$@"
