#!/usr/bin/env bash
# Drives the Ops Console (/console/) in a real browser: Debian's chromium,
# controlled by the Python `playwright` package (never a browser that
# playwright downloads itself). Starts a real `ledger serve` on a fresh
# database with a random JWT_SECRET, mints its tokens with `ledger token`,
# and runs tests/browser/test_console.py. Screenshots land in
# target/browser-artifacts/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/services.sh

[ -x /usr/bin/chromium ] || apt_install chromium fonts-dejavu-core
VENV="$LOCAL/venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import playwright' 2>/dev/null || {
  log "installing the playwright package (PyPI) into $VENV"
  "$VENV/bin/pip" install -q playwright
}

# The same `ledger` the black-box tests start (built with the test
# profile's features, so after `cargo test` nothing is rebuilt).
cargo test -p ledger-api --test integration --no-run
LEDGER="$ROOT/target/debug/ledger"

JWT_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export JWT_SECRET
artifacts="$ROOT/target/browser-artifacts"
. scripts/scratch-ledger.sh
scratch_ledger ledger_browser "$artifacts/ledger.log"
base="$SCRATCH_BASE"

agency_a="$(python3 -c 'import uuid; print(uuid.uuid4())')"
agency_b="$(python3 -c 'import uuid; print(uuid.uuid4())')"
export CONSOLE_BASE="$base" CONSOLE_ARTIFACTS="$artifacts" CONSOLE_SUSPEND_AGENCY="$agency_b"
CONSOLE_OPERATOR_TOKEN="$("$LEDGER" token --role operator --sub ops-browser --ttl 1h)"
CONSOLE_ADMIN_TOKEN="$("$LEDGER" token --agency "$agency_a" --role admin --sub admin-a --ttl 1h)"
CONSOLE_SUSPEND_TOKEN="$("$LEDGER" token --agency "$agency_b" --role admin --sub admin-b --ttl 1h)"
export CONSOLE_OPERATOR_TOKEN CONSOLE_ADMIN_TOKEN CONSOLE_SUSPEND_TOKEN

"$VENV/bin/python" tests/browser/test_console.py
