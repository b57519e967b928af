#!/usr/bin/env bash
# How many tuner trials get within 3% of an exhaustive sweep of one bucket? (~6 minutes)
#
# Bucket: sparse_decode, seq 32k, batch 8, heads 32/8, d=128, bf16, page 16, budget 2048,
# with num_stages=2, fuse_combine=false and combine_warps=4 (the heuristic's values)
# pinned so that the exhaustive sweep (106 valid points, each compiled, checked and
# timed) fits one command. The replayed searches use the same space. Writes:
#   tuning/runs/<gpu-key>-sweep-sparse_decode.json   every point's latency (resumable)
#   tuning/runs/<gpu-key>-convergence.json           trials-to-3% over 50 seeds, TPE and random
# If the sweep does not finish within MAX_TIME (default 420 s) the script exits 3:
# run it again and it continues where it stopped.
set -euo pipefail
PY=${PYTHON:-python}
source "$(dirname "$0")/_env.sh"  # cd to the repository, PYTHONPATH, PY, KEY, FAMILY
mkdir -p tuning/runs
SWEEP="tuning/runs/$KEY-sweep-sparse_decode.json"
rc=0
$PY -m questkern.tuning.convergence sweep --op sparse_decode --seq 32k --batch 8 --heads 32/8 --head-dim 128 \
  --page-size 16 --budget 2048 --fix num_stages=2,fuse_combine=false,combine_warps=4 --rep-ms 40 --warmup-ms 10 \
  --max-time "${MAX_TIME:-420}" --out "$SWEEP" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "sweep not finished (exit $rc): run scripts/gpu/tune_convergence.sh again to continue" >&2
  exit "$rc"
fi
$PY -m questkern.tuning.convergence simulate --sweep "$SWEEP" --seeds 50 --target 1.03 \
  --out "tuning/runs/$KEY-convergence.json" | tee "tuning/runs/$KEY-convergence.log"
