#!/bin/bash
# image-test: a swtpm state (SHA-256 + SHA-384 banks, EK) with keyward's attestation key already
# provisioned at 0x81010002, made before the guest's first boot: `keyward attest provision-ak`
# against a TCP swtpm, then an orderly TPM2_Shutdown and swtpm shutdown so the state reloads.
# This is the "registered AK" trust path of issue 3 (the AK's Name goes into the KRS policy).
#
# usage: vtpm-ak.sh BIN STATE_DIR      prints the AK's TPM Name (hex) on stdout
# env:   VTPM_PORT (23321; the control channel uses VTPM_PORT+1)
set -euo pipefail
bin="${1:?usage: vtpm-ak.sh BIN STATE_DIR}" state="${2:?state dir}"
port="${VTPM_PORT:-23321}"
rm -rf "$state" && mkdir -p "$state"
state="$(realpath "$state")"
swtpm_setup --tpm2 --tpmstate "$state" --pcr-banks sha256,sha384 --createek --overwrite \
    > "$state.setup.log" 2>&1
swtpm socket --tpm2 --tpmstate dir="$state" \
    --server type=tcp,port="$port",bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
    --flags not-need-init,startup-clear --daemon --pid file="$state.pid" --log file="$state.log"
trap 'kill "$(cat "$state.pid" 2>/dev/null)" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    tpm2_getcap -T "swtpm:host=127.0.0.1,port=$port" properties-fixed >/dev/null 2>&1 && break
    sleep 0.1
done
name="$("$bin" attest provision-ak --tcti "swtpm:host=127.0.0.1,port=$port" | jq -r .name)"
tpm2_shutdown -T "swtpm:host=127.0.0.1,port=$port"
swtpm_ioctl --tcp "127.0.0.1:$((port + 1))" -s
case "$name" in 000b*) echo "$name" ;; *) echo "vtpm-ak: no AK name" >&2; exit 1 ;; esac
