#!/usr/bin/env bash
# UOTM on CIFAR-10 + 1% MNIST outliers (published FID 4.56; OTM 13.82).
NGPU=${NGPU:-4}
torchrun --standalone --nproc_per_node "$NGPU" train.py --dataset cifar10+mnist --exp kl_anomaly \
    --phi1 kl --phi2 kl "$@"
