#!/usr/bin/env bash
# The system packages `make run` and `make test` need, checked in well under a second when all
# are present (one dpkg-query, no apt-get update) and installed when they are not: as root with
# apt-get, otherwise by printing the one `sudo apt-get install ...` line and failing.
#
#   scripts/setup.sh [--check|--install] [run|fleet|test]
#
#   run   what `make run` needs: the build (a C compiler, pkg-config, libtss2-dev for
#         tss-esapi-sys), SoftHSMv2 for the demo's embedded key-release service, and curl for
#         the Encrypt command the demo prints.
#   fleet what `make fleet` needs: all of run, plus postgresql (the fleet's shared key store,
#         started from the machine's own binaries) and haproxy (its load balancer).
#   test  all of that, plus what the tests run: opensc, swtpm, swtpm-tools, tpm2-tools, jq,
#         openssl, python3 and python3-venv (the botocore signer's venv, built from PyPI), a
#         shell-script linter (shellcheck), systemd (systemd-analyze rates the units), and
#         postgresql and haproxy (the shared key store's tests start their own PostgreSQL
#         server; the fleet's load balancer), and pebble (the ACME test server `tls acme` is
#         tested against), and minisign (signs the reference values and the SBOM in the
#         signature tests; `make sign` uses it too).
#   --check    report what is missing and exit 1 (nothing is installed); the default is --install.
#
# Messages go to stderr (stdout stays for `make run`'s JSON line). Used by the Makefile (run,
# test) and by .ci/run (through make test). Exit status: 0 when everything is present (or was
# just installed), 1 when something is missing, 2 on bad usage.
set -euo pipefail

RUN_PKGS=(gcc libc6-dev pkg-config libtss2-dev softhsm2 curl)
FLEET_PKGS=("${RUN_PKGS[@]}" postgresql haproxy)
# make fips: AWS-LC's FIPS module builds with CMake and Go (aws-lc-fips-sys)
FIPS_PKGS=("${RUN_PKGS[@]}" cmake golang-go)
TEST_PKGS=("${RUN_PKGS[@]}" opensc swtpm swtpm-tools tpm2-tools jq openssl python3 python3-venv
    shellcheck systemd postgresql haproxy pebble minisign faketime)

mode=install
target=run
for arg in "$@"; do
    case "$arg" in
        --check) mode=check ;;
        --install) mode=install ;;
        run | fleet | test | fips) target="$arg" ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument '$arg' (usage: setup.sh [--check|--install] [run|fleet|test])" >&2
            exit 2
            ;;
    esac
done
case "$target" in
    test) pkgs=("${TEST_PKGS[@]}") ;;
    fleet) pkgs=("${FLEET_PKGS[@]}") ;;
    fips) pkgs=("${FIPS_PKGS[@]}") ;;
    *) pkgs=("${RUN_PKGS[@]}") ;;
esac
me="setup ($target)"

# The Rust toolchain is not an apt package here (Debian's cargo is far older than the
# rust-version keyward needs): say how to get it and stop.
if ! command -v cargo >/dev/null 2>&1; then
    echo "$me: cargo not found. Install Rust with rustup (https://rustup.rs):" >&2
    echo "    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\"" >&2
    exit 1
fi

# Packages not installed, by dpkg's own record (one call for all of them).
missing_pkgs() {
    local installed
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null |
        awk '$2 == "installed" { print $1 }') || true
    local p
    for p in "$@"; do
        grep -qx -- "$p" <<<"$installed" || echo "$p"
    done
}

if ! command -v dpkg-query >/dev/null 2>&1; then
    # Not Debian: check the tools themselves and name the Debian packages that provide them.
    miss=()
    command -v cc >/dev/null 2>&1 || miss+=(gcc)
    command -v pkg-config >/dev/null 2>&1 || miss+=(pkg-config)
    pkg-config --exists tss2-sys tss2-esys 2>/dev/null || miss+=("libtss2-dev (tss2-sys, tss2-esys)")
    command -v softhsm2-util >/dev/null 2>&1 || miss+=(softhsm2)
    command -v curl >/dev/null 2>&1 || miss+=(curl)
    if [ "$target" = fleet ]; then
        for t in pg_ctl:postgresql haproxy:haproxy; do
            command -v "${t%%:*}" >/dev/null 2>&1 || miss+=("${t#*:}")
        done
    fi
    if [ "$target" = test ]; then
        for t in pkcs11-tool:opensc swtpm:swtpm swtpm_setup:swtpm-tools tpm2_pcrread:tpm2-tools \
            jq:jq openssl:openssl shellcheck:shellcheck pg_ctl:postgresql haproxy:haproxy \
            pebble:pebble minisign:minisign; do
            command -v "${t%%:*}" >/dev/null 2>&1 || miss+=("${t#*:}")
        done
    fi
    [ ${#miss[@]} -eq 0 ] && exit 0
    echo "$me: no dpkg/apt-get here; install the equivalents of these Debian packages: ${miss[*]}" >&2
    exit 1
fi

mapfile -t missing < <(missing_pkgs "${pkgs[@]}")
[ ${#missing[@]} -eq 0 ] && exit 0

line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$mode" = check ]; then
    echo "$me: missing packages: ${missing[*]}" >&2
    echo "    $line" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$me: missing packages: ${missing[*]}. Install them with:" >&2
    echo "    sudo $line" >&2
    exit 1
fi

echo "$me: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists at all, and old lists may name .debs the mirror no
# longer has: update only then, never when everything is present.
lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -n 1)
if [ -z "$lists" ]; then
    echo "$me: no apt package lists yet: apt-get update" >&2
    apt-get update -qq
fi
if ! $line -qq >/dev/null; then
    echo "$me: apt-get install failed; refreshing the package lists and trying once more" >&2
    apt-get update -qq
    $line -qq >/dev/null
fi
apt-get clean # the downloaded .debs are not needed once installed
mapfile -t still < <(missing_pkgs "${pkgs[@]}")
if [ ${#still[@]} -ne 0 ]; then
    echo "$me: still missing after apt-get install: ${still[*]}" >&2
    exit 1
fi
echo "$me: installed ${missing[*]}" >&2
