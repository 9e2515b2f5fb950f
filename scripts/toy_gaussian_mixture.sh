#!/usr/bin/env bash
# UOTM OT map between two 1-D Gaussian mixtures (p -> q): the UOTM README's command, as written.
# Extra flags are appended and win over the ones above, e.g. --phi1 linear --phi2 linear for OTM.
set -euo pipefail
cd "$(dirname "$0")/.."
${PYTHON:-python} train_toy.py --exp 1d-gaussian-mixture \
    --num_data 4000 \
    --data_dim 1 \
    --source_name p \
    --target_name q \
    --phi1 kl \
    --phi2 kl \
    --tau 0.02 \
    --epochs 2000 \
    --batch_size 256 --savepath train_logs/GM/GM_uot "$@"
