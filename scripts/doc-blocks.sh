#!/usr/bin/env bash
# doc-blocks.sh FILE...: run the runnable shell blocks of each Markdown FILE (fences that read
# "```sh runnable") against a fresh `keyward demo`, as a newcomer would after `make run`.
#
# The demo gets a new state directory (DIR/demo-state, where `make run` keeps its own) and free
# ports; the blocks of one file run in order in ONE `bash -euo pipefail` session whose working
# directory is DIR, with KEYWARD set to the binary under test (blocks use
# ${KEYWARD:-target/release/keyward}). The first failing block fails the run, naming FILE:LINE.
# env: KEYWARD (default target/debug/keyward), DOC_BLOCKS_TIMEOUT (seconds to wait for the demo,
# default 120), DOC_BLOCKS_VERBOSE=1 (print what the blocks printed). Needs curl and jq.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -gt 0 ] || { echo "usage: doc-blocks.sh FILE..." >&2; exit 2; }
kw="${KEYWARD:-$repo/target/debug/keyward}"
case "$kw" in /*) ;; *) kw="$PWD/$kw" ;; esac
[ -x "$kw" ] || { echo "doc-blocks: $kw is not an executable (cargo build first)" >&2; exit 2; }
for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "doc-blocks: $tool not found: apt-get install $tool" >&2; exit 2; }
done
export KEYWARD="$kw"
work="$(mktemp -d)"
pid=""
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$kw" demo --state-dir "$work/demo-state" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --attestation-listen 127.0.0.1:0 > "$work/demo.out" 2> "$work/demo.err" &
pid=$!
deadline=$(( $(date +%s) + ${DOC_BLOCKS_TIMEOUT:-120} ))
until [ -s "$work/demo-state/ready.json" ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "doc-blocks: keyward demo exited before it was ready:" >&2; tail -20 "$work/demo.err" >&2; exit 1
  fi
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "doc-blocks: keyward demo not ready in time:" >&2; tail -20 "$work/demo.err" >&2; exit 1
  fi
  sleep 0.2
done

status=0
for f in "$@"; do
  file="$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"
  script="$work/$(basename "$f").sh"
  # One script per file: each block preceded by its location, so a failure names it.
  awk -v name="$f" '
    /^```sh runnable[[:space:]]*$/ { inblock = 1; n++; printf "__block=%s:%d\n", name, NR + 1; next }
    inblock && /^```[[:space:]]*$/ { inblock = 0; next }
    inblock { print }
    END { if (inblock) { print "echo \"doc-blocks: unterminated block in " name "\" >&2; exit 1" } }
  ' "$file" > "$script.body"
  blocks=$(grep -c '^__block=' "$script.body" || true)
  if [ "$blocks" -eq 0 ]; then echo "doc-blocks: $f: no runnable blocks"; continue; fi
  {
    # shellcheck disable=SC2016  # expanded when the generated script runs
    echo 'trap '\''echo "doc-blocks: FAIL: the block at $__block (script line $LINENO)" >&2'\'' ERR'
    cat "$script.body"
  } > "$script"
  if (cd "$work" && bash -euo pipefail "$script" > "$work/out.txt" 2>&1); then
    echo "doc-blocks: $f: $blocks block(s) ran"
    [ -z "${DOC_BLOCKS_VERBOSE:-}" ] || cat "$work/out.txt"
  else
    echo "doc-blocks: $f: FAILED" >&2
    cat "$work/out.txt" >&2
    status=1
  fi
done
exit $status
