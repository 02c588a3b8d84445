#!/bin/bash
# make image-test: the appliance image end to end in qemu (TCG, OVMF, swtpm), against a real
# host `keyward krs` (SoftHSMv2) whose TPM policy is `keyward measure`'s output for this UKI.
#
#   0. host: swtpm state with the AK provisioned before first boot (vtpm-ak.sh); KRS with the
#      committed TEST identity, pins, reference values, signed [tpm] policy (krs-up.sh); a disk
#      copy whose data partition holds the TEST operator CA (data.sh).
#   1. good boot: the guest's PCRs (keyward-pcrs on the console) equal the reference values in
#      both banks; the KRS log shows a release; then through the forwarded ports: `keyward admin
#      trust` verifies the guest's live attestation (fresh nonce, bound to the TLS key the admin
#      port serves, judged under the KRS's policy.toml) and only then pins the admin client to
#      that key (the console's SPKI line, which the host controls, is only compared with it);
#      the admin API (mutual TLS, the attested pin) makes a CSR with the in-VM key, the host signs it with the TEST
#      operator CA (openssl), `tls install` serves the chain; the admin API creates the key
#      store, a key, a grant and a SigV4 credential, and curl --aws-sigv4 --cacert (the TEST
#      CA) encrypts and decrypts through the guest's XKS API.
#   2. refusal: one byte of /usr/bin/keyward changed (its first erofs block): dm-verity refuses
#      the read and keyward.service fails, or the KRS denies; never a release.
#   3. refusal: other pins (another admin CA and its hash, swapped together on the data
#      partition and in the user data, so keyward's own CA check passes): they match no
#      [[deployment]] of the KRS, which denies at Hello (pin_mismatch, before any session);
#      PCR 15 differs too; no release.
# Every step's wall time goes to image/build/test/times.txt. Boots take minutes under TCG.
#
# env: KEYWARD_BIN (target/release/keyward-appliance: the appliance-only binary the image holds;
#      checked first: no test private key, no PKCS#11 loader), KEYWARD_HOST_BIN
#      (target/release/keyward: the full binary for the host's KRS, measure and admin client), BOOT_WAIT (1800 s
#      per boot), KRS_PORT 19443, XKS_PORT 18443, ADMIN_PORT 18444, ATTEST_PORT 18445, VTPM_PORT 23321
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/.." && pwd)"
tst="$here/test"
cd "$here"
t="$here/build/test"
image_bin="${KEYWARD_BIN:-target/release/keyward-appliance}"
case "$image_bin" in /*) ;; *) image_bin="$repo/$image_bin" ;; esac
bin="${KEYWARD_HOST_BIN:-target/release/keyward}"
case "$bin" in /*) ;; *) bin="$repo/$bin" ;; esac
wait_s="${BOOT_WAIT:-1800}"
export KRS_PORT="${KRS_PORT:-19443}" XKS_PORT="${XKS_PORT:-18443}" ADMIN_PORT="${ADMIN_PORT:-18444}"
export ATTEST_PORT="${ATTEST_PORT:-18445}"
if [ ! -f build/keyward.raw ] || [ ! -f build/keyward.efi ]; then
    echo "image-test: run make image first" >&2; exit 1
fi
[ -x "$bin" ] || { echo "image-test: $bin missing (make image-test builds it)" >&2; exit 1; }
rm -rf "$t" && mkdir -p "$t"
fail=0
# 0. The image's binary is the appliance only (the same check assemble.sh made): no test AMD
# private key (which would let anyone sign SNP reports a test-root policy accepts), no PKCS#11
# loader, no load generator.
if ! "$here/scripts/check-binary.sh" "$image_bin"; then
    echo "image-test: FAIL the image binary $image_bin is not appliance-only" >&2; exit 1
fi
if ! cmp -s "$image_bin" build/root/usr/bin/keyward; then
    echo "image-test: FAIL build/root/usr/bin/keyward is not $image_bin (run make image again)" >&2; exit 1
fi
echo "image-test: PASS the image holds $image_bin, appliance-only" 
now() { date +%s; }
step() { echo "$1 $2 s" >> "$t/times.txt"; echo "image-test: $1 took $2 s"; }
ok() { echo "image-test: PASS $*"; }
failures=()
bad() { echo "image-test: FAIL $*"; fail=1; failures+=("$*"); }
krs_pid=""
# shellcheck disable=SC2317  # called by the trap
cleanup() { if [ -n "$krs_pid" ]; then kill "$krs_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

# wait until command $2.. succeeds, or qemu's wrapper ($1 = pid) ended, or $wait_s passed
wait_until() {
    local pid="$1" start
    shift
    start=$(now)
    while [ $(( $(now) - start )) -lt "$wait_s" ]; do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || { "$@"; return $?; }
        sleep 5
    done
    return 1
}
stop_vm() { # $1 workdir, $2 boot.sh pid
    if [ -s "$1/qemu.pid" ]; then kill "$(cat "$1/qemu.pid")" 2>/dev/null || true; fi
    wait "$2" 2>/dev/null || true
}
# KRS release-log entries appended after line $1 with decision $2
log_lines_after() { tail -n +"$(( $1 + 1 ))" "$t/krs/state/release.log" 2>/dev/null || true; }
decisions_after() { log_lines_after "$1" | jq -r 'select(.decision != null) | .decision' 2>/dev/null | grep -c -x "$2" || true; }
log_count() { wc -l < "$t/krs/state/release.log" 2>/dev/null || echo 0; }
has_decision_after() { [ "$(decisions_after "$1" "$2")" -gt 0 ]; }
pcrs_printed() { grep -a -q 'keyward-pcr sha384 15 ' "$1/serial.log" 2>/dev/null; }
# KRS denies at Hello for pins of no [[deployment]]: on its stderr (and in its release log, as
# long as pre-session denies are logged there)
pin_denies() {
    local n
    n="$(grep -a -c 'pins match no \[\[deployment\]\]' "$t/krs/krs.stderr" 2>/dev/null || true)"
    echo "${n:-0}"
}
# shellcheck disable=SC2317  # called through wait_until
pin_denied_after() { # $1 release-log line count before, $2 pin_denies before
    [ "$(pin_denies)" -gt "$2" ] || log_lines_after "$1" | jq -e -s 'any(.[]; .reason == "pin_mismatch")' > /dev/null 2>&1
}

# ---- 0. host side -----------------------------------------------------------------------------
s=$(now)
ak="$("$tst/vtpm-ak.sh" "$bin" "$t/vtpm-ak")"
echo "image-test: AK provisioned into the swtpm state before first boot: $ak"
"$tst/krs-up.sh" "$bin" build/keyward.efi "$t/krs" "$ak"
krs_pid="$(cat "$t/krs/krs.pid")"
# shellcheck disable=SC1091
. "$t/krs/env"
"$tst/data.sh" build/keyward.raw "$t/disk.raw"
export SWTPM_STATE="$t/vtpm-ak"
step host-setup $(( $(now) - s ))

# ---- 1. good boot: PCRs, release, XKS ---------------------------------------------------------
s=$(now)
n0=$(log_count)
"$here/scripts/boot.sh" "$t/disk.raw" "$t/krs/pins" "$t/good" > "$t/good.qemu.log" 2>&1 &
vm=$!
if wait_until "$vm" pcrs_printed "$t/good"; then
    step good-boot-to-pcrs $(( $(now) - s ))
    for bank in sha256 sha384; do
        for pcr in 4 7 11 12 15; do
            got="$(grep -a -o -E "keyward-pcr $bank $pcr [0-9A-Fa-f]+" "$t/good/serial.log" | tail -n 1 | cut -d' ' -f4 | tr 'A-F' 'a-f')"
            want="$(jq -r --arg b "$bank" --arg p "$pcr" '.pcrs[$b][$p]' "$t/krs/reference.json")"
            if [ "$got" = "$want" ]; then ok "PCR $pcr ($bank) = reference $want"; else bad "PCR $pcr ($bank): guest $got, reference $want"; fi
        done
    done
else
    step good-boot-to-pcrs-timeout $(( $(now) - s ))
    bad "good boot: no keyward-pcr lines on the console (see $t/good/serial.log)"
fi
if wait_until "$vm" has_decision_after "$n0" release; then
    step good-boot-to-release $(( $(now) - s ))
    ok "KRS released the master key to the guest (TPM quote accepted): $(log_lines_after "$n0" | jq -c 'select(.decision=="release") | {decision, detail}' | sed -n 1p)"
    id="$tst/identity"
    # The guest's TLS key never leaves it. keyward logs its SPKI hash on the console, but the
    # host controls the console: the pin comes from `keyward admin trust`, which verifies fresh
    # live attestation (TPM quote, the KRS's policy) bound to the key the admin port serves and
    # only then writes server_spki_sha256 into the profile. The console line is only compared.
    # shellcheck disable=SC2317  # called through wait_until
    spki_logged() {
        grep -a -o -E 'xks tls key spki_sha256=[0-9a-f]{64}' "$t/good/serial.log" 2>/dev/null \
            | tail -n 1 | cut -d= -f2 > "$t/console-spki.txt"
        [ -s "$t/console-spki.txt" ]
    }
    # shellcheck disable=SC2317  # called through wait_until
    attestation_up() { grep -a -q 'live attestation on http://' "$t/good/serial.log" 2>/dev/null; }
    console_spki=""
    if wait_until "$vm" spki_logged; then
        console_spki="$(cat "$t/console-spki.txt")"
    else
        bad "guest console: no 'xks tls key spki_sha256=' line (see $t/good/serial.log)"
    fi
    cat > "$t/admin-profile.toml" <<EOF
url = "https://127.0.0.1:$ADMIN_PORT"
client_cert = "$id/admin.pem"
client_key = "$id/admin-key.pem"
EOF
    spki=""
    if wait_until "$vm" attestation_up; then
        for _ in 1 2 3 4 5 6; do
            if "$bin" admin --profile "$t/admin-profile.toml" trust \
                --attestation-url "http://127.0.0.1:$ATTEST_PORT" --policy "$t/krs/policy.toml" \
                > "$t/trust.txt" 2>&1; then
                spki="$(sed -n -E 's/^server_spki_sha256 = "([0-9a-f]{64})".*/\1/p' "$t/admin-profile.toml")"
                break
            fi
            # a refusal is final; only a listener that does not answer yet is retried
            grep -q 'refused: cannot' "$t/trust.txt" || break
            sleep 10
        done
    else
        bad "guest console: no 'live attestation on http://' line (see $t/good/serial.log)"
    fi
    if [ -n "$spki" ]; then
        ok "keyward admin trust: live attestation (TPM quote, KRS policy) bound to the admin TLS key verified; pinned spki_sha256=$spki"
        if [ "$spki" = "$console_spki" ]; then ok "the console's spki_sha256 line agrees with the attested key"
        else bad "the console logged spki_sha256=$console_spki, the attested key is $spki"; fi
    else
        spki=""
        bad "keyward admin trust did not pin the admin TLS key ($t/trust.txt)"
    fi
    # shellcheck disable=SC2317  # called through wait_until
    admin_up() {
        "$bin" admin --profile "$t/admin-profile.toml" stores list > "$t/stores.txt" 2>&1
    }
    if [ -n "$spki" ] && wait_until "$vm" admin_up; then
        step good-boot-to-xks $(( $(now) - s ))
        a=("$bin" admin --profile "$t/admin-profile.toml")
        xks_url="https://127.0.0.1:$XKS_PORT"
        "${a[@]}" tls show > "$t/tls-show.txt" 2>&1 || true
        if grep -q -x "spki_sha256  $spki" "$t/tls-show.txt"; then
            ok "tls show (admin client pinned to the attested key) reports the same SPKI hash"
        else
            bad "tls show does not report $spki ($t/tls-show.txt)"
        fi
        if curl -sS --max-time 30 --cacert "$id/operator-ca.pem" -o /dev/null "$xks_url/" 2> "$t/curl-before.txt"; then
            bad "the XKS listener was trusted through the TEST CA before a chain was installed"
        else
            ok "before tls install: curl --cacert (TEST CA) refuses the self-signed XKS certificate"
        fi
        # CSR from the in-VM key -> signed on the host by the TEST operator CA -> installed.
        if {
            "${a[@]}" tls csr --dns-name localhost --dns-name 127.0.0.1 > "$t/xks.csr" &&
            openssl x509 -req -in "$t/xks.csr" -CA "$id/operator-ca.pem" -CAkey "$id/operator-ca.key" \
                -set_serial "0x$(openssl rand -hex 8)" -days 30 -sha256 -copy_extensions copyall \
                -out "$t/xks-leaf.pem" &&
            cat "$t/xks-leaf.pem" "$id/operator-ca.pem" > "$t/xks-chain.pem" &&
            "${a[@]}" tls install --chain "$t/xks-chain.pem"
        } > "$t/admin.log" 2>&1; then
            ok "tls csr (in-VM key), signed on the host by the TEST CA, tls install: served at once"
        else
            bad "tls csr / openssl x509 -req / tls install failed (see $t/admin.log)"
        fi
        akid=KEYWARDIMAGETESTCRED2AB
        printf 'aW1hZ2UtdGVzdC1zZWNyZXQtaW1hZ2UtdGVzdC1zZWNyZXQ=' > "$t/xks-secret"
        # Deployment settings through the admin API: the key store, a key, a grant, a credential.
        if ! {
            "${a[@]}" stores create main --uri-prefix /kw --region us-east-1 &&
            "${a[@]}" keys create k1 &&
            "${a[@]}" keys grant k1 --principal '*' --ops encrypt,decrypt,metadata &&
            "${a[@]}" creds add --access-key-id "$akid" --secret-file "$t/xks-secret"
        } >> "$t/admin.log" 2>&1; then
            bad "admin API: stores create / keys create / grant / creds add failed (see $t/admin.log)"
        fi
        xks() { # $1 path, $2 body
            curl -sS --max-time 60 --aws-sigv4 aws:amz:us-east-1:kms-xks-proxy \
                --user "$akid:$(cat "$t/xks-secret")" --cacert "$id/operator-ca.pem" \
                -H 'Content-Type: application/json' -d "$2" \
                "$xks_url/kw/kms/xks/v1/keys/k1/$1" 2>> "$t/xks-curl.txt"
        }
        md='{"awsPrincipalArn":"arn:aws:iam::111122223333:user/test","kmsKeyArn":"arn:aws:kms:us-east-1:111122223333:key/test","kmsOperation":"Encrypt","kmsRequestId":"image-test"}'
        pt="$(printf 'keyward image-test' | base64)"
        enc="$(xks encrypt "{\"requestMetadata\":$md,\"plaintext\":\"$pt\",\"encryptionAlgorithm\":\"AES_GCM\"}" || true)"
        echo "$enc" > "$t/encrypt.json"
        body="$(jq -c --argjson md "$md" '{requestMetadata: ($md | .kmsOperation = "Decrypt"), ciphertext, initializationVector, authenticationTag, encryptionAlgorithm: "AES_GCM"} + (if .ciphertextMetadata then {ciphertextMetadata} else {} end)' "$t/encrypt.json" 2>/dev/null || echo '{}')"
        dec="$(xks decrypt "$body" || true)"
        echo "$dec" > "$t/decrypt.json"
        if [ "$(jq -r .plaintext <<<"$dec" 2>/dev/null)" = "$pt" ] && [ "$(jq -r .ciphertext <<<"$enc")" != "$pt" ]; then
            ok "XKS through the guest (installed chain, curl --cacert TEST CA): curl --aws-sigv4 encrypt then decrypt returned the plaintext"
        else
            bad "XKS through the guest: encrypt $enc, decrypt $dec (see $t/admin.log $t/xks-curl.txt)"
        fi
    else
        bad "guest admin API never answered on 127.0.0.1:$ADMIN_PORT with the pinned key ($t/stores.txt)"
    fi
else
    step good-boot-no-release $(( $(now) - s ))
    bad "good boot: no release in the KRS log (see $t/krs/krs.stderr, $t/good/serial.log): $(log_lines_after "$n0" | jq -c '{decision, detail}' | tail -n 3 | tr '\n' ' ')"
fi
stop_vm "$t/good" "$vm"

# ---- 2. one byte of /usr/bin/keyward changed --------------------------------------------------
s=$(now)
n0=$(log_count)
cp --sparse=always "$t/disk.raw" "$t/corrupt.raw"
root_start=$(sfdisk -J "$t/corrupt.raw" | jq '.partitiontable.partitions[] | select(.name=="root-x86-64") | .start')
phys=$(dump.erofs -e --path=/usr/bin/keyward build/root.erofs | awk '$1=="0:" && !done {print $7; done=1}' | cut -d. -f1)
at=$(( root_start * 512 + phys + 64 ))
byte=$(od -An -tu1 -j "$at" -N1 "$t/corrupt.raw" | tr -d ' ')
printf '%b' "$(printf '\\%03o' $(( byte ^ 1 )))" | dd of="$t/corrupt.raw" bs=1 seek="$at" conv=notrunc status=none
echo "image-test: flipped byte $at of the disk (/usr/bin/keyward's first erofs block, root partition offset $phys)"
"$here/scripts/boot.sh" "$t/corrupt.raw" "$t/krs/pins" "$t/corrupt" > "$t/corrupt.qemu.log" 2>&1 &
vm=$!
# shellcheck disable=SC2317  # called through wait_until
corrupt_seen() {
    grep -a -q -E 'keyward.service: (Main process exited|Failed)|Failed to start .*keyward\.se' "$t/corrupt/serial.log" 2>/dev/null \
        || has_decision_after "$n0" deny || has_decision_after "$n0" release
}
if wait_until "$vm" corrupt_seen; then
    if has_decision_after "$n0" release; then
        bad "corrupted /usr/bin/keyward: the KRS RELEASED"
    elif grep -a -q -E 'device-mapper: verity.*corrupted|verity.*corrupted' "$t/corrupt/serial.log"; then
        ok "corrupted /usr/bin/keyward: dm-verity reported the corrupted block, keyward.service failed, no release"
    elif has_decision_after "$n0" deny; then
        ok "corrupted /usr/bin/keyward: KRS denied ($(log_lines_after "$n0" | jq -r 'select(.decision=="deny") | .detail' | sed -n 1p))"
    else
        bad "corrupted /usr/bin/keyward: keyward.service failed but no dm-verity error on the console"
    fi
else
    bad "corrupted boot: no result on the console or in the KRS log"
fi
step corrupt-boot $(( $(now) - s ))
stop_vm "$t/corrupt" "$vm"

# ---- 3. other pins ----------------------------------------------------------------------------
s=$(now)
n0=$(log_count)
# The host controls both the user data and the (untrusted) data partition, so it swaps them
# together: its own operator CA on the disk and that CA's hash in the pins. keyward's local
# check (CA file == admin_ca_sha256 pin) passes; the KRS's [[deployment]] pins do not.
p0=$(pin_denies)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=someone else's operator CA" -keyout "$t/other-ca.key" -out "$t/other-ca.pem" 2> /dev/null
other_ca="$(openssl x509 -in "$t/other-ca.pem" -outform DER | sha256sum | cut -d' ' -f1)"
sed "s/^admin_ca_sha256 = .*/admin_ca_sha256 = \"$other_ca\"/" "$t/krs/pins" > "$t/pins-other"
"$tst/data.sh" build/keyward.raw "$t/other.raw" "$t/other-ca.pem"
"$here/scripts/boot.sh" "$t/other.raw" "$t/pins-other" "$t/other" > "$t/other.qemu.log" 2>&1 &
vm=$!
if wait_until "$vm" pin_denied_after "$n0" "$p0"; then
    if has_decision_after "$n0" release; then
        bad "other pins: the KRS RELEASED"
    else
        ok "other pins: KRS denied at Hello: $(grep -a -o 'pins match no \[\[deployment\]\][^(]*' "$t/krs/krs.stderr" | tail -n 1)"
    fi
    if pcrs_printed "$t/other"; then
        got="$(grep -a -o -E 'keyward-pcr sha256 15 [0-9A-Fa-f]+' "$t/other/serial.log" | tail -n 1 | cut -d' ' -f4 | tr 'A-F' 'a-f')"
        want="$(jq -r '.pcrs.sha256["15"]' "$t/krs/reference.json")"
        if [ "$got" != "$want" ]; then ok "other pins: guest PCR 15 $got is not the policy's $want"
        else bad "other pins: guest PCR 15 equals the policy's value"; fi
    fi
else
    if has_decision_after "$n0" release; then bad "other pins: the KRS RELEASED"
    else bad "other-pins boot: no pin_mismatch deny from the KRS"; fi
fi
step other-pins-boot $(( $(now) - s ))
stop_vm "$t/other" "$vm"

if "$bin" krs log verify "$t/krs/state/release.log" --receipt-key "$t/krs/state/receipt.pub.pem" \
    > "$t/log-verify.txt" 2>&1; then ok "krs log verify: release log chain and receipts check"
else bad "krs log verify failed ($t/log-verify.txt)"; fi
echo "image-test: release log: $(jq -c '{decision, detail}' "$t/krs/state/release.log" 2>/dev/null | tr '\n' ' ')"
echo "image-test: times (s):"; cat "$t/times.txt"
# Last, so a CI log that keeps only its tail still shows why: each failure and the end of
# every file it names.
for f in "${failures[@]}"; do
    echo "image-test: FAILED: $f"
    grep -o -E "$t/[^ ),]+" <<<"$f" | sort -u | while read -r file; do
        [ -f "$file" ] || continue
        echo "image-test:   --- last lines of $file"
        tail -n 8 "$file" | cut -c1-300 | sed 's/^/image-test:   | /'
    done
done
exit "$fail"
