"""Native userfaultfd microbenchmark (C through cffi): the local costs of a postcopy fault.

The C side (``uffd_bench.c``, built as ``simpostcopy.native._uffd`` by ``pip install``)
does what QEMU's destination does for one fault — a thread touches a missing page, the
fault thread reads the uffd message, optionally asks a page server for the page, places
it with ``UFFDIO_COPY`` and the toucher resumes — and stamps every stage with
CLOCK_MONOTONIC. This module validates arguments, maps failures to exceptions that say
how to fix them, and returns the stamps as tables. The extension is imported lazily, so
``import simpostcopy`` stays cheap and works without it (``available()`` says why not).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import os
import platform
import shutil
import socket
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "BenchmarkTimeoutError",
    "HugePagesUnavailableError",
    "NativeError",
    "NativeUnavailableError",
    "PageServer",
    "PageServerError",
    "UffdPermissionError",
    "UffdUnsupportedError",
    "available",
    "fit_placement",
    "harness_overhead",
    "host_metadata",
    "place_series",
    "probe_uffd",
    "reserve_hugepages",
    "run_faults",
    "serve",
    "uffd_open_error",
    "unavailable_reason",
]

SMALL_PAGE = 4096
HUGE_PAGE = 2 << 20
MODES = {"read": 0, "poll": 1, "busy": 2}
AFFINITIES = {"scheduler": 0, "same": 1, "different": 2}
MAX_THREADS = 256  # as in uffd_bench.c
HUGEPAGES_DIR = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")

# struct spc_sample, all int64, in declaration order (uffd_bench.h).
_SAMPLE_FIELDS = (
    "thread",
    "page",
    "warmup",
    "own_msg",
    "eexist",
    "placed",
    "t_touch",
    "t_resume",
    "t_read",
    "t_req_start",
    "t_req_end",
    "t_net_end",
    "t_place_start",
    "t_place_end",
)
_ERRLEN = 512
_MODULE = "simpostcopy.native._uffd"

# UFFD_FEATURE_* bit -> name (linux/userfaultfd.h up to Linux 6.8).
UFFD_FEATURES = {
    0: "PAGEFAULT_FLAG_WP",
    1: "EVENT_FORK",
    2: "EVENT_REMAP",
    3: "EVENT_REMOVE",
    4: "MISSING_HUGETLBFS",
    5: "MISSING_SHMEM",
    6: "EVENT_UNMAP",
    7: "SIGBUS",
    8: "THREAD_ID",
    9: "MINOR_HUGETLBFS",
    10: "MINOR_SHMEM",
    11: "EXACT_ADDRESS",
    12: "WP_HUGETLBFS_SHMEM",
    13: "WP_UNPOPULATED",
    14: "POISON",
    15: "WP_ASYNC",
    16: "MOVE",
}
# _UFFDIO_* ioctl number -> name: the bits of the ioctls masks.
UFFD_IOCTLS = {
    0x00: "REGISTER",
    0x01: "UNREGISTER",
    0x02: "WAKE",
    0x03: "COPY",
    0x04: "ZEROPAGE",
    0x05: "MOVE",
    0x06: "WRITEPROTECT",
    0x07: "CONTINUE",
    0x08: "POISON",
    0x3F: "API",
}


# -- errors ---------------------------------------------------------------------------------
class NativeError(RuntimeError):
    """Any failure of the native benchmark."""


class NativeUnavailableError(NativeError):
    """The C extension is not built or cannot be imported (message: unavailable_reason())."""


class UffdPermissionError(NativeError):
    """This process may not open a userfaultfd (EPERM/EACCES)."""


class UffdUnsupportedError(NativeError):
    """The kernel has no userfaultfd (built without CONFIG_USERFAULTFD)."""


class HugePagesUnavailableError(NativeError):
    """Not enough free 2 MiB huge pages for the region (never silently falls back)."""

    def __init__(self, message: str, *, needed: int = 0, free: int = 0) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free


class PageServerError(NativeError):
    """The page server is unreachable, refused, timed out or closed the connection."""


class BenchmarkTimeoutError(NativeError):
    """A wait inside the benchmark exceeded its timeout."""


def _errname(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}") if code else "not tried"


def uffd_open_error(syscall_errno: int, dev_errno: int) -> NativeError:
    """The exception for a failed userfaultfd open, from the errno of userfaultfd(2) and of
    /dev/userfaultfd (0: not tried)."""
    detail = (
        f"userfaultfd(2) failed with {_errname(syscall_errno)}, "
        f"/dev/userfaultfd with {_errname(dev_errno)}"
    )
    no_device = {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.ENOSYS, 0}
    if syscall_errno == errno.ENOSYS and dev_errno in no_device:
        return UffdUnsupportedError(
            f"this kernel has no userfaultfd: it was built without CONFIG_USERFAULTFD "
            f"({detail}). Use a kernel with CONFIG_USERFAULTFD=y (every major distribution "
            f"kernel has it)."
        )
    if {syscall_errno, dev_errno} & {errno.EPERM, errno.EACCES}:
        return UffdPermissionError(
            f"not allowed to open a userfaultfd ({detail}). Any one of these fixes it: "
            f"(1) `sysctl vm.unprivileged_userfaultfd=1` (as root); "
            f"(2) read/write permission on /dev/userfaultfd (Linux 6.1+), e.g. a group with "
            f"access: `chgrp kvm /dev/userfaultfd && chmod 660 /dev/userfaultfd` and add the "
            f"user to that group; (3) the CAP_SYS_PTRACE capability (or run as root)."
        )
    return NativeError(f"cannot open a userfaultfd: {detail}")


# -- the extension ----------------------------------------------------------------------------
def _diagnose(exc: ImportError) -> str:
    """Why the extension is missing, judged from what a build needs, and how to fix it."""
    if not sys.platform.startswith("linux"):
        return f"the userfaultfd benchmark is Linux-only (this is {sys.platform})"
    if not (isinstance(exc, ModuleNotFoundError) and exc.name == _MODULE):
        return (
            f"the C extension simpostcopy.native._uffd is built but cannot be imported "
            f"({exc}); rebuild it: pip install -e . (or pip install .) again"
        )
    missing = []
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "gcc").split()[0]
    if shutil.which(cc) is None:
        missing.append(f"a C compiler ({cc})")
    include = sysconfig.get_paths().get("include", "")
    if not Path(include, "Python.h").exists():
        missing.append(f"the Python headers ({include}/Python.h)")
    if not Path("/usr/include/linux/userfaultfd.h").exists():
        missing.append("the Linux headers (/usr/include/linux/userfaultfd.h)")
    built = (
        "the C extension simpostcopy.native._uffd was not built when simpostcopy was "
        "installed (its compile is optional and failed or was skipped)"
    )
    if missing:
        return (
            f"{built}; missing: {', '.join(missing)}. Install gcc and python3-dev "
            f"(Debian/Ubuntu: apt-get install gcc python3-dev linux-libc-dev), then "
            f"pip install -e . again"
        )
    return (
        f"{built}; a compiler and the headers are present now, so pip install -e . "
        f"(or pip install .) again; if it still fails, pip install -v shows why (look for "
        f"'building extension \"simpostcopy.native._uffd\" failed', e.g. a bad CC)"
    )


@functools.cache
def _load() -> tuple[Any, Any] | str:
    """(ffi, lib) of the extension, or the reason it is unavailable."""
    try:
        _uffd = importlib.import_module(_MODULE)
    except ImportError as exc:
        return _diagnose(exc)
    return _uffd.ffi, _uffd.lib


def available() -> bool:
    """Whether the C extension is built and importable (not whether uffd is permitted)."""
    return not isinstance(_load(), str)


def unavailable_reason() -> str | None:
    """What is missing for the extension and how to fix it; None when it is available."""
    loaded = _load()
    return loaded if isinstance(loaded, str) else None


def _native() -> tuple[Any, Any]:
    loaded = _load()
    if isinstance(loaded, str):
        raise NativeUnavailableError(loaded)
    return loaded


def _hugepages_state() -> tuple[int, int]:
    """(nr_hugepages, available = free - reserved) of the 2 MiB pool; (0, 0) without one."""
    try:
        total, free, resv = (
            int((HUGEPAGES_DIR / name).read_text())
            for name in ("nr_hugepages", "free_hugepages", "resv_hugepages")
        )
    except OSError:
        return 0, 0
    return total, free - resv


def _hugepages_error(needed: int, why: str = "") -> HugePagesUnavailableError:
    total, free = _hugepages_state()
    return HugePagesUnavailableError(
        f"{why}need {needed} free 2 MiB huge pages, {free} are free. Reserve them as root: "
        f"echo {total + max(needed - free, 0)} > /proc/sys/vm/nr_hugepages "
        f"(or use simpostcopy.native.reserve_hugepages({needed}))",
        needed=needed,
        free=free,
    )


def _error(code: int, err: Any, st: Any, lib: Any, ffi: Any) -> NativeError:
    """The exception for an SPC_E_* code of the C side."""
    message = ffi.string(err).decode(errors="replace")
    if code == lib.SPC_E_UFFD_OPEN:
        return uffd_open_error(st.syscall_errno, st.dev_errno)
    if code == lib.SPC_E_HUGEPAGES:
        return _hugepages_error(st.hugepages_needed, f"{message}: ")
    if code == lib.SPC_E_SERVER:
        return PageServerError(message)
    if code == lib.SPC_E_TIMEOUT:
        return BenchmarkTimeoutError(message)
    return NativeError(message)


def probe_uffd() -> dict[str, Any]:
    """Open a userfaultfd as the benchmark does and report how and what the kernel offers;
    raises the matching NativeError when it cannot."""
    ffi, lib = _native()
    st = ffi.new("struct spc_stats *")
    err = ffi.new("char[]", _ERRLEN)
    code = lib.spc_probe(st, err, _ERRLEN)
    if code:
        raise _error(code, err, st, lib, ffi)
    return {
        "opened_with": _handler_source(st, lib),
        "features_mask": int(st.features),
        "features": _bits(st.features, UFFD_FEATURES),
        "ioctls_mask": int(st.ioctls),
        "ioctls": _bits(st.ioctls, UFFD_IOCTLS),
    }


def _bits(mask: int, names: dict[int, str]) -> list[str]:
    return [names.get(bit, f"bit {bit}") for bit in range(64) if mask >> bit & 1]


def _handler_source(st: Any, lib: Any) -> str:
    return "syscall" if st.open_method == lib.SPC_OPEN_SYSCALL else "/dev/userfaultfd"


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; use one of {list(allowed)}")


def _check_page_bytes(page_bytes: int) -> None:
    _choice("page_bytes", page_bytes, (SMALL_PAGE, HUGE_PAGE))


def _positive(name: str, value: float, minimum: float = 1) -> None:
    if not value >= minimum:
        raise ValueError(f"{name}={value!r} is not allowed; it must be >= {minimum}")


def _connect(server: tuple[str, int], timeout_s: float) -> socket.socket:
    host, port = server
    where = f"page server {host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError as exc:
        raise PageServerError(
            f"{where} refused the connection (is `simpostcopy calibrate serve` running there?)"
        ) from exc
    except TimeoutError as exc:
        raise PageServerError(f"{where} is unreachable: no answer within {timeout_s} s") from exc
    except OSError as exc:
        raise PageServerError(f"{where} is unreachable: {exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Blocking again: the C side bounds each send/recv with SO_SNDTIMEO/SO_RCVTIMEO.
    sock.settimeout(None)
    return sock


# -- the benchmark ----------------------------------------------------------------------------
def run_faults(
    *,
    page_bytes: int = SMALL_PAGE,
    samples: int = 1000,
    threads: int = 1,
    mode: str = "poll",
    affinity: str = "scheduler",
    zeropage: bool = False,
    shared_pages: bool = False,
    server: tuple[str, int] | None = None,
    warmup: int = 16,
    timeout_s: float = 10.0,
) -> pd.DataFrame:
    """Time ``samples`` real userfaultfd faults (after ``warmup`` more) and return one row per
    (thread, page) touch with its stages in seconds.

    Page ``i`` is touched by thread ``i % threads``, so without ``shared_pages`` each row is
    one uffd message. With ``shared_pages`` every thread touches every page: one row per
    (thread, page); ``message`` says whether that thread's own fault message reached the
    handler (the kernel drops an unread message when another one's placement wakes its
    thread: ``delivery_s`` is then NaN), ``eexist`` that it did but the page was already
    placed, ``placed`` that it was the message that placed the page. Placement, request and
    network columns always come from the message that placed the page.

    Stages: delivery = read - touch; request = the send() of the 8-byte request; network =
    request start -> last byte of the page in; place = the UFFDIO_COPY/ZEROPAGE ioctl, made
    with DONTWAKE; wake = its return -> resume, i.e. an explicit UFFDIO_WAKE plus the
    scheduler; round_trip = touch -> resume. QEMU copies and wakes in one ioctl; split, a
    woken thread that preempts the fault thread inside the ioctl cannot inflate place_s, and
    wake_s of a touch that faulted is never negative (with shared pages, a thread arriving
    while the page is being placed may not fault at all: its wake_s can be down to -place_s).

    ``attrs``: ``faults_per_s`` (measured pages / wall time of the measured phase, which
    starts once every warm-up touch has resumed), ``wall_s``, ``uffd_features`` and
    ``uffd_ioctls`` (UFFDIO_API masks), ``uffd_range_ioctls``, ``messages``, ``eexist``.
    ``timeout_s`` bounds every wait; a stall with no progress at all ends within twice that
    with BenchmarkTimeoutError, a silent page server within it with PageServerError.
    """
    import numpy as np
    import pandas as pd

    _check_page_bytes(page_bytes)
    _choice("mode", mode, list(MODES))
    _choice("affinity", affinity, list(AFFINITIES))
    _positive("samples", samples)
    _positive("threads", threads)
    if threads > MAX_THREADS:
        raise ValueError(f"threads={threads!r} is not allowed; use 1..{MAX_THREADS}")
    _positive("warmup", warmup, 0)
    _positive("timeout_s", timeout_s, 0.001)
    if zeropage and page_bytes != SMALL_PAGE:
        raise ValueError(
            f"zeropage=True is not allowed with page_bytes={page_bytes}: UFFDIO_ZEROPAGE "
            f"exists only for 4 KiB pages"
        )
    ffi, lib = _native()
    pages = samples + warmup
    capacity = pages * threads if shared_pages else pages
    out = ffi.new("struct spc_sample[]", capacity)
    st = ffi.new("struct spc_stats *")
    err = ffi.new("char[]", _ERRLEN)
    sock = _connect(server, timeout_s) if server is not None else None
    try:
        cfg = ffi.new(
            "struct spc_config *",
            {
                "page_bytes": page_bytes,
                "samples": samples,
                "warmup": warmup,
                "capacity": capacity,
                "threads": threads,
                "mode": MODES[mode],
                "affinity": AFFINITIES[affinity],
                "zeropage": int(zeropage),
                "shared_pages": int(shared_pages),
                "server_fd": sock.fileno() if sock is not None else -1,
                "timeout_ms": max(1, round(timeout_s * 1000)),
            },
        )
        code = lib.spc_run(cfg, out, st, err, _ERRLEN)
    finally:
        if sock is not None:
            sock.close()
    if code:
        raise _error(code, err, st, lib, ffi)

    assert ffi.sizeof("struct spc_sample") == 8 * len(_SAMPLE_FIELDS)
    raw = np.frombuffer(ffi.buffer(out, st.rows * ffi.sizeof("struct spc_sample")), np.int64)
    f = dict(zip(_SAMPLE_FIELDS, raw.reshape(st.rows, len(_SAMPLE_FIELDS)).T.copy(), strict=True))

    def span(end: str, start: str) -> np.ndarray:
        return (f[end] - f[start]) / 1e9

    own = f["own_msg"].astype(bool)
    nan = np.full(st.rows, np.nan)
    df = pd.DataFrame(
        {
            "thread": f["thread"],
            "page": f["page"],
            "warmup": f["warmup"].astype(bool),
            "eexist": f["eexist"].astype(bool),
            "message": own,
            "placed": f["placed"].astype(bool),
            "delivery_s": np.where(own, span("t_read", "t_touch"), np.nan),
            "place_s": span("t_place_end", "t_place_start"),
            "wake_s": span("t_resume", "t_place_end"),
            "round_trip_s": span("t_resume", "t_touch"),
            "request_s": span("t_req_end", "t_req_start") if server else nan,
            "network_s": span("t_net_end", "t_req_start") if server else nan,
        }
    )
    df["mode"] = mode
    df["affinity"] = affinity
    df["page_bytes"] = page_bytes
    df["threads"] = threads
    df["zeropage"] = bool(zeropage)
    df["handler_source"] = _handler_source(st, lib)
    wall_s = (st.t_end - st.t_start) / 1e9
    df.attrs.update(
        faults_per_s=samples / wall_s if wall_s > 0 else float("nan"),
        wall_s=wall_s,
        uffd_features=int(st.features),
        uffd_ioctls=int(st.ioctls),
        uffd_range_ioctls=int(st.range_ioctls),
        messages=int(st.messages),
        eexist=int(st.eexist),
    )
    return df


def place_series(
    *,
    page_bytes: int = SMALL_PAGE,
    batches: Sequence[int] | None = None,
    reps: int = 20,
) -> pd.DataFrame:
    """Time one UFFDIO_COPY of k pages, ``reps`` times per batch size k, with no faulting
    thread, each copy into pages never placed before: columns ``batch_pages, bytes,
    duration_s``. ``batches`` defaults to 1, 2, 4, ..., 256 for 4 KiB pages and 1, 2, 4 for
    2 MiB pages; the region holds max(batches) + sum(batches) * reps pages (with 2 MiB
    pages, that many free huge pages are needed)."""
    import numpy as np
    import pandas as pd

    _check_page_bytes(page_bytes)
    if batches is None:
        batches = tuple(2**i for i in range(9 if page_bytes == SMALL_PAGE else 3))
    batches = [int(b) for b in batches]
    if not batches or min(batches) < 1:
        raise ValueError(f"batches={batches!r} is not allowed; give batch sizes >= 1")
    _positive("reps", reps)
    ffi, lib = _native()
    sizes = ffi.new("int64_t[]", batches)
    durations = ffi.new("int64_t[]", len(batches) * reps)
    st = ffi.new("struct spc_stats *")
    err = ffi.new("char[]", _ERRLEN)
    code = lib.spc_place_series(page_bytes, sizes, len(batches), reps, durations, st, err, _ERRLEN)
    if code:
        raise _error(code, err, st, lib, ffi)
    k = np.repeat(np.asarray(batches, dtype=np.int64), reps)
    ns = np.frombuffer(ffi.buffer(durations), np.int64).copy()
    return pd.DataFrame({"batch_pages": k, "bytes": k * page_bytes, "duration_s": ns / 1e9})


def fit_placement(df: pd.DataFrame) -> tuple[float, float]:
    """(fixed_s, per_byte_s): the line fixed + per_byte * bytes through the median duration
    per batch of a place_series table, by least squares on relative residuals (weights
    1/median). Plain least squares lets the largest batches, whose noise alone exceeds the
    fixed cost, decide the intercept, which then often comes out negative."""
    import numpy as np

    medians = df.groupby("bytes")["duration_s"].median()
    if len(medians) < 2:
        raise ValueError("fit_placement needs at least two batch sizes")
    y = medians.to_numpy(np.float64)
    per_byte, fixed = np.polyfit(medians.index.to_numpy(np.float64), y, 1, w=1 / y)
    return float(fixed), float(per_byte)


def harness_overhead(samples: int = 10000) -> np.ndarray:
    """The harness's own touch -> resume time on a page already present, in seconds: what
    every measured round trip includes besides the fault."""
    import numpy as np

    _positive("samples", samples)
    ffi, lib = _native()
    out = ffi.new("int64_t[]", samples)
    err = ffi.new("char[]", _ERRLEN)
    code = lib.spc_overhead(samples, out, err, _ERRLEN)
    if code:
        raise NativeError(ffi.string(err).decode(errors="replace"))
    return np.frombuffer(ffi.buffer(out), np.int64) / 1e9


# -- page server ------------------------------------------------------------------------------
class PageServer:
    """A page server (C, spc_serve) on a daemon thread: answers each 8-byte request with
    ``page_bytes`` of data. Clients must use the same page size. Use as a context manager,
    or call stop()."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, page_bytes: int = SMALL_PAGE
    ) -> None:
        _check_page_bytes(page_bytes)
        self._ffi, self._lib = _native()
        try:
            self._sock = socket.create_server((host, port))
        except OSError as exc:
            raise PageServerError(f"cannot listen on {host}:{port}: {exc}") from exc
        self.page_bytes = page_bytes
        self._stop = self._ffi.new("int *")
        self._err = self._ffi.new("char[]", _ERRLEN)
        self._code = 0
        self._thread = threading.Thread(target=self._serve, name="page-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._code = self._lib.spc_serve(
            self._sock.fileno(), self.page_bytes, self._stop, self._err, _ERRLEN
        )

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on (the real port when 0 was asked)."""
        host, port = self._sock.getsockname()[:2]
        return host, port

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` s for the server to end (it only ends by stop() or a
        failure); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving (within ~0.1 s), close the connections; raises if the server failed."""
        self._stop[0] = 1
        self._thread.join(1.0)
        if self._thread.is_alive():
            raise PageServerError("the page server did not stop within 1 s")
        self._sock.close()
        if self._code:
            raise PageServerError(self._ffi.string(self._err).decode(errors="replace"))

    def __enter__(self) -> PageServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    host: str = "0.0.0.0",
    port: int = 4444,
    page_bytes: int = SMALL_PAGE,
    *,
    on_ready: Callable[[tuple[str, int]], None] | None = None,
) -> None:
    """Serve pages until interrupted (Ctrl-C) or the server fails; ``on_ready`` gets the
    address once listening. For ``simpostcopy calibrate serve``."""
    with PageServer(host, port, page_bytes) as server:
        if on_ready is not None:
            on_ready(server.address)
        # Short joins keep the main thread responsive to KeyboardInterrupt.
        with contextlib.suppress(KeyboardInterrupt):
            while not server.wait(0.5):
                pass


# -- host -------------------------------------------------------------------------------------
def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def host_metadata() -> dict[str, Any]:
    """What the measurements depend on: kernel, CPU, page sizes, how a userfaultfd opens and
    what it offers, and whether this is a virtual machine."""
    cpuinfo = _read("/proc/cpuinfo") or ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if ":" in line
            and line.split(":", 1)[0].strip() in ("model name", "Processor", "cpu model")
        ),
        platform.processor() or None,
    )
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in cpuinfo.splitlines()
            if line.startswith("flags")
        ),
        [],
    )
    vendor = _read("/sys/class/dmi/id/sys_vendor")
    product = _read("/sys/class/dmi/id/product_name")
    vm_vendors = ("QEMU", "KVM", "VMware", "Xen", "Microsoft", "innotek", "Amazon EC2", "Google")
    page_sizes: list[dict[str, Any]] = [{"page_bytes": SMALL_PAGE}]
    if HUGEPAGES_DIR.exists():
        total, free = _hugepages_state()
        page_sizes.append({"page_bytes": HUGE_PAGE, "nr_hugepages": total, "free": free})
    uname = platform.uname()
    uffd: dict[str, Any]
    if available():
        try:
            uffd = probe_uffd()
        except NativeError as exc:
            uffd = {"error": str(exc)}
    else:
        uffd = {"error": unavailable_reason()}
    unpriv = _read("/proc/sys/vm/unprivileged_userfaultfd")
    return {
        "hostname": socket.gethostname(),
        "kernel": {"release": uname.release, "version": uname.version, "machine": uname.machine},
        "cpu_model": model,
        "online_cpus": os.sysconf("SC_NPROCESSORS_ONLN"),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "page_sizes": page_sizes,
        "uffd": uffd,
        "unprivileged_userfaultfd": int(unpriv) if unpriv is not None else None,
        "virtual_machine": "hypervisor" in flags
        or any(v.lower() in f"{vendor} {product}".lower() for v in vm_vendors if vendor),
        "sys_vendor": vendor,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def reserve_hugepages(count: int) -> Iterator[int]:
    """Make ``count`` 2 MiB huge pages free for the block: if fewer are, raise the pool
    (/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages, i.e. /proc/sys/vm/nr_hugepages
    for the default size) by the shortfall and restore it on exit. Yields how many pages it
    added; raises HugePagesUnavailableError if it cannot (not root, memory fragmented)."""
    total, free = _hugepages_state()
    short = count - free
    if short <= 0:
        yield 0
        return
    path = HUGEPAGES_DIR / "nr_hugepages"
    try:
        path.write_text(str(total + short))
    except OSError as exc:
        raise _hugepages_error(count, f"cannot write {path} ({exc.strerror}): ") from exc
    try:
        _, now_free = _hugepages_state()
        if now_free < count:
            raise _hugepages_error(count, "the kernel could not allocate them (fragmented): ")
        yield short
    finally:
        path.write_text(str(total))
