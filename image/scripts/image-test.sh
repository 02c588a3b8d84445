#!/bin/bash
# make image-test: boot the built appliance in qemu (TCG, OVMF, swtpm) and check it against the
# reference values `keyward measure` computed from the same UKI.
#
#   1. good boot: dm-verity root mounts, keyward-pins extends PCR 15 from the fw_cfg pins, and
#      every PCR the guest prints (4, 7, 11, 12, 15; sha256 and sha384) equals the reference.
#   2. release + XKS (only once `keyward serve` accepts [master_key] source = "release"): a host
#      `keyward krs` with SoftHSMv2 and a TPM policy built from the reference values; the
#      guest's XKS API is driven through the forwarded port with curl --aws-sigv4.
#   3. refusal: one byte of /usr/bin/keyward changed on the disk (its first block, located
#      with dump.erofs) -> dm-verity refuses the read, keyward never runs.
#   4. refusal: other pins -> PCR 15 differs from the reference, so the policy cannot match.
# Every step's wall time goes to image/build/test/times.txt.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$here"
t="build/test"
rm -rf "$t" && mkdir -p "$t"
bin="$repo/target/release/keyward"
if [ ! -f build/keyward.raw ] || [ ! -f build/keyward.efi ]; then
    echo "image-test: run make image first" >&2; exit 1
fi
[ -x "$bin" ] || { echo "image-test: $bin missing (make image builds it)" >&2; exit 1; }
fail=0
now() { date +%s; }
step() { echo "$1 $2 s" >> "$t/times.txt"; echo "image-test: $1 took $2 s"; }
ok() { echo "image-test: PASS $*"; }
bad() { echo "image-test: FAIL $*"; fail=1; }

# wait until the serial log has a line matching $2, or qemu ($3 = pid) ended, or $4 s passed
wait_for() {
    local log="$1" pattern="$2" pid="$3" limit="$4" start
    start=$(now)
    while [ $(( $(now) - start )) -lt "$limit" ]; do
        grep -a -q -E "$pattern" "$log" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { grep -a -q -E "$pattern" "$log" 2>/dev/null; return $?; }
        sleep 2
    done
    return 1
}
# stop a boot: qemu by its pid file (boot.sh then stops its swtpm), then reap boot.sh ($2)
stop_vm() {
    if [ -s "$1/qemu.pid" ]; then kill "$(cat "$1/qemu.pid")" 2>/dev/null || true; fi
    wait "$2" 2>/dev/null || true
}

# the pins the test customer gives at launch (the KRS stage rewrites them with real key hashes)
cat > "$t/pins" <<PINS
krs_url = "10.0.2.100:9443"
krs_tls_spki_sha256 = "$(printf 'test krs tls key' | sha256sum | cut -d' ' -f1)"
receipt_spki_sha256 = "$(printf 'test receipt key' | sha256sum | cut -d' ' -f1)"
admin_ca_sha256 = "$(printf 'test admin ca' | sha256sum | cut -d' ' -f1)"
PINS

s=$(now)
"$bin" measure --uki build/keyward.efi --pins "$t/pins" --events "$t/reference.json" \
    --out "$t/reference-values.json" --tpm-policy "$t/tpm-policy.toml"
step measure $(( $(now) - s ))

# ---- 1. good boot ---------------------------------------------------------------------------
s=$(now)
scripts/boot.sh build/keyward.raw "$t/pins" "$t/good" > "$t/good.qemu.log" 2>&1 &
vm=$!
if wait_for "$t/good/serial.log" 'keyward-pcr sha384 15 ' "$vm" 900; then
    step boot-to-pcrs $(( $(now) - s ))
    for bank in sha256 sha384; do
        for pcr in 4 7 11 12 15; do
            got="$(grep -a -o -E "keyward-pcr $bank $pcr [0-9A-Fa-f]+" "$t/good/serial.log" | tail -n 1 | cut -d' ' -f4 | tr 'A-F' 'a-f')"
            want="$(jq -r --arg b "$bank" --arg p "$pcr" '.pcrs[$b][$p]' "$t/reference.json")"
            if [ "$got" = "$want" ]; then ok "PCR $pcr ($bank) = reference $want"; else bad "PCR $pcr ($bank): guest $got, reference $want"; fi
        done
    done
    if grep -a -q 'keyward-pins: pins from qemu-fw_cfg' "$t/good/serial.log"; then
        ok "keyward-pins read fw_cfg and extended PCR 15"
    else
        bad "keyward-pins did not report"
    fi
else
    step boot-to-pcrs-timeout $(( $(now) - s ))
    bad "good boot: no keyward-pcr lines on the console (see $t/good/serial.log)"
fi

# ---- 2. release + XKS (needs the release path in keyward serve) -----------------------------
if grep -q -E '"release\\" is not available' "$repo/src/appliance/cli.rs" "$repo/src/config/release.rs" 2>/dev/null; then
    echo "image-test: SKIP release+XKS: keyward serve does not accept source = \"release\" in this build yet"
    echo "skip release+xks" >> "$t/times.txt"
else
    # keyward serve has the release source now; this stage (host `keyward krs init/serve` on
    # SoftHSMv2 with $t/tpm-policy.toml, the swtpm AK registered, XKS driven with curl
    # --aws-sigv4 on 127.0.0.1:$XKS_PORT) is the next step and not written yet.
    echo "image-test: SKIP release+XKS: stage not written yet (see README)"
    echo "skip release+xks (not written)" >> "$t/times.txt"
fi
stop_vm "$t/good" "$vm"

# ---- 3. one byte of /usr/bin/keyward changed ------------------------------------------------
s=$(now)
cp --sparse=always build/keyward.raw "$t/corrupt.raw"
root_start=$(sfdisk -J "$t/corrupt.raw" | jq '.partitiontable.partitions[] | select(.name=="root-x86-64") | .start')
phys=$(dump.erofs -e --path=/usr/bin/keyward build/root.erofs | awk '$1=="0:" {print $7; exit}' | cut -d. -f1)
at=$(( root_start * 512 + phys + 64 ))
byte=$(od -An -tu1 -j "$at" -N1 "$t/corrupt.raw" | tr -d ' ')
printf '%b' "$(printf '\\%03o' $(( byte ^ 1 )))" | dd of="$t/corrupt.raw" bs=1 seek="$at" conv=notrunc status=none
echo "image-test: flipped byte $at of the disk (/usr/bin/keyward's first erofs block, root partition offset $phys)"
scripts/boot.sh "$t/corrupt.raw" "$t/pins" "$t/corrupt" > "$t/corrupt.qemu.log" 2>&1 &
vm=$!
if wait_for "$t/corrupt/serial.log" 'keyward-pcr sha384 15 |keyward.service: (Main process exited|Failed)' "$vm" 900; then
    if grep -a -q -E 'device-mapper: verity.*(data block|metadata block).*corrupted|verity.*corrupted' "$t/corrupt/serial.log" \
        && grep -a -q -E 'keyward.service: (Main process exited|Failed at step EXEC|Failed with result)' "$t/corrupt/serial.log"; then
        ok "corrupted /usr/bin/keyward: dm-verity reported the corrupted block and keyward.service failed"
    else
        bad "corrupted /usr/bin/keyward: no dm-verity error + keyward failure on the console"
    fi
else
    bad "corrupted boot: no result on the console"
fi
step corrupt-boot $(( $(now) - s ))
stop_vm "$t/corrupt" "$vm"

# ---- 4. other pins --------------------------------------------------------------------------
s=$(now)
sed 's/^krs_url = .*/krs_url = "10.0.2.100:9999"/' "$t/pins" > "$t/pins-other"
scripts/boot.sh build/keyward.raw "$t/pins-other" "$t/other" > "$t/other.qemu.log" 2>&1 &
vm=$!
if wait_for "$t/other/serial.log" 'keyward-pcr sha384 15 ' "$vm" 900; then
    got="$(grep -a -o -E 'keyward-pcr sha256 15 [0-9A-Fa-f]+' "$t/other/serial.log" | tail -n 1 | cut -d' ' -f4 | tr 'A-F' 'a-f')"
    want="$(jq -r '.pcrs.sha256["15"]' "$t/reference.json")"
    other="$("$bin" measure --uki build/keyward.efi --pins "$t/pins-other" | jq -r '.pcrs.sha256["15"]')"
    if [ "$got" != "$want" ] && [ "$got" = "$other" ]; then
        ok "other pins: PCR 15 = $got (the other pins' value), not the reference $want"
    else
        bad "other pins: PCR 15 $got, reference $want, other pins' value $other"
    fi
else
    bad "other-pins boot: no keyward-pcr lines"
fi
step other-pins-boot $(( $(now) - s ))
stop_vm "$t/other" "$vm"

echo "image-test: times (s):"; cat "$t/times.txt"
exit "$fail"
