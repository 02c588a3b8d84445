#!/bin/bash
# The image manifest as a CycloneDX 1.5 JSON SBOM: one component per Debian package of the base
# tree, from the package manifest build-base.sh writes (image/build/manifest.tsv: name, version,
# SHA-256 of the .deb). Each component carries its purl
# (pkg:deb/debian/NAME@VERSION?arch=amd64) and the .deb's SHA-256, so an auditor can match it
# against the Debian archive, and the SBOM of the keyward binary (make sbom) sits beside it.
#
# usage: image/scripts/manifest-cdx.sh MANIFEST.tsv [GIT_COMMIT] > manifest.cdx.json
# env:   SOURCE_DATE_EPOCH  the timestamp written (default: the manifest's mtime), so the same
#                           manifest gives the same bytes
set -euo pipefail
manifest="${1:?usage: manifest-cdx.sh MANIFEST.tsv [GIT_COMMIT]}"
commit="${2:-unknown}"
[ -r "$manifest" ] || { echo "manifest-cdx: cannot read $manifest (run make image first)" >&2; exit 1; }
command -v jq >/dev/null || { echo "manifest-cdx: jq not found: apt-get install jq" >&2; exit 1; }
epoch="${SOURCE_DATE_EPOCH:-$(stat -c %Y "$manifest")}"
ts="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
# A purl's version is percent-encoded (an epoch's ':' becomes %3A, '+' becomes %2B).
jq -R -s --arg ts "$ts" --arg commit "$commit" '
  def pct: gsub(":"; "%3A") | gsub("\\+"; "%2B") | gsub("~"; "%7E");
  [split("\n")[] | select(length > 0) | split("\t")
   | if length != 3 then error("manifest line without 3 tab-separated fields: \(join(" "))") else . end
   | {name: .[0], version: .[1], sha256: .[2]}] as $pkgs
  | {
      bomFormat: "CycloneDX",
      specVersion: "1.5",
      version: 1,
      metadata: {
        timestamp: $ts,
        tools: {components: [{type: "application", name: "keyward image/scripts/manifest-cdx.sh"}]},
        component: {type: "operating-system", name: "keyward-appliance-image", version: $commit,
                    "bom-ref": "keyward-appliance-image"}
      },
      components: [$pkgs[] | {
        type: "library",
        "bom-ref": "pkg:deb/debian/\(.name)@\(.version | pct)?arch=amd64",
        name, version,
        purl: "pkg:deb/debian/\(.name)@\(.version | pct)?arch=amd64",
        hashes: (if (.sha256 | test("^[0-9a-f]{64}$")) then [{alg: "SHA-256", content: .sha256}] else [] end)
      }]
    }' "$manifest"
