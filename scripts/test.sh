#!/usr/bin/env bash
# Install everything, then run the CPU test suite: real Triton kernels through the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TRITON_INTERPRET=1
exec .venv/bin/python -m pytest -q -m "not gpu" tests "$@"
