#!/bin/bash
# image-test: the host side of a release. Creates a SoftHSMv2 token in WORK, initialises a
# `keyward krs` with the committed TEST identity (image/test/identity: TLS key/cert and
# policy-admin key, test-only), writes the guest's pins, computes the reference values of the
# UKI for those pins with `keyward measure` (its [tpm] section, the AK registered), configures the
# deployment for those pins (`krs pins --admin-ca --url --append`), signs that policy and starts `keyward krs serve` on 127.0.0.1:KRS_PORT (the guest reaches it as
# 10.0.2.100:9443 through qemu's guestfwd, see image/scripts/boot.sh).
#
# usage: krs-up.sh BIN UKI WORK AK_NAME     env: KRS_PORT (19443)
# writes: WORK/pins, WORK/reference.json (every PCR, both banks), WORK/reference-values.json,
#         WORK/tpm-policy.toml, WORK/policy.toml (signed -> WORK/policy.signed.json),
#         WORK/krs.pid, WORK/krs.stderr, WORK/env (SOFTHSM2_CONF, KRS_PIN for later commands)
set -euo pipefail
bin="${1:?usage: krs-up.sh BIN UKI WORK AK_NAME}" uki="${2:?uki}" work="${3:?work}" ak="${4:?ak name}"
here="$(cd "$(dirname "$0")" && pwd)"
id="$here/identity"
port="${KRS_PORT:-19443}"
mkdir -p "$work/tokens" "$work/state"
work="$(realpath "$work")"

cat > "$work/softhsm2.conf" <<EOF
directories.tokendir = $work/tokens
objectstore.backend = file
log.level = ERROR
EOF
export SOFTHSM2_CONF="$work/softhsm2.conf" KRS_PIN=image-test-pin
printf 'export SOFTHSM2_CONF=%q KRS_PIN=%q\n' "$SOFTHSM2_CONF" "$KRS_PIN" > "$work/env"
softhsm2-util --init-token --free --label keyward-image-test --pin "$KRS_PIN" --so-pin image-test-so \
    > "$work/softhsm.log"
module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
    [ -f "$m" ] && module="$m" && break
done
[ -n "$module" ] || { echo "krs-up: libsofthsm2.so not found (apt-get install softhsm2)" >&2; exit 1; }

# the committed TEST TLS identity: `krs init` keeps an existing tls.crt/tls.key
install -m 0644 "$id/tls.crt" "$work/state/tls.crt"
install -m 0600 "$id/tls.key" "$work/state/tls.key"
cat > "$work/krs.toml" <<EOF
listen = "127.0.0.1:$port"
state_dir = "$work/state"
policy_file = "$work/policy.signed.json"
admin_public_key = "$id/policy-admin.pub.pem"
tls_names = ["localhost", "127.0.0.1", "10.0.2.100", "10.0.2.2"]
[hsm]
module = "$module"
token_label = "keyward-image-test"
pin_env = "KRS_PIN"
EOF
"$bin" krs init --config "$work/krs.toml" > "$work/krs-init.json"
tls_pin="$(jq -r .krs_tls_spki_sha256 "$work/krs-init.json")"
receipt_pin="$(jq -r .receipt_spki_sha256 "$work/krs-init.json")"
want_tls="$(openssl x509 -in "$id/tls.crt" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1)"
[ "$tls_pin" = "$want_tls" ] || { echo "krs-up: krs init did not keep the committed TLS key" >&2; exit 1; }
admin_ca="$(openssl x509 -in "$id/operator-ca.pem" -outform DER | sha256sum | cut -d' ' -f1)"

# the customer's pins (EC2 user data; fw_cfg opt/keyward/pins in qemu)
cat > "$work/pins" <<EOF
krs_url = "10.0.2.100:9443"
krs_tls_spki_sha256 = "$tls_pin"
receipt_spki_sha256 = "$receipt_pin"
admin_ca_sha256 = "$admin_ca"
EOF

# the KRS serves this deployment only: the [[deployment]] block for exactly these pins (the
# URL the guest uses, both KRS pins, the TEST operator CA), appended to its config
"$bin" krs pins --config "$work/krs.toml" --admin-ca "$id/operator-ca.pem" \
    --url "10.0.2.100:9443" --name image-test --append 2> "$work/krs-pins.log"
grep -q '^\[\[deployment\]\]' "$work/krs.toml" || { echo "krs-up: no [[deployment]] in krs.toml" >&2; exit 1; }

# reference values for this UKI + these pins; [tpm] section with the pre-provisioned AK
"$bin" measure --uki "$uki" --pins "$work/pins" --events "$work/reference.json" \
    --out "$work/reference-values.json" --tpm-policy "$work/tpm-policy.toml" --ak-name "$ak" \
    > "$work/measure.log"

# the KRS policy: TPM evidence only (no SEV-SNP under qemu TCG), the [tpm] section as measured
{
    echo "# image-test KRS policy (TEST ONLY): TPM quote of the qemu guest, section from keyward measure"
    echo "format = 1"
    echo "policy_version = 1"
    echo "name = \"keyward image-test\""
    echo "required_evidence = [\"tpm\"]"
    echo
    grep -v '^#' "$work/tpm-policy.toml"
} > "$work/policy.toml"
"$bin" krs policy sign --key "$id/policy-admin.pem" --id image-test --in "$work/policy.toml" \
    --out "$work/policy.signed.json" > "$work/policy-sign.log"

"$bin" krs serve --config "$work/krs.toml" > "$work/krs.stdout" 2> "$work/krs.stderr" &
echo $! > "$work/krs.pid"
for _ in $(seq 100); do
    grep -q '"addr"' "$work/krs.stdout" 2>/dev/null && break
    kill -0 "$(cat "$work/krs.pid")" 2>/dev/null || { cat "$work/krs.stderr" >&2; exit 1; }
    sleep 0.2
done
grep -q '"addr"' "$work/krs.stdout" || { echo "krs-up: krs serve did not start" >&2; exit 1; }
echo "krs-up: keyward krs serving on $(jq -r .addr "$work/krs.stdout"), policy $work/policy.toml"
