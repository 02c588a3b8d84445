#!/bin/bash
# image-test: a copy of the appliance disk whose data partition (/var/lib/keyward, not measured,
# not trusted) holds the one deployment file the measured /etc/keyward/keyward.toml names: the
# operator CA admin clients chain to (keyward checks it against the admin_ca_sha256 pin). The
# XKS/admin TLS key is not a file: keyward generates it inside the VM and keeps it sealed; its
# chain is installed through the admin API (run.sh). The CA is the committed TEST file of
# image/test/identity. Written with mke2fs -d (nothing is mounted), owned by keyward (990).
#
# usage: data.sh DISK OUT_DISK [CA_PEM]   (CA_PEM: another operator CA, for the other-pins refusal)
set -euo pipefail
disk="${1:?usage: data.sh DISK OUT_DISK [CA_PEM]}" out="${2:?out disk}"
here="$(cd "$(dirname "$0")" && pwd)"
id="$here/identity"
ca="${3:-$id/operator-ca.pem}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage" "$out.data"' EXIT
mkdir -p "$stage/deploy"
install -m 0644 "$ca" "$stage/deploy/operator-ca.pem"
chown -R 990:990 "$stage"
chmod 0700 "$stage"

cp --sparse=always "$disk" "$out"
part="$(sfdisk -J "$out" | jq -c '.partitiontable.partitions[] | select(.name=="keyward-data")')"
start="$(jq .start <<<"$part")" size="$(jq .size <<<"$part")"
truncate -s $((size * 512)) "$out.data"
mkfs.ext4 -q -L keyward-data -d "$stage" "$out.data"
dd if="$out.data" of="$out" bs=512 seek="$start" conv=notrunc,sparse status=none
echo "data.sh: $out: data partition (sector $start, $((size / 2048)) MiB) holds deploy/operator-ca.pem"
