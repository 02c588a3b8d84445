#!/usr/bin/env bash
# `make bench-fips`: the `fips` build against the default build, on this machine, now.
# The same client (the default build's `keyward bench`, so only the server differs) drives
# `keyward demo` of each binary in turn: encrypt at 64 connections, RUNS times each,
# alternating (this VM's run-to-run noise is larger than most differences, so medians of
# alternating runs are what count), then the open loop at 1800 req/s once each. Writes
# bench/fips.json and prints one summary line.
#
# Usage: scripts/bench-fips.sh DEFAULT_BIN FIPS_BIN   (RUNS=5 SECS=5 OPEN_SECS=20 by default)
set -euo pipefail
default_bin=${1:?default build\'s keyward}
fips_bin=${2:?fips build\'s keyward}
runs=${RUNS:-5}
secs=${SECS:-5}
for b in "$default_bin" "$fips_bin"; do
  [ -x "$b" ] || { echo "bench-fips: $b missing (make bench-fips builds it)" >&2; exit 1; }
done
command -v jq >/dev/null || { echo "bench-fips: needs jq (apt-get install jq)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_demo() { # name bin
  local name=$1 bin=$2 port
  port=$(free_port)
  "$bin" demo --state-dir "$work/state-$name" --listen "127.0.0.1:$port" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  for _ in $(seq 1 300); do
    if grep -q '^{' "$work/$name.out" 2>/dev/null; then
      grep -m1 '^{' "$work/$name.out" >"$work/$name.json"; return 0
    fi
    sleep 0.2
  done
  echo "bench-fips: $name demo printed no JSON line:" >&2; cat "$work/$name.err" >&2; exit 1
}

start_demo default "$default_bin"
start_demo fips "$fips_bin"

bench() { # name args...
  local name=$1; shift
  "$default_bin" bench --demo "$work/$name.json" --json --quiet "$@"
}

: >"$work/default.runs"; : >"$work/fips.runs"
for i in $(seq 1 "$runs"); do
  for name in default fips; do
    r=$(bench "$name" -c 64 --duration "${secs}s" --warmup 1s)
    echo "$r" >>"$work/$name.runs"
    echo "bench-fips: $name encrypt c64 #$i: $(jq -r '"\(.ops_per_s) req/s, server \(.server_cpu.us_per_request) us/req, errors \(.errors_total)"' <<<"$r")" >&2
  done
done
for name in default fips; do
  bench "$name" --rate 1800 -c 32 --duration "${OPEN_SECS:-20}s" --warmup 1s >"$work/$name.open"
  echo "bench-fips: $name open 1800/s: $(jq -r '"p99 \(.latency_us.p99_us) us, errors \(.errors_total)"' "$work/$name.open")" >&2
done
mkdir -p bench
jq -n \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
  --arg load "$(cat /proc/loadavg)" \
  --arg default_bin "$default_bin" --arg fips_bin "$fips_bin" \
  --slurpfile d "$work/default.runs" --slurpfile f "$work/fips.runs" \
  --slurpfile dopen "$work/default.open" --slurpfile fopen "$work/fips.open" '
  def med: sort | .[(length/2|floor)];
  def side($runs; $open; $bin): {
    binary: $bin,
    server_us_per_request_runs: [$runs[].server_cpu.us_per_request],
    server_us_per_request_median: ([$runs[].server_cpu.us_per_request] | med),
    ops_per_s_median: ([$runs[].ops_per_s] | med),
    errors: ([$runs[].errors_total] | add),
    open_1800: {p50_us: $open[0].latency_us.p50_us, p99_us: $open[0].latency_us.p99_us,
                p999_us: $open[0].latency_us.p999_us, errors: $open[0].errors_total}
  };
  {generated_by: "make bench-fips (scripts/bench-fips.sh)", date: $date,
   machine: {cpu: $cpu, loadavg_at_end: $load},
   default: side($d; $dopen; $default_bin), fips: side($f; $fopen; $fips_bin)}
  | .fips_over_default = (.fips.server_us_per_request_median / .default.server_us_per_request_median)
  ' >bench/fips.json
jq -r '"bench-fips: fips \(.fips.server_us_per_request_median) us/req against default \(.default.server_us_per_request_median) (x\(.fips_over_default*100|round/100)); wrote bench/fips.json"' bench/fips.json >&2
