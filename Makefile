# The two commands: `make run` and `make test`. Both set up what they need.
SHELL := /bin/bash
CARGO ?= cargo
BIN_DIR ?= $(HOME)/.cargo/bin
DATA_DIR ?= $(or $(HEARTH_DATA_DIR),$(or $(XDG_DATA_HOME),$(HOME)/.local/share)/hearth)

.PHONY: setup build install run stop test lint openapi bench clean

setup:
	@./scripts/setup.sh

build: setup
	$(CARGO) build --release --locked -p hearth

# Puts `hearth` on PATH, as `cargo install` would.
install: build
	@mkdir -p $(BIN_DIR)
	@install -m 0755 target/release/hearth $(BIN_DIR)/hearth
	@echo "installed $(BIN_DIR)/hearth"

run: install
	@HEARTH_BIN=$(BIN_DIR)/hearth HEARTH_DATA_DIR=$(DATA_DIR) ./scripts/run-demo.sh

stop:
	@if [ -f $(DATA_DIR)/daemon.pid ] && kill -0 $$(cat $(DATA_DIR)/daemon.pid) 2>/dev/null; then \
		kill -TERM $$(cat $(DATA_DIR)/daemon.pid) && rm -f $(DATA_DIR)/daemon.pid && echo "stopped the daemon on $(DATA_DIR)"; \
	else echo "no daemon started by make run is running on $(DATA_DIR)"; fi

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

test: lint
	$(CARGO) test --workspace --locked

# Regenerates the checked-in OpenAPI document after an API change.
openapi:
	HEARTH_UPDATE_OPENAPI=1 $(CARGO) test -p hearth-api --lib -- openapi
	@echo "wrote crates/api/openapi.json"

bench: build
	target/release/hearth bench store

clean:
	$(CARGO) clean
