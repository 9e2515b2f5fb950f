#!/usr/bin/env bash
# UOTM on CIFAR-10 (published: 4x V100, FID 2.97). --batch_size is the global batch.
# Usage: NGPU=4 bash scripts/uotm_cifar10.sh [extra flags, e.g. --datadir /data]
NGPU=${NGPU:-4}
torchrun --standalone --nproc_per_node "$NGPU" train.py --exp kl --phi1 kl --phi2 kl "$@"
