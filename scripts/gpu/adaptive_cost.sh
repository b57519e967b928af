#!/usr/bin/env bash
# H100 run for issue 6: adaptive-budget selection vs fixed top-K (correctness on the GPU,
# then select-only and select+decode latency). Run from the repo root on the GPU machine;
# writes reports/data/adaptive_cost_<gpu>.csv and $OUT/adaptive_cost.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=.:${PYTHONPATH:-}
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/nvidia-smi.txt"
python3 scripts/gpu/adaptive_cost.py 2>&1 | tee "$OUT/adaptive_cost.log"
cp reports/data/adaptive_cost_*.csv "$OUT/" 2>/dev/null || true
