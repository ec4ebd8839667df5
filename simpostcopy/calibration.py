"""Calibration: run the userfaultfd microbenchmark, summarise it, turn it into a fault path.

``calibrate()`` times real userfaultfd round trips on this host (see ``simpostcopy.native``)
over handler modes, thread affinities, page sizes and faulting-thread counts, and keeps
per stage empirical quantiles plus moments.  ``Calibration.save``/``load`` write and read
the calibration file (JSON with host metadata); ``fault_path_from_calibration`` and
``Scenario.with_calibration`` turn it into the model's ``fault_path``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simpostcopy import __version__
from simpostcopy.distributions import Dist, empirical, register_calibration_loader
from simpostcopy.units import UnitError

FORMAT = "simpostcopy-calibration/1"
STAGES = ("delivery", "place", "wake", "round_trip", "request", "network")
N_QUANTILES = 101  # stored per row: p0, p1, ..., p100
KEYS = ("mode", "affinity", "page_bytes", "threads", "zeropage", "network")
WARMUP = 16  # faults per run flagged as warm-up (first-touch effects), kept out of stages
SMALL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # pages per UFFDIO_COPY, 4 KiB series
HUGE_BATCHES = (1, 2, 4)  # 2 MiB: larger copies fall out of cache and bend the line
PLACE_REPS = 10
HUGE_SAMPLES_MAX = 500  # faults per 2 MiB run (each holds its own huge page: 1 GiB)
# QEMU's fault thread poll()s the uffd (postcopy_ram_fault_thread) and is not pinned.
QEMU_LIKE = {
    "mode": "poll",
    "affinity": "scheduler",
    "threads": 1,
    "zeropage": False,
    "network": False,
}


def summarize(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per (stage, mode, affinity, page_bytes, threads, zeropage) from benchmark rows.

    Warm-up faults and duplicate (EEXIST) placements are left out; a stage that was not
    measured (NaN, e.g. ``network`` without a page server) gives no row.
    """
    kept = samples[~samples["warmup"] & ~samples["eexist"]]
    rows = []
    for key, group in kept.groupby(list(KEYS), sort=True):
        attrs = dict(zip(KEYS, key, strict=True))
        for stage in STAGES:
            x = group[f"{stage}_s"].dropna().to_numpy(dtype=np.float64)
            if x.size == 0:
                continue
            logs = np.log(np.maximum(x, 1e-12))
            rows.append(
                {
                    "stage": stage,
                    **attrs,
                    "count": int(x.size),
                    "mean_s": float(x.mean()),
                    "std_s": float(x.std()),
                    "min_s": float(x.min()),
                    "p50_s": float(np.percentile(x, 50)),
                    "p90_s": float(np.percentile(x, 90)),
                    "p99_s": float(np.percentile(x, 99)),
                    "max_s": float(x.max()),
                    "log_mean": float(logs.mean()),
                    "log_std": float(logs.std()),
                    "quantiles_s": np.percentile(x, np.linspace(0, 100, N_QUANTILES)).tolist(),
                    # faults/s of the run (calibrate() stamps it on every sample row)
                    "faults_per_s": float(group["faults_per_s"].iloc[0])
                    if "faults_per_s" in group
                    else math.nan,
                }
            )
    return pd.DataFrame(rows)


@dataclass
class Calibration:
    """A calibration: summary rows, placement fits, harness overhead and host metadata."""

    rows: pd.DataFrame
    host: dict[str, Any]
    placement_fit: dict[int, dict[str, float]] = field(default_factory=dict)
    overhead: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: str = ""

    # -- files -----------------------------------------------------------------------------
    def to_json(self) -> str:
        doc = {
            "format": FORMAT,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "simpostcopy_version": __version__,
            "host": self.host,
            "settings": self.settings,
            "notes": self.notes,
            "placement_fit": {str(k): v for k, v in self.placement_fit.items()},
            "harness_overhead": self.overhead,
            "rows": self.rows.to_dict(orient="records"),
        }
        return json.dumps(doc, indent=1, default=json_default)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        self.path = str(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration file; CalibrationError names the file and the problem."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"cannot read calibration file '{path}': {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CalibrationError(
                f"'{path}' is not a simpostcopy calibration file (expected format {FORMAT!r})"
            )
        rows = pd.DataFrame(doc.get("rows", []))
        fits = {int(k): v for k, v in doc.get("placement_fit", {}).items()}
        return cls(
            rows=rows,
            host=doc.get("host", {}),
            placement_fit=fits,
            overhead=doc.get("harness_overhead", {}),
            settings=doc.get("settings", {}),
            notes=doc.get("notes", []),
            path=str(path),
        )

    # -- queries ---------------------------------------------------------------------------
    def select(self, stage: str, **keys: Any) -> pd.Series:
        """The row of ``stage`` for the given keys (QEMU-like defaults for the others)."""
        want = _selection(keys)
        rows = self.rows
        if rows.empty:
            raise CalibrationError(f"calibration '{self.path}' has no rows")
        mask = rows["stage"] == stage
        for k, v in want.items():
            mask &= rows[k] == v
        if not mask.any():
            have = rows[rows["stage"] == stage][list(KEYS)].drop_duplicates()
            raise CalibrationError(
                f"calibration '{self.path}' has no {stage!r} row for "
                + ", ".join(f"{k}={v}" for k, v in want.items())
                + (f"; it has: {have.to_dict(orient='records')}" if len(have) else "")
            )
        return rows[mask].iloc[0]

    def dist(self, stage: str, kind: str = "empirical", shift: float = 0.0, **keys: Any) -> Dist:
        """The distribution of one stage (less ``shift`` seconds): empirical quantiles or a
        lognormal/gamma fit."""
        row = self.select(stage, **keys)
        label = ", ".join(f"{k}={v}" for k, v in _selection(keys).items())
        return _dist_from_row(row, kind, f"{self.path}: {stage} ({label})", shift)

    def table(self) -> str:
        """The human summary: min, p50, p90, p99, max per stage and configuration."""
        cols = [
            "stage",
            *KEYS,
            "count",
            "min_s",
            "p50_s",
            "p90_s",
            "p99_s",
            "max_s",
            "faults_per_s",
        ]
        t = self.rows[cols].copy()
        for c in ("min_s", "p50_s", "p90_s", "p99_s", "max_s"):
            t[c.replace("_s", "_us")] = (t.pop(c) * 1e6).round(2)
        t["faults_per_s"] = t["faults_per_s"].round(0)
        return t.to_string(index=False)

    def summary_records(self) -> list[dict[str, Any]]:
        """Rows for ``calibrate --json`` (quantile tables left out)."""
        return self.rows.drop(columns=["quantiles_s"]).to_dict(orient="records")


class CalibrationError(ValueError):
    """A calibration file is missing, malformed or lacks the configuration asked for."""


def _selection(keys: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration: the given keys, QEMU-like values (4 KiB pages) for the others."""
    return {**QEMU_LIKE, "page_bytes": 4096, **keys}


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, np.floating):
        return None if math.isnan(obj) else float(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _dist_from_row(row: pd.Series, kind: str, source: str, shift: float = 0.0) -> Dist:
    if kind == "empirical":
        q = np.maximum(np.asarray(row["quantiles_s"], dtype=np.float64) - shift, 0.0)
        return empirical(q, source)
    if kind == "lognormal":
        median = math.exp(row["log_mean"]) - shift
        return Dist("lognormal", (max(median, 1e-12), max(row["log_std"], 1e-6)))
    if kind == "gamma":
        mean = row["mean_s"] - shift
        return Dist("gamma", (max(mean, 1e-12), max(row["std_s"] / row["mean_s"], 1e-6)))
    raise CalibrationError(f"unknown distribution kind {kind!r}: use empirical, lognormal or gamma")


def fault_path_updates(
    cal: Calibration, kind: str = "empirical", host_page_bytes: int = 4096, **keys: Any
) -> dict[str, Any]:
    """``fault_path.*`` settings measured by ``cal`` for guests with ``host_page_bytes`` pages.

    Stages come from the largest measured page size not above the guest's host page
    (placement and wake-up depend on it).  Placement is split like the model's:
    ``place_per_byte_s`` is the slope of that page size's batch series, ``place_fixed_s``
    the measured single-page placement minus those bytes.  ``request_s`` comes from the
    network-hop run if there was one (run with QEMU's settings: it serves any other
    selection too); stages not measured are left out.
    """
    measured = sorted(int(p) for p in cal.rows["page_bytes"].unique() if p <= host_page_bytes)
    if not measured:
        raise CalibrationError(
            f"calibration '{cal.path}' measured no page size <= {host_page_bytes} bytes"
        )
    page = measured[-1]
    sel = {"page_bytes": page, **keys}
    per_byte = cal.placement_fit.get(page, {}).get("per_byte_s", 0.0)
    out: dict[str, Any] = {
        "fault_path.calibration": cal.path,
        "fault_path.delivery_s": cal.dist("delivery", kind, **sel),
        "fault_path.wake_s": cal.dist("wake", kind, **sel),
        "fault_path.place_per_byte_s": per_byte,
        "fault_path.place_fixed_s": cal.dist("place", kind, per_byte * page, **sel),
    }
    if ((cal.rows["stage"] == "request") & cal.rows["network"].astype(bool)).any():
        try:
            out["fault_path.request_s"] = cal.dist("request", kind, **{**sel, "network": True})
        except CalibrationError:
            # The network hop is timed with QEMU's settings only: use it for any other.
            out["fault_path.request_s"] = cal.dist("request", kind, page_bytes=page, network=True)
    return out


def _load_table_spec(spec: Mapping[str, Any]) -> Dist:
    """``{dist = "empirical", file = ..., stage = ..., [mode, affinity, page_bytes, threads]}``."""
    spec = dict(spec)
    spec.pop("dist", None)
    file = spec.pop("file")
    stage = spec.pop("stage", None)
    if stage not in STAGES:
        raise UnitError(f"a calibration table needs stage = one of {STAGES}, got {stage!r}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise UnitError(f"unknown keys {unknown} in a calibration table; allowed: {KEYS}")
    try:
        return Calibration.load(file).dist(stage, **spec)
    except CalibrationError as exc:
        raise UnitError(str(exc)) from None


register_calibration_loader(_load_table_spec)


# -- running the benchmark ---------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What ``calibrate`` runs."""

    samples: int = 2000
    page_sizes: tuple[int, ...] = (4096, 2 << 20)
    threads: tuple[int, ...] = (1, 2, 4)
    modes: tuple[str, ...] = ("read", "poll", "busy")
    affinities: tuple[str, ...] = ("scheduler", "same", "different")
    network: tuple[str, int] | str | None = None  # (host, port), "loopback" or None
    timeout_s: float = 20.0

    def __post_init__(self) -> None:
        bad_pages = [p for p in self.page_sizes if p not in (4096, 2 << 20)]
        if bad_pages or not self.page_sizes:
            raise ValueError(
                f"page sizes: invalid value {list(self.page_sizes)}: the benchmark measures"
                " 4 KiB and 2 MiB (hugetlbfs) pages"
            )
        if self.samples < 1 or not self.threads or min(self.threads) < 1:
            raise ValueError(
                f"samples={self.samples}, threads={list(self.threads)}: both must be >= 1"
            )

    def runs(self) -> list[dict[str, Any]]:
        """Keyword sets for ``native.run_faults``: every mode × affinity per page size with one
        faulting thread, the thread series and a zero-page run with QEMU's settings, and the
        network hop if asked."""
        runs: list[dict[str, Any]] = []
        for page in self.page_sizes:
            for mode in self.modes:
                for aff in self.affinities:
                    # Every fault needs a page of its own: huge pages are capped.
                    n = self.samples if page == 4096 else min(self.samples, HUGE_SAMPLES_MAX)
                    if mode == "busy" and aff == "same":
                        # A spinning handler shares its core with the faulter: each fault waits
                        # for a scheduler tick. Measured, but with fewer samples.
                        n = min(n, 100)
                    runs.append(
                        dict(page_bytes=page, mode=mode, affinity=aff, threads=1, samples=n)
                    )
        qemu = dict(page_bytes=4096, mode="poll", affinity="scheduler")
        runs += [dict(qemu, threads=t, samples=self.samples) for t in self.threads if t != 1]
        runs.append(dict(qemu, threads=1, samples=self.samples, zeropage=True))
        if self.network is not None:
            runs.append(dict(qemu, threads=1, samples=self.samples, server="network"))
        return runs


def calibrate(
    plan: Plan | None = None, *, progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None
) -> Calibration:
    """Run the microbenchmark per ``plan`` on this host and summarise it."""
    from simpostcopy import native

    plan = plan or Plan()
    notes: list[str] = []
    frames: list[pd.DataFrame] = []
    runs = plan.runs()
    # Runs map (and unmap) their pages one after another: reserve for the largest, or for
    # the placement series (max(batch) + sum(batches) * reps pages), whichever needs more.
    huge_pages = max(
        [r["samples"] + WARMUP for r in runs if r["page_bytes"] > 4096]
        + [max(HUGE_BATCHES) + sum(HUGE_BATCHES) * PLACE_REPS]
    )
    with contextlib.ExitStack() as stack:
        server = plan.network if isinstance(plan.network, tuple) else None
        if plan.network == "loopback":
            server = stack.enter_context(native.PageServer("127.0.0.1", 0)).address
        huge_ok = False
        if any(p > 4096 for p in plan.page_sizes):
            try:
                added = stack.enter_context(native.reserve_hugepages(huge_pages))
                huge_ok = True
                if added:
                    notes.append(f"reserved {added} 2 MiB huge pages for the run (restored after)")
            except native.HugePagesUnavailableError as exc:
                notes.append(f"2 MiB pages skipped: {exc}")
        for run in progress(runs) if progress else runs:
            if run["page_bytes"] > 4096 and not huge_ok:
                continue
            kwargs = dict(run, timeout_s=plan.timeout_s, warmup=WARMUP)
            if kwargs.get("server") == "network":
                kwargs["server"] = server
            frame = native.run_faults(**kwargs)
            frame["network"] = kwargs.get("server") is not None
            frame["faults_per_s"] = frame.attrs.get("faults_per_s", math.nan)
            frames.append(frame)
        fits = {}
        for page in plan.page_sizes:
            if page > 4096 and not huge_ok:
                continue
            batches = SMALL_BATCHES if page == 4096 else HUGE_BATCHES
            series = native.place_series(page_bytes=page, batches=batches, reps=PLACE_REPS)
            fixed, per_byte = native.fit_placement(series)
            fits[page] = {"fixed_s": fixed, "per_byte_s": per_byte}
    rows = summarize(pd.concat(frames, ignore_index=True))
    overhead = native.harness_overhead(10000)
    return Calibration(
        rows=rows,
        host=native.host_metadata(),
        placement_fit=fits,
        overhead={
            "p50_s": float(np.percentile(overhead, 50)),
            "p99_s": float(np.percentile(overhead, 99)),
            "count": int(overhead.size),
        },
        settings={
            "samples": plan.samples,
            "page_sizes": list(plan.page_sizes),
            "threads": list(plan.threads),
            "modes": list(plan.modes),
            "affinities": list(plan.affinities),
            "network": "loopback" if plan.network == "loopback" else server,
        },
        notes=notes,
    )


def parse_sizes(text: str) -> tuple[int, ...]:
    """'4KiB,2MiB' -> (4096, 2097152)."""
    from simpostcopy.units import parse_bytes

    return tuple(parse_bytes(x.strip()) for x in text.split(",") if x.strip())


def sequence_arg(text: str, allowed: Sequence[str], name: str) -> tuple[str, ...]:
    """'poll,busy' -> ('poll', 'busy'), refusing values outside ``allowed``."""
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"{name}: invalid value {text!r}: allowed: {', '.join(allowed)}")
    return items
