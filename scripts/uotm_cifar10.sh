#!/usr/bin/env bash
# UOTM on CIFAR-10 (published: 4x V100, FID 2.97). --batch_size is the global batch.
# Usage: NGPU=4 bash scripts/uotm_cifar10.sh [extra flags, e.g. --datadir /data]
set -euo pipefail
cd "$(dirname "$0")/.."
NGPU=${NGPU:-4}
# One node, NGPU GPUs. Several nodes: set LAUNCH, e.g.
#   LAUNCH="torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500"
LAUNCH=${LAUNCH:-"${PYTHON:-python} -m torch.distributed.run --standalone --nproc_per_node $NGPU"}
$LAUNCH train.py --exp kl --phi1 kl --phi2 kl "$@"
