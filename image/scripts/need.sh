#!/bin/bash
# Check that the tools a Makefile target needs are present. Each argument is CHECK:PACKAGE,
# where CHECK is a command name, an absolute path, or py:MODULE (importable by /usr/bin/python3).
# Missing ones: print the apt-get line and fail, or install them when KEYWARD_AUTO_INSTALL=1.
set -euo pipefail
missing=()
for spec in "$@"; do
    check="${spec%%:*}" rest="${spec#*:}"
    if [ "$check" = py ]; then
        module="${rest%%:*}" pkg="${rest#*:}"
        /usr/bin/python3 -c "import $module" 2>/dev/null || missing+=("$pkg")
    elif [ "${check#/}" != "$check" ]; then
        [ -e "$check" ] || missing+=("$rest")
    else
        command -v "$check" >/dev/null 2>&1 || [ -x "/usr/sbin/$check" ] || [ -x "/sbin/$check" ] || missing+=("$rest")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "${KEYWARD_AUTO_INSTALL:-0}" = 1 ] && [ "$(id -u)" = 0 ]; then
    echo "need: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive $line -qq >/dev/null
    apt-get clean   # the downloaded .debs are not needed once installed (the image needs the disk)
else
    echo "need: missing tools; install them with:" >&2
    echo "    $line" >&2
    echo "(or run with KEYWARD_AUTO_INSTALL=1 as root)" >&2
    exit 1
fi
