#!/usr/bin/env bash
# The whole test suite: in-server #[pg_test]s, real-client concurrency tests
# against a throwaway cluster, and golden-file SQL tests (pg_regress).
# Installs what it needs first (idempotent; quick when already done).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() { printf '\n==> %s\n' "$*"; }

if cargo fmt --version >/dev/null 2>&1; then
  step "formatting (cargo fmt --check)"
  cargo fmt --check
fi

step "in-server tests (cargo pgrx test pg$PG_MAJOR)"
cargo pgrx test "pg$PG_MAJOR" 2>&1 | tee -a "$log"

step "installing the release build into PostgreSQL $PG_MAJOR"
install_extension

step "real-client tests: races, locks, golden SQL (cargo test --features client)"
cargo test --features client --test '*' -- --nocapture --test-threads=1 2>&1 | tee -a "$log"

# Sum every cargo "test result:" line into one closing line.
read -r passed failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
  } END { print p + 0, f + 0 }' "$log")
echo
echo "integrity: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
