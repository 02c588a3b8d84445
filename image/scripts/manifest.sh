#!/bin/bash
# The package manifest of the base tree: one line per package, "name<TAB>version<TAB>sha256 of
# the .deb", sorted by name. The .deb files come from mkosi's package cache (image/build/cache).
#
# usage: manifest.sh write TREE CACHE        print the manifest of TREE
#        manifest.sh check MANIFEST CACHE    every package of MANIFEST is in CACHE with its hash
set -euo pipefail

find_deb() { # cache name version -> path of the .deb (epochs are escaped as %3a in file names)
    local v="${3//:/%3a}"
    find "$1" -name "${2}_${v}_*.deb" -print -quit
}

case "${1:-}" in
write)
    tree="$2" cache="$3"
    dpkg-query --admindir="$tree/var/lib/dpkg" -W -f '${Package}\t${Version}\n' | LC_ALL=C sort |
    while IFS=$'\t' read -r name version; do
        deb="$(find_deb "$cache" "$name" "$version")"
        if [ -n "$deb" ]; then
            sum="$(sha256sum "$deb" | cut -d' ' -f1)"
        else
            sum="missing-from-cache"
        fi
        printf '%s\t%s\t%s\n' "$name" "$version" "$sum"
    done
    ;;
check)
    manifest="$2" cache="$3" bad=0
    while IFS=$'\t' read -r name version sum; do
        deb="$(find_deb "$cache" "$name" "$version")"
        if [ -z "$deb" ]; then
            echo "manifest: $name $version is not in $cache" >&2; bad=1; continue
        fi
        got="$(sha256sum "$deb" | cut -d' ' -f1)"
        if [ "$got" != "$sum" ]; then
            echo "manifest: $name $version: sha256 $got, manifest says $sum" >&2; bad=1
        fi
    done < "$manifest"
    exit "$bad"
    ;;
*)
    echo "usage: manifest.sh write TREE CACHE | check MANIFEST CACHE" >&2; exit 2
    ;;
esac
