"""Simulation beside reality: the scenario matching a real run, the side-by-side table, and
a least-squares fit of chosen scenario parameters to a set of real runs.

A real run is matched by: RAM and vCPUs, 4 KiB pages, the bandwidth QEMU actually achieved
(``ram.mbps``), preempt, the switch-over time from QEMU's own events (precopy until then at
the run's ``max-bandwidth``), the setup time, the zero-page share QEMU counted
(``ram.duplicate``), QEMU's batched writes (32 pages a ``writev``), and the workload with
the touch rate the guest measured (idle: the idle guest's measured first touches,
``idle_trace``; ``seq,N``: a sequential sweep over N MiB; ``rand,N,H``: uniform writes
over H MiB).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simpostcopy.config import (
    TARGET_PAGE_BYTES,
    Scenario,
    ScenarioError,
    setting_kind,
    setting_value,
)
from simpostcopy.engine import simulate
from simpostcopy.qemu import importer, trace
from simpostcopy.qemu.errors import QemuError
from simpostcopy.qemu.harness import decode_zero_map

# Compared quantities: (summary key of the real run, of the simulation).
METRICS = {
    "total_time_s": "total_time_s",
    "postcopy_bytes": "postcopy_bytes",
    "postcopy_requests": "postcopy_requests",
    "blocktime_s": "blocktime_s",
    "vcpu_blocktime_s": "vcpu_blocktime_s",
    "guest_longest_stall_s": "latency_max_s",
}
IDLE_BYTES = 128 << 10  # the idle stand-in for records without a zero-page map
# The idle test guest's first touches, measured by experiments/qemu/idle_footprint.py
# (trace.footprint), and the rate at which the model replays them (see idle_trace).
IDLE_FOOTPRINT = Path(__file__).resolve().parent / "idle_footprint.csv"
IDLE_TRACE_RATE = 1e5
# Where measured page maps (zero pages, the workload's buffer) are kept as .npy files.
MAP_DIR = Path.home() / ".cache" / "simpostcopy" / "maps"
CAP_BOUND = 0.8
QEMU_SEND_BATCH_PAGES = 32
# What a fit minimises over: the metrics every QEMU reports.
FIT_METRICS = ("total_time_s", "postcopy_bytes", "postcopy_requests", "blocktime_s")


def matching_scenario(
    record: dict[str, Any], base: Scenario | None = None, real: dict[str, Any] | None = None
) -> Scenario:
    """The scenario that reproduces a real run (see the module's docstring); ``real`` is
    the run's summary if already at hand."""
    base = base or Scenario()
    spec = record.get("spec") or {}
    src = record.get("source") or {}
    ram = src.get("ram", {})
    real = real or importer.summary(record)
    if not spec:
        raise QemuError("comparing needs a harness run record (its settings and workload)")
    ram_bytes = spec["ram_mib"] << 20
    mbps = ram.get("mbps") or 0
    achieved = mbps * 1e6 / 8 if mbps > 0 else spec["max_bandwidth_bytes_per_s"]
    cap = spec.get("max_postcopy_bandwidth_bytes_per_s", 0)
    # Where QEMU's cap held the run back (it achieved at least CAP_BOUND of it), the
    # average rate is the cap's, not the link's: QEMU sends in bursts at the link's
    # speed, which is then the base scenario's (a property of the host; fit it).
    bandwidth = achieved
    if cap and achieved >= CAP_BOUND * cap:
        bandwidth = max(achieved, base.network.bandwidth_bytes_per_s)
    words = spec["workload"].split(",")
    rate = float(record.get("guest", {}).get("touch_rate_per_s") or 1000.0)
    guest = record.get("guest") or {}
    switch = real["switchover_time_s"]
    setup = real["setup_time_s"] if real["setup_time_s"] > 0 else 0.0
    # The zero-page map measured before the run (none in older records).
    zero = (
        decode_zero_map(guest["zero_map"], ram_bytes // TARGET_PAGE_BYTES)
        if guest.get("zero_map")
        else None
    )
    if words[0] == "idle" and zero is not None:
        # The idle guest's own first touches, measured, moved onto this boot's data; they
        # begin when it resumes on the destination (see idle_trace's ``lead``).
        lead = math.ceil((switch - setup) * IDLE_TRACE_RATE - 1e-9) if math.isfinite(switch) else 0
        accesses = idle_trace(_idle_footprint(), zero, max(lead, 0))
        # Only as far as the run can need: twice its length (at least a second) after
        # the switch-over; the footprint's last pages came 12 s in (replays wrap round).
        total = real.get("total_time_s", math.nan)
        horizon = 2 * total if math.isfinite(total) else math.inf
        keep = max(lead, 0) + math.ceil(max(horizon, 1.0) * IDLE_TRACE_RATE)
        accesses = accesses[:keep]
        workload = {
            "workload.pattern": "trace",
            "workload.trace_path": str(_cached_trace(accesses, spec["vcpus"])),
            "workload.working_set_bytes": ram_bytes,
            "workload.working_set_offset_bytes": 0,
            "workload.layout": "contiguous",
            "workload.accesses_per_s": IDLE_TRACE_RATE,
            "workload.write_fraction": 1.0,
        }
    elif words[0] == "idle":
        # Older records (no zero-page map to place the footprint on): the kernel's own
        # writes as about a thousand touches a second over 128 KiB of scattered pages.
        workload = {
            "workload.pattern": "uniform",
            "workload.working_set_bytes": IDLE_BYTES,
            "workload.working_set_offset_bytes": 0,
            "workload.layout": "scattered",
            "workload.accesses_per_s": 1000.0,
            "workload.write_fraction": 1.0,
        }
    elif words[0] == "seq":
        workload = {
            "workload.pattern": "sequential",
            "workload.working_set_bytes": int(words[1]) << 20,
            "workload.accesses_per_s": rate,
            "workload.write_fraction": 1.0,
        }
    else:
        workload = {
            "workload.pattern": "uniform",
            "workload.working_set_bytes": int(words[2]) << 20,
            "workload.accesses_per_s": rate,
            "workload.write_fraction": 1.0,
        }
    old = _major(record.get("qemu_version")) < 8
    if words[0] != "idle" and (guest.get("frame_runs") or guest.get("frames")):
        # Where the buffer really lies, from the guest's pagemap: its runs of frames in
        # the buffer's own order, or (older records) its frames per bin in address order.
        pages = (
            run_pages(guest["frame_runs"], ram_bytes)
            if guest.get("frame_runs")
            else frame_pages(guest["frames"], guest["frames_bin_mib"], ram_bytes)
        )
        # The random workload writes the first HOTMIB MiB of its buffer: its first pages.
        pages = pages[: workload["workload.working_set_bytes"] // TARGET_PAGE_BYTES]
        workload |= {
            "workload.layout": "map",
            "workload.working_set_map": str(_cached(pages, "ws")),
            "workload.working_set_bytes": pages.size * TARGET_PAGE_BYTES,
        }
    over: dict[str, Any] = {
        "guest.ram_bytes": ram_bytes,
        "guest.vcpus": spec["vcpus"],
        "guest.host_page_bytes": TARGET_PAGE_BYTES,
        # QEMU's zero pages, among all it sent (RAM plus its ROM and video blocks); the
        # workload's buffer holds data, so the zeros lie outside it.
        "guest.zero_page_fraction": ram.get("duplicate", 0)
        / max(1, ram.get("duplicate", 0) + ram.get("normal", 0)),
        "guest.zero_page_layout": "random" if words[0] == "idle" else "outside_working_set",
        **(
            {"guest.zero_page_layout": "map", "guest.zero_page_map": str(_cached(zero, "zero"))}
            if zero is not None
            else {}
        ),
        "network.bandwidth_bytes_per_s": bandwidth,
        "network.preempt": bool(spec["preempt"]),
        # QEMU writes the main channel in batches of 32 data pages (its QEMUFile's
        # MAX_IOV_SIZE of 64 iovec entries; see network.send_batch_pages).
        "network.send_batch_pages": QEMU_SEND_BATCH_PAGES,
        # QEMU 7.x sends requested pages from the migration thread, 8.0 on from the
        # return-path thread (see migration.urgent_sender).
        "migration.urgent_sender": "migration_thread" if old else "return_path",
        "migration.setup_s": setup,
        "migration.max_postcopy_bandwidth_bytes_per_s": spec.get(
            "max_postcopy_bandwidth_bytes_per_s", 0
        ),
        **workload,
    }
    if spec["preempt"] and old and base.migration.locality == "continue":
        # QEMU 7.x has one page-search state: the background scan continues after the
        # requested page with preempt too (get_queued_page); 8.0 on keeps its place.
        over["migration.locality"] = "hint"
    if math.isfinite(switch) and switch > setup:
        over |= {
            "migration.switchover": "postcopy_after_timeout",
            "migration.completion_timeout_per_gib_s": (switch - over["migration.setup_s"])
            / (ram_bytes / 2**30),
            "migration.max_bandwidth_bytes_per_s": spec["max_bandwidth_bytes_per_s"],
            "migration.downtime_limit_s": 0.0,  # QEMU switched on request, not on convergence
        }
    elif not math.isfinite(switch) and real.get("postcopy_bytes", 0) == 0:
        # Precopy converged before the switch-over request took effect: QEMU completed
        # the migration in precopy (stop and copy), so does the model.
        over |= {
            "migration.switchover": "precopy",
            "migration.max_bandwidth_bytes_per_s": spec["max_bandwidth_bytes_per_s"],
        }
    try:
        return base.override(over)
    except ScenarioError as exc:
        raise QemuError(f"cannot build the matching scenario: {exc}") from None


def idle_trace(footprint: pd.DataFrame, zero: np.ndarray, lead: int = 0) -> np.ndarray:
    """The idle guest's accesses for the model's ``trace`` pattern at IDLE_TRACE_RATE
    accesses a second: its measured first touches (``footprint``, see
    ``trace.footprint``) moved onto a boot whose zero-page map is ``zero``
    (``trace.relocate``), each after its gap of the guest's own run time, spent touching
    the page it touched before (there by then) in steps of one access.  The footprint was
    measured from the guest's resumption on the destination, so the ``lead`` accesses it
    makes on the source before switch-over touch its first page only."""
    pages = trace.relocate(footprint, zero)
    if not pages.size:
        raise QemuError("the idle footprint has no pages")
    steps = np.rint(footprint["gap_s"].to_numpy(float) * IDLE_TRACE_RATE).astype(np.int64)
    steps[0] += lead
    before = np.concatenate((pages[:1], pages[:-1]))
    counts = np.column_stack((steps, np.ones_like(steps))).ravel()
    return np.repeat(np.column_stack((before, pages)).ravel(), counts)


def _idle_footprint() -> pd.DataFrame:
    try:
        table = pd.read_csv(IDLE_FOOTPRINT)
    except (OSError, ValueError) as exc:
        raise QemuError(f"cannot read the idle guest's footprint {IDLE_FOOTPRINT}: {exc}") from None
    missing = [c for c in trace.FOOTPRINT_COLUMNS if c not in table.columns]
    if missing:
        raise QemuError(f"the idle footprint {IDLE_FOOTPRINT} lacks column(s) {missing}")
    return table


def run_pages(runs: Sequence[Sequence[int]], ram_bytes: int) -> np.ndarray:
    """The buffer's 4 KiB pages in its own order from its runs of frames ``[first,
    count]`` (frames beyond RAM left out)."""
    ram_pages = ram_bytes // TARGET_PAGE_BYTES
    pages = np.concatenate(
        [np.arange(first, first + count, dtype=np.int64) for first, count in runs]
        or [np.empty(0, dtype=np.int64)]
    )
    return pages[pages < ram_pages]


def frame_pages(frames: Sequence[int], bin_mib: int, ram_bytes: int) -> np.ndarray:
    """The workload buffer's target pages from its frames per bin (the workload's "wl
    frames" line): within a bin, its pages are taken to lie contiguously at the top (so a
    partly filled bin joins the full one after it, as the frames Linux hands a fresh
    process mostly run on)."""
    per_bin = (bin_mib << 20) // TARGET_PAGE_BYTES
    parts = [
        np.arange((b + 1) * per_bin - min(int(c), per_bin), (b + 1) * per_bin, dtype=np.int64)
        for b, c in enumerate(frames)
        if c
    ]
    pages = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return pages[pages < ram_bytes // TARGET_PAGE_BYTES]


def _stored(content: bytes, name: str, write: Callable[[Path], None]) -> Path:
    """A file under MAP_DIR named ``name`` with a digest of ``content`` before its
    suffix, written once by ``write`` (to a temporary name, then moved into place)."""
    MAP_DIR.mkdir(parents=True, exist_ok=True)
    stem, suffix = name.split(".", 1)
    path = MAP_DIR / f"{stem}-{hashlib.sha256(content).hexdigest()[:20]}.{suffix}"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp.{suffix}")
        write(tmp)
        os.replace(tmp, path)
    return path


def _cached(array: np.ndarray, kind: str) -> Path:
    """``array`` saved as .npy under MAP_DIR, named by its content (written once)."""
    content = array.tobytes() + str(array.dtype).encode()
    return _stored(content, f"{kind}.npy", lambda tmp: np.save(tmp, array))


def _cached_trace(pages: np.ndarray, vcpus: int) -> Path:
    """A trace file in which every one of ``vcpus`` vCPUs replays ``pages`` (parquet under
    MAP_DIR, named by its content)."""

    def write(tmp: Path) -> None:
        table = pd.DataFrame(
            {"vcpu": np.repeat(np.arange(vcpus), pages.size), "page": np.tile(pages, vcpus)}
        )
        table.to_parquet(tmp, index=False)

    return _stored(pages.astype(np.int64).tobytes() + b"/%d" % vcpus, "idle.parquet", write)


def _major(version: Any) -> int:
    """QEMU's major version from query-version's reply or a "7.2.x" string (unknown: 99)."""
    if isinstance(version, dict):
        version = version.get("qemu", version)
        if isinstance(version, dict) and "major" in version:
            return int(version["major"])
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 99


def simulated(scenario: Scenario) -> dict[str, Any]:
    """The simulation's summary in QEMU's view: blocktime as QEMU times it (from the fault
    thread's read to the placement; see Result.qemu_blocktime), plus the longest fault
    (the guest's longest stall)."""
    result = simulate(scenario)
    out = dict(result.summary)
    out["blocktime_s"], out["vcpu_blocktime_s"] = result.qemu_blocktime()
    lat = result.faults["latency_s"]
    out["latency_max_s"] = float(lat.max()) if len(lat) else 0.0
    return out


def _value(v: Any) -> float:
    if isinstance(v, list):
        return float(sum(v)) if v else math.nan
    return float(v) if v is not None else math.nan


def _simulated_match(job: tuple[dict[str, Any], Scenario | None, dict[str, Any]]) -> dict:
    record, base, real = job
    return simulated(matching_scenario(record, base, real))


@contextmanager
def _runner(workers: int) -> Iterator[Callable[..., Any]]:
    """``map`` over simulations: in this process, or in a pool of ``workers`` processes
    (results are the same either way: every run is seeded by its scenario)."""
    if workers < 1:
        raise QemuError(f"workers: invalid value {workers!r}: a whole number >= 1")
    if workers == 1:
        yield map
        return
    pool: Executor = ProcessPoolExecutor(workers)
    try:
        yield pool.map
    finally:
        pool.shutdown(cancel_futures=True)


def compare(
    records: dict[str, dict[str, Any]], base: Scenario | None = None, workers: int = 1
) -> pd.DataFrame:
    """One row per (run, metric): real, simulated and the relative error; ``workers``
    processes simulate the runs."""
    rows = []
    reals = {name: importer.summary(record) for name, record in records.items()}
    with _runner(workers) as run:
        sims = list(run(_simulated_match, [(r, base, reals[n]) for n, r in records.items()]))
    for (name, real), sim in zip(reals.items(), sims, strict=True):
        for metric, sim_key in METRICS.items():
            r, s = _value(real.get(metric)), _value(sim.get(sim_key))
            rel = (s - r) / r if r and math.isfinite(r) and math.isfinite(s) else math.nan
            rows.append(
                {"run": name, "metric": metric, "real": r, "simulated": s, "relative_error": rel}
            )
    return pd.DataFrame(rows)


# -- fitting -------------------------------------------------------------------------------
@dataclass
class Fit:
    """Fitted values (a distribution's: its mean), their standard errors, the training
    loss, and the calibrated scenario (the base with the fitted values; a distribution
    keeps its shape, scaled to the fitted mean)."""

    params: dict[str, float]
    stderr: dict[str, float]
    loss: float
    evaluations: int
    scenario: Scenario


def _residuals(
    records: Sequence[dict[str, Any]],
    reals: Sequence[dict[str, Any]],
    scenario: Scenario,
    metrics: Sequence[str] = FIT_METRICS,
    run: Callable[..., Any] = map,
) -> np.ndarray:
    """Log errors of ``metrics`` over ``records`` (``reals``: their summaries)."""
    residuals = []
    jobs = [(record, scenario, real) for record, real in zip(records, reals, strict=True)]
    for real, sim in zip(reals, run(_simulated_match, jobs), strict=True):
        for metric in metrics:
            r, s = _value(real.get(metric)), _value(sim.get(METRICS[metric]))
            if r > 0 and s > 0 and math.isfinite(r) and math.isfinite(s):
                residuals.append(math.log(s) - math.log(r))
            elif r > 0 or s > 0:  # one is zero: a fixed, large miss
                residuals.append(3.0)
    return np.asarray(residuals)


def with_values(base: Scenario, values: dict[str, float]) -> Scenario:
    """``base`` with numeric settings set to ``values``; a distribution that is not a
    constant keeps its shape and is scaled to the value as its mean."""
    over: dict[str, Any] = {}
    for key, value in values.items():
        current = setting_value(base, key)
        if setting_kind(key) == "dist" and not current.is_constant and current.mean > 0:
            over[key] = current.scaled(value / current.mean).to_value()
        else:
            over[key] = value
    return base.override(over)


def _current(key: str, base: Scenario) -> float:
    """A numeric setting's value in ``base`` (a distribution's mean)."""
    value = setting_value(base, key)
    return float(getattr(value, "mean", value))


def bounds_of(key: str, base: Scenario) -> tuple[float, float]:
    """Search bounds of a parameter: 1/100 to 100 times its current value (or 1 us-10 ms,
    1 KiB-1 GiB when it is zero)."""
    kind = setting_kind(key)
    if kind not in ("bytes", "time", "float", "dist", "rate"):
        raise QemuError(f"{key}: only numeric settings can be fitted (it is {kind})")
    value = _current(key, base)
    if not value:
        return (1024.0, float(1 << 30)) if kind == "bytes" else (1e-6, 1e-2)
    return value / 100, value * 100


def fit(
    records: Sequence[dict[str, Any]],
    keys: Sequence[str],
    base: Scenario | None = None,
    *,
    metrics: Sequence[str] = FIT_METRICS,
    loss: str = "linear",
    rounds: int = 3,
    progress: Callable[[str], None] = lambda _msg: None,
    workers: int = 1,
) -> Fit:
    """Least squares on log errors of ``metrics`` over ``keys`` (log-scaled, bounded): a
    golden-section search per parameter, ``rounds`` passes; standard errors from the
    curvature of the loss at the optimum (Gauss-Newton, residual variance from the fit).
    ``loss``: "linear" sums squared log errors; "soft_l1" sums 2(sqrt(1 + r^2) - 1), which
    grows only linearly for large errors, so a few runs the model cannot explain do not
    steer the fit (standard errors then from the reweighted Gauss-Newton step).  A
    distribution is fitted by its mean, keeping its shape (see with_values).  ``workers``
    processes simulate the runs of each evaluation."""
    if loss not in LOSSES:
        raise QemuError(f"loss: invalid value {loss!r}: one of {', '.join(LOSSES)}")
    with _runner(workers) as run:
        return _fit(records, keys, base, metrics, loss, rounds, progress, run)


def _fit(
    records: Sequence[dict[str, Any]],
    keys: Sequence[str],
    base: Scenario | None,
    metrics: Sequence[str],
    loss: str,
    rounds: int,
    progress: Callable[[str], None],
    run: Callable[..., Any],
) -> Fit:
    base = base or Scenario()
    reals = [importer.summary(r) for r in records]
    bounds = [bounds_of(k, base) for k in keys]
    x = [
        math.log(_current(k, base) or math.sqrt(lo * hi))
        for k, (lo, hi) in zip(keys, bounds, strict=True)
    ]
    evals = 0

    def values_at(xs: Sequence[float]) -> dict[str, float]:
        return {k: _cast(k, math.exp(v)) for k, v in zip(keys, xs, strict=True)}

    def residuals_at(xs: Sequence[float]) -> np.ndarray:
        nonlocal evals
        evals += 1
        return _residuals(records, reals, with_values(base, values_at(xs)), metrics, run)

    def loss_at(xs: Sequence[float]) -> float:
        return _loss(residuals_at(xs), loss)

    golden = (math.sqrt(5) - 1) / 2
    for r in range(rounds):
        for i, (lo, hi) in enumerate(bounds):
            a, b = math.log(lo), math.log(hi)
            if r:  # later passes search near the current value
                a, b = max(a, x[i] - 2.0 / r), min(b, x[i] + 2.0 / r)
            c, d = b - golden * (b - a), a + golden * (b - a)
            fc = loss_at([*x[:i], c, *x[i + 1 :]])
            fd = loss_at([*x[:i], d, *x[i + 1 :]])
            for _ in range(10):
                if fc < fd:
                    b, d, fd = d, c, fc
                    c = b - golden * (b - a)
                    fc = loss_at([*x[:i], c, *x[i + 1 :]])
                else:
                    a, c, fc = c, d, fd
                    d = a + golden * (b - a)
                    fd = loss_at([*x[:i], d, *x[i + 1 :]])
            x[i] = (a + b) / 2
            progress(f"pass {r + 1}: {keys[i]} = {_cast(keys[i], math.exp(x[i])):.4g}")
    values = values_at(x)
    res = residuals_at(x)
    # Jacobian of the residuals in log-parameter space, by central differences.
    h = 0.05
    cols = [
        (
            residuals_at([*x[:i], x[i] + h, *x[i + 1 :]])
            - residuals_at([*x[:i], x[i] - h, *x[i + 1 :]])
        )
        / (2 * h)
        for i in range(len(keys))
    ]
    # Robust loss: each residual weighs 1/sqrt(1 + r^2) (iteratively reweighted LS).
    weight = 1 / np.sqrt(1 + res**2) if loss == "soft_l1" else np.ones_like(res)
    jac = np.column_stack(cols) * np.sqrt(weight)[:, None]
    dof = max(1, res.size - len(keys))
    sigma2 = float(weight @ res**2) / dof
    try:
        cov = sigma2 * np.linalg.inv(jac.T @ jac)
        log_sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        log_sd = np.full(len(keys), math.inf)
    stderr = {k: float(values[k] * sd) for k, sd in zip(keys, log_sd, strict=True)}
    return Fit(values, stderr, _loss(res, loss), evals, with_values(base, values))


LOSSES = ("linear", "soft_l1")


def _loss(res: np.ndarray, loss: str) -> float:
    if loss == "soft_l1":
        return float(np.sum(2 * (np.sqrt(1 + res**2) - 1)))
    return float(res @ res)


def _cast(key: str, value: float) -> float:
    return float(round(value)) if setting_kind(key) in ("bytes", "int") else value
