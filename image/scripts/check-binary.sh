#!/usr/bin/env bash
# check-binary.sh BIN: the appliance image's binary holds only the appliance (docs/architecture.md,
# "Never"). Fails, naming what it found, when BIN contains
#   - any of the committed test AMD private keys (attestation/test-roots/*.key.pem), or
#   - the PKCS#11 loader (cryptoki: C_GetFunctionList, libloading), or
#   - the load generator (aws-sigv4 signer, hdrhistogram).
# The check reads bytes, not symbols, so it holds for stripped binaries too. Build the binary
# the image uses with `cargo build --release --no-default-features --features appliance`.
set -euo pipefail
bin=${1:?usage: check-binary.sh BIN}
root="$(cd "$(dirname "$0")/../.." && pwd)"
[ -f "$bin" ] || { echo "check-binary: $bin: no such file" >&2; exit 2; }
found=()
for key in "$root"/attestation/test-roots/*.key.pem; do
  # Two lines from the middle of the PEM body: a key's bytes in the binary would contain them
  # (include_str! embeds the PEM text verbatim).
  probe=$(sed -n '5p' "$key")
  if grep -qaF -- "$probe" "$bin"; then found+=("test private key $(basename "$key")"); fi
done
for s in C_GetFunctionList libloading cryptoki aws_sigv4 hdrhistogram; do
  if grep -qaF -- "$s" "$bin"; then found+=("\`$s\`"); fi
done
if [ ${#found[@]} -gt 0 ]; then
  echo "check-binary: $bin is not appliance-only; it contains:" >&2
  printf '  - %s\n' "${found[@]}" >&2
  echo "check-binary: build it with --no-default-features --features appliance" >&2
  exit 1
fi
echo "check-binary: $bin: no test private key, no PKCS#11 loader, no load generator: ok"
