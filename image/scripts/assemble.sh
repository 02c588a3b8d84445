#!/bin/bash
# Turn the mkosi base tree into the bootable appliance disk, without mounting anything:
#   1. stage the root: base tree + keyward binary, units, udev rule, pins script, fstab,
#      network config; enable/mask units; strip build leftovers (machine-id, logs, caches);
#   2. erofs root (fixed UUID, every timestamp = SOURCE_DATE_EPOCH) + dm-verity hash tree
#      (fixed salt and UUID) -> root hash;
#   3. UKI: systemd-stub 252 + .osrel + .cmdline (with the root hash) + .initrd + .linux;
#   4. ESP with mtools, data partition (ext4), GPT with sfdisk, dd everything in place.
#
# usage: assemble.sh KEYWARD_BINARY
# output (image/build/): keyward.raw  keyward.efi  roothash  cmdline  root.erofs  root.verity
# env:   SOURCE_DATE_EPOCH (default: the commit time of HEAD)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$here"
# shellcheck source=/dev/null
. ./image.env
bin="${1:?usage: assemble.sh KEYWARD_BINARY}"
[ -x "$bin" ] || { echo "assemble: $bin is not an executable" >&2; exit 1; }
# Only the appliance goes into the measured image: no test keys, no PKCS#11 loader, no bench.
"$here/scripts/check-binary.sh" "$bin"
[ -d build/base/usr ] || { echo "assemble: no base tree, run image/scripts/build-base.sh" >&2; exit 1; }
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}"
stub=/usr/lib/systemd/boot/efi/linuxx64.efi.stub
t0=$(date +%s)

# ---- 1. the root tree ----------------------------------------------------------------------
root=build/root
rm -rf "$root"
cp -a build/base "$root"
kver="$(find "$root/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
cp "$root/boot/vmlinuz-$kver" build/vmlinuz
cp "$root/boot/initrd.img-$kver" build/initrd.img
rm -rf "${root:?}/boot/"*

install -m 0755 "$bin" "$root/usr/bin/keyward"
install -d -m 0755 "$root/usr/libexec/keyward" "$root/etc/keyward"
install -m 0755 rootfs/usr/libexec/keyward/keyward-pins "$root/usr/libexec/keyward/keyward-pins"
for u in keyward.service keyward-pins.service keyward-pcrs.service; do
    install -m 0644 "../systemd/$u" "$root/usr/lib/systemd/system/$u"
done
install -m 0644 ../systemd/70-keyward.rules "$root/usr/lib/udev/rules.d/70-keyward.rules"
cp -a rootfs/etc/. "$root/etc/"

# enable what runs, mask every login path (no getty on any console; no SSH is installed)
sysd="$root/etc/systemd/system"
mkdir -p "$sysd/multi-user.target.wants" "$sysd/keyward.service.requires" \
    "$sysd/network-online.target.wants" "$sysd/sysinit.target.wants"
ln -sf /usr/lib/systemd/system/keyward.service "$sysd/multi-user.target.wants/keyward.service"
ln -sf /usr/lib/systemd/system/keyward-pcrs.service "$sysd/multi-user.target.wants/keyward-pcrs.service"
ln -sf /usr/lib/systemd/system/keyward-pins.service "$sysd/keyward.service.requires/keyward-pins.service"
ln -sf /lib/systemd/system/systemd-networkd.service "$sysd/multi-user.target.wants/systemd-networkd.service"
ln -sf /lib/systemd/system/systemd-networkd-wait-online.service \
    "$sysd/network-online.target.wants/systemd-networkd-wait-online.service"
ln -sf /lib/systemd/system/systemd-resolved.service "$sysd/multi-user.target.wants/systemd-resolved.service"
for u in getty@.service serial-getty@.service console-getty.service container-getty@.service \
         autovt@.service debug-shell.service getty.target systemd-firstboot.service; do
    ln -sf /dev/null "$sysd/$u"
done
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

# drift and leftovers: no machine-id (an empty file: systemd mounts a transient one on the
# read-only root), no logs, caches, apt lists, backup files or build-time random seeds
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/etc/.pwd.lock" "$root"/etc/*- \
    "$root/var/cache/ldconfig/aux-cache" "$root/var/lib/systemd/random-seed" \
    "$root/var/lib/systemd/catalog/database" "$root"/var/lib/dpkg/*-old
rm -rf "$root"/var/log/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/debconf/*-old "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.[!.]*
# password-change day (field 3 of /etc/shadow) = the build day -> the SOURCE_DATE_EPOCH day
day=$(( SOURCE_DATE_EPOCH / 86400 ))
awk -F: -v OFS=: -v d="$day" '{ if ($3 != "") $3 = d; print }' "$root/etc/shadow" > build/shadow.tmp
cat build/shadow.tmp > "$root/etc/shadow" && rm -f build/shadow.tmp
# os-release of the image, also the UKI's .osrel
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)"
{ grep -v -E '^(IMAGE_ID|IMAGE_VERSION)=' "$root/usr/lib/os-release"
  echo "IMAGE_ID=keyward"
  echo "IMAGE_VERSION=$version"; } > build/os-release
cp build/os-release "$root/usr/lib/os-release"

# the units must load in the tree they ship in (binary present, dependencies resolvable)
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify --root="$root" keyward.service keyward-pins.service keyward-pcrs.service
    echo "assemble: systemd-analyze verify --root=build/root: passed"
fi

# ---- 2. erofs root + dm-verity --------------------------------------------------------------
rm -f build/root.erofs build/root.verity
mkfs.erofs --quiet -zlz4hc -T "$SOURCE_DATE_EPOCH" -U "$EROFS_UUID" build/root.erofs "$root"
veritysetup format build/root.erofs build/root.verity --salt="$VERITY_SALT" \
    --uuid="$VERITY_UUID" --root-hash-file=build/roothash.bin >/dev/null
roothash="$(cat build/roothash.bin)"
echo "$roothash" > build/roothash && rm -f build/roothash.bin

# ---- 3. the UKI ------------------------------------------------------------------------------
cmdline="roothash=$roothash systemd.verity_root_data=PARTUUID=$ROOT_PARTUUID"
cmdline+=" systemd.verity_root_hash=PARTUUID=$VERITY_PARTUUID root=/dev/mapper/root"
cmdline+=" rootfstype=erofs ro systemd.gpt_auto=0 rd.emergency=poweroff rd.shell=0"
# slow (TCG) or busy hosts: wait for the disk longer than systemd's default 90 s. Device jobs
# (the verity partitions in the initrd) have their own default since systemd 250
# (DefaultDeviceTimeoutSec=90s): under a loaded TCG host they timed out, so both are raised.
cmdline+=" systemd.default_timeout_start_sec=900 systemd.default_device_timeout_sec=900"
cmdline+=" console=ttyS0,115200n8 panic=30"
printf '%s' "$cmdline" > build/cmdline
rm -f build/keyward.efi
/usr/bin/python3 scripts/mk-uki.py "$stub" build/keyward.efi \
    .osrel=build/os-release .cmdline=build/cmdline .initrd=build/initrd.img .linux=build/vmlinuz

# ---- 4. ESP, data partition, GPT -----------------------------------------------------------
rm -f build/esp.img build/data.img
mkfs.fat -C -F 32 -n ESP -i "$ESP_VOLUME_ID" --invariant build/esp.img $(( ESP_MIB * 1024 )) >/dev/null
mmd -i build/esp.img ::/EFI ::/EFI/BOOT
mcopy -i build/esp.img build/keyward.efi ::/EFI/BOOT/BOOTX64.EFI

mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }
root_mib=$(mib build/root.erofs); verity_mib=$(mib build/root.verity)
# EBS volumes are whole GiB: round the disk up so the backup GPT header is at its real end;
# the data partition takes the slack
min_data_mib="${DATA_MIB:?image.env sets DATA_MIB}"
total=$(( (1 + ESP_MIB + root_mib + verity_mib + min_data_mib + 1 + 1023) / 1024 * 1024 ))
data_mib=$(( total - 2 - ESP_MIB - root_mib - verity_mib ))
truncate -s "${data_mib}M" build/data.img
E2FSPROGS_FAKE_TIME="$SOURCE_DATE_EPOCH" mkfs.ext4 -q -L keyward-data -U "$DATA_FS_UUID" \
    -E "hash_seed=$DATA_FS_UUID,root_owner=0:0" build/data.img
rm -f build/keyward.raw
truncate -s "${total}M" build/keyward.raw
s=2048 # sectors of 512 bytes; every partition starts on a MiB boundary
esp_at=$s; root_at=$(( esp_at + ESP_MIB * 2048 )); verity_at=$(( root_at + root_mib * 2048 ))
data_at=$(( verity_at + verity_mib * 2048 ))
sfdisk --quiet --no-reread --no-tell-kernel build/keyward.raw <<GPT
label: gpt
label-id: $DISK_GUID
first-lba: 2048
start=$esp_at, size=$(( ESP_MIB * 2048 )), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$ESP_PARTUUID, name="esp"
start=$root_at, size=$(( root_mib * 2048 )), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_PARTUUID, name="root-x86-64"
start=$verity_at, size=$(( verity_mib * 2048 )), type=2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5, uuid=$VERITY_PARTUUID, name="root-x86-64-verity"
start=$data_at, size=$(( data_mib * 2048 )), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$DATA_PARTUUID, name="keyward-data"
GPT
# every start is a whole MiB: copy in MiB blocks (2048 sectors)
dd if=build/esp.img of=build/keyward.raw bs=1M seek=$(( esp_at / 2048 )) conv=notrunc,sparse status=none
dd if=build/root.erofs of=build/keyward.raw bs=1M seek=$(( root_at / 2048 )) conv=notrunc status=none
dd if=build/root.verity of=build/keyward.raw bs=1M seek=$(( verity_at / 2048 )) conv=notrunc status=none
dd if=build/data.img of=build/keyward.raw bs=1M seek=$(( data_at / 2048 )) conv=notrunc,sparse status=none
rm -f build/esp.img build/data.img

echo "assemble: root hash $roothash"
echo "assemble: UKI $(sha256sum build/keyward.efi | cut -d' ' -f1) ($(stat -c %s build/keyward.efi) bytes)"
echo "assemble: disk build/keyward.raw ${total} MiB in $(( $(date +%s) - t0 )) s"
