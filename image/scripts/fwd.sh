#!/bin/bash
# qemu guestfwd helper: qemu runs this once per guest connection with the connection on
# stdin/stdout; it relays to 127.0.0.1:$1 on the host (bash's /dev/tcp; no netcat needed).
set -u
exec 3<>"/dev/tcp/127.0.0.1/${1:?port}" || exit 1
cat <&3 &
cat >&3
wait
