#!/usr/bin/env bash
# UOTM on the 1-D outlier toy: the UOTM README's command, as written.
# Extra flags are appended and win over the ones above, e.g. the OTM baseline:
#   scripts/toy_outlier.sh --phi1 linear --phi2 linear --savepath train_logs/outlier/outlier_otm
set -euo pipefail
cd "$(dirname "$0")/.."
${PYTHON:-python} train_toy.py --exp outlier \
    --num_data 4000 \
    --data_dim 1 \
    --p 0.01 \
    --source_name noise \
    --target_name outlier \
    --phi1 kl \
    --phi2 kl \
    --tau 0.1 \
    --regularize \
    --lmbda 0.01 \
    --epochs 400 \
    --batch_size 256 --savepath train_logs/outlier/outlier_uot --lr 1e-4 "$@"
