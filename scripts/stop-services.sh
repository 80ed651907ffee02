#!/usr/bin/env bash
# Stops the private PostgreSQL and NATS that services.sh started (never others).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
if [ -f "$LOCAL/pg/data/postmaster.pid" ]; then
  bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$bin/pg_ctl" -D "$LOCAL/pg/data" -m fast stop
  else "$bin/pg_ctl" -D "$LOCAL/pg/data" -m fast stop; fi
fi
if [ -f "$LOCAL/nats/pid" ]; then kill "$(cat "$LOCAL/nats/pid")" 2>/dev/null; rm -f "$LOCAL/nats/pid"; fi
