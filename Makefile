# Convenience targets; each is a thin wrapper over a script in scripts/.
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

.PHONY: install demo test bench setup

# Build the release extension and install it into the server PG_CONFIG names.
install:
	cargo pgrx install --release --pg-config $(PG_CONFIG)

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

bench:
	bash scripts/bench.sh
