#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace
# against a real PostgreSQL and a real NATS (set up by services.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. scripts/services.sh
export JWT_SECRET="${JWT_SECRET:-test-secret-for-the-ledger-integration-tests}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace -- "$@"
