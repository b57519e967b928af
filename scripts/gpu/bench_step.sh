#!/usr/bin/env bash
# Issue 15's committed H200 figures, each in one run with its baselines and --check:
#   kernel  the attention step at batch 1/8 and the mixed batch-32 case, fused vs classic path vs SDPA
#   model   the whole token step of llama3-8b-shaped models (SDPA / dense / Quest fused / Quest classic / none)
#   hier    issue 19: page-16 select vs hierarchical p64/sub16 select (equal metadata bytes), GQA 32/8
#   reuse   issue 19: llama3-8b token step, every-step Quest vs reuse every 4/8 and drift 0.9, with SDPA
#   model-hier  issue 19: llama3-8b token step with every layer's cache p64/sub16 (compare with `model`)
# Run from the repo root on the GPU machine; writes under reports/data/<gpu-key>/ (and copies to $OUT if set).
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-}
KEY=$(python3 -c "from questkern.configs.gpus import current_gpu_key as k; print(k())")
D=reports/data/$KEY
mkdir -p "$D"
case "${1:-kernel}" in
kernel)
  python3 -m questkern bench --check --compare-paths --seq 32k,128k --batch 1,8 --heads 32/32,32/8 --mixed 32:4k-64k \
    --head-dim 128 --dtype bf16 --budget 2048 --page-size 16 --out "$D/bench_step.csv" --force 2>&1 | tee "$D/bench_step.log" ;;
model)
  python3 -m questkern bench --model llama3-8b --seq 32k,128k --batch 1,8 --compare-paths \
    --out "$D/bench_model.csv" --force 2>&1 | tee "$D/bench_model.log" ;;
hier)
  python3 -m questkern bench --check --seq 32k,128k --batch 1,8 --heads 32/8 --head-dim 128 --dtype bf16 --budget 2048 \
    --page-size 16,64 --sub-page-size 16 --out "$D/bench_hier.csv" --force 2>&1 | tee "$D/bench_hier.log" ;;
reuse)
  python3 -m questkern bench --model llama3-8b --seq 32k,128k --batch 1,8 --reselect-every 4,8 --drift 0.9 \
    --out "$D/bench_model_reuse.csv" --force 2>&1 | tee "$D/bench_model_reuse.log" ;;
model-hier)
  python3 -m questkern bench --model llama3-8b --seq 32k,128k --batch 1,8 --page-size 64 --sub-page-size 16 \
    --out "$D/bench_model_hier.csv" --force 2>&1 | tee "$D/bench_model_hier.log" ;;
*)
  echo "usage: $0 [kernel|model|hier|reuse|model-hier]" >&2; exit 2 ;;
esac
