#!/usr/bin/env bash
# The read-path comparison in one run: the Express + pg peer and Smartbot (PostgreSQL, then
# SQLite), back to back, ROUNDS times each, wrk -t2 -c64. Needs node, wrk and PostgreSQL.
#
#   benches/peers/express/compare.sh            # ROUNDS=3 DURATION=10s by default
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
pg=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
# bench_read creates smartbot_bench_read from this server URL (DATABASE_URL below names that
# database, which does not exist before the first run).
export TEST_POSTGRES_URL="$pg"
export DATABASE_URL="${pg%/*}/smartbot_bench_read"
rounds=${ROUNDS:-3}
duration=${DURATION:-10s}

[ -d "$here/node_modules" ] || (cd "$here" && npm install --no-audit --no-fund)
(cd "$root" && cargo build --release --example bench_read)
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/bench_read"

"$bin" postgres --seed-only   # creates smartbot_bench_read, migrates, seeds the 200 rows
PORT=4101 node "$here/server.js" &
peer=$!
trap 'kill $peer' EXIT
sleep 1
"$bin" postgres --peer http://127.0.0.1:4101 --rounds "$rounds" --duration "$duration"
"$bin" sqlite --peer http://127.0.0.1:4101 --rounds "$rounds" --duration "$duration"
