"""Scenario configuration: validated, immutable dataclasses loaded from TOML, dicts or overrides.

Every field is declared with a kind (bytes, rate, time, float, int, bool, str) and bounds in its
metadata; one generic validator coerces strings with units and checks the bounds, so a bad
scenario fails at load time with a message naming the dotted key, the value and what is allowed.
"""

import dataclasses
import difflib
import hashlib
import json
import numbers
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from simpostcopy.distributions import Dist, parse_dist
from simpostcopy.units import (
    UnitError,
    format_bytes,
    format_rate,
    format_time,
    parse_bytes,
    parse_number,
    parse_rate,
    parse_time,
)

TARGET_PAGE_BYTES = 4096
SUPPORTED_HOST_PAGE_BYTES = (4096, 2 * 1024**2, 1024**3)


class ScenarioError(ValueError):
    """An invalid scenario setting; ``key`` is the dotted key, ``value`` the value given."""

    def __init__(self, message: str, *, key: str = "", value: Any = None) -> None:
        super().__init__(message)
        self.key = key
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep key and value when the error crosses a process boundary (pickling drops kwargs).
        return type(self), (str(self),), {"key": self.key, "value": self.value}


def _field(kind: str, default: Any, **rules: Any) -> Any:
    """Declare a config field: its kind drives coercion, ``rules`` (gt, min, max, multiple_of,
    choices, check) are checked by ``_validate``."""
    return dataclasses.field(default=default, metadata={"kind": kind, **rules})


_SECTION_KIND = {"kind": "section"}  # metadata of a Scenario field holding a whole section


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "bytes": parse_bytes,
    "rate": parse_rate,
    "time": parse_time,
    "float": parse_number,
    "dist": parse_dist,
}
# kind -> (accepts the value?, converter to a plain python value, expected type in words)
_PLAIN: dict[str, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    "int": (_is_int, int, "an integer"),
    "bool": (lambda v: isinstance(v, bool), bool, "a boolean (true or false)"),
    "str": (lambda v: isinstance(v, str), str, "a string"),
}


def _coerce(key: str, kind: str, expected: Any, raw: Any) -> Any:
    """``raw`` converted to the canonical python value of ``kind`` or a ScenarioError."""
    if kind in _PARSERS:
        try:
            return _PARSERS[kind](raw)
        except UnitError as exc:
            raise ScenarioError(f"{key}: {exc}", key=key, value=raw) from None
    if kind == "section":
        if isinstance(raw, expected):
            return raw
        what = f"a {expected.__name__} (use Scenario.from_dict for plain mappings)"
    else:
        accepts, convert, what = _PLAIN[kind]
        if accepts(raw):
            return convert(raw)
    raise ScenarioError(f"{key}: invalid value {raw!r}: expected {what}", key=key, value=raw)


def _violation(rules: Mapping[str, Any], value: Any) -> str | None:
    """The first rule in ``rules`` that ``value`` breaks, described, or None."""
    if "gt" in rules and not value > rules["gt"]:
        return f"must be > {rules['gt']}"
    if "min" in rules and value < rules["min"]:
        return f"must be >= {rules['min']}"
    if "max" in rules and value > rules["max"]:
        return f"must be <= {rules['max']}"
    if "multiple_of" in rules and value % rules["multiple_of"]:
        return f"must be a multiple of {format_bytes(rules['multiple_of'])}"
    if "choices" in rules and value not in rules["choices"]:
        return "must be one of " + ", ".join(repr(c) for c in rules["choices"])
    if "check" in rules:
        return rules["check"](value)
    return None


def _dotted(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def _validate(obj: Any) -> None:
    """Coerce every field of a config dataclass in place and check it against its rules."""
    for f in fields(obj):
        key = _dotted(obj.SECTION, f.name)
        raw = getattr(obj, f.name)
        value = _coerce(key, f.metadata["kind"], f.type, raw)
        problem = _violation(f.metadata, value)
        if problem:
            raise ScenarioError(f"{key}: invalid value {raw!r}: {problem}", key=key, value=raw)
        object.__setattr__(obj, f.name, value)


def _require_path(key: str, value: str, what: str, when: str) -> None:
    """A file setting that another setting makes necessary must be given."""
    if not value:
        raise ScenarioError(
            f"{key}: invalid value {value!r}: {what} path is required when {when}",
            key=key,
            value=value,
        )


def _bytes_text(n: int) -> str:
    return f"{n} ({format_bytes(n)})"


def _nonnegative(d: Dist) -> str | None:
    # Every kind keeps its minimum in params[0] for constants and (sorted) quantiles.
    if d.kind in ("constant", "empirical") and d.params[0] < 0:
        return "durations must be >= 0"
    return None


def _check_host_page(n: int) -> str | None:
    pages = n // TARGET_PAGE_BYTES
    if n <= 0 or n % TARGET_PAGE_BYTES or pages & (pages - 1):
        return "must be 4 KiB × 2^k"
    if n not in SUPPORTED_HOST_PAGE_BYTES:
        return "not supported: supported host page sizes are 4 KiB, 2 MiB, 1 GiB"
    return None


@dataclass(frozen=True, slots=True)
class Guest:
    """The migrated VM: memory size, host page size backing it, vCPUs and zero-page share."""

    SECTION: ClassVar[str] = "guest"

    ram_bytes: int = _field("bytes", "4 GiB", gt=0)
    host_page_bytes: int = _field("bytes", 4096, check=_check_host_page)
    vcpus: int = _field("int", 2, min=1)
    # Fraction of host pages whose content is all zeros.
    zero_page_fraction: float = _field("float", 0.1, min=0, max=1)
    # Where the zero pages are: anywhere (random), only outside the workload's working
    # set (a guest's zero pages are the memory it never wrote), or exactly those marked in
    # zero_page_map ("map"; zero_page_fraction is then unused).
    zero_page_layout: str = _field(
        "str", "random", choices=("random", "outside_working_set", "map")
    )
    # A .npy file of booleans, one per 4 KiB page of RAM, True where the page holds only
    # zeros (e.g. measured from a real guest; see load_zero_map).
    zero_page_map: str = _field("str", "")
    # The first time a vCPU touches a host page on the destination (without faulting)
    # it spends this: KVM maps the page into the guest (an EPT violation), TCG takes its
    # slow path for the page's first write.  A faulting touch pays it in its wake-up.
    first_touch_s: float = _field("time", 0, min=0)

    def __post_init__(self) -> None:
        _validate(self)
        if self.zero_page_layout == "map":
            _require_path("guest.zero_page_map", self.zero_page_map, "a .npy file",
                          "guest.zero_page_layout = 'map'")  # fmt: skip
        if self.ram_bytes % self.host_page_bytes:
            raise ScenarioError(
                f"guest.ram_bytes: invalid value {_bytes_text(self.ram_bytes)}: must be a"
                " multiple of the host page size guest.host_page_bytes ="
                f" {format_bytes(self.host_page_bytes)}",
                key="guest.ram_bytes",
                value=self.ram_bytes,
            )

    @property
    def host_pages(self) -> int:
        """Number of host pages backing guest RAM."""
        return self.ram_bytes // self.host_page_bytes

    @property
    def target_pages_per_host_page(self) -> int:
        """Target (4 KiB) pages per host page: the unit a fault places at once."""
        return self.host_page_bytes // TARGET_PAGE_BYTES


@dataclass(frozen=True, slots=True)
class Workload:
    """How the guest's vCPUs touch memory while postcopy runs."""

    SECTION: ClassVar[str] = "workload"

    pattern: str = _field(
        "str", "hotset", choices=("uniform", "hotset", "zipf", "sequential", "trace")
    )
    working_set_bytes: int = _field("bytes", "1 GiB", gt=0, multiple_of=TARGET_PAGE_BYTES)
    working_set_offset_bytes: int = _field("bytes", 0, min=0, multiple_of=TARGET_PAGE_BYTES)
    # hotset: share of the working set that is hot, and probability an access goes there.
    hot_fraction: float = _field("float", 0.1, gt=0, max=1)
    hot_probability: float = _field("float", 0.9, min=0, max=1)
    zipf_exponent: float = _field("float", 1.0, gt=0)
    stride_bytes: int = _field("bytes", 4096, min=TARGET_PAGE_BYTES, multiple_of=TARGET_PAGE_BYTES)
    # CSV or parquet with integer columns vcpu and page (target-page index); see load_trace.
    trace_path: str = _field("str", "")
    accesses_per_s: float = _field("float", 1e6, gt=0)  # per vCPU
    # 0 = unlimited: the guest keeps running until the migration ends.
    accesses_per_vcpu: int = _field("int", 0, min=0)
    # Share of accesses that write: what dirties pages while precopy runs on the source.
    write_fraction: float = _field("float", 0.2, min=0, max=1)
    # Where the working set lies: "contiguous" from working_set_offset_bytes, "scattered":
    # its pages drawn at random from all of RAM (in address order), as a kernel's are, or
    # "map": exactly the pages listed in working_set_map.
    layout: str = _field("str", "contiguous", choices=("contiguous", "scattered", "map"))
    # A .npy file of the working set's distinct target-page numbers, in the order the
    # workload walks them (see load_page_list).
    working_set_map: str = _field("str", "")

    def __post_init__(self) -> None:
        _validate(self)
        if self.layout != "contiguous" and self.working_set_offset_bytes:
            raise ScenarioError(
                "workload.working_set_offset_bytes: invalid value"
                f" {_bytes_text(self.working_set_offset_bytes)}: must be 0 when"
                f" workload.layout = {self.layout!r} (the pages are not one range)",
                key="workload.working_set_offset_bytes",
                value=self.working_set_offset_bytes,
            )
        if self.layout == "map":
            _require_path("workload.working_set_map", self.working_set_map, "a .npy file",
                          "workload.layout = 'map'")  # fmt: skip
        if self.pattern == "trace":
            _require_path("workload.trace_path", self.trace_path, "a CSV or parquet file",
                          "workload.pattern = 'trace'")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Network:
    """The migration link between source and destination."""

    SECTION: ClassVar[str] = "network"

    bandwidth_bytes_per_s: float = _field("rate", "10 Gbit/s", gt=0)
    latency_s: float = _field("time", "100 us", min=0)  # one way
    inflight_bytes: int = _field("bytes", "12 MiB", min=0)
    preempt: bool = _field("bool", False)
    # The destination reads a channel into a buffer of this size (QEMU's QEMUFile
    # IO_BUF_SIZE) and places the pages of one read before the next; fault_path.recv_s
    # is one read's cost.
    recv_buffer_bytes: int = _field("bytes", "32 KiB", gt=0)
    # The source writes the main channel's pages in batches of this many target pages
    # holding data (QEMU's QEMUFile: one writev per MAX_IOV_SIZE = 64 iovec entries, a
    # header and a page each, so 32); 1: each page on its own.
    send_batch_pages: int = _field("int", 1, min=1)

    def __post_init__(self) -> None:
        _validate(self)


SWITCHOVER_POLICIES = (
    "postcopy",
    "precopy",
    "postcopy_after_rounds",
    "postcopy_after_timeout",
    "postcopy_when_stalled",
)


@dataclass(frozen=True, slots=True)
class Migration:
    """Migration-level settings: setup, precopy and switch-over policy, device state,
    bandwidth caps and page locality."""

    SECTION: ClassVar[str] = "migration"

    setup_s: float = _field("time", "10 ms", min=0)
    # When to stop the guest on the source (see the README's switch-over policies).
    switchover: str = _field("str", "postcopy", choices=SWITCHOVER_POLICIES)
    # Precopy rate cap (QEMU max-bandwidth; QEMU's own default is 128 MiB/s); 0 = the link.
    max_bandwidth_bytes_per_s: float = _field("rate", 0, min=0)
    # Precopy completes once the dirty bytes left go out within this (QEMU: 300 ms).
    downtime_limit_s: float = _field("time", "300 ms", min=0)
    # Precopy rounds at most (the first pass counts); then precopy stops and copies the
    # rest, a hybrid policy switches to postcopy.
    max_rounds: int = _field("int", 30, min=1)
    # postcopy_after_rounds: switch after this many rounds (libvirt's
    # --postcopy-after-precopy is 1: after the first pass).
    switchover_rounds: int = _field("int", 1, min=1)
    # postcopy_after_timeout: switch this long per GiB of RAM after precopy starts
    # (KubeVirt's completionTimeoutPerGiB, default 150 s).
    completion_timeout_per_gib_s: float = _field("time", "150 s", gt=0)
    # postcopy_when_stalled: switch once the dirty bytes left have not shrunk by at least
    # stall_shrink_fraction for this many consecutive rounds.
    stalled_rounds: int = _field("int", 2, min=1)
    stall_shrink_fraction: float = _field("float", 0.05, min=0, max=1)
    device_state_bytes: int = _field("bytes", "1 MiB", min=0)
    max_postcopy_bandwidth_bytes_per_s: float = _field("rate", 0, min=0)  # 0 = unlimited
    # How QEMU enforces the postcopy rate cap: a budget of cap x window bytes per window
    # (BUFFER_DELAY, 100 ms); once it is spent the migration thread sleeps to the window's
    # end and even page requests wait.  0 = smooth pacing of the background stream only.
    rate_limit_window_s: float = _field("time", "100 ms", min=0)
    # Who sends a requested page with preempt on: "return_path" (QEMU >= 8.0: the
    # return-path thread, at once, outside the rate limit) or "migration_thread" (QEMU
    # 7.x: the migration thread, which a spent rate-limit window holds back).
    urgent_sender: str = _field("str", "return_path", choices=("return_path", "migration_thread"))
    locality: str = _field("str", "continue", choices=("none", "continue", "hint", "bubbling"))
    bubbling_pivots: int = _field("int", 1, min=1)
    page_header_bytes: int = _field("bytes", 8, min=0)  # per target page on the wire

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True, slots=True)
class FaultPath:
    """Destination-side costs of one userfault: delivery, request, placement, wake-up.

    Defaults: medians measured by ``simpostcopy calibrate`` (poll handler, threads left
    to the scheduler, 4 KiB pages, loopback page server for ``request_s``) on a 2-vCPU
    AMD EPYC KVM guest, Linux 6.18, 2026-11-25; three runs gave delivery 8.7-9.6 us,
    place 3.0-3.4 us (4 KiB), wake 7.7-7.9 us, request 8.3-11.6 us.  Calibrate your own
    host: ``simpostcopy calibrate`` then ``--calibration calib.json``.
    """

    SECTION: ClassVar[str] = "fault_path"

    delivery_s: Dist = _field("dist", "9 us", check=_nonnegative)
    request_s: Dist = _field("dist", "10 us", check=_nonnegative)
    # 4 KiB UFFDIO_COPY = fixed + per byte x 4096: 1.6 us + 1.4 us (batch-series slope).
    place_fixed_s: Dist = _field("dist", "1.6 us", check=_nonnegative)
    place_per_byte_s: float = _field("float", 3.5e-10, min=0)  # seconds per byte
    wake_s: Dist = _field("dist", "8 us", check=_nonnegative)
    # One read of a migration channel by its receiving thread (a recvmsg into the
    # network.recv_buffer_bytes buffer); 0: reads cost nothing (pages are placed as they
    # arrive).  See the README's "What is modelled", step 4.
    recv_s: Dist = _field("dist", "0 s", check=_nonnegative)
    # The calibration file these costs came from ("" = none); see Scenario.with_calibration.
    calibration: str = _field("str", "")

    def __post_init__(self) -> None:
        _validate(self)


def _npy_error(key: str, path: str | os.PathLike[str], problem: str) -> ScenarioError:
    return ScenarioError(f"{key}: invalid value {str(path)!r}: {problem}", key=key, value=str(path))


def _load_npy(key: str, path: str | os.PathLike[str]) -> np.ndarray:
    """The array in the .npy file setting ``key`` names (a clear error if unreadable)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _npy_error(key, path, f"cannot read it as a .npy file ({exc})") from None


def load_zero_map(path: str | os.PathLike[str], ram_pages: int) -> np.ndarray:
    """A zero-page map: a .npy file of ``ram_pages`` booleans (True: the 4 KiB page holds
    only zeros)."""
    key = "guest.zero_page_map"
    zero = _load_npy(key, path)
    if zero.dtype != np.bool_ or zero.shape != (ram_pages,):
        raise _npy_error(
            key,
            path,
            f"holds {zero.dtype} of shape {zero.shape}; one boolean per 4 KiB page of guest"
            f" RAM ({ram_pages}) is required",
        )
    return zero


def load_page_list(path: str | os.PathLike[str], ram_pages: int, count: int) -> np.ndarray:
    """A working-set map: a .npy file of ``count`` distinct target-page numbers, each
    below ``ram_pages``, in the order the workload walks them."""
    key = "workload.working_set_map"
    pages = _load_npy(key, path)
    if pages.ndim != 1 or not np.issubdtype(pages.dtype, np.integer):
        raise _npy_error(
            key,
            path,
            f"holds {pages.dtype} of shape {pages.shape}; a list of page numbers is required",
        )
    if pages.size != count:
        raise _npy_error(
            key,
            path,
            f"lists {pages.size} pages; workload.working_set_bytes asks for {count} (4 KiB each)",
        )
    if pages.size and (
        pages.min() < 0 or pages.max() >= ram_pages or np.unique(pages).size != pages.size
    ):
        raise _npy_error(key, path, f"page numbers must be distinct, within 0..{ram_pages - 1}")
    return pages.astype(np.int64)


def load_trace(path: str | os.PathLike[str], vcpus: int, ram_pages: int) -> list[np.ndarray]:
    """Per-vCPU int64 arrays of target-page indices, in file order, from a CSV or parquet trace.

    The file needs integer columns ``vcpu`` (0..vcpus-1, each with at least one row) and
    ``page`` (0..ram_pages-1); ``.parquet``/``.pq`` files are read as parquet, anything else as CSV.
    """

    def fail(problem: str) -> ScenarioError:
        return ScenarioError(
            f"workload.trace_path: trace file {str(path)!r} {problem}; it must be a CSV or parquet"
            f" file with integer columns 'vcpu' (0..{vcpus - 1}) and 'page' (0..{ram_pages - 1})",
            key="workload.trace_path",
            value=str(path),
        )

    try:
        if Path(path).suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ScenarioError(
            f"workload.trace_path: cannot read trace file {str(path)!r}: {exc}",
            key="workload.trace_path",
            value=str(path),
        ) from exc
    missing = [c for c in ("vcpu", "page") if c not in table.columns]
    if missing:
        raise fail(f"lacks column(s) {', '.join(map(repr, missing))}")
    if table.empty:
        raise fail("has no rows")
    for column in ("vcpu", "page"):
        if not pd.api.types.is_integer_dtype(table[column]) or table[column].isna().any():
            raise fail(f"has non-integer values in column {column!r}")
    vcpu = table["vcpu"].to_numpy(np.int64)
    page = table["page"].to_numpy(np.int64)
    if len(vcpu) and (vcpu.min() < 0 or vcpu.max() >= vcpus):
        bad = vcpu[(vcpu < 0) | (vcpu >= vcpus)][0]
        raise fail(f"has vcpu {bad} outside 0..{vcpus - 1}")
    if len(page) and (page.min() < 0 or page.max() >= ram_pages):
        bad = page[(page < 0) | (page >= ram_pages)][0]
        raise fail(f"has page {bad} out of range (guest RAM has {ram_pages} target pages)")
    counts = np.bincount(vcpu, minlength=vcpus)
    if not counts.all():
        raise fail(f"has no rows for vcpu {int(np.flatnonzero(counts == 0)[0])}")
    order = np.argsort(vcpu, kind="stable")
    return np.split(page[order], np.cumsum(counts)[:-1])


@dataclass(frozen=True, slots=True)
class Scenario:
    """A complete, validated simulation scenario; ``Scenario()`` is the built-in default."""

    SECTION: ClassVar[str] = ""

    guest: Guest = dataclasses.field(default_factory=Guest, metadata=_SECTION_KIND)
    workload: Workload = dataclasses.field(default_factory=Workload, metadata=_SECTION_KIND)
    network: Network = dataclasses.field(default_factory=Network, metadata=_SECTION_KIND)
    migration: Migration = dataclasses.field(default_factory=Migration, metadata=_SECTION_KIND)
    fault_path: FaultPath = dataclasses.field(default_factory=FaultPath, metadata=_SECTION_KIND)
    seed: int = _field("int", 1, min=0)

    def __post_init__(self) -> None:
        _validate(self)
        ram, work = self.guest.ram_bytes, self.workload
        if work.working_set_bytes > ram:
            raise ScenarioError(
                f"workload.working_set_bytes: invalid value {_bytes_text(work.working_set_bytes)}:"
                f" must be <= guest.ram_bytes = {_bytes_text(ram)}",
                key="workload.working_set_bytes",
                value=work.working_set_bytes,
            )
        end = work.working_set_offset_bytes + work.working_set_bytes
        if end > ram:
            raise ScenarioError(
                "workload.working_set_offset_bytes: invalid value"
                f" {_bytes_text(work.working_set_offset_bytes)}: working_set_offset_bytes +"
                f" working_set_bytes = {_bytes_text(end)} must be <= guest.ram_bytes"
                f" = {_bytes_text(ram)}",
                key="workload.working_set_offset_bytes",
                value=work.working_set_offset_bytes,
            )
        if work.pattern == "trace":
            load_trace(work.trace_path, self.guest.vcpus, ram // TARGET_PAGE_BYTES)
        if work.layout == "map":
            load_page_list(
                work.working_set_map, ram // TARGET_PAGE_BYTES,
                work.working_set_bytes // TARGET_PAGE_BYTES,
            )  # fmt: skip
        if self.guest.zero_page_layout == "map":
            load_zero_map(self.guest.zero_page_map, ram // TARGET_PAGE_BYTES)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Scenario":
        """Scenario from a nested mapping as parsed from TOML (dotted top-level keys also work)."""
        return cls().override(d)

    @classmethod
    def from_toml_string(cls, text: str) -> "Scenario":
        """Scenario from TOML text; relative trace paths stay relative to the working directory."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"invalid scenario TOML: {exc}", key="file", value=text) from exc
        return cls.from_dict(data)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> "Scenario":
        """Scenario from a TOML file; a relative trace_path is taken relative to the file."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(
                f"cannot read scenario file '{path}': {exc}", key="file", value=str(path)
            ) from exc
        flat = _flatten(data)
        trace = flat.get("workload.trace_path")
        if isinstance(trace, str) and trace and not Path(trace).is_absolute():
            flat["workload.trace_path"] = str(path.parent / trace)
        for key, value in flat.items():  # calibration files named by fault_path tables
            file = value.get("file") if isinstance(value, Mapping) else None
            if isinstance(file, str) and not Path(file).is_absolute():
                flat[key] = {**value, "file": str(path.parent / file)}
        return cls.from_dict(flat)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain-python dict: bytes as ints, times and rates as floats, distributions as
        their table form; ``Scenario.from_dict(s.to_dict()) == s``."""

        def plain(obj: Any) -> Any:
            if isinstance(obj, Dist):
                return obj.to_value()
            if dataclasses.is_dataclass(obj):
                return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
            return obj

        return plain(self)

    def to_toml(self) -> str:
        """TOML text that from_toml_string reads back to an equal Scenario."""
        # Top-level keys must precede the first [section] table.
        lines = [_toml_line(self, f) for f in fields(self) if f.name not in _SECTIONS]
        for name in _SECTIONS:
            section = getattr(self, name)
            lines += ["", f"[{name}]", *(_toml_line(section, f) for f in fields(section))]
        return "\n".join(lines) + "\n"

    def override(self, mapping: Mapping[str, Any]) -> "Scenario":
        """New validated Scenario with dotted keys ('network.latency_s', 'seed') replaced."""
        changes: dict[str, Any] = {}
        by_section: dict[str, dict[str, Any]] = {}
        for key, value in _flatten(mapping).items():
            section, dot, name = key.partition(".")
            if dot:
                by_section.setdefault(section, {})[name] = value
            else:
                changes[key] = value
        for section, values in by_section.items():
            changes[section] = replace(getattr(self, section), **values)
        return replace(self, **changes)

    def with_calibration(
        self, path: str | os.PathLike[str], kind: str = "empirical", **keys: Any
    ) -> "Scenario":
        """This scenario with its fault path measured by the calibration file at ``path``.

        ``kind`` is ``empirical`` (the measured quantiles), ``lognormal`` or ``gamma``
        (fitted); ``keys`` pick the measured configuration (default: QEMU-like, i.e.
        mode='poll', affinity='scheduler', threads=1, and the guest's host page size or
        the largest measured one below it).
        """
        from simpostcopy.calibration import Calibration, CalibrationError, fault_path_updates

        try:
            cal = Calibration.load(path)
            updates = fault_path_updates(cal, kind, self.guest.host_page_bytes, **keys)
        except CalibrationError as exc:
            raise ScenarioError(str(exc), key="fault_path.calibration", value=str(path)) from None
        return self.override(updates)

    def describe(self) -> str:
        """One line naming the scenario (for tables and figure titles)."""
        g, net, w = self.guest, self.network, self.workload
        return (
            f"{format_bytes(g.ram_bytes)} RAM, {g.vcpus} vCPU, {format_bytes(g.host_page_bytes)}"
            f" pages, {w.pattern} {format_bytes(w.working_set_bytes)},"
            f" {net.bandwidth_bytes_per_s * 8 / 1e9:g} Gbit/s,"
            f" {'preempt' if net.preempt else 'vanilla'}, {self.migration.switchover},"
            f" locality={self.migration.locality}, seed={self.seed}"
        )

    def hash(self) -> str:
        """Short, process-stable content hash: sha256 of the sorted-key JSON of to_dict()."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_SECTIONS: dict[str, type] = {
    f.name: f.type for f in fields(Scenario) if f.metadata["kind"] == "section"
}
# Every settable key, dotted, in declaration order.
_KEYS: tuple[str, ...] = tuple(
    key
    for f in fields(Scenario)
    for key in ([f"{f.name}.{s.name}" for s in fields(f.type)] if f.name in _SECTIONS else [f.name])
)


def _unknown_key(key: str, value: Any) -> ScenarioError:
    """Error for a key that is not a setting, suggesting the closest valid one."""
    section, dot, _ = key.partition(".")
    if dot and section in _SECTIONS:
        what, candidates = "key", [k for k in _KEYS if k.startswith(section + ".")]
    elif not dot and isinstance(value, Mapping):
        what, candidates = "section", list(_SECTIONS)
    else:
        what, candidates = "key", list(_KEYS)
    close = difflib.get_close_matches(key, candidates, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid {what}s: {', '.join(candidates)}"
    return ScenarioError(f"unknown {what} {key!r}; {hint}", key=key, value=value)


def _flatten(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """{dotted key: value} from nested sections and/or dotted keys; unknown keys are errors."""
    if not isinstance(mapping, Mapping):
        raise ScenarioError(
            f"invalid scenario {mapping!r}: expected a table of sections", key="", value=mapping
        )
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ScenarioError(
                    f"{key}: invalid value {value!r}: a section must be a table ([{key}] in TOML)",
                    key=key,
                    value=value,
                )
            items = [(f"{key}.{name}", v) for name, v in value.items()]
        else:
            items = [(str(key), value)]
        for dotted, v in items:
            if dotted not in _KEYS:
                raise _unknown_key(dotted, v)
            if dotted in flat:
                raise ScenarioError(f"{dotted}: given twice (again as {v!r})", key=dotted, value=v)
            flat[dotted] = v
    return flat


def _toml_string(text: str) -> str:
    # json.dumps escapes are valid TOML basic-string escapes; DEL must be escaped too in TOML.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


_TOML_WRITERS: dict[str, Callable[[Any], str]] = {
    "bytes": lambda v: _toml_string(format_bytes(v)),
    "rate": format_rate,
    "time": format_time,
    "float": repr,
    "int": str,
    "bool": lambda v: "true" if v else "false",
    "str": _toml_string,
    "dist": Dist.to_toml,
}


def _toml_line(obj: Any, f: dataclasses.Field) -> str:
    return f"{f.name} = {_TOML_WRITERS[f.metadata['kind']](getattr(obj, f.name))}"


def parse_override(text: str) -> tuple[str, Any]:
    """(key, value) from a CLI ``KEY=VALUE``; VALUE is read as a TOML value if it is one, else
    kept as a raw string (so ``guest.ram_bytes=1 GiB`` works unquoted)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ScenarioError(
            f"invalid override {text!r}: expected KEY=VALUE, e.g. 'network.latency_s=50us'",
            key=key,
            value=text,
        )
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return key, raw.strip()
    # More than one key means VALUE smuggled in extra TOML lines: keep it literal.
    return key, parsed["v"] if len(parsed) == 1 else raw.strip()


def setting_kind(key: str) -> str:
    """The kind of setting ``key`` (bytes, rate, time, float, int, bool, str, dist)."""
    if key not in _KEYS:
        raise _unknown_key(key, None)
    section, dot, name = key.partition(".")
    owner = _SECTIONS[section] if dot else Scenario
    return next(f.metadata["kind"] for f in fields(owner) if f.name == (name if dot else key))


def setting_value(scenario: Scenario, key: str) -> Any:
    """The value of dotted setting ``key`` in ``scenario`` (canonical units)."""
    section, dot, name = key.partition(".")
    return getattr(getattr(scenario, section), name) if dot else getattr(scenario, key)


def coerce_setting(key: str, raw: Any) -> Any:
    """``raw`` (e.g. "10 Gbit/s") as the canonical value of setting ``key`` (1.25e9)."""
    kind = setting_kind(key)
    return _coerce(key, kind, None, raw)
