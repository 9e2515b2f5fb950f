#!/usr/bin/env bash
# The learned runs of the 1-D tau sweep (docs/results.md, "The relaxation's error against tau"):
# the UOTM README's 1-D Gaussian mixture problem (p -> q, (kl, kl)) at tau 0.002-20, on networks
# small enough to train to a flat curve in minutes on one core (width 64, one block, lr 1e-4,
# 1,000 epochs); then scripts/exact_uot_tau.py solves the exact problem over the same range.
# Then the exact curve alone of the S-JKO README's 2-D UOTM problem (25gaussian, (kl, kl), h 1):
# its run folder is made by 10 iterations of scripts/toy2d_uotm.sh, for the problem only.
#   OUT=train_logs/tau_q bash scripts/toy_tau_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-train_logs/tau_q}
for tau in 0.002 0.02 0.2 2 20; do
    ${PYTHON:-python} train_toy.py --exp gm_tau --num_data 4000 --data_dim 1 --source_name p --target_name q \
        --phi1 kl --phi2 kl --tau "$tau" --hidden 64 --num_blocks 1 --batch_size 256 --lr 1e-4 --epochs 1000 \
        --save_every 100 --device cpu --resume auto --savepath "$OUT/tau_$tau" "$@"
done
${PYTHON:-python} scripts/exact_uot_tau.py "$OUT/tau_0.02" "$OUT"/tau_{0.002,0.2,2,20} \
    --factors 0.01 0.03 0.1 0.3 1 3 10 30 100 1000 --jsonl assets/exact_uot_tau_q.jsonl \
    --figure assets/exact_uot_tau_q.png
DATASET=25gaussian PHI=kl bash scripts/toy2d_uotm.sh --init_num_iterations 10 --save_image_every 10 --device cpu \
    --outdir "$OUT" --exp problem_25gaussian --overwrite
${PYTHON:-python} scripts/exact_uot_tau.py "$OUT/25gaussian/problem_25gaussian" --problem_only --n 500 \
    --factors 0.01 0.03 0.1 0.3 1 3 10 --jsonl assets/exact_uot_tau_25gaussian.jsonl \
    --figure assets/exact_uot_tau_25gaussian.png
