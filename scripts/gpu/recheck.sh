#!/usr/bin/env bash
# Issue 4's "tuned vs heuristic default, geometric mean over buckets, measured in one run".
#   table [--update]: every entry of this GPU's shipped table and today's heuristic default for its bucket,
#          each checked against the float32 reference, then timed back to back (3 alternating
#          rounds, low median): `questkern recheck`. The summary is rewritten after every entry;
#          if MAX_TIME (default 540 s) runs out, rerun the same command to continue (exit 3 until done).
#   bench: the whole decode step and the dense decode with the table's configs vs the heuristic's,
#          in one `questkern bench --vs-heuristic` run (every case checked).
# Run from the repository root on the GPU machine.
set -uo pipefail
export PYTHONUNBUFFERED=1
source "$(dirname "$0")/_env.sh"  # cd to the repository, PYTHONPATH, PY, KEY, FAMILY
R=tuning/runs
D=reports/data/$KEY
mkdir -p "$R" "$D"
case "${1:-table}" in
table)
  $PY -m questkern recheck --rounds 3 --rep-ms 50 --warmup-ms 10 --max-time "${MAX_TIME:-540}" \
    --summary "$R/$KEY-recheck.json" "${@:2}" 2>&1 | tee -a "$R/$KEY-recheck.log"
  exit "${PIPESTATUS[0]}" ;;
bench)
  $PY -m questkern bench --vs-heuristic --check --seq 4k,32k,128k --batch 1,8 --heads 32/32,32/8 --mixed 32:4k-64k \
    --head-dim 128 --dtype bf16 --budget 2048 --page-size 16 --rep-ms 100 --out "$D/bench_vs_heuristic.csv" --force 2>&1 \
    | tee "$D/bench_vs_heuristic.log"
  exit "${PIPESTATUS[0]}" ;;
*)
  echo "usage: $0 [table|bench]" >&2; exit 2 ;;
esac
