#!/usr/bin/env bash
# The booking demo: builds and installs the extension, starts a throwaway
# cluster as the postgres user on a free port, runs the scenario and prints
# what happened. Installs what it needs first (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
echo "[demo] building and installing the extension (release)"
install_extension
echo "[demo] building the demo client"
cargo build --quiet --features client --example demo
exec ./target/debug/examples/demo
