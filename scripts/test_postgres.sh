#!/usr/bin/env bash
# A throw-away PostgreSQL server for the distributed-tuning tests (tests/tuning/test_postgres.py).
#
#   source scripts/test_postgres.sh && start_test_postgres   # what scripts/test.sh does
#   bash scripts/test_postgres.sh CMD ARGS...                 # run one command with a server, e.g.
#   bash scripts/test_postgres.sh .venv/bin/python -m pytest -q tests/tuning/test_postgres.py
#
# Installs Debian's postgresql package when its binaries are missing (apt-get, as root), then
# initdb's a fresh data directory under a temp dir, starts the server on 127.0.0.1 only, on a
# free port, with trust auth for the local 'postgres' role and durability off (test data), and
# exports QUESTKERN_TEST_PG_DSN=postgresql://postgres@127.0.0.1:PORT/postgres. The server and its
# directory are removed on exit. As root (CI), the server runs as the 'postgres' system user
# (PostgreSQL refuses to run as root). An already set QUESTKERN_TEST_PG_DSN is used as is.

_pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

_pg_as() {  # run a server binary as the account that owns the data directory
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_test_postgres() {
  if [ -n "${_QK_PG_DIR:-}" ]; then
    _pg_as "$_QK_PG_BIN/pg_ctl" -D "$_QK_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$_QK_PG_DIR"
    _QK_PG_DIR=
  fi
}

start_test_postgres() {
  if [ -n "${QUESTKERN_TEST_PG_DSN:-}" ]; then
    return 0
  fi
  _QK_PG_BIN=$(_pg_bin || true)
  if [ -z "$_QK_PG_BIN" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "test_postgres.sh: PostgreSQL is not installed; run as root, or apt-get install postgresql, or set" \
           "QUESTKERN_TEST_PG_DSN to a server where you may create databases" >&2
      return 1
    fi
    echo "installing Debian postgresql for the distributed-tuning tests ..."
    local log
    log=$(mktemp)
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql) \
      >"$log" 2>&1 || { cat "$log"; echo "test_postgres.sh: could not install postgresql" >&2; rm -f "$log"; return 1; }
    rm -f "$log"
    _QK_PG_BIN=$(_pg_bin) || { echo "test_postgres.sh: no initdb under /usr/lib/postgresql/*/bin" >&2; return 1; }
  fi
  _QK_PG_DIR=$(mktemp -d /tmp/questkern-pg.XXXXXX)  # /tmp: the postgres user must reach it
  trap stop_test_postgres EXIT
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$_QK_PG_DIR"
  fi
  _pg_as "$_QK_PG_BIN/initdb" -D "$_QK_PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$_QK_PG_DIR/initdb.log" 2>&1 || { cat "$_QK_PG_DIR/initdb.log"; return 1; }
  local port try
  for try in 1 2 3; do  # a free port may be taken between choosing and binding it: try another
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if _pg_as "$_QK_PG_BIN/pg_ctl" -D "$_QK_PG_DIR/data" -l "$_QK_PG_DIR/server.log" -w -t 30 \
         -o "-c listen_addresses=127.0.0.1 -p $port -k $_QK_PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
         start >/dev/null 2>&1; then
      export QUESTKERN_TEST_PG_DSN="postgresql://postgres@127.0.0.1:$port/postgres"
      return 0
    fi
  done
  cat "$_QK_PG_DIR/server.log" >&2
  echo "test_postgres.sh: the PostgreSQL test server did not start" >&2
  return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run as a script: start, run the command, stop
  set -euo pipefail
  start_test_postgres
  echo "QUESTKERN_TEST_PG_DSN=$QUESTKERN_TEST_PG_DSN"
  rc=0
  "$@" || rc=$?
  exit $rc
fi
