#!/usr/bin/env bash
# More H100 table coverage (issue 4, item 9), time-boxed; run from anywhere, on the GPU machine.
#   bash scripts/gpu/tune_more.sh fp16     fp16, d 64 and 128, seq 4k/32k/128k, batch 1/8/32, GQA 32/8, all ops (54 buckets)
#   bash scripts/gpu/tune_more.sh layout   bf16 d128 GQA 32/8, batch 1/8/32: page 32 (budget 2048), budgets 1024 and 4096 (page 16)
#   bash scripts/gpu/tune_more.sh mha      MHA 32/32: fp16 d 64/128 batch 1/8 seq 4k/32k/128k, bf16 d128 batch 32 seq 4k/32k
#                                          (batch 32 at 128K: 69 GB of K/V, left out)
#   bash scripts/gpu/tune_more.sh holes    the buckets earlier time boxes left without an entry: bf16 d128 GQA batch 32
#                                          (4k/32k/128k) and 128K batch 8, fp16 d128 GQA 128K, MHA fp16 d128 128K batch 8,
#                                          budgets 1024/4096 at 128K batch 8/32 (25 buckets)
#   bash scripts/gpu/tune_more.sh holes-b32-128k   the two of them that run's time box cut (bf16 GQA batch 32, 128K,
#                                          sparse and dense decode)
#   bash scripts/gpu/tune_more.sh deep     the Quest step's buckets at 32K batch 1 (select and sparse decode, MHA and GQA,
#                                          bf16 d128) searched ~8x longer per bucket than the time-boxed runs above
#                                          (95 s instead of 12 s): does a longer search beat the heuristic by more?
#   bash scripts/gpu/tune_more.sh gqa-128k-b8   bf16 d128 GQA 32/8, 128K, batch 8, every op (the buckets the H200 table lacked)
# Each writes questkern/tuning/tables/<gpu-key>.json (merged: faster existing entries kept),
# tuning/studies/<gpu-key>-<part>.db and tuning/runs/<gpu-key>-tune-<part>[-*].json|.log, and prints
# tuned vs heuristic timed back to back (--verify-rounds 2). MAX_TIME (seconds, default 480) is shared by a part.
set -euo pipefail
source "$(dirname "$0")/_env.sh"  # cd to the repository, PYTHONPATH, PY, KEY, FAMILY
PART=${1:?usage: tune_more.sh fp16|layout|mha|holes|holes-b32-128k|deep|gqa-128k-b8}
MAX_TIME=${MAX_TIME:-480}
mkdir -p tuning/studies tuning/runs
tune() {  # tune NAME SECONDS ARGS...
  local name=$1 secs=$2; shift 2
  $PY -m questkern tune --gpu "$FAMILY" --heads 32/8 --timeout 12 --max-time "$secs" --rep-ms 30 --warmup-ms 10 \
    --verify-rounds 2 --storage "sqlite:///tuning/studies/$KEY-$PART.db" --out questkern/tuning/tables \
    --summary "tuning/runs/$KEY-tune-$name.json" --replace-summary "$@" 2>&1 | tee "tuning/runs/$KEY-tune-$name.log" \
    || echo "tune_more.sh: $name exited $? (buckets skipped by the time box or failed: see its log); going on" >&2
}
case "$PART" in
deep)
  tune deep "$MAX_TIME" --heads 32/32,32/8 --dtype bf16 --head-dim 128 --seq 32k --batch 1 --page-size 16 --budget 2048 \
    --ops select,sparse_decode --timeout 95 --verify-rounds 3 ;;
gqa-128k-b8)
  tune gqa-128k-b8 "$MAX_TIME" --dtype bf16 --head-dim 128 --seq 128k --batch 8 --page-size 16 --budget 2048 \
    --ops select,sparse_decode,dense_decode --timeout 80 ;;
fp16)
  tune fp16 "$MAX_TIME" --dtype fp16 --head-dim 64,128 --seq 4k,32k,128k --batch 1,8,32 --page-size 16 --budget 2048 \
    --ops select,sparse_decode,dense_decode ;;
layout)
  third=$(( MAX_TIME / 3 ))
  tune layout-page32 "$third" --dtype bf16 --head-dim 128 --seq 4k,32k,128k --batch 1,8,32 --page-size 32 --budget 2048 \
    --ops select,sparse_decode,dense_decode
  tune layout-budget1024 "$third" --dtype bf16 --head-dim 128 --seq 4k,32k,128k --batch 1,8,32 --page-size 16 --budget 1024 \
    --ops select,sparse_decode
  tune layout-budget4096 "$third" --dtype bf16 --head-dim 128 --seq 4k,32k,128k --batch 1,8,32 --page-size 16 --budget 4096 \
    --ops select,sparse_decode ;;
mha)
  tune mha-fp16 $(( MAX_TIME * 3 / 4 )) --heads 32/32 --dtype fp16 --head-dim 64,128 --seq 4k,32k,128k --batch 1,8 \
    --page-size 16 --budget 2048 --ops select,sparse_decode,dense_decode
  tune mha-b32 $(( MAX_TIME / 4 )) --heads 32/32 --dtype bf16 --head-dim 128 --seq 4k,32k --batch 32 \
    --page-size 16 --budget 2048 --ops select,sparse_decode,dense_decode ;;
holes)
  tune holes-gqa-b32 $(( MAX_TIME * 9 / 25 )) --dtype bf16 --head-dim 128 --seq 4k,32k,128k --batch 32 --page-size 16 \
    --budget 2048 --ops select,sparse_decode,dense_decode
  tune holes-gqa-128k-b8 $(( MAX_TIME * 2 / 25 )) --dtype bf16 --head-dim 128 --seq 128k --batch 8 --page-size 16 \
    --budget 2048 --ops sparse_decode,dense_decode
  tune holes-fp16-128k $(( MAX_TIME * 8 / 25 )) --dtype fp16 --head-dim 128 --seq 128k --batch 1,8,32 --page-size 16 \
    --budget 2048 --ops select,sparse_decode,dense_decode
  tune holes-mha-fp16-128k $(( MAX_TIME * 2 / 25 )) --heads 32/32 --dtype fp16 --head-dim 128 --seq 128k --batch 8 \
    --page-size 16 --budget 2048 --ops sparse_decode,dense_decode
  tune holes-budgets-128k $(( MAX_TIME * 4 / 25 )) --dtype bf16 --head-dim 128 --seq 128k --batch 8,32 --page-size 16 \
    --budget 1024,4096 --ops select,sparse_decode ;;
holes-b32-128k)
  tune holes-b32-128k "$MAX_TIME" --dtype bf16 --head-dim 128 --seq 128k --batch 32 --page-size 16 --budget 2048 \
    --ops sparse_decode,dense_decode ;;
*) echo "unknown part $PART (fp16|layout|mha|holes|holes-b32-128k|deep|gqa-128k-b8)" >&2; exit 2 ;;
esac
