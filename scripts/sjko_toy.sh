#!/usr/bin/env bash
# The three 2-D toy commands of the S-JKO README, on one dataset.
# Usage: DATASET=25gaussian|twocircles VARIANT=uotm|source_fixed|sjko PHI=kl bash scripts/sjko_toy.sh
DATASET=${DATASET:-25gaussian}; VARIANT=${VARIANT:-sjko}; PHI=${PHI:-kl}
common=(--dataset "$DATASET" --image_size 2 --model_name toy --nz 2 --batch_size 400
        --lr_g 1e-4 --lr_d 2e-5 --reg_name none --save_image_every 5000)
case "$VARIANT" in
  uotm)         python train.py --exp "uotm_$PHI" --phi1 "$PHI" --phi2 "$PHI" "${common[@]}" \
                    --num_phase 1 --init_h 1 --h 1 --init_num_iterations 50000 "${@}" ;;
  source_fixed) python train.py --exp "source_fixed_$PHI" --phi2 "$PHI" "${common[@]}" \
                    --num_phase 1 --init_h 1 --h 1 --init_num_iterations 50000 "${@}" ;;
  sjko)         python train.py --exp "sjko_$PHI" --phi2 "$PHI" "${common[@]}" \
                    --num_phase 10 --init_h 1 --h 1 --init_num_iterations 5000 --num_iterations 5000 "${@}" ;;
  *) echo "VARIANT must be uotm, source_fixed or sjko" >&2; exit 2 ;;
esac
