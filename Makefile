# oxio's one definition of how to build, test, benchmark and lint. `make help` lists targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed

.PHONY: help demo build test test-rust test-python conformance bench bench-deps bench-quick wrk lint clean

help: ## Show this help.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

build: $(STAMP) ## Build the extension (release) into .venv.
	$(VENV)/bin/maturin develop --release --quiet

demo: build wrk ## The showcase: a web app and a program on asyncio, uvloop and oxio (~40 s).
	$(PY) demo/demo.py

test: build lint test-rust test-python conformance ## Build, lint, and run every test.

test-rust: ## Engine tests (no Python needed).
	cargo test -p oxio-core --quiet

test-python: build ## The differential pytest suite (each test on asyncio and oxio).
	$(PY) -m pytest tests

conformance: build ## CPython's own test_asyncio, on oxio and on the stdlib loop.
	$(PY) tests/conformance/run.py

# wrk drives the demo's web app and the benches' HTTP rows. Package lists may be missing on a
# fresh machine, hence the update before a second try. If wrk cannot be installed, the demo skips
# its web part and the HTTP rows are reported as missing.
wrk:
	@command -v wrk >/dev/null || apt-get install -y -q wrk || (apt-get update -q && apt-get install -y -q wrk) || echo "note: wrk did not install"

# The network rows need the Rust load generator and reference server, and wrk for HTTP; a tool
# that cannot be installed leaves its rows reported as missing. rsloop's source asks for a
# nightly compiler for one unstable feature (allocator_api): the stable one builds it in
# bootstrap mode, with that feature switched on. The wheels of the other loops ignore both.
bench-deps: $(STAMP) wrk
	@grep -v '^#' requirements-bench.txt | while read -r loop; do \
		RUSTUP_TOOLCHAIN=stable RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zcrate-attr=feature(allocator_api)" \
		$(PY) -m pip install --quiet "$$loop" || echo "note: $$loop did not install"; done
	cargo build --release --quiet -p oxio-loadgen

bench: build bench-deps ## Side-by-side benchmarks: oxio, asyncio, uvloop, rloop, rsloop, veloxloop (5 rounds, ~25 min).
	$(PY) benches/run.py --rounds 5

# Quick: every row still runs on every loop, with a quarter of each in-process workload and
# short network windows, to check that the suite works rather than to publish figures. Two
# rounds: with six loops a third took it past three minutes (wrk measures whole seconds).
bench-quick: build bench-deps ## The same benchmarks, 2 rounds, smaller and shorter (<3 min).
	$(PY) benches/run.py --rounds 2 --net-seconds 0.15 --net-warmup 0.05 --workload-scale 0.25

lint: $(STAMP) ## cargo fmt, clippy, ruff, and stubtest of oxio._oxio.
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	# Free-threaded CPython has no interpreter here; its configuration alone lets the
	# free-threaded code paths (attached_cell.rs) compile and lint.
	PYO3_CONFIG_FILE=$(CURDIR)/.ci/pyo3-free-threaded.cfg CARGO_TARGET_DIR=target/free-threaded \
		cargo clippy -p oxio-py --quiet -- -D warnings
	$(VENV)/bin/ruff check python tests benches demo
	$(VENV)/bin/ruff format --check python tests benches demo
	$(PY) -m mypy.stubtest oxio._oxio --allowlist tests/stubtest-allowlist.txt

clean: ## Remove build products and the venv.
	cargo clean
	rm -rf $(VENV)
