#!/usr/bin/env bash
# H100 run for issue 3: correctness at real sizes (--check: exact selection, outputs vs
# float32 reference, dense vs SDPA) and the bench CSV. Run from the repo root on the GPU machine.
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-}
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -m questkern bench --check --seq 8k,32k,128k --batch 1,8 --heads 32/32,32/8 --head-dim 128 --dtype bf16 \
  --budget 2048 --page-size 16 2>&1 | tee "$OUT/bench_bf16_d128.log"
python3 -m questkern bench --check --seq 8k,32k --batch 1,8 --heads 32/32,32/8 --head-dim 64 --dtype fp16 \
  --budget 2048 --page-size 16 --out reports/data/check_fp16_d64.csv --force 2>&1 | tee "$OUT/bench_fp16_d64.log"
cp -r reports/data "$OUT/" 2>/dev/null || true
