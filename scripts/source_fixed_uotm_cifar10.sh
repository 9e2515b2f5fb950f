#!/usr/bin/env bash
# Source-fixed UOTM on CIFAR-10 (one JKO phase of 120k iterations; published FID 7.53).
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${NGPU:-4}; PHI2=${PHI2:-kl}
# One node, NGPU GPUs. Several nodes: set LAUNCH, e.g.
#   LAUNCH="torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500"
LAUNCH=${LAUNCH:-"${PYTHON:-python} -m torch.distributed.run --standalone --nproc_per_node $NGPU"}
$LAUNCH train.py --exp "source_fixed_$PHI2" --phi2 "$PHI2" \
    --num_phase 1 --init_h 0.1 --h 0.1 --init_num_iterations 120000 \
    --use_ema --ema_decay 0.9999 --lr_scheduler "$@"
