# Quick start: `make demo` (set-up, then the main job end to end), `make test` (set-up, then every test).
SHELL := /bin/bash
VENV := .venv
# ONNX Runtime's library: each script and the tests find it in the venv themselves (whatever its
# Python version: scripts/ort-library.sh), after `setup` made the venv. Not looked up here: a
# make-level $(wildcard) is evaluated (and cached) before `setup` runs on a fresh clone.

.PHONY: setup db build test test-rust test-python demo models bench fuzz clean-db lint install

setup:
	@scripts/setup.sh

# A private PostgreSQL cluster (var/pg, port 55432), unless DATABASE_URL names a server to use.
db: setup
	@if [[ -z "$${DATABASE_URL:-}" ]]; then scripts/pg.sh start >/dev/null; fi

build: setup
	cargo build --release

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

test: setup db
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory test-rust
	$(MAKE) --no-print-directory test-python

test-rust:
	DATABASE_URL=$${DATABASE_URL:-$$(scripts/pg.sh url)} cargo test --release --no-fail-fast -- --test-threads=2

test-python:
	scripts/test-python.sh

models: setup
	scripts/make-models.sh

install: build
	scripts/install.sh

# Benchmarks print their figures and compare against a named peer in the same run (BENCHMARKS.md).
bench: setup db build models
	scripts/bench-receive.sh
	scripts/bench-infer.sh
	scripts/bench-turnaround.sh
	scripts/bench-soak.sh
	scripts/bench-year.sh

# Fuzzing (cargo-fuzz, nightly): every parser of untrusted bytes; long, so not part of `make test`
# (docs/fuzzing.md). FUZZ_SECS=60 for a short run of each target.
fuzz: setup
	scripts/fuzz.sh

demo: setup db build models
	scripts/demo.sh

clean-db:
	scripts/pg.sh stop
	rm -rf var/pg
