#!/usr/bin/env bash
# UOTM on CIFAR-10 + 1% MNIST outliers (published FID 4.56; OTM 13.82).
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${NGPU:-4}
# One node, NGPU GPUs. Several nodes: set LAUNCH, e.g.
#   LAUNCH="torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500"
LAUNCH=${LAUNCH:-"${PYTHON:-python} -m torch.distributed.run --standalone --nproc_per_node $NGPU"}
$LAUNCH train.py --dataset cifar10+mnist --exp kl_anomaly \
    --phi1 kl --phi2 kl "$@"
