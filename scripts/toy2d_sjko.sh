#!/usr/bin/env bash
# S-JKO on a 2-D toy: the S-JKO README's command, 10 JKO steps of h = 1 and 5000
# iterations each (Psi2* = PHI), as written.
# Usage: DATASET=25gaussian|twocircles|8gaussian PHI=kl|chi|softplus scripts/toy2d_sjko.sh [extra flags]
# Extra flags are appended and win over the ones above, e.g.
#   --init_num_iterations 1000 --num_iterations 1000 for a 10k-iteration run.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-25gaussian}; PHI=${PHI:-kl}
${PYTHON:-python} train.py --exp "sjko_$PHI" --phi2 "$PHI" \
    --dataset "$DATASET" --image_size 2 --model_name toy --nz 2 --batch_size 400 \
    --lr_g 1e-4 --lr_d 2e-5 --reg_name none \
    --num_phase 10 --init_h 1 --h 1 --init_num_iterations 5000 --num_iterations 5000 \
    --save_image_every 5000 "$@"
