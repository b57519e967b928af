#!/usr/bin/env bash
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-}
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m questkern bench --seq 32k,128k --batch 1 --heads 32/32,32/8 --out "$OUT/bench.csv" --force 2>&1 | grep -v "^ *%" | tail -8
python3 scripts/gpu/explore.py 2>&1 | grep -v Warning | grep -v "cfg, _ =" | tail -40
