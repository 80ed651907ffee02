#!/usr/bin/env bash
# Starts the Booking Ledger on 127.0.0.1:8080 (LEDGER_LISTEN), with PostgreSQL
# and NATS set up as needed. Prints an admin token, a curl line to try and
# the Ops Console's address with an operator token.
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

# Least privilege: the migrations run as the owner of the tables
# (DATABASE_MIGRATE_URL), `ledger serve` as ledger_app, which may append to
# the event log and read it but never change or remove an event
# (migrations/0008_roles.sql). When .env names only DATABASE_URL, that is
# the owner, and serve gets the same URL with the user ledger_app.
if [ -z "${DATABASE_MIGRATE_URL:-}" ]; then
  export DATABASE_MIGRATE_URL="$DATABASE_URL"
  export DATABASE_URL="postgres://ledger_app@$(url_without_user "$DATABASE_URL")"
fi
"$LEDGER" migrate
if ! psql "$DATABASE_URL" -qAtc 'select 1' >/dev/null 2>&1; then
  cat >&2 <<MSG
ledger_app cannot log in with $DATABASE_URL.
Give it a password (as the owner: ALTER ROLE ledger_app PASSWORD '...') and put
it in DATABASE_URL in .env, with DATABASE_MIGRATE_URL naming the owner.
MSG
  exit 1
fi

agency="${LEDGER_DEMO_AGENCY:-11111111-1111-4111-8111-111111111111}"
token="$("$LEDGER" token --agency "$agency" --role admin --sub demo-admin --ttl 12h)"
operator_token="$("$LEDGER" token --role operator --sub demo-operator --ttl 12h)"
listen="${LEDGER_LISTEN:-127.0.0.1:8080}"
cat <<MSG

Booking Ledger starting on http://$listen (API docs: http://$listen/docs/)
Admin token for agency $agency (12 h):

  export TOKEN=$token

Ops Console (operator, 12 h; the token stays in the address fragment, never sent):

  http://$listen/console/#token=$operator_token

Try:
  curl -s -X POST http://$listen/api/v1/properties -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' -d '{"name":"Sea View","timezone":"Europe/Lisbon"}'

MSG
exec "$LEDGER" serve
