#!/usr/bin/env bash
# Instructions per request of the idempotency benchmark's approaches
# (bench/idempotency.rs), counted by valgrind: a measure of the CPU work
# in the backend that does not move with the machine's load, so a change
# of a few percent shows, where the pgbench run's rounds differ by tens.
#
# Each approach runs in a single-user backend (postgres --single) under
# `valgrind --tool=cachegrind --cache-sim=no`, from a copy of one template
# cluster whose tables are preloaded with BENCH_PRELOAD keys (so indexes
# have the depth of a table in use). It runs BENCH_BASE requests, then
# again BASE + BENCH_REQUESTS; the difference divided by BENCH_REQUESTS is
# the instructions one request costs, without the backend's start and end.
# Statements are prepared once and run with EXECUTE, each request its own
# transaction (BEGIN … COMMIT around the five statements of (2), (4), (5)).
#
# Counted: user-space instructions of the backend (Postgres, libc, our
# library). Not counted: the kernel (the commit's flush, the socket, which
# single-user mode does not have), and time: a cache miss costs more than
# an instruction. Each EXECUTE is parsed as a statement of its own, so each
# statement costs more than a bound prepared statement over the wire; (2),
# (4) and (5) have the same five statements.
#
# Then the same over the wire: the template's copy served by a postmaster
# under valgrind (each backend it forks counts into a file of its own),
# pgbench sending one client's requests with bench/idempotency.rs's own
# scripts (prepared statements, a request's statements pipelined, keys
# from a fixed --random-seed, another for each run). The backend of a run
# of BASE + REQUESTS less that of a run of BASE, over REQUESTS, is one
# request as a client sends it; the short run's backend less BASE
# requests is the connection's start and first call (loading the
# library, catalogs, first plans).
#
#   bash scripts/bench.sh instructions
# env: BENCH_PRELOAD (100000), BENCH_BASE (500), BENCH_REQUESTS (2000)
set -euo pipefail
preload=${BENCH_PRELOAD:-100000}
base=${BENCH_BASE:-500}
requests=${BENCH_REQUESTS:-2000}
: "${PG_CONFIG:?source scripts/env.sh first}"
bindir=$("$PG_CONFIG" --bindir)
if ! command -v valgrind >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi

dir=$(mktemp -d /tmp/integrity-instructions.XXXXXX)
# The wire section's server, if it runs, is stopped before the files go.
stop_wire() {
  if [[ -f $dir/wire/postmaster.pid ]]; then
    su postgres -c "$bindir/pg_ctl -D $dir/wire -m fast -w stop" >/dev/null 2>&1 || true
  fi
}
trap 'stop_wire; rm -rf "$dir"' EXIT
chown postgres "$dir"

# A single-user backend on cluster $1, database $2, commands on stdin;
# with $3 = counted, under valgrind, printing the instructions it ran. An
# ERROR or FATAL it printed goes to stderr and stops the bench.
single() {
  local data=$1 db=$2 valgrind=
  if [[ ${3:-} == counted ]]; then
    valgrind="valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null"
  fi
  su postgres -c "$valgrind $bindir/postgres --single -D $data -c fsync=off $db" >"$dir/out" 2>&1
  if grep -m1 -E '(ERROR|FATAL): ' "$dir/out" >&2; then exit 1; fi
  if [[ -n $valgrind ]]; then
    sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$dir/out" | tr -d ,
  fi
}

org=0000000a-0000-0000-0000-000000000000
fp=6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b

su postgres -c "$bindir/initdb -D $dir/template -A trust -U postgres -E UTF8 --locale=C --no-sync" >/dev/null
echo "CREATE DATABASE v" | single "$dir/template" postgres
# The tables of bench/idempotency.rs (bench/idempotency_tables.sql), preloaded (the keys as idem_complete
# leaves them, written directly: one transaction's idem_begin calls would
# hold as many key locks); the replayed keys r-0 … r-999.
# Each command on one line: single-user mode ends a command at a newline.
{ echo "CREATE EXTENSION integrity CASCADE"; grep -v '^--' "$(dirname "$0")/idempotency_tables.sql"; cat <<EOF
INSERT INTO integrity.idempotency_keys (org_id, scope, key, fingerprint, status, response_code, response, lease, created_at, completed_at, expires_at) SELECT '$org', 'POST /orders', 'p-' || g, integrity.fingerprint('{"amount": 100}'), 'completed', 201, '{"order": "created"}', '5 minutes', now(), now(), now() + '24 hours' FROM generate_series(1, $preload) g
SELECT count(integrity.idem_begin('$org', 'POST /orders', 'r-' || g, '{"amount": 100}')) + count(integrity.idem_complete('$org', 'POST /orders', 'r-' || g, 201, '{"order": "created"}')) FROM generate_series(0, 999) g
INSERT INTO bench_keys SELECT '$org', 'POST /orders', 'p-' || g, '$fp', 'completed', 201, '{"order": "created"}', now(), now() + '24 hours' FROM generate_series(1, $preload) g
INSERT INTO bench_orders (key, amount) SELECT 'p-' || g, 100 FROM generate_series(1, $preload) g
VACUUM ANALYZE
CHECKPOINT
EOF
} | single "$dir/template" v

# The requests of approach $1, $2 of them: prepared statements, then the
# requests with keys from a fixed pseudo-random sequence.
script() {
  awk -v kind="$1" -v n="$2" -v org="$org" -v fp="$fp" 'BEGIN {
    srand(42); q = "\x27"
    print "PREPARE ins(text) AS INSERT INTO bench_orders (key, amount) VALUES ($1, 100)"
    print "PREPARE one AS SELECT 1"
    print "PREPARE idem_begin(text) AS SELECT integrity.idem_begin(" q org q ", " q "POST /orders" q ", $1, " q "{\"amount\": 100}" q ")"
    print "PREPARE idem_complete(text) AS SELECT integrity.idem_complete(" q org q ", " q "POST /orders" q ", $1, 201, " q "{\"order\": \"created\"}" q ")"
    print "PREPARE probe(text) AS SELECT 1 FROM bench_keys WHERE org_id = " q org q " AND scope = " q "POST /orders" q " AND key = $1"
    print "PREPARE keyrow(text) AS INSERT INTO bench_keys (org_id, scope, key, fingerprint, status, response_code, response, created_at, expires_at) VALUES (" q org q ", " q "POST /orders" q ", $1, " q fp q ", " q "completed" q ", 201, " q "{\"order\": \"created\"}" q ", now(), now() + " q "24 hours" q ")"
    for (i = 0; i < n; i++) {
      k = q kind "-" int(rand() * 1000000000) "-" i q
      if (kind == "bare") print "EXECUTE ins(" k ")"
      else if (kind == "replay") print "EXECUTE idem_begin(" q "r-" int(rand() * 1000) q ")"
      else {
        print "BEGIN"
        if (kind == "wrapped") { a = "EXECUTE idem_begin(" k ")"; b = "EXECUTE idem_complete(" k ")" }
        else if (kind == "calls") { a = "EXECUTE one"; b = a }
        else { a = "EXECUTE probe(" k ")"; b = "EXECUTE keyrow(" k ")" }
        print a; print "EXECUTE ins(" k ")"; print b; print "COMMIT"
      }
    }
  }'
}

# Instructions per request of approach $1.
per_request() {
  local counts=()
  for n in "$base" $((base + requests)); do
    rm -rf "$dir/run"
    cp -a "$dir/template" "$dir/run"
    counts+=("$(script "$1" "$n" | single "$dir/run" v counted)")
  done
  echo $(((counts[1] - counts[0]) / requests))
}

pg=$("$bindir/postgres" --version)
echo "idempotency instructions per request (valgrind, single-user backend): $pg, $preload keys preloaded, $requests requests counted"
declare -A ir
labels=(bare "(1) bare insert" wrapped "(2) insert + idem keys" replay "(3) replay" calls "(4) insert + 2 no-ops" floor "(5) insert + SQL key row")
for ((i = 0; i < ${#labels[@]}; i += 2)); do
  ir[${labels[i]}]=$(per_request "${labels[i]}")
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '%-26s %14s %10s\n' approach instructions "bare/this"
for ((i = 0; i < ${#labels[@]}; i += 2)); do
  kind=${labels[i]}
  printf '%-26s %14d %10s\n' "${labels[i + 1]}" "${ir[$kind]}" "$(ratio "${ir[bare]}" "${ir[$kind]}")"
done
echo "the key row beyond two no-op calls: ours (2)-(4) = $((ir[wrapped] - ir[calls])), plain SQL (5)-(4) = $((ir[floor] - ir[calls])); ours/plain SQL = $(ratio $((ir[wrapped] - ir[calls])) $((ir[floor] - ir[calls])))"

# Over the wire (see the top of this file).
# The scripts come from the bench binary scripts/bench.sh builds.
bench=$(cd "$(dirname "$0")/.." && pwd)/target/release/examples/bench_idempotency
[[ -x $bench ]] || { echo "$bench is missing: run bash scripts/bench.sh instructions" >&2; exit 1; }
mkdir "$dir/scripts" "$dir/cg"
BENCH_SCRIPTS_TO="$dir/scripts" "$bench"
chown -R postgres "$dir/scripts" "$dir/cg"
cp -a "$dir/template" "$dir/wire"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
su postgres -c "valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=$dir/cg/%p $bindir/postgres -D $dir/wire -p $port -c listen_addresses=127.0.0.1 -k $dir -c fsync=off -c autovacuum=off" >"$dir/wire.log" 2>&1 &
for _ in $(seq 240); do
  "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" && break
  sleep 0.5
done
"$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" || { cat "$dir/wire.log" >&2; exit 1; }

# The postmaster's children between runs (its auxiliary processes): a run
# is over when its backends have exited, each writing its count.
pm=$(head -1 "$dir/wire/postmaster.pid")
children() { pgrep -c -P "$pm" || true; }
sleep 2
aux=$(children)

# The instructions of the backend that served $2 requests of approach $1,
# its keys drawn with random seed $3: the largest count among the files
# the run's backends left (pgbench also opens a short connection first).
served() {
  local before f best=0 n
  before=$(ls "$dir/cg")
  "$bindir/pgbench" -n -h 127.0.0.1 -p "$port" -U postgres -M prepared -c 1 -t "$2" \
    --random-seed="$3" -f "$dir/scripts/$1.pgbench" v >"$dir/pgbench.out" 2>&1 ||
    { cat "$dir/pgbench.out" >&2; exit 1; }
  for _ in $(seq 300); do
    (($(children) <= aux)) && break
    sleep 0.1
  done
  for f in $(comm -13 <(echo "$before") <(ls "$dir/cg")); do
    n=$(sed -n 's/^summary: *//p' "$dir/cg/$f")
    ((${n:-0} > best)) && best=$n
  done
  echo "$best"
}

# The database's first connection builds its relcache init file: not
# counted.
served bare 1 0 >/dev/null
declare -A wire start
# Over the wire also (6), (2) without BEGIN and COMMIT (one implicit
# transaction, which a single-user backend cannot run: it commits each
# command), and (7), the key row alone (bench/idempotency.rs).
labels+=(wrapped_implicit "(6) (2) w/o BEGIN/COMMIT" row_alone "(7) key row alone")
for ((i = 0; i < ${#labels[@]}; i += 2)); do
  kind=${labels[i]}
  short=$(served "$kind" "$base" 1)
  long=$(served "$kind" $((base + requests)) 2)
  wire[$kind]=$(((long - short) / requests))
  start[$kind]=$((short - base * wire[$kind]))
done
echo
echo "over the wire (valgrind on the server's backend, pgbench client, prepared and pipelined as bench/idempotency.rs):"
# A backend's count includes the postmaster's start before the fork, so
# a connection's start is shown beyond the bare insert's.
printf '%-26s %14s %10s %26s\n' approach instructions "bare/this" "connection's start - (1)'s"
for ((i = 0; i < ${#labels[@]}; i += 2)); do
  kind=${labels[i]}
  printf '%-26s %14d %10s %26d\n' "${labels[i + 1]}" "${wire[$kind]}" "$(ratio "${wire[bare]}" "${wire[$kind]}")" $((start[$kind] - start[bare]))
done
echo "over the wire, the key row beyond two no-op calls: ours (2)-(4) = $((wire[wrapped] - wire[calls])), plain SQL (5)-(4) = $((wire[floor] - wire[calls])); ours/plain SQL = $(ratio $((wire[wrapped] - wire[calls])) $((wire[floor] - wire[calls])))"
