#!/usr/bin/env bash
# GPU: Nsight Compute profile of one 32K Quest decode step (MHA 32 heads, d=128, bf16, page 16,
# budget 2048, batch 1), plus the in-house dense decode of the same cache for comparison, and
# the NVTX overhead measurement. Run from anywhere; writes under the repository:
#   profiles/<gpu-key>/<UTC stamp>-decode-32k-mha/    (profile.ncu-rep, raw.csv, summary.csv, command.txt, meta.json)
#   profiles/<gpu-key>/<UTC stamp>-dense-32k-mha/
#   reports/data/<gpu-key>/nvtx_overhead.json
# TOOL=ncu (default) fails loudly when ncu is missing or cannot read counters;
# TOOL=auto falls back to torch.profiler (Chrome trace) with a note instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
TOOL=${TOOL:-ncu}
SHAPE=(--seq 32k --batch 1 --heads 32/32 --head-dim 128 --dtype bf16 --page-size 16 --budget 2048 --gqa-mode shared)
"$PY" -m questkern profile --name decode-32k-mha --mode quest "${SHAPE[@]}" --tool "$TOOL" "$@"
"$PY" -m questkern profile --name dense-32k-mha --mode dense "${SHAPE[@]}" --tool "$TOOL" "$@"
"$PY" scripts/gpu/nvtx_overhead.py
