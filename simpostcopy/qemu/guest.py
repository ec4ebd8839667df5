"""The tiny reproducible test guest: a distribution kernel plus an initramfs holding a
static busybox and a static workload program (``workload.c``) that reports its page-touch
rate and longest stall on the serial console.

Built from Debian packages (``apt-get install qemu-system-x86 linux-image-amd64
busybox-static gcc``); nothing is downloaded, and the artefacts are built, never committed.
"""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from simpostcopy.qemu.errors import QemuError

WORKLOAD_SOURCE = Path(__file__).resolve().parent / "workload.c"
DEFAULT_DIR = Path.home() / ".cache" / "simpostcopy" / "guest"
APT_PACKAGES = "qemu-system-x86 linux-image-amd64 busybox-static gcc libc6-dev"

# /init: mount what the workload needs, then run it with the arguments given on the kernel
# command line as wl=MODE[,MIB[,HOTMIB]].
INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
args=idle
for word in $(/bin/busybox cat /proc/cmdline); do
  case "$word" in wl=*) args="${word#wl=}" ;; esac
done
echo "guest up: workload $args"
exec /workload $(echo "$args" | /bin/busybox tr ',' ' ')
"""


@dataclass(frozen=True)
class GuestImage:
    """Kernel and initramfs of the test guest."""

    kernel: Path
    initrd: Path


def find_kernel() -> Path:
    """The newest distribution kernel under /boot."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        raise QemuError(
            f"no kernel under /boot: install one (apt-get install linux-image-amd64); the test"
            f" guest also needs: {APT_PACKAGES}"
        )
    return kernels[-1]


def _cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc cpio archive of (name, mode, data, (rdev major, minor)) entries."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, mode, data, (major, minor)) in enumerate(
        [*entries, ("TRAILER!!!", 0, b"", (0, 0))], 1
    ):
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08X}"
            for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(encoded), 0)
        )
        out.write(header.encode() + encoded)
        pad(110 + len(encoded))
        out.write(data)
        pad(len(data))
    return out.getvalue()


def build(out_dir: Path | None = None, *, kernel: Path | None = None) -> GuestImage:
    """Build (or reuse) the test guest under ``out_dir``."""
    out = Path(out_dir or DEFAULT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    kernel = Path(kernel) if kernel else find_kernel()
    busybox = shutil.which("busybox")
    gcc = shutil.which("gcc")
    if busybox is None or gcc is None:
        raise QemuError(f"the test guest needs busybox and gcc: apt-get install {APT_PACKAGES}")
    workload = out / "workload"
    if not workload.exists() or workload.stat().st_mtime < WORKLOAD_SOURCE.stat().st_mtime:
        proc = subprocess.run(
            [gcc, "-static", "-O2", "-o", str(workload), str(WORKLOAD_SOURCE)],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise QemuError(f"cannot build the workload (gcc -static): {proc.stderr.strip()}")
    busybox_data = Path(busybox).read_bytes()
    if b"GLIBC_" in busybox_data[:4096] or not _is_static(Path(busybox)):
        raise QemuError(f"{busybox} is not static: apt-get install busybox-static")
    dirs = ["bin", "dev", "proc", "sys", "tmp"]
    entries = [(d, 0o040755, b"", (0, 0)) for d in dirs]
    entries += [
        ("dev/console", 0o020600, b"", (5, 1)),
        ("dev/ttyS0", 0o020600, b"", (4, 64)),
        ("init", 0o100755, INIT.encode(), (0, 0)),
        ("bin/busybox", 0o100755, busybox_data, (0, 0)),
        ("bin/sh", 0o120777, b"busybox", (0, 0)),
        ("workload", 0o100755, workload.read_bytes(), (0, 0)),
    ]
    initrd = out / "initrd.gz"
    initrd.write_bytes(gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0))
    return GuestImage(kernel=kernel, initrd=initrd)


def _is_static(path: Path) -> bool:
    proc = subprocess.run(["file", "-L", str(path)], capture_output=True, text=True)
    if proc.returncode:  # no `file`: trust the package name
        return True
    return "statically linked" in proc.stdout or "static-pie" in proc.stdout
