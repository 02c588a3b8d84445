#!/bin/bash
# Boot the appliance disk in qemu (TCG: KVM is unusable on this host) with OVMF, a swtpm vTPM
# (SHA-256 and SHA-384 banks), the pins handed in through fw_cfg (the qemu stand-in for EC2
# user data) and user-mode networking with no route anywhere except these forwards:
#   host 127.0.0.1:$XKS_PORT -> guest :8443   (the guest's XKS API)
#   host 127.0.0.1:$ADMIN_PORT -> guest :9444 (the guest's mutual-TLS admin API)
#   host 127.0.0.1:$ATTEST_PORT -> guest :9445 (the guest's live attestation, plain HTTP)
#   guest 10.0.2.100:9443    -> host 127.0.0.1:$KRS_PORT  (the host's keyward krs)
# The disk is never written (snapshot=on: the guest's writes go to a temporary overlay).
#
# usage: boot.sh DISK PINS WORKDIR      (runs qemu in the foreground; serial -> WORKDIR/serial.log,
#                                        qemu's pid -> WORKDIR/qemu.pid)
# env:   XKS_PORT (18443) ADMIN_PORT (18444) ATTEST_PORT (18445) KRS_PORT (19443) BOOT_TIMEOUT seconds (900) SMP (1) MEM (1536)
#        SWTPM_STATE: an existing swtpm state dir to copy (e.g. one with a provisioned AK)
set -euo pipefail
disk="$(realpath "${1:?usage: boot.sh DISK PINS WORKDIR}")"
pins="$(realpath "${2:?pins file}")"
work="${3:?workdir}"
mkdir -p "$work"
work="$(realpath "$work")"
here="$(cd "$(dirname "$0")" && pwd)"
xks_port="${XKS_PORT:-18443}" admin_port="${ADMIN_PORT:-18444}" krs_port="${KRS_PORT:-19443}"
attest_port="${ATTEST_PORT:-18445}"

rm -rf "$work/vtpm" "$work/vars.fd" "$work/serial.log"
mkdir -p "$work/vtpm"
if [ -n "${SWTPM_STATE:-}" ]; then
    cp -a "$SWTPM_STATE/." "$work/vtpm/"
else
    swtpm_setup --tpm2 --tpmstate "$work/vtpm" --pcr-banks sha256,sha384 --createek --overwrite \
        > "$work/swtpm_setup.log" 2>&1
fi
swtpm socket --tpm2 --tpmstate dir="$work/vtpm" --ctrl type=unixio,path="$work/vtpm/sock" \
    --log file="$work/swtpm.log" --daemon --pid file="$work/swtpm.pid"
trap 'kill "$(cat "$work/swtpm.pid" 2>/dev/null)" 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -S "$work/vtpm/sock" ] && break; sleep 0.1; done

cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"

timeout "${BOOT_TIMEOUT:-900}" qemu-system-x86_64 -nodefaults -machine q35 -accel tcg -m "${MEM:-1536}" -smp "${SMP:-1}" \
    -nographic -no-reboot -serial "file:$work/serial.log" -monitor none -pidfile "$work/qemu.pid" \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,file="$work/vars.fd" \
    -drive file="$disk",if=virtio,format=raw,snapshot=on \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$xks_port-:8443,hostfwd=tcp:127.0.0.1:$admin_port-:9444,hostfwd=tcp:127.0.0.1:$attest_port-:9445,guestfwd=tcp:10.0.2.100:9443-cmd:$here/fwd.sh $krs_port" \
    -device virtio-net-pci,netdev=n0,romfile= \
    -fw_cfg name=opt/keyward/pins,file="$pins" \
    -chardev socket,id=chrtpm,path="$work/vtpm/sock" -tpmdev emulator,id=tpm0,chardev=chrtpm \
    -device tpm-crb,tpmdev=tpm0
