#!/usr/bin/python3
"""Assemble a unified kernel image (UKI) from systemd-boot's PE stub with objcopy.

Debian bookworm has no ukify. This does what ukify does for the sections systemd-stub 252
knows: each new section gets a virtual address after the stub's last section (and after the
previous new section), aligned to the stub's SectionAlignment. The kernel goes last.

usage: mk-uki.py STUB OUT .osrel=FILE .cmdline=FILE .initrd=FILE .linux=FILE

objcopy writes the build time into the PE header's TimeDateStamp (and so into the Authenticode
hash PCR 4 measures), so afterwards the stamp is set to SOURCE_DATE_EPOCH and the header
CheckSum recomputed: the same inputs give the same UKI, byte for byte (make image-repro).
"""
import os
import subprocess
import sys

import pefile


def round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def main(argv: list) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    stub, out, specs = argv[1], argv[2], argv[3:]
    pe = pefile.PE(stub, fast_load=True)
    align = pe.OPTIONAL_HEADER.SectionAlignment
    base = pe.OPTIONAL_HEADER.ImageBase
    addr = round_up(max(s.VirtualAddress + s.Misc_VirtualSize for s in pe.sections), align)
    pe.close()
    cmd = ["objcopy"]
    for spec in specs:
        name, _, path = spec.partition("=")
        if not name.startswith(".") or not path:
            print(f"mk-uki: bad section spec {spec!r}", file=sys.stderr)
            return 2
        cmd += ["--add-section", f"{name}={path}",
                "--change-section-vma", f"{name}={base + addr:#x}"]
        addr = round_up(addr + os.path.getsize(path), align)
    cmd += [stub, out]
    subprocess.run(cmd, check=True)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) & 0xFFFFFFFF
    pe = pefile.PE(out, fast_load=True)
    pe.FILE_HEADER.TimeDateStamp = epoch
    pe.OPTIONAL_HEADER.CheckSum = pe.generate_checksum()
    data = pe.write()
    pe.close()
    with open(out, "wb") as f:
        f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
