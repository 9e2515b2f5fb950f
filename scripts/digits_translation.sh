#!/usr/bin/env bash
# S-JKO translation on scikit-learn's bundled 8x8 digits (no download): the digits of classes
# 0-4 carried to those of 5-9 (--dataset digits0-4to5-9), the CPU-scale analogue of the
# public emnist2mnist. The digits demo's small NCSN++ map and potential, batch 32 and EMA
# 0.99 (scripts/digits_demo.sh); Psi2* kl; h 0.16, the demo's cost weight per pixel (tau
# 0.048 = 1 / (2 d h) at d = 64); 8 JKO steps, 1500 iterations for the first and 750 for each
# other (6750 in all).
# Each save maps the 180 held-out source digits: samples_<n>.png shows them above their images,
# metrics.json gives target_class_share (the digits classifier's share of images in 5-9) and
# transport_cost. Extra flags are appended and win.
set -euo pipefail
cd "$(dirname "$0")/.."
${PYTHON:-python} train.py --dataset digits0-4to5-9 --exp sjko_kl --phi2 kl \
    --image_size 8 --num_channels_dae 16 --ch_mult 1 2 --num_res_blocks 1 --attn_resolutions 4 \
    --n_mlp 2 --z_emb_dim 64 --nz 16 --ngf 8 --use_ema --ema_decay 0.99 --batch_size 32 \
    --num_phase 8 --init_h 0.16 --h 0.16 --init_num_iterations 1500 --num_iterations 750 \
    --save_image_every 250 --save_ckpt_every 750 "$@"
