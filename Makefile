# keyward: the two commands first (make run, make test), then the image and benchmark targets.
# Each target checks its tools and prints the apt-get line when one is missing.

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: run fleet fleet-chaos soak fuzz fuzz-seeds test build release sbom sign fips bench-fips lint fmt bench image measure image-repro image-test ami clean

## make run: the whole pipeline on embedded defaults (simulated TEE, local key release, XKS on https://127.0.0.1:8443).
## Installs missing packages first (scripts/setup.sh), stops before building when the port is taken,
## shows the build. ARGS="--listen 127.0.0.1:9443" passes options to `keyward demo` (see its --help).
ARGS ?=
run:
	@CARGO="$(CARGO)" scripts/run.sh $(ARGS)

## make fleet: a local fleet (keyward demo --fleet $(FLEET)): PostgreSQL from the machine's own
## binaries, the embedded KRS, FLEET members (default 3) and HAProxy on the XKS address, as make
## run does for one appliance (also installs postgresql and haproxy). ARGS= as for make run.
FLEET ?= 3
fleet:
	@CARGO="$(CARGO)" KEYWARD_FLEET="$(FLEET)" scripts/run.sh $(ARGS)

## make fleet-chaos: keyward demo --fleet 3 under faults (kill -9 a member, PostgreSQL stopped 30 s,
## admin writes from three members for 60 s, a database behind the KRS head) with keyward bench at
## 1800 req/s through the balancer, plus change visibility, throughput 3 vs 1 member and the boot
## into 100k keys: bench/fleet-chaos.json and the table in docs/performance.md. The members and the
## load generator are the release binary; the orchestrator (benches/tools/fleet_chaos.rs) is a
## debug build (it is not measured). CHAOS_ARGS=--quick for a short smoke run.
CHAOS_ARGS ?=
fleet-chaos:
	@scripts/setup.sh --install fleet
	$(CARGO) build --release --bin keyward
	$(CARGO) build --example fleet_chaos
	target/debug/examples/fleet_chaos --bin target/release/keyward $(CHAOS_ARGS)

## make soak: keyward demo --fleet 3 at 1800 req/s open loop through HAProxy for SOAK_MINUTES
## (default 60) with an Encrypt/Decrypt/GetKeyMetadata/GetHealthStatus mix and an admin change on
## a different member every minute; RSS, fds, latency percentiles and errors per minute go to
## bench/soak.csv, bench/soak.png and bench/soak.json (docs/performance.md). Not in CI. Exits 1
## when memory is not flat or any request failed. SOAK_ARGS="--sample-seconds 10" for a smoke run.
SOAK_MINUTES ?= 60
SOAK_ARGS ?=
soak:
	@scripts/setup.sh --install fleet
	$(CARGO) build --release --bin keyward
	$(CARGO) build --example soak
	target/debug/examples/soak --bin target/release/keyward --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

## make fuzz: coverage-guided fuzzing (cargo-fuzz, libFuzzer + AddressSanitizer) of every parser of
## outside bytes (crates/fuzz), each target FUZZ_SECONDS (default 180) on its committed corpus;
## installs cargo-fuzz when missing. FUZZ_TARGETS="xks_request krp_messages" runs some only.
## make fuzz-seeds rebuilds the committed seed corpus (fuzz/corpus/). make test replays that
## corpus (and fuzz/regressions/) through the same targets without a fuzzer.
FUZZ_SECONDS ?= 180
FUZZ_TARGETS ?=
fuzz:
	@scripts/setup.sh --install test
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh run $(FUZZ_TARGETS)

fuzz-seeds:
	scripts/fuzz.sh seeds

## make test: installs missing packages (scripts/setup.sh test), then formatting, lints, unit and
## integration tests
test:
	@scripts/setup.sh --install test
	$(CARGO) fmt --all --check
	scripts/check-deps.sh
	@if command -v cargo-deny >/dev/null; then $(CARGO) deny --offline check licenses bans sources; \
	else echo "cargo-deny: SKIPPED (not installed: cargo install --locked cargo-deny, 12 min here)"; fi
	@if [ -n "$$KEYWARD_ADVISORY_DB" ] && command -v cargo-deny >/dev/null; then $(CARGO) deny --offline check --disable-fetch advisories; \
	else echo "cargo-deny advisories: SKIPPED (no local advisory-db: set KEYWARD_ADVISORY_DB)"; fi
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p keyward --no-default-features --features appliance -- -D warnings
	# keyward-integration-tests runs target/debug/keyward: `cargo test --workspace` builds it (for
	# the root package's own tests) before any test runs, with the same features as everything
	# else. A separate `cargo build --bin keyward` here resolved features without the test
	# dependencies' and built the stack a second time (+128 s, +0.8 GB on a clean run).
	$(CARGO) test --workspace --all-targets

## make bench: release build, criterion micro-benchmarks (short), then `keyward demo` driven by
## `keyward bench`; writes bench/results.json and bench/chart.png (see docs/performance.md).
## BENCH_ARGS=--quick shortens every run to 3 s.
bench:
	$(CARGO) build --release --bin keyward --example bench_echo_server --example bench_unseal --example bench_xks_server --example bench_suite
	$(CARGO) bench --bench floor --bench xks --bench unseal
	./target/release/examples/bench_suite $(BENCH_ARGS)

## make bench-fips: the fips build (release, in FIPS_TARGET) against the default release build,
## the same client (the default build's `keyward bench`) driving `keyward demo` of each in turn,
## alternating (scripts/bench-fips.sh; bench/fips.json).
bench-fips:
	@scripts/setup.sh --install fips
	CARGO_TARGET_DIR=$(FIPS_TARGET) $(CARGO) build --release --features fips --bin keyward
	$(CARGO) build --release --bin keyward
	scripts/bench-fips.sh target/release/keyward $(FIPS_TARGET)/release/keyward

build:
	$(CARGO) build

## make release: cargo auditable build --release (the dependency list embedded in the binary;
## installs cargo-auditable when missing, 4.5 min here). make sbom: CycloneDX JSON of that binary,
## read out of its embedded list by auditable2cdx (target/release/keyward.cdx.json; its install
## took 37 min on this loaded 2-core VM). make sign KEY=minisign.key: FILE.minisig beside each.
release:
	@command -v cargo-auditable >/dev/null || $(CARGO) install --locked cargo-auditable
	$(CARGO) auditable build --release

sbom:
	@test -f target/release/keyward || { echo "make sbom: run make release first" >&2; exit 1; }
	@command -v auditable2cdx >/dev/null || $(CARGO) install --locked auditable2cdx
	auditable2cdx target/release/keyward > target/release/keyward.cdx.json
	@if [ -f $(IMAGE_BUILD)/manifest.tsv ]; then image/scripts/manifest-cdx.sh $(IMAGE_BUILD)/manifest.tsv $$(git rev-parse HEAD) > $(IMAGE_BUILD)/manifest.cdx.json; \
	else echo "make sbom: no $(IMAGE_BUILD)/manifest.tsv (make image): image manifest not written"; fi

SIGN_FILES ?= $(wildcard attestation/reference-values*.json $(IMAGE_BUILD)/reference-values.json target/release/keyward.cdx.json $(IMAGE_BUILD)/manifest.cdx.json)
sign:
	@test -n "$(KEY)" || { echo "make sign: give KEY=path/to/minisign.key" >&2; exit 1; }
	@command -v minisign >/dev/null || { echo "make sign: apt-get install minisign" >&2; exit 1; }
	for f in $(SIGN_FILES); do minisign -S -s "$(KEY)" -m "$$f" -t "keyward $$(git rev-parse HEAD) $$f" || exit 1; done

## make fips: the FIPS build (--features fips: the XKS endpoint's TLS, the XKS AES-256-GCM and the
## key store's sealing in AWS-LC's FIPS 140-3 module; docs/fips.md) in target/fips, then the tests
## of the crates it changes, run against the module. Installs cmake and golang-go first. Never part
## of the default build or make test.
FIPS_TARGET ?= target/fips
fips:
	@scripts/setup.sh --install fips
	CARGO_TARGET_DIR=$(FIPS_TARGET) $(CARGO) build --features fips --bin keyward
	CARGO_TARGET_DIR=$(FIPS_TARGET) $(CARGO) test --features keyward-xks/fips -p keyward-secret -p keyward-xks -p keyward-keystore
	CARGO_TARGET_DIR=$(FIPS_TARGET) $(CARGO) test -p keyward --features fips --test it fips::

clean:
	$(CARGO) clean

# ---- the appliance image (see docs/image.md) -------------------
# make image        mkosi base tree (cached by its config) + keyward release binary -> image/build/keyward.raw
# make measure      reference values (PCR 4/7/11/12 [+15 with PINS=], SNP with AWS_OVMF=) -> image/build/reference-values.json,
#                   measurements.json (every event, both banks), tpm-policy.toml (a KRS [tpm] section)
# make image-repro  build twice from the same .deb cache and compare the UKI and the root hash
# make image-test   boot the image in qemu with a swtpm and a host KRS: release, XKS, two refusals
# make ami          the AWS import/registration commands (prints them without AWS credentials)
IMAGE_BUILD := image/build
# The image holds the appliance-only binary (serve, config, attest: no KRS, no PKCS#11 loader, no
# load generator, no test signing keys); the host side of image-test (KRS, measure, admin client)
# uses the full developer binary.
APPLIANCE_FEATURES := --no-default-features --features appliance
KEYWARD_BIN ?= target/release/keyward-appliance
KEYWARD_HOST_BIN ?= target/release/keyward
NEED := image/scripts/need.sh
SPACE := image/scripts/need-space.sh
IMAGE_TOOLS := mkosi:mkosi systemd-nspawn:systemd-container debootstrap:debootstrap \
	mkfs.erofs:erofs-utils veritysetup:cryptsetup-bin objcopy:binutils mkfs.fat:dosfstools \
	mcopy:mtools sfdisk:fdisk mkfs.ext4:e2fsprogs dpkg-query:dpkg py:pefile:python3-pefile \
	/usr/lib/systemd/boot/efi/linuxx64.efi.stub:systemd-boot-efi
BOOT_TOOLS := qemu-system-x86_64:qemu-system-x86 /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf \
	swtpm:swtpm swtpm_setup:swtpm-tools softhsm2-util:softhsm2 curl:curl jq:jq openssl:openssl

$(IMAGE_BUILD)/base.stamp: image/mkosi.default image/mkosi.postinst image/scripts/build-base.sh
	@$(NEED) $(IMAGE_TOOLS)
	@$(SPACE) "make image" 3500 $(IMAGE_BUILD)
	image/scripts/build-base.sh
	touch $@

image: $(IMAGE_BUILD)/base.stamp
	@$(NEED) $(IMAGE_TOOLS)
	@$(SPACE) "make image" 1800 $(IMAGE_BUILD)
	@if [ "$(KEYWARD_BIN)" = target/release/keyward-appliance ]; then \
		$(CARGO) build --release --locked $(APPLIANCE_FEATURES) && cp target/release/keyward target/release/keyward-appliance; \
	else echo "make image: KEYWARD_BIN=$(KEYWARD_BIN) (not the release build)"; fi
	image/scripts/assemble.sh $(KEYWARD_BIN)

measure:
	@test -f $(IMAGE_BUILD)/keyward.efi || { echo "make measure: run make image first" >&2; exit 1; }
	$(CARGO) run --release --quiet -- measure --uki $(IMAGE_BUILD)/keyward.efi \
		$(if $(PINS),--pins $(PINS)) --git-commit $$(git rev-parse HEAD) \
		--artifact rootfs=$(IMAGE_BUILD)/root.erofs --artifact disk=$(IMAGE_BUILD)/keyward.raw \
		--out $(IMAGE_BUILD)/reference-values.json --events $(IMAGE_BUILD)/measurements.json \
		--tpm-policy $(IMAGE_BUILD)/tpm-policy.toml

image-repro:
	@$(NEED) $(IMAGE_TOOLS)
	@if [ "$(KEYWARD_BIN)" = target/release/keyward-appliance ]; then \
		$(CARGO) build --release --locked $(APPLIANCE_FEATURES) && cp target/release/keyward target/release/keyward-appliance; fi
	image/scripts/repro.sh $(KEYWARD_BIN)

image-test:
	@$(NEED) $(IMAGE_TOOLS) $(BOOT_TOOLS)
	@$(SPACE) "make image-test" 1200 $(IMAGE_BUILD)
	@if [ "$(KEYWARD_HOST_BIN)" = target/release/keyward ]; then $(CARGO) build --release --locked; fi
	KEYWARD_BIN=$(KEYWARD_BIN) KEYWARD_HOST_BIN=$(KEYWARD_HOST_BIN) image/test/run.sh

ami:
	@if command -v packer >/dev/null; then packer fmt -check image/packer && echo "packer fmt -check image/packer: ok"; \
	else echo "packer not installed: image/packer not format-checked (apt-get install packer)"; fi
	@image/aws/ami.sh
