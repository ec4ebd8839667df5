"""Run one real postcopy migration between two QEMU processes and record it.

The source boots the test guest (``guest.py``) with its workload; the destination waits
with ``-incoming defer``; both are driven over QMP: capabilities (``postcopy-ram``,
``events``, ``postcopy-blocktime`` on the destination, optionally ``postcopy-preempt``),
``max-bandwidth`` / ``max-postcopy-bandwidth``, ``migrate``, then
``migrate-start-postcopy`` at once or after a precopy time.  ``query-migrate`` is polled
on both sides and every QMP event kept with QEMU's timestamp.  When both sides report
``completed`` the harness checks that the guest still runs on the destination (its
workload keeps printing), then stops both QEMUs (by pid, also on failure or Ctrl-C) and
writes a JSON record: settings, both sides' final ``query-migrate``, samples, events, the
guest's touch rate and longest stall, and where the raw logs are.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import zlib
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simpostcopy import __version__
from simpostcopy.config import TARGET_PAGE_BYTES
from simpostcopy.qemu.errors import QemuError
from simpostcopy.qemu.guest import APT_PACKAGES, GuestImage, build
from simpostcopy.qemu.qmp import Qmp, QmpError

WORKLOAD_LINE = re.compile(
    rb"wl t=(?P<t>[\d.]+) touches=(?P<touches>\d+) rate=(?P<rate>\d+)"
    rb" max_stall_us=(?P<max>\d+) interval_stall_us=(?P<interval>\d+)"
)


@dataclass
class RunSpec:
    """One real migration: guest, workload, link caps, mode and switch-over time."""

    ram_mib: int = 1024
    vcpus: int = 1
    workload: str = "idle"  # idle | seq,MIB | rand,MIB,HOTMIB
    max_bandwidth_bytes_per_s: int = 128 << 20  # QEMU's max-bandwidth (its default)
    max_postcopy_bandwidth_bytes_per_s: int = 0  # 0: unlimited
    preempt: bool = False
    precopy_s: float = 0.0  # precopy time before migrate-start-postcopy
    accel: str = "auto"  # auto (KVM if it boots the guest, else TCG) | kvm | tcg
    boot_timeout_s: float = 120.0
    migrate_timeout_s: float = 600.0
    poll_s: float = 0.05
    # QEMU trace events (patterns as -trace takes them) logged with timestamps into both
    # QEMUs' logs, e.g. ("postcopy_place_page*", "postcopy_ram_fault_thread_request").
    trace: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = [t for t in self.trace if not re.fullmatch(r"[A-Za-z0-9_*]+", t)]
        if bad:
            raise QemuError(
                f"trace: invalid value {bad[0]!r}: a QEMU trace event name or pattern"
                " (letters, digits, _ and *)"
            )
        if self.accel not in ("auto", "kvm", "tcg"):
            raise QemuError(f"accel: invalid value {self.accel!r}: use auto, kvm or tcg")
        if not re.fullmatch(r"idle|seq,\d+|rand,\d+,\d+", self.workload):
            raise QemuError(
                f"workload: invalid value {self.workload!r}: use idle, seq,MIB or rand,MIB,HOTMIB"
            )
        if self.ram_mib < 64 or self.vcpus < 1:
            raise QemuError(f"ram_mib={self.ram_mib}, vcpus={self.vcpus}: need >= 64 and >= 1")


@dataclass
class Qemu:
    """A QEMU process of ours, its QMP socket and serial log."""

    name: str
    proc: subprocess.Popen
    qmp_path: Path
    serial: Path
    log: Path
    qmp: Qmp | None = None

    def stop(self) -> None:
        """Quit politely, then by pid; never leaves the process behind."""
        if self.qmp is not None:
            with contextlib.suppress(QemuError):
                self.qmp.execute("quit", timeout_s=5)
            self.qmp.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class RunRecord:
    """What a run produced (written as JSON)."""

    spec: dict[str, Any]
    accel: str
    qemu_version: dict[str, Any]
    source: dict[str, Any]  # final query-migrate
    destination: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    guest: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    switchover_requested_s: float | None = None  # migrate-start-postcopy, host time
    started_s: float = 0.0  # migrate issued, host time (set by drive)
    tool: str = f"simpostcopy {__version__}"


# The workload's "wl frames" line: its buffer's pages per bin of guest-physical memory;
# its "wl frameruns" lines: the buffer's runs of consecutive frames, in buffer order,
# then "wl runs N": how many runs there are.
FRAMES_LINE = re.compile(rb"wl frames mib=(?P<mib>\d+)(?P<counts>(?: \d+)*)")
RUNS_LINE = re.compile(rb"wl frameruns(?P<runs>(?: \d+\+\d+)+)")
RUN_COUNT_LINE = re.compile(rb"wl runs (?P<n>\d+)")


def encode_zero_map(zero: np.ndarray) -> str:
    """A page bitmap as text for the JSON record: zlib-compressed packed bits, base64."""
    return base64.b64encode(zlib.compress(np.packbits(zero).tobytes(), 9)).decode()


def decode_zero_map(text: str, pages: int) -> np.ndarray:
    """The bitmap ``encode_zero_map`` wrote (``pages`` long)."""
    bits = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8))
    if bits.size < pages:
        raise QemuError(f"the record's zero-page map covers {bits.size} pages, not {pages}")
    return bits[:pages].astype(bool)


def memory_layout(qmp: Qmp, ram_bytes: int, serial: Path) -> dict[str, Any]:
    """Where the guest's data lies, just before the migration: which 4 KiB pages of RAM
    hold only zeros (QMP pmemsave of all of RAM, read back and dropped) and, from the
    workload's console, where its buffer's frames are."""
    fd, name = tempfile.mkstemp(prefix="simpostcopy-ram-", suffix=".bin")
    os.close(fd)
    path = Path(name)
    try:
        qmp.execute("pmemsave", timeout_s=120.0, val=0, size=ram_bytes, filename=name)
        zero = np.empty(ram_bytes // TARGET_PAGE_BYTES, dtype=bool)
        chunk = 16384  # pages (64 MiB) at a time
        with path.open("rb") as f:
            for lo in range(0, zero.size, chunk):
                raw = np.frombuffer(f.read(chunk * TARGET_PAGE_BYTES), dtype=np.uint64)
                zero[lo : lo + raw.size // 512] = ~raw.reshape(-1, 512).any(axis=1)
    finally:
        path.unlink(missing_ok=True)
    layout: dict[str, Any] = {"zero_map": encode_zero_map(zero), "zero_pages": int(zero.sum())}
    text = serial.read_bytes() if serial.exists() else b""
    m = FRAMES_LINE.search(text)
    if m:
        layout["frames_bin_mib"] = int(m["mib"])
        layout["frames"] = [int(c) for c in m["counts"].split()]
    count = RUN_COUNT_LINE.search(text)
    runs = [
        [int(x) for x in run.split(b"+")]
        for line in RUNS_LINE.finditer(text)
        for run in line["runs"].split()
    ]
    if count and runs and len(runs) == int(count["n"]):  # all of them, or none
        layout["frame_runs"] = runs
    return layout


_KVM_FAILED: list[bool] = []  # set once KVM failed to boot the guest (auto tries it once)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    name: str, spec: RunSpec, image: GuestImage, workdir: Path, accel: str, incoming: bool
) -> Qemu:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        raise QemuError(f"qemu-system-x86_64 not found: apt-get install {APT_PACKAGES}")
    qmp_path, serial, log = (workdir / f"{name}.{ext}" for ext in ("qmp", "serial", "log"))
    for p in (qmp_path, serial):
        p.unlink(missing_ok=True)
    cmd = [
        binary, "-name", name, "-machine", "pc", "-accel", accel,
        "-m", f"{spec.ram_mib}M", "-smp", str(spec.vcpus),
        "-display", "none", "-serial", f"file:{serial}", "-monitor", "none",
        "-qmp", f"unix:{qmp_path},server=on,wait=off", "-no-reboot",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", f"console=ttyS0 quiet panic=-1 wl={spec.workload}",
    ]  # fmt: skip
    if incoming:
        cmd += ["-incoming", "defer"]
    if spec.trace:
        cmd += ["-msg", "timestamp=on"] + [a for t in spec.trace for a in ("-trace", t)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    q = Qemu(name, proc, qmp_path, serial, log)
    try:
        q.qmp = Qmp(str(qmp_path), name=name, timeout_s=30)
    except QemuError as exc:
        q.stop()
        raise QemuError(
            f"{exc}; QEMU log: {log}: {log.read_text(errors='replace')[-500:]}"
        ) from None
    return q


def _workload_lines(serial: Path) -> list[dict[str, float]]:
    data = serial.read_bytes() if serial.exists() else b""
    return [{k: float(v) for k, v in m.groupdict().items()} for m in WORKLOAD_LINE.finditer(data)]


def _wait_lines(q: Qemu, count: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if q.proc.poll() is not None:
            raise QemuError(f"{q.name}: QEMU exited ({q.proc.returncode}); log: {q.log}")
        if len(_workload_lines(q.serial)) >= count:
            return True
        time.sleep(0.1)
    return False


def _boot_source(
    spec: RunSpec, image: GuestImage, workdir: Path, stack: ExitStack
) -> tuple[Qemu, str]:
    """Boot the source; with accel=auto try KVM first and fall back to TCG."""
    tries = ["kvm", "tcg"] if spec.accel == "auto" else [spec.accel]
    if spec.accel == "auto" and _KVM_FAILED:
        tries = ["tcg"]  # KVM already failed to boot the guest in this process
    for accel in tries:
        src = _start("source", spec, image, workdir, accel, incoming=False)
        limit = (
            min(30.0, spec.boot_timeout_s)
            if accel == "kvm" and len(tries) > 1
            else spec.boot_timeout_s
        )
        if _wait_lines(src, 2, limit):
            stack.callback(src.stop)
            return src, accel
        src.stop()
        if accel == "kvm" and len(tries) > 1:
            _KVM_FAILED.append(True)
            print(f"KVM did not boot the guest within {limit:.0f} s here: falling back to TCG")
    raise QemuError(f"the test guest did not boot within {spec.boot_timeout_s:.0f} s ({tries[-1]})")


def drive(src: Qmp, dst: Qmp, spec: RunSpec, record: RunRecord, alive: Any = lambda: None) -> None:
    """Set up both sides, migrate, switch to postcopy when due and poll until both sides
    report ``completed`` (every wait bounded; ``alive()`` raises if a QEMU died)."""
    caps = ["postcopy-ram", "events"] + (["postcopy-preempt"] if spec.preempt else [])
    src.execute(
        "migrate-set-capabilities",
        capabilities=[{"capability": c, "state": True} for c in caps],
    )
    dst.execute(
        "migrate-set-capabilities",
        capabilities=[{"capability": c, "state": True} for c in [*caps, "postcopy-blocktime"]],
    )
    params: dict[str, Any] = {"max-bandwidth": spec.max_bandwidth_bytes_per_s}
    if spec.max_postcopy_bandwidth_bytes_per_s:
        params["max-postcopy-bandwidth"] = spec.max_postcopy_bandwidth_bytes_per_s
    src.execute("migrate-set-parameters", **params)
    port = _free_port()
    dst.execute("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    record.started_s = time.time()
    src.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
    deadline = time.monotonic() + spec.migrate_timeout_s
    switch_at = time.monotonic() + spec.precopy_s
    statuses: dict[str, str] = {}
    while True:
        now = time.monotonic()
        if now > deadline:
            raise QemuError(
                f"migration not completed within {spec.migrate_timeout_s:.0f} s"
                f" (source {statuses.get('source')}, destination {statuses.get('destination')})"
            )
        alive()
        for side, q in (("source", src), ("destination", dst)):
            info = q.execute("query-migrate") or {}
            statuses[side] = info.get("status", "none")
            record.samples.append({"side": side, "t": time.time(), **info})
            if statuses[side] == "failed":
                why = info.get("error-desc", "no reason given")
                raise QemuError(f"migration failed on the {side}: {why}")
        due = now >= switch_at and statuses["source"] == "active"
        if record.switchover_requested_s is None and due:
            try:
                src.execute("migrate-start-postcopy")
                record.switchover_requested_s = time.time()
            except QmpError as exc:  # e.g. precopy completed meanwhile
                record.switchover_requested_s = float("nan")
                print(f"migrate-start-postcopy: {exc}")
        if statuses["source"] == "completed" and statuses["destination"] == "completed":
            break
        time.sleep(spec.poll_s)
    record.source = src.execute("query-migrate")
    record.destination = dst.execute("query-migrate")


def run(
    spec: RunSpec, out: Path, *, workdir: Path | None = None, image: GuestImage | None = None
) -> RunRecord:
    """Run one migration per ``spec``; the record is also written to ``out`` (JSON)."""
    workdir = Path(workdir or out.with_suffix(".logs"))
    workdir.mkdir(parents=True, exist_ok=True)
    image = image or build()
    with ExitStack() as stack:
        src, accel = _boot_source(spec, image, workdir, stack)
        dst = _start("destination", spec, image, workdir, accel, incoming=True)
        stack.callback(dst.stop)
        assert src.qmp is not None and dst.qmp is not None
        record = RunRecord(
            spec=asdict(spec), accel=accel, qemu_version=src.qmp.version,
            source={}, destination={},
        )  # fmt: skip

        def alive() -> None:
            for q in (src, dst):
                if q.proc.poll() is not None:
                    raise QemuError(f"{q.name} QEMU died during the migration; log: {q.log}")

        layout = memory_layout(src.qmp, spec.ram_mib << 20, src.serial)
        drive(src.qmp, dst.qmp, spec, record, alive)
        before = len(_workload_lines(dst.serial))
        if not _wait_lines(dst, before + 2, 30.0):
            raise QemuError("the guest does not run on the destination after the migration")
        record.events = [{"side": q.name, **e} for q in (src, dst) for e in q.qmp.events]  # type: ignore[union-attr]
        src_lines, dst_lines = _workload_lines(src.serial), _workload_lines(dst.serial)
        rates = sorted(x["rate"] for x in src_lines[1:]) or [0.0]
        record.guest = {
            "touch_rate_per_s": rates[len(rates) // 2],
            # On the destination only (the source's pauses, e.g. for pmemsave, are not the
            # migration's): the longest gap between two touches in any of its intervals.
            "longest_stall_s": max((x["interval"] for x in dst_lines), default=0.0) * 1e-6,
            "source_lines": len(src_lines),
            "destination_lines": len(dst_lines),
            **layout,
        }
        record.logs = {q.name: str(q.log) for q in (src, dst)} | {
            f"{q.name}_serial": str(q.serial) for q in (src, dst)
        }
    Path(out).write_text(json.dumps(asdict(record), indent=1, default=str) + "\n")
    return record
