#!/usr/bin/env bash
# The data-efficiency study of docs/study.md, in two parts that run side by side (one
# process per core, one torch thread each):
#   A: late_fusion and MMSA's LMF, every augmentation and ablation, train fractions
#      0.1 / 0.25 / 1.0, 3 epochs and at least 120 optimizer steps per run;
#   B: MMSA's MulT (reduced), none / mixup / msmix, the whole training split, 2 epochs.
# Seeds 0..STUDY_SEEDS-1 (default 10). Output: $STUDY_OUT/{A,B}/results.{txt,json,png} and
# train.log; results.compact.json keeps each run's test metrics, epochs and time but
# not its per-epoch curves (docs/study/ commits it, not results.json). Extra arguments go to both parts (e.g. --data MOSI/unaligned_50.pkl).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${STUDY_OUT:-docs/study}
seeds=${STUDY_SEEDS:-10}
start=$(date +%s)
.venv/bin/python -m msmix_ext.train --quiet --threads 1 \
  --backbones late_fusion,lmf \
  --augmentations none,mixup,manifold,multimix,msmix,msmix-no-sass,msmix-no-sig,msmix-no-sal \
  --train-fraction 0.1,0.25,1.0 --epochs 3 --min-steps 120 \
  --num-seeds "$seeds" --out "$out/A" "$@" > /dev/null &
part_a=$!
.venv/bin/python -m msmix_ext.train --quiet --threads 1 \
  --backbones mult --augmentations none,mixup,msmix \
  --train-fraction 1.0 --epochs 2 \
  --num-seeds "$seeds" --out "$out/B" "$@" > /dev/null &
part_b=$!
status=0
wait "$part_a" || status=$?
wait "$part_b" || status=$?
for part in A B; do
  .venv/bin/python - "$out/$part" <<'PY' || status=1
import json, sys
folder = sys.argv[1]
with open(f"{folder}/results.json") as f:
    results = json.load(f)
keep = ("backbone", "augmentation", "seed", "train_fraction", "train_samples", "epochs", "best_epoch",
        "test_metrics")
results["runs"] = [dict({k: run[k] for k in keep}, total_s=run["timing"]["total_s"]) for run in results["runs"]]
with open(f"{folder}/results.compact.json", "w") as f:
    json.dump(results, f, separators=(",", ":"))
PY
done
echo "study: both parts done in $(( $(date +%s) - start )) s (exit $status); logs in $out/{A,B}/train.log"
exit "$status"
