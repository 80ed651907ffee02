#!/usr/bin/env bash
# The front-end example (docs/frontend-example/) in headless Chromium:
# tests/browser/test_frontend.py. Installs Debian's chromium when missing
# and Playwright's Python package into .local/venv (never its own browsers:
# the test drives /usr/bin/chromium), builds the ledger binary, and runs it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export JWT_SECRET="${JWT_SECRET:-test-secret-for-the-ledger-integration-tests}"

if ! command -v chromium >/dev/null; then
  apt-get update -qq && apt-get install -y -qq chromium
fi
if [ ! -x .local/venv/bin/python ]; then
  python3 -m venv .local/venv
fi
if ! .local/venv/bin/python -c "import playwright" 2>/dev/null; then
  .local/venv/bin/pip install -q playwright
fi

cargo build -p ledger-api --bin ledger
LEDGER_BIN="$ROOT/target/debug/ledger" .local/venv/bin/python tests/browser/test_frontend.py
