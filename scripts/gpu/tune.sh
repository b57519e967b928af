#!/usr/bin/env bash
# Time-boxed real tuning on this GPU (one command, ~8 minutes; run from anywhere).
#
# Sweep: seq 8k,32k,128k x batch 1,8 x heads 32/32,32/8, d=128, bf16, page 16,
# budget 2048, ops select,sparse_decode,dense_decode = 36 buckets sharing MAX_TIME
# seconds (default 420). Writes, under the repository:
#   questkern/tuning/tables/<gpu-key>.json   the shipped lookup table (merged; faster existing entries kept)
#   tuning/studies/<gpu-key>.db              the Optuna studies (rerun this script to resume/extend them)
#   tuning/runs/<gpu-key>-tune.json|.log     the run summary: per-bucket winners and speedups
# and prints tuned-vs-heuristic speedups and their geometric mean, both configs timed
# back to back in this run (--verify-rounds 3). Then shows that the lookup picks the table.
# Overrides: OPS (default select,sparse_decode,dense_decode), TAG (suffix of the study and run files),
# FORCE=1 (replace existing entries even when faster: after a kernel change made them stale).
set -euo pipefail
PY=${PYTHON:-python}
source "$(dirname "$0")/_env.sh"  # cd to the repository, PYTHONPATH, PY, KEY, FAMILY
echo "device key: $KEY (family $FAMILY)"
mkdir -p tuning/studies tuning/runs
$PY -m questkern tune --gpu "$FAMILY" \
  --seq 8k,32k,128k --batch 1,8 --heads 32/32,32/8 --head-dim 128 --dtype bf16 \
  --page-size 16 --budget 2048 --ops "${OPS:-select,sparse_decode,dense_decode}" ${FORCE:+--force} \
  --timeout 15 --max-time "${MAX_TIME:-420}" --rep-ms 40 --warmup-ms 10 --verify-rounds 3 \
  --storage "sqlite:///tuning/studies/$KEY${TAG:+-$TAG}.db" --out questkern/tuning/tables \
  --summary "tuning/runs/$KEY-tune${TAG:+-$TAG}.json" --replace-summary 2>&1 | tee "tuning/runs/$KEY-tune${TAG:+-$TAG}.log" \
  || echo "tune.sh: questkern tune exited $? (buckets skipped by --max-time or failed: see the log)" >&2
$PY -m questkern show-config --op sparse_decode --seq 32k --batch 8 --heads 32/8 --head-dim 128 \
  --page-size 16 --budget 2048 | tee -a "tuning/runs/$KEY-tune${TAG:+-$TAG}.log"
