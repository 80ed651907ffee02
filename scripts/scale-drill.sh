#!/usr/bin/env bash
# Throughput and p99 of reserves through 1 and through 3 `ledger serve`
# processes on one database, then drill R1 (500 overlapping reserves through
# 3 processes) while that load runs. Figures and how to read them:
# docs/scaling.md.
#
#   scripts/scale-drill.sh                 # 20 s per phase, 32 connections
#   SCALE_SECONDS=60 SCALE_CONNECTIONS=64 scripts/scale-drill.sh
#   SCALE_R1=0 scripts/scale-drill.sh      # skip R1 under load
#
# The load is wrk (Debian package `wrk`, installed when missing) with a Lua
# script posting one-night reserves, signed tokens of one agency, on random
# properties (SCALE_PROPERTIES, default 1,000) and random nights over ten
# years, so conflicts (409) stay rare. The ledger runs from the release build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/services.sh

SECONDS_PER_PHASE="${SCALE_SECONDS:-20}"
CONNECTIONS="${SCALE_CONNECTIONS:-32}"
PROPERTIES="${SCALE_PROPERTIES:-1000}"
RUN_R1="${SCALE_R1:-1}"
export JWT_SECRET="${JWT_SECRET:-test-secret-for-the-ledger-integration-tests}"
NATS_SERVER="${NATS_SERVER:-$(nats_bin)}"
export NATS_SERVER

command -v wrk >/dev/null || apt_install wrk
# SCALE_LEDGER: a ledger binary to use instead of the release build (e.g.
# target/debug/ledger to try the script itself; its figures mean nothing).
if [ -n "${SCALE_LEDGER:-}" ]; then
  LEDGER="$SCALE_LEDGER"
else
  log "building the release binary"
  cargo build --release -q -p ledger-api --bin ledger
  LEDGER="$ROOT/target/release/ledger"
fi

WORK="$(mktemp -d -t ledger-scale.XXXXXX)"
DB="ledger_scale_$(date +%s)_$$"
DB_URL="postgres://postgres@$(url_without_user "$DATABASE_URL" | sed 's#/.*##')/$DB"
ADMIN_URL="postgres://postgres@$(url_without_user "$DATABASE_URL" | sed 's#/.*##')/postgres"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_ledger N: starts the N-th process; its port goes to PORTS[N].
PORTS=()
start_ledger() {
  local port
  port="$(free_port)"
  DATABASE_URL="$DB_URL" LEDGER_LISTEN="127.0.0.1:$port" LEDGER_METRICS_LISTEN=127.0.0.1:0 \
    RUST_LOG=warn "$LEDGER" serve >"$WORK/ledger-$1.log" 2>&1 &
  PIDS+=("$!")
  PORTS[$1]="$port"
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && return 0
    sleep 0.1
  done
  log "ledger $1 did not come up:"; cat "$WORK/ledger-$1.log" >&2; exit 1
}

AGENCY="$(python3 -c 'import uuid; print(uuid.uuid4())')"
TOKEN="$("$LEDGER" token --agency "$AGENCY" --role admin --sub scale-drill --ttl 2h)"
export TOKEN

start_ledger 0
log "registering $PROPERTIES properties"
mkdir -p "$WORK/registered"
seq 1 "$PROPERTIES" | xargs -P 8 -I{} curl -fs -o "$WORK/registered/{}.json" \
  -X POST "http://127.0.0.1:${PORTS[0]}/api/v1/properties" \
  -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
  -d '{"name":"Scale {}","timezone":"Europe/Lisbon"}'
python3 -c 'import glob, json, sys
for path in glob.glob(sys.argv[1] + "/*.json"):
    print(json.load(open(path))["id"])' "$WORK/registered" >"$WORK/properties.txt"
[ "$(wc -l <"$WORK/properties.txt")" -eq "$PROPERTIES" ] || { log "property registration failed"; exit 1; }
export SCALE_PROPERTY_FILE="$WORK/properties.txt"

cat >"$WORK/reserve.lua" <<'LUA'
-- One-night reserves on random properties and nights, signed with $TOKEN.
local properties = {}
for line in io.lines(os.getenv("SCALE_PROPERTY_FILE")) do
  properties[#properties + 1] = line
end
local token = os.getenv("TOKEN")
local threads = {}
statuses = {}

function setup(thread)
  thread:set("id", math.random(1, 1000000))
  threads[#threads + 1] = thread
end
-- Each wrk process gets its own number after `--`, so the processes (and
-- their threads) post different stays.
function init(args) math.randomseed(os.time() + 7919 * tonumber(args[1] or 0) + id) end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function request()
  local property = properties[math.random(1, #properties)]
  local day = math.random(0, 3650)
  local t = os.time({year = 2031, month = 1, day = 1, hour = 12}) + day * 86400
  local body = string.format(
    '{"property_id":"%s","check_in":"%s","check_out":"%s","guest":{"name":"Load Guest"}}',
    property, os.date("!%Y-%m-%d", t), os.date("!%Y-%m-%d", t + 86400))
  return wrk.format("POST", "/api/v1/bookings", {
    ["authorization"] = "Bearer " .. token,
    ["content-type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  local tally = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      tally[status] = (tally[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(tally) do parts[#parts + 1] = status .. ":" .. count end
  io.write("STATUSES " .. table.concat(parts, ",") .. "\n")
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d seconds=%.2f rps=%.1f p50_ms=%.2f p99_ms=%.2f non2xx=%d errors=%d\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

# load NAME SECONDS PORT...: one wrk per port, connections split between
# them, in parallel; prints the summed rate and the worst p99.
load() {
  local name="$1" seconds="$2"
  shift 2
  local per=$((CONNECTIONS / $#)) i=0 pids=()
  [ "$per" -ge 1 ] || per=1
  for port in "$@"; do
    wrk -t 1 -c "$per" -d "${seconds}s" -s "$WORK/reserve.lua" "http://127.0.0.1:$port" -- "$i" \
      >"$WORK/wrk-$name-$i.txt" 2>&1 &
    pids+=("$!")
    i=$((i + 1))
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  grep -h '^STATUSES' "$WORK"/wrk-"$name"-*.txt | sed "s/^/$name replies by status: /"
  grep -h '^RESULT' "$WORK"/wrk-"$name"-*.txt | python3 -c "
import sys
rows = [dict(kv.split('=') for kv in line.split()[1:]) for line in sys.stdin]
rps = sum(float(r['rps']) for r in rows)
p99 = max(float(r['p99_ms']) for r in rows)
p50 = max(float(r['p50_ms']) for r in rows)
bad = sum(int(r['non2xx']) for r in rows)
err = sum(int(r['errors']) for r in rows)
n = sum(int(r['requests']) for r in rows)
print(f'$name: {n} reserves, {rps:.0f}/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms (worst process), non-2xx {bad}, socket errors {err}')
"
}

# CPU seconds the ledger processes have used so far, together.
cpu_seconds() {
  local pid total=0
  for pid in "${PIDS[@]}"; do total=$((total + $(ps -o times= -p "$pid"))); done
  echo "$total"
}

rss() {
  local pid
  for pid in "${PIDS[@]}"; do
    printf 'ledger pid %s RSS %s MB\n' "$pid" "$(($(ps -o rss= -p "$pid") / 1024))"
  done
}

echo "== machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $CONNECTIONS connections, ${SECONDS_PER_PHASE}s per phase"
cpu=$(cpu_seconds)
load "1-process" "$SECONDS_PER_PHASE" "${PORTS[0]}"
echo "1-process: ledger used $(($(cpu_seconds) - cpu)) CPU s in ${SECONDS_PER_PHASE} s"
rss
start_ledger 1
start_ledger 2
cpu=$(cpu_seconds)
load "3-processes" "$SECONDS_PER_PHASE" "${PORTS[0]}" "${PORTS[1]}" "${PORTS[2]}"
echo "3-processes: ledger used $(($(cpu_seconds) - cpu)) CPU s in ${SECONDS_PER_PHASE} s"
rss

psql -qAt "$DB_URL" -c "SELECT 'events ' || count(*) || ', ' || pg_size_pretty(pg_total_relation_size('events'))
  || ' with indexes, ' || (pg_total_relation_size('events') / greatest(count(*), 1)) || ' bytes per event (table+indexes+toast), '
  || (pg_relation_size('events') / greatest(count(*), 1)) || ' bytes per event (heap only)' FROM events"
psql -qAt "$DB_URL" -c "SELECT 'database ' || pg_size_pretty(pg_database_size(current_database()))
  || ', ' || (pg_database_size(current_database()) / greatest((SELECT count(*) FROM events), 1)) || ' bytes per event (log, read models, idempotency)'"

if [ "$RUN_R1" = 1 ]; then
  log "R1 while reserves load the 3 processes"
  cargo build -q -p ledger-api --tests 2>/dev/null || true
  wrk -t 1 -c "$((CONNECTIONS / 2))" -d 3600s -s "$WORK/reserve.lua" "http://127.0.0.1:${PORTS[0]}" -- 10 >/dev/null 2>&1 &
  W1=$!
  wrk -t 1 -c "$((CONNECTIONS / 2))" -d 3600s -s "$WORK/reserve.lua" "http://127.0.0.1:${PORTS[1]}" -- 11 >/dev/null 2>&1 &
  W2=$!
  set +e
  R1_ROUNDS="${R1_ROUNDS:-5}" cargo test -q -p ledger-api --test integration -- \
    drills::five_hundred_overlapping_reserves_through_three_processes_admit_exactly_one --exact --nocapture 2>&1 \
    | grep -E 'round|test result|panicked|exactly' | tail -25
  r1=${PIPESTATUS[0]}
  set -e
  kill "$W1" "$W2" 2>/dev/null || true
  wait "$W1" "$W2" 2>/dev/null || true
  echo "R1 under load: $([ "$r1" = 0 ] && echo passed || echo FAILED)"
  [ "$r1" = 0 ]
fi
