#!/usr/bin/env bash
# `make run` and `make fleet`: install what is missing (scripts/setup.sh), refuse a taken port
# before the long build, build the release binary with cargo's progress shown, then run
# `keyward demo` with the given options (`make run ARGS="--listen 127.0.0.1:9443"` passes them
# here). `make fleet` sets KEYWARD_FLEET=N (FLEET=, default 3): `--fleet N` is added unless
# the options already name one.
#
#   [KEYWARD_FLEET=N] scripts/run.sh [keyward demo options...]
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"

# With --fleet N: PostgreSQL and HAProxy too.
setup=run
fleet=()
[ -z "${KEYWARD_FLEET:-}" ] || { setup=fleet fleet=(--fleet "$KEYWARD_FLEET"); }
for arg in "$@"; do
    case "$arg" in --fleet | --fleet=*) setup=fleet fleet=() ;; esac
done
scripts/setup.sh --install "$setup"

# The addresses the demo will bind, from its options (defaults as in `keyward demo --help`).
listen=127.0.0.1:8443
others=()
prev=""
for arg in "$@"; do
    case "$prev" in
        --listen) listen="$arg" ;;
        --admin-listen | --attestation-listen) others+=("$prev=$arg") ;;
    esac
    case "$arg" in
        --listen=*) listen="${arg#--listen=}" ;;
        --admin-listen=* | --attestation-listen=*) others+=("$arg") ;;
    esac
    prev="$arg"
done

# host:port -> "host port" to connect to (a wildcard address is checked on loopback).
split() {
    local addr="$1" host port
    port="${addr##*:}"
    host="${addr%:*}"
    host="${host#[}"
    host="${host%]}"
    case "$host" in 0.0.0.0 | "") host=127.0.0.1 ;; ::) host=::1 ;; esac
    echo "$host $port"
}
# Something accepts connections on host:port.
taken() { timeout 2 bash -c ": <>/dev/tcp/$1/$2" 2>/dev/null; }

check_free() {
    local flag="$1" addr="$2" host port
    read -r host port <<<"$(split "$addr")"
    case "$port" in '' | *[!0-9]*)
        echo "make $setup: $flag $addr: expected HOST:PORT (e.g. 127.0.0.1:9443)" >&2
        exit 1
        ;;
    esac
    [ "$port" != 0 ] || return 0
    taken "$host" "$port" || return 0
    echo "make $setup: $addr is already in use, so the demo could not listen there ($flag)." >&2
    if command -v ss >/dev/null 2>&1; then
        ss -Hltnp "sport = :$port" 2>/dev/null | sed 's/^/    /' >&2 || true
    fi
    local p
    for p in $(seq $((port + 1000)) $((port + 1100))) $(seq 20000 20100); do
        if [ "$p" -gt 65535 ] || taken "$host" "$p"; then continue; fi
        # Not a port another of the demo's options already names.
        case " ${ports[*]} " in *" $p "*) continue ;; esac
        echo "Stop what holds it (an earlier make run?), or choose another port, e.g.:" >&2
        echo "    make $setup ARGS=\"$(suggest "$flag" "$host:$p")\"" >&2
        break
    done
    exit 1
}

# The given options with FLAG's address replaced (or added when FLAG was not given).
suggest() {
    local flag="$1" addr="$2" out=() prev="" a found=""
    for a in "${args[@]+"${args[@]}"}"; do
        if [ "$prev" = "$flag" ]; then
            a="$addr" found=1
        elif [ "${a%%=*}" = "$flag" ] && [ "$a" != "$flag" ]; then
            a="$flag=$addr" found=1
        fi
        out+=("$a")
        prev="$a"
    done
    [ -n "$found" ] || out=("$flag" "$addr" "${out[@]+"${out[@]}"}")
    echo "${out[*]}"
}
args=("$@")
ports=("${listen##*:}")
for o in "${others[@]+"${others[@]}"}"; do ports+=("${o##*:}"); done

check_free --listen "$listen"
for o in "${others[@]+"${others[@]}"}"; do
    check_free "${o%%=*}" "${o#*=}"
done

bin=target/release/keyward
echo "make $setup: building $bin (release: fat LTO, 5-9 minutes the first time on 2 cores; then seconds)" >&2
"$CARGO" build --release --bin keyward
set -- "${fleet[@]+"${fleet[@]}"}" "$@"
echo "make $setup: starting $bin demo $*" >&2
exec "$bin" demo "$@"
