#!/usr/bin/env bash
# S-JKO translation between two 2-D toys: the map starts from the source toy's points (not
# N(0, I)) and carries them to the target toy. The public S-JKO toy settings (batch 400,
# lr_g 1e-4, lr_d 2e-5, no regularisation, nz 2, Psi2* kl, h 1), at CPU scale: 20 JKO steps,
# 2000 iterations for the first and 1000 for each other (21,000 in all), a save every 1000.
# Usage: DATASET=moon2spiral|spiral2moon scripts/toy2d_translation.sh [extra flags]
# Extra flags are appended and win. Figure: scripts/plot_toy2d.py --translation.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${DATASET:-moon2spiral}
${PYTHON:-python} train.py --exp sjko_kl --phi2 kl \
    --dataset "$DATASET" --image_size 2 --model_name toy --nz 2 --batch_size 400 \
    --lr_g 1e-4 --lr_d 2e-5 --reg_name none \
    --num_phase 20 --init_h 1 --h 1 --init_num_iterations 2000 --num_iterations 1000 \
    --save_image_every 1000 "$@"
