#!/usr/bin/env bash
# The architecture's "never" rules (docs/architecture.md) as build facts, from `cargo tree`:
#   - keyward-xks (the request path) reaches only keystore, secret and audit of ours;
#   - keyward-verify (the auditor's verifier) reaches only keyward-evidence of ours, and no
#     async runtime or socket code;
#   - the appliance-only binary (`--no-default-features --features appliance`, what the image
#     runs) holds no KRS, no PKCS#11 loader, no load generator, no measure tool, no verifier
#     (so no test signing keys), and no ACME client (`tls acme` runs on the operator's machine);
#   - keyward-integration-tests (test fixtures) is nobody's normal dependency.
# Run by `make test`; exits 1 naming every broken rule.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
fail=0
tree() { "$CARGO" tree --offline -e normal --prefix none "$@" 2>/dev/null || "$CARGO" tree -e normal --prefix none "$@"; }
ours() { sed -n 's/^\(keyward[a-z-]*\) v.*/\1/p' | sort -u; }


# keyward-xks: of ours only keystore, secret, audit (external crates are not restricted here).
xks=$(tree -p keyward-xks | ours | grep -Ev '^keyward-(xks|keystore|secret|audit)$' || true)
if [ -n "$xks" ]; then echo "check-deps: keyward-xks reaches" "${xks//$'\n'/ }" >&2; fail=1; else echo "check-deps: keyward-xks reaches only keystore, secret, audit: ok"; fi

# keyward-verify: of ours only evidence; no runtime, no sockets, no HTTP.
v=$(tree -p keyward-verify | ours | grep -Ev '^keyward-(verify|evidence)$' || true)
net=$(tree -p keyward-verify | sed 's/ v.*//' | sort -u | grep -E '^(tokio|mio|hyper|hyper-util|socket2|reqwest|h2)$' || true)
if [ -n "$v$net" ]; then echo "check-deps: keyward-verify reaches" "${v//$'\n'/ } ${net//$'\n'/ }" >&2; fail=1; else echo "check-deps: keyward-verify reaches only evidence, no network code: ok"; fi

# The appliance image binary.
img=$(tree -p keyward --no-default-features --features appliance | sed 's/ v.*//' | sort -u \
  | grep -E '^(keyward-krs|keyward-hsm|keyward-bench|keyward-measure|keyward-verify|cryptoki|cryptoki-sys|libloading|aws-sigv4|hdrhistogram|instant-acme)$' || true)
if [ -n "$img" ]; then echo "check-deps: the appliance-only binary links" "${img//$'\n'/ }" >&2; fail=1; else echo "check-deps: the appliance-only binary links no KRS, PKCS#11 loader, load generator, measure, verifier or ACME client: ok"; fi

# The test signer (test ARK/ASK private keys) only behind keyward-verify's test-signer feature.
# The shared store is a backend of the keystore seam and nothing more: it sees sealed records,
# never the XKS path, the KRS or the verifier; and the image never carries its throwaway server.
pg=$(tree -p keyward-store-pg | ours | grep -Ev '^keyward-(store-pg|keystore|secret)$' || true)
if [ -n "$pg" ]; then echo "check-deps: keyward-store-pg reaches" "${pg//$'\n'/ }" >&2; fail=1; else echo "check-deps: keyward-store-pg reaches only keystore, secret: ok"; fi
if tree -p keyward --no-default-features --features appliance -e features 2>/dev/null | grep -q 'keyward-store-pg feature "local"'; then
  echo "check-deps: the appliance-only binary enables keyward-store-pg/local (a test PostgreSQL server)" >&2; fail=1
fi

if tree -p keyward --no-default-features --features appliance -e features 2>/dev/null | grep -q 'test-signer'; then
  echo "check-deps: the appliance-only binary enables keyward-verify/test-signer" >&2; fail=1
fi
# The KRS binary build (`--features krs`, no `dev`) has no embedded (demo) KRS and so no test signer.
if tree -p keyward --no-default-features --features appliance,krs -f '{p} {f}' | grep -E '^keyward-(krs|verify) ' | grep -Eq 'embedded|test-signer'; then
  echo "check-deps: the krs binary build (without dev) enables keyward-krs/embedded or keyward-verify/test-signer" >&2; fail=1
else echo "check-deps: the krs binary build (without dev) carries no embedded KRS or test signer: ok"; fi
# keyward-integration-tests (the test fixtures) is test-only: no crate's normal build, and no
# build of the binary, links it (the root package and keyward-xks's tests reach it as a
# dev-dependency or by #[path]).
it=$(tree --workspace -i keyward-integration-tests 2>/dev/null | grep -E '^keyward' | grep -v '^keyward-integration-tests ' || true)
if [ -n "$it" ]; then echo "check-deps: keyward-integration-tests is a normal dependency of" "${it//$'\n'/ }" >&2; fail=1; else echo "check-deps: keyward-integration-tests is test-only: ok"; fi
exit $fail
