#!/bin/bash
# Build the base tree (Debian bookworm + packages + dracut initrd) with mkosi 14 in directory
# format, then write the package manifest (name, version, SHA-256 of the .deb) next to it.
#
# usage: image/scripts/build-base.sh            (output: image/build/base, image/build/manifest.tsv)
# env:   KEYWARD_OFFLINE=1  rebuild only from the .deb cache; fail if a package in the manifest
#                           is missing from it or has a different SHA-256 (see docs/image.md).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
mkdir -p build/cache

# Workaround 1 (toolchain.md 4): /run is not a tmpfs on this host, and systemd-nspawn's rm_rf
# safety check refuses to clean /run/systemd/nspawn/propagate unless it is on a tmpfs.
mkdir -p /run/systemd/nspawn
mountpoint -q /run/systemd/nspawn || mount -t tmpfs tmpfs /run/systemd/nspawn

if [ "${KEYWARD_OFFLINE:-0}" = 1 ]; then
    [ -f manifest.tsv ] || { echo "build-base: KEYWARD_OFFLINE=1 needs image/manifest.tsv" >&2; exit 1; }
    scripts/manifest.sh check manifest.tsv build/cache
fi

start=$(date +%s)
rm -rf build/base build/base.manifest
# Workaround 2 is NspawnKeepUnit=yes in mkosi.default (no system bus on this host).
mkosi --force build
echo "build-base: mkosi took $(( $(date +%s) - start )) s"

scripts/manifest.sh write build/base build/cache > build/manifest.tsv
echo "build-base: $(wc -l < build/manifest.tsv) packages in build/manifest.tsv"
