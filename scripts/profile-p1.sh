#!/usr/bin/env bash
# Where P1's time goes inside PostgreSQL (docs/benchmarks.md, "What the
# profile shows"): runs the load generator (release build) against a private
# PostgreSQL on a free port that preloads pg_stat_statements, so P1 also
# prints the statements that took the server's time, per command. The
# shared server on 5432 is not touched. Extra arguments go to the generator,
# e.g. `scripts/profile-p1.sh --seconds 10`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/services.sh
source "$ROOT/scripts/services.sh"

bin="$(pg_bin)"
dir="$(mktemp -d /tmp/ledger-profile-XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
run=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres "$dir"; chmod o+x "$dir"
  run=(runuser -u postgres --)
fi
"${run[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
cleanup() {
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
# Default settings, as in the recorded runs, plus the statement statistics.
"${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
  -o "-k $dir -c listen_addresses=127.0.0.1 -p $port -c max_connections=400 \
      -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all \
      -c pg_stat_statements.track_utility=on" >/dev/null

cargo build -q --release -p ledger-api --bin ledger --example loadgen
env -u DATABASE_MIGRATE_URL -u DATABASE_READ_URL DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres" \
  "$ROOT/target/release/examples/loadgen" --ledger "$ROOT/target/release/ledger" "$@"
