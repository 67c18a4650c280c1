#!/usr/bin/env bash
# The test command: makes sure PostgreSQL and Redis are up on 127.0.0.1 (starting them when they are
# installed, saying what to install when they are not), exports their URLs, and runs cargo test.
# Extra arguments go to cargo test, e.g. ./scripts/test.sh --test it templates
set -euo pipefail
cd "$(dirname "$0")/.."

PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port what
  for _ in $(seq 1 60); do port_open "$1" "$2" && return 0; sleep 0.5; done
  echo "error: $3 did not come up on $1:$2 within 30s" >&2
  return 1
}

ensure_postgres() {
  if port_open "$PG_HOST" "$PG_PORT"; then return 0; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    echo "Starting PostgreSQL..."
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    wait_port "$PG_HOST" "$PG_PORT" PostgreSQL
  else
    echo "error: PostgreSQL is not running on $PG_HOST:$PG_PORT and is not installed." >&2
    echo "       Install it with: apt-get install -y postgresql   (then re-run this script)" >&2
    echo "       or point TEST_POSTGRES_URL at a server with trust auth." >&2
    exit 1
  fi
}

ensure_redis() {
  if port_open 127.0.0.1 "$REDIS_PORT"; then return 0; fi
  if command -v redis-server >/dev/null 2>&1; then
    echo "Starting Redis..."
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
    wait_port 127.0.0.1 "$REDIS_PORT" Redis
  else
    echo "error: Redis is not running on 127.0.0.1:$REDIS_PORT and is not installed." >&2
    echo "       Install it with: apt-get install -y redis-server   (then re-run this script)" >&2
    exit 1
  fi
}

# The first of postgres/root that can reach the `test` database (creating it when missing).
pick_pg_url() {
  if [ -n "${TEST_POSTGRES_URL:-}" ]; then echo "$TEST_POSTGRES_URL"; return; fi
  if command -v psql >/dev/null 2>&1; then
    for user in postgres root; do
      if psql -h "$PG_HOST" -p "$PG_PORT" -U "$user" -d test -Atqc 'select 1' >/dev/null 2>&1; then
        echo "postgres://$user@$PG_HOST:$PG_PORT/test"; return
      fi
      if psql -h "$PG_HOST" -p "$PG_PORT" -U "$user" -d postgres -Atqc 'create database test' >/dev/null 2>&1; then
        echo "postgres://$user@$PG_HOST:$PG_PORT/test"; return
      fi
    done
  fi
  echo "postgres://postgres@$PG_HOST:$PG_PORT/test"
}

if [ -z "${TEST_POSTGRES_URL:-}" ]; then ensure_postgres; fi
if [ -z "${TEST_REDIS_URL:-}" ]; then ensure_redis; fi
TEST_POSTGRES_URL="$(pick_pg_url)"
export TEST_POSTGRES_URL
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT}"
echo "PostgreSQL: $TEST_POSTGRES_URL"
echo "Redis:      $TEST_REDIS_URL"

# The typed frontend example: a schema change that breaks its graphql-codegen documents fails here
# (about 40 s, most of it npm ci). Skipped, with a note, when node is not installed.
if command -v npm >/dev/null 2>&1; then
  echo "Frontend example: npm ci + graphql-codegen + tsc --noEmit"
  (cd examples/frontend && npm ci --no-audit --no-fund --loglevel=error && npm run --silent check >/dev/null) || {
    echo "error: examples/frontend no longer type-checks against schema.graphql (cd examples/frontend && npm run check)" >&2
    exit 1
  }
else
  echo "note: node/npm not installed: the frontend type-check (examples/frontend) is skipped; apt-get install -y nodejs npm to run it"
fi

# A fresh clone gains nothing from incremental compilation, and its cache is the largest part of
# target/ after the binaries (CI machines can be short of disk).
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
echo "Disk free where target/ goes: $(df -h . | awk 'NR==2 { print $4 }')"

# Run the suite, then close with one summary line over every test binary (cargo prints a
# "test result" per binary, and the last one is often a crate with no tests).
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
