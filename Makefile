# keyward: the two commands first (make run, make test), then the image and benchmark targets.
# Each target checks its tools and prints the apt-get line when one is missing.

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: run test build release lint fmt bench image measure image-repro image-test ami clean

## make run: the whole pipeline on embedded defaults (simulated TEE, local key release, XKS on https://127.0.0.1:8443)
run:
	$(CARGO) run --release --quiet -- demo

## make test: formatting, lints, unit and integration tests (needs the packages .ci/run installs)
test:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test --all-targets

## make bench: release build, criterion micro-benchmarks (short), then `keyward demo` driven by
## `keyward bench`; writes bench/results.json and bench/chart.png (see README, Performance).
## BENCH_ARGS=--quick shortens every run to 3 s.
bench:
	$(CARGO) build --release --bin keyward --example bench_echo_server --example bench_suite
	$(CARGO) bench --bench floor
	./target/release/examples/bench_suite $(BENCH_ARGS)

build:
	$(CARGO) build

release:
	$(CARGO) build --release

clean:
	$(CARGO) clean
