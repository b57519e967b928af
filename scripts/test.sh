#!/usr/bin/env bash
# Install everything, then run the CPU test suite: real Triton kernels through the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/report/test_browser.py renders the HTML report in Debian's headless Chromium
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian chromium for the report's browser test ..."
  log=$(mktemp)
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >"$log" 2>&1 \
    || { cat "$log"; echo "scripts/test.sh: could not install chromium" >&2; exit 1; }
  rm -f "$log"
fi
# tests/tuning/test_postgres.py runs distributed tuning against a real PostgreSQL server:
# Debian's postgresql, on 127.0.0.1 with its own data dir (QUESTKERN_TEST_PG_DSN), stopped on exit
source scripts/test_postgres.sh
start_test_postgres
# lint and types first (configured in pyproject.toml: [tool.ruff], [tool.mypy]); each fails the run
echo "ruff check, ruff format --check ..."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "mypy ..."
.venv/bin/mypy
export TRITON_INTERPRET=1
rc=0
.venv/bin/python -m pytest -q -m "not gpu" tests "$@" || rc=$?
exit "$rc"
