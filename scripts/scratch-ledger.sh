#!/usr/bin/env bash
# Sourced after services.sh by the scripts that drive a real `ledger serve`
# from outside (fuzz.sh, browser-tests.sh): one private ledger on a fresh
# database, on a free loopback port, gone again when the script exits.
#
#   scratch_ledger PREFIX LOGFILE [NAME=value ...]
#
# The binary is $LEDGER; the extra NAME=value pairs go into its environment
# (JWT_SECRET, ...). The database is created on the server the owner's URL
# names (DATABASE_MIGRATE_URL when set, else DATABASE_URL) and dropped on
# exit. Sets SCRATCH_BASE to the ledger's http://127.0.0.1:PORT once
# /health answers; exits with the ledger's log if it never does.

scratch_pid=""
scratch_admin=""
scratch_db=""

scratch_stop() {
  if [ -n "$scratch_pid" ]; then kill "$scratch_pid" 2>/dev/null || true; wait "$scratch_pid" 2>/dev/null || true; fi
  if [ -n "$scratch_db" ]; then
    psql "$scratch_admin" -qc "drop database if exists $scratch_db with (force)" >/dev/null 2>&1 || true
  fi
}

scratch_ledger() {
  local prefix="$1" log_file="$2"
  shift 2
  local owner="${DATABASE_MIGRATE_URL:-$DATABASE_URL}"
  scratch_admin="${owner%/*}/postgres"
  scratch_db="${prefix}_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  trap scratch_stop EXIT
  psql "$scratch_admin" -qc "create database $scratch_db" >/dev/null
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  mkdir -p "$(dirname "$log_file")"
  env "$@" DATABASE_URL="${owner%/*}/$scratch_db" LEDGER_LISTEN="127.0.0.1:$port" \
    LEDGER_METRICS_LISTEN=127.0.0.1:0 RUST_LOG=warn \
    "$LEDGER" serve >"$log_file" 2>&1 &
  scratch_pid=$!
  SCRATCH_BASE="http://127.0.0.1:$port"
  for _ in $(seq 1 300); do
    curl -fsS "$SCRATCH_BASE/health" >/dev/null 2>&1 && return 0
    kill -0 "$scratch_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "the ledger did not come up; its log ($log_file):" >&2
  cat "$log_file" >&2
  exit 1
}
