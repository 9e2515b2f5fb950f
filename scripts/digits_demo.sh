#!/usr/bin/env bash
# UOTM (kl, kl) on scikit-learn's bundled 8x8 handwritten digits (1,797 images, no
# download): the CPU demo of the README's quick start. A small NCSN++ map (0.82M
# parameters) and potential (0.77M) at the digits' own 8 px; the published CIFAR-10
# optimiser, cost and R1 settings otherwise, with an EMA of decay 0.999 (0.9999 needs
# far more than these 160 epochs x 28 iterations to leave its initial weights).
# Samples: train_logs/digits/demo/samples_<epoch>.png. Extra flags are appended and win.
set -euo pipefail
cd "$(dirname "$0")/.."
${PYTHON:-python} train.py --dataset digits --exp demo --phi1 kl --phi2 kl \
    --image_size 8 --num_channels_dae 32 --ch_mult 1 2 --num_res_blocks 1 --attn_resolutions 4 \
    --n_mlp 2 --z_emb_dim 64 --nz 16 --ngf 16 \
    --ema_decay 0.999 --batch_size 64 --num_epoch 160 --schedule 160 --save_image_every 20 --save_ckpt_every 40 "$@"
