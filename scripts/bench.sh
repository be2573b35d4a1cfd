#!/usr/bin/env bash
# The booking benchmark (bench/run.rs): integrity.book against two baselines
# on one throwaway cluster, printed as ratios. Arguments/env: see bench/run.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
install_extension
cargo build --quiet --release --features client --example bench
exec ./target/release/examples/bench "$@"
