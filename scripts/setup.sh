#!/usr/bin/env bash
# Idempotent machine setup for building and testing `integrity`.
# Installs Debian's PostgreSQL 15 + headers, clang, sudo, cargo-pgrx 0.18.1 and
# runs `cargo pgrx init` against the system pg_config. Fast when all is there.
set -euo pipefail

PG_MAJOR=15
PGRX_VERSION=0.18.1
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

# --- Debian packages -------------------------------------------------------
pkgs=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib postgresql-$PG_MAJOR-cron
      libclang-dev clang sudo pkg-config libssl-dev make git ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's package creates and starts a "main" cluster on 5432; we never use it.
# Stop it so it does not hold memory or a port during tests (harmless if absent).
if command -v pg_lsclusters >/dev/null 2>&1; then
  if pg_lsclusters -h 2>/dev/null | awk '{print $4}' | grep -q online; then
    log "stopping Debian's default cluster (not used by integrity)"
    $SUDO pg_ctlcluster "$PG_MAJOR" main stop 2>/dev/null || true
  fi
fi

# --- Rust toolchain --------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    log "cargo not found: install Rust (rustup) first" && exit 1
  fi
fi

# --- cargo-pgrx ------------------------------------------------------------
if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "installing cargo-pgrx $PGRX_VERSION (takes several minutes once)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

# --- cargo pgrx init -------------------------------------------------------
PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if ! grep -q "pg$PG_MAJOR *= *\"$PG_CONFIG\"" "$PGRX_HOME/config.toml" 2>/dev/null; then
  log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
  cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
fi

# pgrx installs into the system's lib/share dirs; the test runner (as root)
# does that through sudo, and the postgres user must be able to read target/.
log "ready: $(cargo pgrx --version), $($PG_CONFIG --version)"
