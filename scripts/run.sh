#!/usr/bin/env bash
# Starts the Booking Ledger on 127.0.0.1:8080 (LEDGER_LISTEN), with PostgreSQL
# and NATS set up as needed. Prints an admin token and a curl line to try.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# .env holds local settings; a JWT secret is generated on first run.
if [ ! -f .env ]; then
  cp .env.example .env
  secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  sed -i "s/^JWT_SECRET=.*/JWT_SECRET=$secret/" .env
fi
set -a; . ./.env; set +a

. scripts/services.sh
cargo build --release --bin ledger
LEDGER=target/release/ledger
"$LEDGER" migrate

agency="${LEDGER_DEMO_AGENCY:-11111111-1111-4111-8111-111111111111}"
token="$("$LEDGER" token --agency "$agency" --role admin --sub demo-admin --ttl 12h)"
listen="${LEDGER_LISTEN:-127.0.0.1:8080}"
cat <<MSG

Booking Ledger starting on http://$listen (API docs: http://$listen/docs/)
Admin token for agency $agency (12 h):

  export TOKEN=$token

Try:
  curl -s -X POST http://$listen/api/v1/properties -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' -d '{"name":"Sea View","timezone":"Europe/Lisbon"}'

MSG
exec "$LEDGER" serve
