#!/usr/bin/env bash
# The main job: prove the whole pipeline on this machine, then say what to run next.
#
# Without a GPU (about two minutes, the Triton interpreter at a toy size):
#   tune a few trials into a temporary table folder -> show-config picks that entry up ->
#   bench --check (PASS/FAIL per case, with the tolerance) -> an HTML report -> the verdict
#   and the GPU commands to run next. Interpreter timings mean nothing; the checks do.
# With a GPU: the real bench with --check at the default sizes, and its report.
#
# Installs first (scripts/setup.sh) unless QK_SKIP_SETUP=1; QK_PYTHON picks the interpreter
# (default .venv/bin/python). Writes only under a new temporary folder (printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${QK_SKIP_SETUP:-0}" != 1 ]; then
  echo "installing (scripts/setup.sh) ..."
  bash scripts/setup.sh
fi
PY=${QK_PYTHON:-.venv/bin/python}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONWARNINGS=ignore
TMP=$(mktemp -d "${TMPDIR:-/tmp}/questkern-demo.XXXXXX")
export QUESTKERN_TUNING_DIR=$TMP/tables  # the demo's table is read first (show-config, bench) and nowhere else
qk() { "$PY" -m questkern "$@"; }
step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $1 (full log: $2)"; tail -n 20 "$2"; echo; echo "VERDICT: FAIL at $1"; exit 1; }
t0=$SECONDS

if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  KEY=$("$PY" -c "from questkern.configs.gpus import current_gpu_key as k; print(k())")
  step "1/2 bench --check at the default sizes on $KEY (a few minutes)"
  set +e
  qk bench --check --out "$TMP/bench.csv" 2>&1 | tee "$TMP/bench.log" | grep -E "^\[|check (PASS|FAIL)|^check:|^device"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" = 0 ] || fail "bench --check" "$TMP/bench.log"
  step "2/2 report"
  qk report --name demo --data "$TMP/bench.csv" --out-dir "$TMP" >"$TMP/report.log" 2>&1 || fail report "$TMP/report.log"
  echo "report: $TMP/demo.html"
  printf '\nVERDICT: PASS - every case checked against the float32 references on %s, timed, reported (%ss).\n' \
    "$KEY" $((SECONDS - t0))
  cat <<NEXT

Next, on this GPU:
  questkern tune --gpu $KEY --seq 8k,32k,128k --batch 1,8 --max-time 600   # tune its table (~10 min)
  questkern bench --check --vs-heuristic                                   # tuned vs heuristic, same run
  questkern bench --model llama3-8b --seq 32k --batch 8                    # a whole model's token step
  questkern report --name mine --data reports/data/$KEY                    # everything in one HTML page
NEXT
  exit 0
fi

SHAPE=(--heads 4/2 --head-dim 64 --page-size 16)
step "1/4 tune: 3 trials of select and sparse_decode at a toy size, into $TMP/tables"
qk tune --gpu cpu --seq 1000 --batch 1 "${SHAPE[@]}" --budget 64 --ops select,sparse_decode --trials 3 --verify-rounds 1 \
  --rep-ms 1 --warmup-ms 1 --storage inmemory --out "$TMP/tables" --yes >"$TMP/tune.log" 2>&1 || fail tune "$TMP/tune.log"
grep -E "^plan:|trials \(|^wrote" "$TMP/tune.log" | sed -E 's/( in [0-9]+ s):.*/\1/' || true

step "2/4 show-config: does a call of that shape pick the tuned entry?"
qk show-config --op select --seq 1000 --batch 1 --heads 4/2 --head-dim 64 --budget 64 >"$TMP/show.log" 2>&1 \
  || fail show-config "$TMP/show.log"
grep -E "^chosen|^config" "$TMP/show.log" || true
grep -q "^chosen:    $TMP/tables/" "$TMP/show.log" || fail "show-config did not pick the tuned entry" "$TMP/show.log"
echo "picked: yes (the table just tuned)"

step "3/4 bench --check: 4 toy cases, selection exact and outputs vs the float32 references"
rc=0
qk bench --check --seq 256,1000 --batch 1,2 --heads 4/2 --head-dim 64 --budget 64 --rep-ms 1 --out "$TMP/bench.csv" \
  >"$TMP/bench.log" 2>&1 || rc=$?
grep -E "^\[|check (PASS|FAIL)|^check:" "$TMP/bench.log" | sed -E 's/^(\[[0-9]+\/[0-9]+\] [^:]*):.*/\1/' || true
[ $rc = 0 ] || fail "bench --check" "$TMP/bench.log"

step "4/4 report"
qk report --name demo --data "$TMP/bench.csv" --tuning "$TMP/tables" --out-dir "$TMP" >"$TMP/report.log" 2>&1 \
  || fail report "$TMP/report.log"
echo "report: $TMP/demo.html (interpreter timings, labelled as such)"

printf '\nVERDICT: PASS - on this machine (no GPU, Triton interpreter) the pipeline ran end to end in %ss:\n' $((SECONDS - t0))
cat <<NEXT
  tuned a table, show-config picked its entry, every bench case selected exactly the reference's pages and
  matched the float32 reference within the tolerance, and the report was built. The timings mean nothing here.

Next, on a machine with an NVIDIA GPU (H100, H200, ...):
  bash scripts/demo.sh                                            # the real bench with --check, and its report
  questkern tune --gpu h100 --seq 8k,32k,128k --batch 1,8 --max-time 600   # tune that GPU's table (~10 min)
  questkern bench --check                                         # -> reports/data/<gpu-key>/bench-<UTC time>.csv
  questkern bench --model llama3-8b --seq 32k --batch 8           # a whole model's token step vs SDPA
  questkern report --name mine --data reports/data/<gpu-key>      # one HTML report of that GPU
Files of this run: $TMP
NEXT
