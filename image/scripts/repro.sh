#!/bin/bash
# make image-repro: build the image twice from the same .deb cache and compare what is
# measured: the UKI (PCR 4/11) and the dm-verity root hash (inside the UKI's command line),
# plus the package manifest. Writes image/build/repro.txt; exits 1 when they differ.
#
# The first build fills image/build/cache and writes the manifest; the second runs with
# KEYWARD_OFFLINE=1, which first checks that every package of the manifest is in the cache
# with the same SHA-256. (debootstrap still reads the package indices from the mirror; when
# the mirror has moved on, the check or the manifest comparison below fails loudly.)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "${1:?usage: repro.sh KEYWARD_BINARY}")"
cd "$here"
mkdir -p build
out=build/repro.txt
: > "$out"
for run in 1 2; do
    start=$(date +%s)
    if [ "$run" = 2 ]; then
        cp build/manifest.tsv manifest.tsv
        KEYWARD_OFFLINE=1 scripts/build-base.sh
        rm -f manifest.tsv
    else
        scripts/build-base.sh
    fi
    scripts/assemble.sh "$bin"
    mkdir -p "build/repro$run"
    cp build/keyward.efi build/roothash build/manifest.tsv build/cmdline "build/repro$run/"
    sha256sum build/initrd.img build/vmlinuz build/root.erofs build/root.verity > "build/repro$run/parts.sha256"
    echo "run $run: $(( $(date +%s) - start )) s, UKI $(sha256sum < build/keyward.efi | cut -d' ' -f1), root hash $(cat build/roothash)" | tee -a "$out"
done
touch build/base.stamp
status=0
for f in keyward.efi roothash manifest.tsv; do
    if cmp -s "build/repro1/$f" "build/repro2/$f"; then
        echo "same: $f" | tee -a "$out"
    else
        echo "DIFFERENT: $f" | tee -a "$out"; status=1
    fi
done
diff build/repro1/parts.sha256 build/repro2/parts.sha256 | tee -a "$out" || true
exit "$status"
