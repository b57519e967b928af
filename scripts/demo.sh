#!/usr/bin/env bash
# Install everything, then run the main job: `questkern bench` (interpreter at a toy size without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/questkern bench "$@"
