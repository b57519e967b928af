#!/usr/bin/env bash
# Rebuild the committed reports (reports/*.html and their main-figure PNGs) from the committed data.
# CPU only, no GPU needed; about a minute. The screenshots need Debian's chromium (scripts/test.sh
# installs it). Usage: bash scripts/reports.sh [example|h100|h200 ...]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-${PYTHON:-python3}}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
Q=(--data reports/data/quality_recall.csv --data reports/data/quality_passkey.csv)

model_csvs() {  # questkern bench --model output of a GPU, when committed
  local f
  for f in "$1"/bench_model*.csv; do [ -e "$f" ] && printf -- '--data\n%s\n' "$f"; done
  return 0
}

for name in "${@:-example h100 h200}"; do
  for n in $name; do
    case $n in
    example)
      "$PY" -m questkern report --force --name example --gpu fixture-gpu-a \
        --title "questkern example report (synthetic fixture data)" --data tests/fixtures/report/data \
        --profiles tests/fixtures/report/profiles --no-tuning --screenshot reports/example-main.png ;;
    h100)
      K=nvidia-h100-80gb-hbm3 D=reports/data/nvidia-h100-80gb-hbm3
      mapfile -t M < <(model_csvs "$D")
      "$PY" -m questkern report --force --name h100 --gpu $K --title "questkern on NVIDIA H100 80GB HBM3" \
        --data $D/bench.csv --data $D/bench_fp16_d64.csv --data $D/bench_vs_heuristic.csv "${M[@]}" "${Q[@]}" \
        --tuning questkern/tuning/tables/$K.json --study-storage sqlite:///tuning/studies/$K.db \
        --study "$K:sparse_decode:bfloat16:d128:h32-32:s32768:b8:p16:k2048:shared" \
        --study "$K:dense_decode:bfloat16:d128:h32-32:s32768:b8:p16" --screenshot reports/h100-main.png ;;
    h200)
      K=nvidia-h200 D=reports/data/nvidia-h200
      mapfile -t M < <(model_csvs "$D")
      "$PY" -m questkern report --force --name h200 --gpu $K --title "questkern on NVIDIA H200" \
        --data $D/bench.csv --data $D/bench_vs_heuristic.csv "${M[@]}" "${Q[@]}" \
        --tuning questkern/tuning/tables/$K.json --study-storage sqlite:///tuning/studies/$K.db \
        --study "$K:sparse_decode:bfloat16:d128:h32-32:s8192:b8:p16:k2048:shared" --screenshot reports/h200-main.png ;;
    *) echo "usage: $0 [example|h100|h200 ...]" >&2; exit 2 ;;
    esac
  done
done
