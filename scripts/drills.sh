#!/usr/bin/env bash
# The reliability drills in their full (long) forms, one command each; what
# each proves and the figures last seen are in docs/reliability.md.
#
#   scripts/drills.sh hangup   # hang-up probe, 1,000 rounds, single unit and a 3-unit room type
#   scripts/drills.sh r1       # 500 overlapping reserves via 3 processes, 20 rounds
#   scripts/drills.sh r2       # kill -9 under mixed load, 10 times
#   scripts/drills.sh r3       # NATS stopped for 30 s under load
#   scripts/drills.sh r4       # PostgreSQL stopped, and PostgreSQL frozen (SIGSTOP)
#   scripts/drills.sh r8       # 1,000 keyed commands whose clients hang up, retried
#   scripts/drills.sh scale    # JetStream R3 leader killed, hot standby reads,
#                              # then scripts/scale-drill.sh (1 vs 3 processes, R1 under load)
#   scripts/drills.sh all      # every drill above but scale, one after the other
#
# Extra arguments go to the test binary (e.g. --nocapture is always set).
# The drills assert behaviour, not speed, so they reuse the debug build of
# the tests; DRILLS_PROFILE=release builds and runs them optimised.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
drill="${1:-}"
[ $# -gt 0 ] && shift
case "$drill" in
  hangup | r1 | r2 | r3 | r4 | r8 | scale | all) ;;
  *)
    sed -n '2,18p' "$0" >&2
    exit 2
    ;;
esac

. scripts/services.sh
export JWT_SECRET="${JWT_SECRET:-test-secret-for-the-ledger-integration-tests}"
NATS_SERVER="${NATS_SERVER:-$(nats_bin)}"
export NATS_SERVER

profile=()
[ "${DRILLS_PROFILE:-debug}" = release ] && profile=(--release)

run() { # run MODULE TEST_NAME [args]: one test of the integration binary (tests/main.rs)
  local module="$1" name="$2"
  shift 2
  cargo test "${profile[@]}" -p ledger-api --test integration -- "$module::$name" --exact --nocapture "$@"
}

hangup() {
  HANGUP_ROUNDS="${HANGUP_ROUNDS:-1000}" \
    run drills a_client_hanging_up_on_a_cancel_never_leaves_a_double_booking "$@"
  HANGUP_ROUNDS="${HANGUP_ROUNDS:-1000}" \
    run drills a_client_hanging_up_on_a_cancel_never_overfills_a_room_type "$@"
}
r1() {
  R1_ROUNDS="${R1_ROUNDS:-20}" \
    run drills five_hundred_overlapping_reserves_through_three_processes_admit_exactly_one "$@"
  R1_ROUNDS="${R1_ROUNDS:-20}" \
    run drills five_hundred_overlapping_reserves_on_a_three_unit_room_type_admit_exactly_three "$@"
}
r2() {
  DRILL_R2=1 R2_KILLS="${R2_KILLS:-10}" \
    run drills kill_nine_under_load_loses_no_acknowledged_write "$@"
}
r3() {
  DRILL_R3=1 R3_OUTAGE_SECS="${R3_OUTAGE_SECS:-30}" \
    run drills thirty_seconds_without_nats_keep_writes_going_and_publish_the_backlog_in_order "$@"
}
r4() {
  run faults postgres_down_answers_503_fast_and_recovers_without_restart "$@"
  run faults a_hanging_postgres_answers_503_fast_and_recovers_when_it_thaws "$@"
}
r8() {
  R8_COMMANDS="${R8_COMMANDS:-1000}" \
    run drills commands_whose_clients_hang_up_then_retry_with_their_keys_match_the_log "$@"
}
scale() {
  run cluster killing_the_stream_leader_under_load_loses_no_acknowledged_event "$@"
  run standby a_write_is_read_back_through_the_standby_with_min_position "$@"
  scripts/scale-drill.sh
}

case "$drill" in
  hangup | r1 | r2 | r3 | r4 | r8 | scale) "$drill" "$@" ;;
  all)
    failed=()
    for d in hangup r1 r2 r3 r4 r8; do
      "$d" "$@" || failed+=("$d")
    done
    if [ ${#failed[@]} -gt 0 ]; then
      echo "drills that failed: ${failed[*]}" >&2
      exit 1
    fi
    ;;
esac
