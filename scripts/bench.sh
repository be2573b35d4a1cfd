#!/usr/bin/env bash
# Benchmarks on one throwaway cluster each, printed as ratios against a
# baseline measured in the same run:
#   bash scripts/bench.sh               booking (bench/run.rs; env: see there)
#   bash scripts/bench.sh idempotency   idempotency keys (bench/idempotency.rs)
#   bash scripts/bench.sh instructions  the same approaches' instructions per request, by valgrind (bench/instructions.sh)
#   bash scripts/bench.sh triggers      trigger functions (bench/triggers.rs)
#   bash scripts/bench.sh checks        consistency checks (bench/checks.rs)
#   bash scripts/bench.sh deliveries    delivery log vs a plain-SQL queue and pgmq (bench/deliveries.rs)
#   bash scripts/bench.sh first_call    a new connection's first call, library preloaded or not (bench/first_call.rs)
#   bash scripts/bench.sh breaker       breaker_allow vs SELECT 1 and a naive FOR UPDATE breaker (bench/breaker.rs)
#   bash scripts/bench.sh tenant_scope  a scoped read through our row-level security policy vs none (bench/tenant_scope.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
install_extension
cargo build --quiet --release --features client --example bench --example bench_idempotency --example bench_triggers --example bench_checks --example bench_deliveries --example bench_breaker --example bench_first_call --example bench_tenant_scope
case "${1:-booking}" in
  booking) shift || true; exec ./target/release/examples/bench "$@" ;;
  idempotency) shift; exec ./target/release/examples/bench_idempotency "$@" ;;
  instructions) shift; exec bash bench/instructions.sh "$@" ;;
  triggers) shift; exec ./target/release/examples/bench_triggers "$@" ;;
  checks) shift; exec ./target/release/examples/bench_checks "$@" ;;
  breaker) shift; exec ./target/release/examples/bench_breaker "$@" ;;
  first_call) shift; exec ./target/release/examples/bench_first_call "$@" ;;
  tenant_scope) shift; exec ./target/release/examples/bench_tenant_scope "$@" ;;
  deliveries) shift
    # pgmq, vendored for this comparison (Debian has no package): SQL only.
    install -m 644 bench/vendor/pgmq/pgmq.control bench/vendor/pgmq/pgmq--1.5.1.sql \
      "$("$PG_CONFIG" --sharedir)/extension/"
    exec ./target/release/examples/bench_deliveries "$@" ;;
  *) exec ./target/release/examples/bench "$@" ;;
esac
