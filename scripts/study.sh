#!/usr/bin/env bash
# The data-efficiency study of docs/study.md: MMSA's TFN, LMF, MulT and late_fusion,
# every augmentation and ablation, train fractions 0.1 / 0.25 / 1.0, seeds 0..N-1,
# paired statistics in results.txt. Extra arguments go to the training command
# (e.g. --data MOSI/unaligned_50.pkl). STUDY_SEEDS, STUDY_EPOCHS, STUDY_OUT override.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m msmix_ext.train \
  --backbones late_fusion,tfn,lmf,mult \
  --augmentations none,mixup,manifold,multimix,msmix,msmix-no-sass,msmix-no-sig,msmix-no-sal \
  --train-fraction 0.1,0.25,1.0 \
  --num-seeds "${STUDY_SEEDS:-10}" --epochs "${STUDY_EPOCHS:-3}" \
  --out "${STUDY_OUT:-docs/study}" "$@"
