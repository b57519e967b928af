#!/usr/bin/env bash
# Issue 17 on the GPU machine (no weights there): `questkern generate` with a randomly initialised
# Llama-3-8B, 32K prompt tokens, batch 1 and 4: tokens/s of SDPA (transformers' caches), the in-house
# dense paged decode and Quest, eager and CUDA-graph captured, plus the peak-memory check of generate()
# with QuestCache vs DynamicCache (limit x(1 + 1/16 + 5%)). About 4-6 minutes on an H100.
#   bash scripts/gpu/generate.sh            # tests + 32K batch 1,4 (the committed figures)
#   bash scripts/gpu/generate.sh bench      # the same shapes through `questkern bench --model` (one step, no transformers)
#   bash scripts/gpu/generate.sh 128k       # 128K prompt tokens, batch 1 (batch 4: 64 GB of K/V, BATCH=1,4 on an H200)
# Writes CSVs and logs under $OUT (default reports/data/<gpu-key>/).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-${PYTHON:-python3}}
KEY=$($PY -c "from questkern.configs.gpus import current_gpu_key as k; print(k())")
OUT=${OUT:-reports/data/$KEY}
mkdir -p "$OUT"
$PY -c "import torch, transformers, triton; print('torch', torch.__version__, '| transformers', transformers.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())" | tee "$OUT/generate_env.txt"
rc=0
case "${1:-32k}" in
32k)
  # graph == eager tokens (QuestCache with the kernels, SDPA on StaticCache), memory check on a small model: ~1 min
  if $PY -c "import pytest" 2>/dev/null; then
    TRITON_INTERPRET=0 timeout 240 $PY -m pytest -q -m gpu --tb=short -p no:cacheprovider tests/integrations/test_hf_gpu.py 2>&1 | tee "$OUT/generate_gpu_tests.log" || rc=1
  else  # no pytest on this machine: the same two tests, called directly
    timeout 150 $PY - <<'PY' 2>&1 | tee "$OUT/generate_gpu_tests.log" || rc=1
import sys, types
mark = types.SimpleNamespace(gpu=None, filterwarnings=lambda *a: None)
sys.modules["pytest"] = types.SimpleNamespace(mark=mark)
sys.path[:0] = ["tests", "tests/integrations"]
import test_hf_gpu as t
for name in ("test_graph_replays_give_the_eager_tokens", "test_generate_peak_memory_within_the_dynamic_cache_plus_metadata"):
    getattr(t, name)()
    print("PASSED", name, flush=True)
PY
  fi
  timeout 420 $PY -m questkern generate --random-config llama3-8b --prompt-tokens 32768 --batch 1,4 --new-tokens 64 \
    --budget 2048 --page-size 16 --dense-layers 2 --modes eager,graph --memory-check \
    --out "$OUT/generate_llama3-8b_32k.csv" --force 2>&1 | tee "$OUT/generate_llama3-8b_32k.log" || rc=1 ;;
128k)
  timeout 560 $PY -m questkern generate --random-config llama3-8b --prompt-tokens 131072 --batch "${BATCH:-1}" --new-tokens 64 \
    --budget 2048 --page-size 16 --dense-layers 2 --modes eager,graph \
    --out "$OUT/generate_llama3-8b_128k.csv" --force 2>&1 | tee "$OUT/generate_llama3-8b_128k.log" || rc=1 ;;
bench)
  timeout 560 $PY -m questkern bench --model llama3-8b --seq 32k --batch 1,4 --budget 2048 --page-size 16 \
    --dense-layers 2 --out "$OUT/bench_model_llama3-8b_32k.csv" --force 2>&1 | tee "$OUT/bench_model_llama3-8b_32k.log" || rc=1 ;;
*)
  echo "usage: $0 [32k|bench|128k]" >&2; exit 2 ;;
esac
exit "$rc"
