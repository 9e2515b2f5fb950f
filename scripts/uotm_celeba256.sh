#!/usr/bin/env bash
# UOTM on CelebA-HQ-256 (published: 8x V100, FID 6.36). Prepare the data with
# datasets_prep/celeba_to_lmdb.py and pass --datadir to the LMDB or image folder.
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${NGPU:-8}
# One node, NGPU GPUs. Several nodes: set LAUNCH, e.g.
#   LAUNCH="torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500"
LAUNCH=${LAUNCH:-"${PYTHON:-python} -m torch.distributed.run --standalone --nproc_per_node $NGPU"}
$LAUNCH train.py --dataset celeba_256 \
    --exp kl --phi1 kl --phi2 kl --image_size 256 \
    --num_channels_dae 64 --n_mlp 3 --ch_mult 1 1 2 2 4 4 \
    --lr_d 1e-4 --lr_g 2e-4 --schedule 700 --ema_decay 0.999 \
    --batch_size 32 --num_epoch 450 \
    --tau 0.00001 --r1_gamma 5 "$@"
