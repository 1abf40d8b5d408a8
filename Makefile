# The two commands: `make run` and `make test`. Both set up what they need.
SHELL := /bin/bash
CARGO ?= cargo
BIN_DIR ?= $(HOME)/.cargo/bin
DATA_DIR ?= $(or $(HEARTH_DATA_DIR),$(or $(XDG_DATA_HOME),$(HOME)/.local/share)/hearth)

.PHONY: setup build ui agent examples install run stop test lint openapi fuzz bench bench-apps bench-fn bench-services bench-sleep bench-config bench-alerts clean

# The guest agent runs as PID 1 in every machine: a static musl binary.
AGENT := target/x86_64-unknown-linux-musl/release/hearth-agent

setup:
	@./scripts/setup.sh

build: setup agent ui
	$(CARGO) build --release --locked -p hearth

# The web dashboard (ui/): its npm packages from the committed lock file
# (again only when the lock file is newer than ui/node_modules), then the
# bundle in ui/dist, which crates/api/build.rs embeds in the binary. Built
# only when a source changed, so the binary is not rebuilt for nothing.
UI_SOURCES := ui/index.html ui/package.json ui/package-lock.json ui/tsconfig.json ui/vite.config.ts $(shell find ui/src -type f)
ui: setup ui/dist/index.html

ui/dist/index.html: $(UI_SOURCES)
	@if [ ! -e ui/node_modules/.package-lock.json ] || [ ui/package-lock.json -nt ui/node_modules/.package-lock.json ]; then \
		echo "ui: npm ci (ui/package-lock.json is newer than ui/node_modules)"; \
		cd ui && npm ci --no-audit --no-fund; fi
	cd ui && npm run build

examples: setup
	$(CARGO) build --release --manifest-path examples/apps/hello/Cargo.toml --target wasm32-wasip2
	$(CARGO) build --release --manifest-path examples/apps/counter/Cargo.toml --target wasm32-wasip2
	$(CARGO) build --release --manifest-path examples/apps/wstd-echo/Cargo.toml --target wasm32-wasip2
	$(CARGO) build --release --manifest-path examples/workflows/approval/Cargo.toml --target wasm32-wasip2

agent: setup
	$(CARGO) build --release --locked -p hearth-agent --target x86_64-unknown-linux-musl --config profile.release.strip=true

# Puts `hearth` on PATH, as `cargo install` would.
install: build
	@mkdir -p $(BIN_DIR)
	@install -m 0755 target/release/hearth $(BIN_DIR)/hearth
	@install -m 0755 $(AGENT) $(BIN_DIR)/hearth-agent
	@echo "installed $(BIN_DIR)/hearth and $(BIN_DIR)/hearth-agent"

run: install examples
	@HEARTH_BIN=$(BIN_DIR)/hearth HEARTH_DATA_DIR=$(DATA_DIR) ./scripts/run-demo.sh

stop:
	@if [ -f $(DATA_DIR)/daemon.pid ] && kill -0 $$(cat $(DATA_DIR)/daemon.pid) 2>/dev/null; then \
		kill -TERM $$(cat $(DATA_DIR)/daemon.pid) && rm -f $(DATA_DIR)/daemon.pid && echo "stopped the daemon on $(DATA_DIR)"; \
	else echo "no daemon started by make run is running on $(DATA_DIR)"; fi

# The docs' links too (scripts/check-doc-links.sh): files, anchors, and a
# README that links every page under docs/.
lint: setup
	./scripts/check-doc-links.sh
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Tests that this host cannot run, because it is known to lack what they
# need (hearth_testkit::skip), are recorded here and summed up at the end,
# whether the tests passed or not. HEARTH_NO_SKIP=1 makes each a failure.
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
SKIP_LOG := $(TARGET_DIR)/hearth-skips.txt
# The schemathesis run against the daemon's OpenAPI document, after the
# tests (scripts/schemathesis.sh): its time budget.
SCHEMATHESIS_SECONDS ?= 60

# `make test` lints as it builds: clippy's driver compiles the workspace's
# own crates (lints and code in one pass, `-D warnings`), the way `cargo
# clippy` would check the same targets, and rustc builds the dependencies.
# That spares a second, check-only compile of the whole tree (`make lint`
# does that one, for a quick look without the tests). Everything is built
# (and linted) before any test runs, so a lint fails the run at once. The
# wrapper is part of cargo's fingerprint: a plain `cargo test` afterwards
# compiles the workspace's crates again (not their dependencies).
CLIPPY_DRIVER = $(shell rustc --print sysroot)/bin/clippy-driver
LINTING = RUSTC_WORKSPACE_WRAPPER=$(CLIPPY_DRIVER) CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__

test: setup agent examples ui
	./scripts/check-doc-links.sh
	$(CARGO) fmt --all --check
	@mkdir -p $(dir $(SKIP_LOG)) && rm -f $(SKIP_LOG)
	$(LINTING) $(CARGO) test --workspace --locked --no-run
	@status=0; HEARTH_SKIP_LOG=$(SKIP_LOG) $(LINTING) $(CARGO) test --workspace --locked --no-fail-fast || status=$$?; \
	./scripts/schemathesis.sh $(TARGET_DIR)/debug/hearth $(SCHEMATHESIS_SECONDS) || status=$$?; \
	if [ -s $(SKIP_LOG) ]; then \
		sort $(SKIP_LOG) | awk -F'\t' '{ n[$$1]++; t[$$1] = t[$$1] (n[$$1] > 1 ? ", " : "") $$2 } \
			END { for (r in n) printf "skipped: %d, because %s (%s)\n", n[r], r, t[r] }'; \
	else echo "skipped: 0"; fi; \
	exit $$status

# Regenerates the checked-in OpenAPI document after an API change.
openapi:
	HEARTH_UPDATE_OPENAPI=1 $(CARGO) test -p hearth-api --lib -- openapi
	@echo "wrote crates/api/openapi.json"

# The fuzz targets in fuzz/ (cargo-fuzz, nightly): built once, then each
# run for FUZZ_SECONDS. The first crash or hang fails the run; its input is
# kept in fuzz/artifacts/TARGET/ and the line to reproduce it is printed.
# Inputs found along the way are kept in fuzz/corpus/TARGET/ for next time.
# FUZZ_APPS=0 leaves out the two targets that link wasmtime (app_manifest,
# lab_file), which make a cold build about three times as long.
FUZZ_SECONDS ?= 10
FUZZ_APPS ?= 1
FUZZ_TARGETS := agent_frames cron dns oci_layer oci_manifest $(if $(filter 1,$(FUZZ_APPS)),app_manifest lab_file)
# No sanitizer: the code is safe Rust; panics, overflow checks and debug
# assertions (on in cargo-fuzz's default build) are what finds bugs here.
FUZZ_FLAGS := -s none --target-dir fuzz/target $(if $(filter 1,$(FUZZ_APPS)),,--no-default-features)
fuzz:
	@./scripts/setup.sh --fuzz
	$(CARGO) +nightly fuzz build $(FUZZ_FLAGS)
	@set -e; for t in $(FUZZ_TARGETS); do \
		case $$t in oci_layer) max_len=65536;; *) max_len=8192;; esac; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		$(CARGO) +nightly fuzz run $(FUZZ_FLAGS) $$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=$$max_len -timeout=10 -print_final_stats=1 \
			|| { echo "fuzz: $$t failed: the input is in fuzz/artifacts/$$t/ (see 'Reproduce with' above)"; exit 1; }; \
	done

bench: build
	target/release/hearth bench store

# `hearth bench apps` against a throwaway daemon on a temporary directory,
# with `wasmtime serve` from crates.io's wasmtime-cli of the workspace's
# wasmtime major version (installed once; a long compile the first time).
# Not part of `make test`. Pass options with BENCH_APPS_ARGS="--runs 20 --json".
WASMTIME_MAJOR := 48
bench-apps: build examples
	@set -e; want='^wasmtime $(WASMTIME_MAJOR)\.'; w=$$(command -v wasmtime || true); \
	if [ -z "$$w" ] || ! "$$w" --version | grep -q "$$want"; then w=$${CARGO_HOME:-$$HOME/.cargo}/bin/wasmtime; fi; \
	if ! "$$w" --version 2>/dev/null | grep -q "$$want"; then \
		echo "installing wasmtime-cli $(WASMTIME_MAJOR).x for the wasmtime serve peer"; \
		$(CARGO) install wasmtime-cli --version '^$(WASMTIME_MAJOR)' --locked; \
	fi; \
	dir=$$(mktemp -d); \
	target/release/hearth serve --data-dir $$dir --ingress 127.0.0.1:0 --default-network false >$$dir/daemon.log 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; rm -rf $$dir' EXIT; \
	for _ in $$(seq 100); do target/release/hearth --data-dir $$dir status >/dev/null 2>&1 && break; sleep 0.1; done; \
	target/release/hearth --data-dir $$dir bench apps --wasmtime "$$w" $(BENCH_APPS_ARGS)

# `hearth bench services` against a throwaway daemon on a temporary
# directory (its networks' bridges and rules, prefixed `hbs`, removed at
# the end), as root: the service's machines need a network (a bridge and
# taps). The daemon shares the image cache BENCH_SERVICES_CACHE (default
# DATA_DIR/cache, where `hearth serve` keeps images), and the machines' image
# (sh and busybox, whose httpd serves) is built into it once if missing. Not part of `make test`;
# it takes minutes under software emulation. Pass options with
# BENCH_SERVICES_ARGS="--runs 5 --json".
BENCH_SERVICES_IMAGE ?= bench-services
BENCH_SERVICES_CACHE ?= $(DATA_DIR)/cache
bench-services: build
	@set -e; if [ "$$(id -u)" -ne 0 ]; then \
		echo "bench-services needs root: the service's machines need a network (sudo make bench-services)"; exit 1; fi; \
	dir=$$(mktemp -d); cache=$(abspath $(BENCH_SERVICES_CACHE)); mkdir -p $$cache; \
	target/release/hearth serve --data-dir $$dir --cache-dir $$cache --ingress 127.0.0.1:0 --dns 127.0.0.1:0 \
		--net-prefix hbs --default-network true --default-network-nat false >$$dir/daemon.log 2>&1 & pid=$$!; \
	trap 'status=$$?; kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; \
		if [ $$status -ne 0 ]; then echo "daemon log (last lines):"; tail -n 20 $$dir/daemon.log; fi; rm -rf $$dir; \
		nft delete table inet hearth-hbs 2>/dev/null; nft delete table bridge hearth-hbs 2>/dev/null; \
		for link in $$(ip -o link show | awk -F": " "{print \$$2}" | sed "s/@.*//" | grep "^hbs"); do ip link delete $$link; done' EXIT; \
	for _ in $$(seq 100); do target/release/hearth --data-dir $$dir status >/dev/null 2>&1 && break; sleep 0.1; done; \
	hearth="target/release/hearth --data-dir $$dir"; \
	if ! $$hearth image ls --json | grep -Eq '"name": "$(BENCH_SERVICES_IMAGE)(:latest)?"'; then \
		$$hearth image build debian --packages busybox --name $(BENCH_SERVICES_IMAGE); fi; \
	$$hearth bench services --image $(BENCH_SERVICES_IMAGE) $(BENCH_SERVICES_ARGS)

# Machines that sleep: a machine serving HTTP through a forwarded port,
# awake and asleep, woken by requests. Needs root (the machine's network)
# and an image with busybox: the one bench-services builds, in the same
# cache. BENCH_SLEEP_ARGS="--runs 5 --cycles 20 --json".
.PHONY: bench-sleep
bench-sleep: build
	@set -e; if [ "$$(id -u)" -ne 0 ]; then \
		echo "bench-sleep needs root: the machine needs a network (sudo make bench-sleep)"; exit 1; fi; \
	dir=$$(mktemp -d); cache=$(abspath $(BENCH_SERVICES_CACHE)); mkdir -p $$cache; \
	target/release/hearth serve --data-dir $$dir --cache-dir $$cache --ingress 127.0.0.1:0 --dns 127.0.0.1:0 \
		--net-prefix hbz --default-network true --default-network-nat false >$$dir/daemon.log 2>&1 & pid=$$!; \
	trap 'status=$$?; kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; \
		if [ $$status -ne 0 ]; then echo "daemon log (last lines):"; tail -n 20 $$dir/daemon.log; fi; rm -rf $$dir; \
		nft delete table inet hearth-hbz 2>/dev/null; nft delete table bridge hearth-hbz 2>/dev/null; \
		for link in $$(ip -o link show | awk -F": " "{print \$$2}" | sed "s/@.*//" | grep "^hbz"); do ip link delete $$link; done' EXIT; \
	for _ in $$(seq 100); do target/release/hearth --data-dir $$dir status >/dev/null 2>&1 && break; sleep 0.1; done; \
	hearth="target/release/hearth --data-dir $$dir"; \
	if ! $$hearth image ls --json | grep -Eq '"name": "$(BENCH_SERVICES_IMAGE)(:latest)?"'; then \
		$$hearth image build debian --packages busybox --name $(BENCH_SERVICES_IMAGE); fi; \
	$$hearth bench sleep --image $(BENCH_SERVICES_IMAGE) $(BENCH_SLEEP_ARGS)

# `hearth bench $(1) $(2)` against a daemon of its own on a temporary
# directory, removed afterwards (the daemon too, however the bench ends).
define bench-on-a-throwaway-daemon
	@set -e; dir=$$(mktemp -d); \
	target/release/hearth serve --data-dir $$dir --ingress 127.0.0.1:0 --default-network false >$$dir/daemon.log 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null; rm -rf $$dir' EXIT; \
	for _ in $$(seq 100); do target/release/hearth --data-dir $$dir status >/dev/null 2>&1 && break; sleep 0.1; done; \
	target/release/hearth --data-dir $$dir bench $(1) $(2)
endef

# `hearth bench config` against a throwaway daemon: from `config set` to an
# app's next response (the kitchen test guest, built here) and, with
# BENCH_CONFIG_ARGS="--image IMAGE" as root, to a machine's config.json.
# Not part of `make test`.
.PHONY: bench-config
bench-config: build
	$(CARGO) build --release --locked --quiet --target wasm32-wasip2 --manifest-path crates/apps/tests/guests/Cargo.toml --target-dir target/apps-guests
	$(call bench-on-a-throwaway-daemon,config,$(BENCH_CONFIG_ARGS))

# `hearth bench fn` against a throwaway daemon: handlers from source
# (JavaScript, Python) deployed with one line changed to their first 200,
# and their requests per second against the Rust hello app. Not part of
# `make test`. Options: BENCH_FN_ARGS="--runs 10 --json".
.PHONY: bench-fn
bench-fn: build examples
	$(call bench-on-a-throwaway-daemon,fn,$(BENCH_FN_ARGS))

# `hearth bench alerts` against a throwaway daemon: from a `kv put` to its
# webhook delivered (a sink inside the bench) against the events stream,
# and the alert engine's throughput with 100 rules (in-process). Not part
# of `make test`. Options: BENCH_ALERTS_ARGS="--runs 500 --json".
.PHONY: bench-alerts
bench-alerts: build
	$(call bench-on-a-throwaway-daemon,alerts,$(BENCH_ALERTS_ARGS))

# The Restate peer of `hearth bench workflows`: restate-server from npm into
# target/restate (once per version) and bench/restate-peer, a Restate Rust SDK
# endpoint (its own workspace and target dir). Not part of `make test`.
RESTATE_VERSION := 1.7.12
RESTATE_SERVER := target/restate/node_modules/@restatedev/restate-server-linux-$(if $(filter aarch64,$(shell uname -m)),arm64,x64)/bin/restate-server
.PHONY: bench-workflows-peer
bench-workflows-peer:
	@if ! "$(RESTATE_SERVER)" --version 2>/dev/null | grep -qx 'restate-server $(RESTATE_VERSION)'; then \
		echo "installing @restatedev/restate-server $(RESTATE_VERSION) into target/restate"; \
		mkdir -p target/restate && npm install --prefix target/restate --no-audit --no-fund @restatedev/restate-server@$(RESTATE_VERSION); \
	fi
	$(CARGO) build --release --locked --manifest-path bench/restate-peer/Cargo.toml

# `hearth bench workflows` against a throwaway daemon: hearth, and Restate
# (`bench-workflows-peer` installs restate-server from npm and builds the
# peer). Not part of `make test`. Options: BENCH_WORKFLOWS_ARGS="--runs 500".
.PHONY: bench-workflows
bench-workflows: build bench-workflows-peer
	$(CARGO) build --release --manifest-path bench/workflows/three-steps/Cargo.toml --target wasm32-wasip2
	$(call bench-on-a-throwaway-daemon,workflows,$(BENCH_WORKFLOWS_ARGS))

clean:
	$(CARGO) clean
