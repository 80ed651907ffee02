#!/usr/bin/env bash
# Rewrites `.sqlx/`, the shapes of the statements checked by the query
# macros (`sqlx::query!`, `query_as!`, `query_scalar!`), which every build
# reads (.cargo/config.toml sets SQLX_OFFLINE=true). Run it after changing a
# statement or a migration and commit `.sqlx/` with the change.
#
#   scripts/sqlx-prepare.sh          rewrite .sqlx/
#   scripts/sqlx-prepare.sh --check  fail when .sqlx/ is not what the
#                                    statements and migrations give (CI)
#
# The statements are described by a scratch database that has
# migrations/*.sql applied in order, created on the server the owner's URL
# names (DATABASE_MIGRATE_URL when set, else DATABASE_URL) and dropped on
# exit. The migrations go in with psql, not `ledger migrate`: building the
# binary needs `.sqlx/` to be current already. No sqlx-cli is needed: the
# macros, built with SQLX_OFFLINE=false and SQLX_OFFLINE_DIR set, describe
# each statement against DATABASE_URL and write what they saw there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/services.sh
. scripts/services.sh

log() { printf '[sqlx-prepare] %s\n' "$*" >&2; }

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

owner="${DATABASE_MIGRATE_URL:-$DATABASE_URL}"
admin="${owner%/*}/postgres"
db="ledger_sqlx_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
out=""
cleanup() {
  psql "$admin" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  if $check && [ -n "$out" ]; then rm -rf "$out"; fi
}
trap cleanup EXIT

psql "$admin" -qc "create database $db" >/dev/null
scratch="${owner%/*}/$db"
# 0008_roles.sql grants on sqlx's own bookkeeping table, which `ledger
# migrate` creates before the first migration: created here the same way.
psql "$scratch" -qv ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE TABLE _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
    success BOOLEAN NOT NULL,
    checksum BYTEA NOT NULL,
    execution_time BIGINT NOT NULL
);
SQL
for migration in migrations/*.sql; do
  # One transaction per file, as `ledger migrate` applies them.
  psql "$scratch" -q1v ON_ERROR_STOP=1 -f "$migration" >/dev/null
done

if $check; then
  out="$(mktemp -d)"
else
  out="$ROOT/.sqlx"
  rm -rf "$out"
  mkdir -p "$out"
fi

# Cargo does not know that a macro's output depends on the database, so the
# sources that hold query macros are touched: their crates are expanded
# again (and, after this, built again once by the next ordinary build).
grep -rlE --include='*.rs' 'sqlx::query[a-z_]*!' domain infra projections api tests \
  | xargs -r touch || true
log "describing the statements against $db"
if ! SQLX_OFFLINE=false DATABASE_URL="$scratch" SQLX_OFFLINE_DIR="$out" \
  cargo check -q --workspace --all-targets; then
  log "the statements above do not fit the schema the migrations give"
  exit 1
fi

if $check; then
  committed="$ROOT/.sqlx"
  [ -d "$committed" ] || committed="$(mktemp -d)"
  if ! difference="$(diff -ru "$committed" "$out")"; then
    log ".sqlx/ is not what the statements and migrations give (run scripts/sqlx-prepare.sh, commit .sqlx/)"
    names="$(diff <(ls "$committed") <(ls "$out") || true)"
    if [ -n "$names" ]; then
      log "statements (< committed, > wanted):"
      printf '%s\n' "$names" >&2
    fi
    printf '%s\n' "$difference" >&2
    exit 1
  fi
  log ".sqlx/ is current ($(ls "$out" | wc -l) statements)"
else
  log "wrote $(ls "$out" | wc -l) statements into .sqlx/"
fi
