# Sourced by the project's scripts: where the tools are.
export PATH="$HOME/.cargo/bin:$PATH"
export PG_MAJOR=15
export PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
# cargo pgrx test runs its server as this user (Postgres refuses root).
export CARGO_PGRX_TEST_RUNAS=postgres
export CARGO_PGRX_TEST_PGDATA=/tmp/integrity-pgdata
# The installed extension is the release build.
install_extension() {
  cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null
}
