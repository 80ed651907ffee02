#!/usr/bin/env bash
# The test command: formatting, lints, every test of the workspace against
# a real PostgreSQL and a real NATS (set up by services.sh), then a short
# schema-driven fuzz pass. The long drills have their own command:
# scripts/drills.sh (docs/reliability.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/services.sh
export JWT_SECRET="${JWT_SECRET:-test-secret-for-the-ledger-integration-tests}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The committed shapes of the macro-checked statements (.sqlx/) against the
# migrations: a renamed column fails here even though the build reads .sqlx/.
scripts/sqlx-prepare.sh --check
cargo test --workspace -- "$@"
# The write-path load generator, short (P1-P3, P8): fails on errors, never on speed.
cargo run -q -p ledger-api --example loadgen -- --quick --ledger "${CARGO_TARGET_DIR:-target}/debug/ledger"
# A short schema-driven fuzz pass (R5): zero 5xx from generated requests.
scripts/fuzz.sh short
# The Ops Console and the front-end example page in headless Chromium
# (Debian's chromium, Playwright from PyPI; no browser is downloaded).
scripts/browser-tests.sh
scripts/browser-frontend.sh
