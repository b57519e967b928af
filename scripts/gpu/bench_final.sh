#!/usr/bin/env bash
# The committed H100 bench CSVs (issues 3 and 7): the one script that writes them (--force replaces the
# committed file; questkern bench alone never does). Each with --check (exact selection, outputs
# vs float32 references). Run from the repo root on the GPU machine; writes under reports/data/<gpu-key>/.
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-}
KEY=$(python3 -c "from questkern.configs.gpus import current_gpu_key as k; print(k())")
D=reports/data/$KEY
mkdir -p "$D"
case "${1:-main}" in
main)  # one command: every figure of the issue-7 targets table (mixed batch and FlexAttention peer included)
  python3 -m questkern bench --check --flex --seq 4k,8k,32k,128k --batch 1,8 --heads 32/32,32/8 --mixed 32:4k-64k \
    --head-dim 128 --dtype bf16 --budget 2048 --page-size 16 --out "$D/bench.csv" --force 2>&1 | tee "$D/bench.log" ;;
fp16)
  python3 -m questkern bench --check --seq 8k,32k,128k --batch 1,8 --heads 32/32,32/8 --head-dim 64 --dtype fp16 \
    --budget 2048 --page-size 16 --out "$D/bench_fp16_d64.csv" --force 2>&1 | tee "$D/bench_fp16_d64.log" ;;
meta)  # page metadata in the key dtype (exact) vs float8_e5m2 (safe-rounded), same run (issues 3 and 7)
  python3 -m questkern bench --check --meta-dtype kv,fp8 --seq 32k,128k --batch 1,8 --heads 32/32,32/8 --head-dim 128 \
    --dtype bf16 --budget 2048 --page-size 16 --out "$D/bench_meta_fp8.csv" --force 2>&1 | tee "$D/bench_meta_fp8.log" ;;
*)
  echo "usage: $0 [main|fp16|meta]" >&2; exit 2 ;;
esac
