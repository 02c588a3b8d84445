#!/usr/bin/env bash
# cfn-lint.sh: validate the CloudFormation templates with a pinned cfn-lint, offline.
#
#   scripts/cfn-lint.sh [TEMPLATE...]   lint (default: image/cloudformation/*.yaml); exit 0 only
#                                       when cfn-lint reports no error, warning or informational
#                                       finding (its exit status otherwise: 2 error, 4 warning,
#                                       8 informational, or-ed)
#   scripts/cfn-lint.sh --json TEMPLATE print TEMPLATE as JSON, read by cfn-lint's own YAML decoder
#                                       (short forms such as !Ref and !GetAtt become Ref and
#                                       Fn::GetAtt), for tests/it/cfn.rs
#
# cfn-lint comes from PyPI into a venv under target/ (CFN_LINT_VENV overrides the place), built
# once and rebuilt when the pinned version changes, as the tests' botocore venv is
# (crates/integration-tests/src/xks_common.rs): `python3 -m venv` needs python3-venv, pip needs PyPI. A lock
# directory serialises two callers building it at once. cfn-lint needs no network and no AWS
# credentials to lint: the resource schemas ship with it.
set -euo pipefail
CFN_LINT_VERSION=1.58.0
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${CFN_LINT_VENV:-$repo/target/cfn-lint-venv}"
py="$venv/bin/python3"
me="cfn-lint.sh"

have() { # the pinned cfn-lint is importable from the venv
    [ -x "$py" ] && [ "$("$py" -c 'import importlib.metadata as m; print(m.version("cfn-lint"))' 2>/dev/null)" = "$CFN_LINT_VERSION" ]
}

build() {
    mkdir -p "$(dirname "$venv")"
    local lock="$venv.lock" i
    for i in $(seq 1 600); do
        mkdir "$lock" 2>/dev/null && break
        have && return 0
        [ "$i" = 600 ] && { echo "$me: $lock held for 120 s; remove it if no build runs" >&2; exit 1; }
        sleep 0.2
    done
    # shellcheck disable=SC2064  # expand $lock now
    trap "rmdir '$lock' 2>/dev/null || true" EXIT
    have && return 0
    echo "$me: installing cfn-lint $CFN_LINT_VERSION into $venv" >&2
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >&2; then
        echo "$me: python3 -m venv failed: apt-get install python3-venv" >&2
        exit 1
    fi
    if ! "$venv/bin/pip" install -q --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION" >&2; then
        echo "$me: pip could not install cfn-lint==$CFN_LINT_VERSION (PyPI unreachable?)" >&2
        exit 1
    fi
    have || { echo "$me: cfn-lint $CFN_LINT_VERSION not importable after install" >&2; exit 1; }
}

have || build

if [ "${1:-}" = --json ]; then
    [ $# -eq 2 ] || { echo "usage: $me --json TEMPLATE" >&2; exit 2; }
    exec "$py" - "$2" <<'PY'
import json, sys
from cfnlint.decode import cfn_yaml
print(json.dumps(cfn_yaml.load(sys.argv[1]), indent=1, sort_keys=True))
PY
fi

if [ $# -eq 0 ]; then
    set -- "$repo"/image/cloudformation/*.yaml
fi
status=0
"$venv/bin/cfn-lint" --include-checks I -- "$@" || status=$?
if [ "$status" -eq 0 ]; then
    echo "$me: cfn-lint $CFN_LINT_VERSION: $* : no errors, warnings or informational findings"
else
    echo "$me: cfn-lint $CFN_LINT_VERSION found problems (exit $status: 2 error, 4 warning, 8 informational)" >&2
fi
exit "$status"
