#!/usr/bin/env bash
# S-JKO on CIFAR-10: 100 JKO steps of h = 0.1 (published FID 2.62 with kl).
# PHI2=kl|chi|softplus (in S-JKO mode softplus is the S-JKO code's 2 softplus(s) - 2 log 2).
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${NGPU:-4}; PHI2=${PHI2:-kl}
# One node, NGPU GPUs. Several nodes: set LAUNCH, e.g.
#   LAUNCH="torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500"
LAUNCH=${LAUNCH:-"${PYTHON:-python} -m torch.distributed.run --standalone --nproc_per_node $NGPU"}
$LAUNCH train.py --exp "sjko_$PHI2" --phi2 "$PHI2" \
    --num_phase 100 --init_h 0.1 --h 0.1 --init_num_iterations 10000 --num_iterations 2000 \
    --use_ema --ema_decay 0.9999 --lr_scheduler "$@"
