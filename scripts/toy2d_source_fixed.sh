#!/usr/bin/env bash
# Source-fixed UOTM on a 2-D toy (Psi1* linear, Psi2* = PHI): the S-JKO README's
# command, one JKO phase of 50k iterations, as written.
# Usage: DATASET=25gaussian|twocircles|8gaussian PHI=kl|chi|softplus scripts/toy2d_source_fixed.sh [extra flags]
# Extra flags are appended and win over the ones above.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-25gaussian}; PHI=${PHI:-kl}
${PYTHON:-python} train.py --exp "source_fixed_$PHI" --phi2 "$PHI" \
    --dataset "$DATASET" --image_size 2 --model_name toy --nz 2 --batch_size 400 \
    --lr_g 1e-4 --lr_d 2e-5 --reg_name none \
    --num_phase 1 --init_h 1 --h 1 --init_num_iterations 50000 --save_image_every 5000 "$@"
