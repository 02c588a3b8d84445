#!/bin/bash
# Check that the file system holding DIR has at least MB megabytes free before a long image step
# starts, so a full disk fails in one clear line up front instead of deep inside mkosi or
# objcopy. Measured peaks (README "The appliance image"): `make image` from nothing 2.9 GB
# (mkosi base 0.75, unpacked root 0.6, erofs, verity, UKI, disk image), `make image-test` 0.9 GB.
#
# usage: image/scripts/need-space.sh WHAT MB DIR
set -euo pipefail
what="$1" need_mb="$2" dir="$3"
mkdir -p "$dir"
free_mb=$(df -Pm "$dir" | awk 'NR == 2 { print $4 }')
case "$free_mb" in ''|*[!0-9]*) echo "$what: cannot read the free space under $dir (df)" >&2; exit 1 ;; esac
if [ "$free_mb" -lt "$need_mb" ]; then
    echo "$what: needs about $need_mb MB free under $dir, only $free_mb MB free; free some space (make clean removes target/) and run it again" >&2
    exit 1
fi
