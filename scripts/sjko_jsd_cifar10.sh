#!/usr/bin/env bash
# S-JKO-JSD on CIFAR-10 (published FID 2.66): no --phi2 selects the JSD losses.
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${NGPU:-4}
# One node, NGPU GPUs. Several nodes: set LAUNCH, e.g.
#   LAUNCH="torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500"
LAUNCH=${LAUNCH:-"${PYTHON:-python} -m torch.distributed.run --standalone --nproc_per_node $NGPU"}
$LAUNCH train.py --exp sjko_jsd \
    --num_phase 100 --init_h 0.1 --h 0.1 --init_num_iterations 10000 --num_iterations 2000 \
    --use_ema --ema_decay 0.9999 --lr_scheduler "$@"
