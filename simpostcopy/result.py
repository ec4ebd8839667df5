"""Results of one simulated migration: tidy tables, a flat summary, QEMU-shaped output."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simpostcopy.config import TARGET_PAGE_BYTES, FaultPath, Network, Scenario, ScenarioError
from simpostcopy.models.ledger import (
    TIE_S,
    VIA_BACKGROUND,
    VIA_NONE,
    VIA_PRECOPY,
    VIA_REQUEST_PREEMPT,
    Fault,
    Pages,
)
from simpostcopy.models.precopy import PrecopyOutcome, Round

LATENCY_BUCKETS = 24  # QEMU's postcopy-latency-dist: [2^N, 2^(N+1)) microseconds


@dataclass(frozen=True, slots=True)
class Timing:
    """Phase boundaries of one migration, seconds from the start of setup."""

    setup_s: float
    switchover_s: float
    downtime_s: float
    dest_start_s: float
    end_s: float


def overlap_all(starts: np.ndarray, ends: np.ndarray, owners: np.ndarray, n: int) -> float:
    """Total time during which all ``n`` owners are inside one of their intervals at once.

    Each owner's intervals must not overlap each other (a vCPU blocks on one fault at a time).
    """
    if n == 0 or starts.size == 0 or np.unique(owners).size < n:
        return 0.0
    times = np.concatenate((starts, ends))
    steps = np.concatenate((np.ones(starts.size, np.int64), -np.ones(ends.size, np.int64)))
    order = np.lexsort((steps, times))  # at a tie, an end comes before a start
    times, level = times[order], np.cumsum(steps[order])
    spans = np.diff(times)
    return float(spans[level[:-1] == n].sum())


def _covered(edges: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Integral of the number of open intervals from 0 to each edge (vectorised)."""

    def ramp(points: np.ndarray) -> np.ndarray:
        points = np.sort(points)
        csum = np.concatenate(([0.0], np.cumsum(points)))
        k = np.searchsorted(points, edges, side="right")
        return k * edges - csum[k]

    return ramp(starts) - ramp(ends)


def _fault_path_source(scenario: Scenario) -> str:
    """'defaults', 'calibration <file>' or 'custom': where the fault-path costs came from."""
    fp = scenario.fault_path
    if fp.calibration:
        return f"calibration {fp.calibration}"
    return "defaults" if fp == FaultPath() else "custom"


def _qemu_window(fa: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """QEMU's view of faults: (mask, read→placed latency of the masked faults).

    QEMU (``postcopy-blocktime`` capability) times a fault from the fault thread's read
    to the placement, and ignores faults whose page was placed before the read.
    """
    read, placed = fa["read_s"].to_numpy(), fa["placed_s"].to_numpy()
    mask = placed - read > TIE_S
    return mask, (placed - read)[mask]


def _latency_dist(lat_s: np.ndarray) -> list[int]:
    us = lat_s * 1e6
    bucket = np.floor(np.log2(np.maximum(us, 1.0))).astype(np.int64)
    return np.bincount(np.clip(bucket, 0, LATENCY_BUCKETS - 1), minlength=LATENCY_BUCKETS).tolist()


def _ms(x: float) -> int:
    return round(x * 1e3)


@dataclass(slots=True)
class Result:
    """Everything one simulation produced.

    ``faults`` has one row per fault, ``vcpus`` one per vCPU, ``timeline`` one per
    time window, ``pages`` one per host page; ``summary`` is flat (QEMU's names in
    snake case, plus more); ``meta`` holds what is not part of the result itself
    (wall time, event count).
    """

    scenario: Scenario
    faults: pd.DataFrame
    vcpus: pd.DataFrame
    timeline: pd.DataFrame
    pages: pd.DataFrame
    summary: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    rounds: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per precopy round

    # ----------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        *,
        scenario: Scenario,
        pages: Pages,
        faults: list[Fault],
        accesses: list[int],
        requests_received: int,
        requests_duplicate: int,
        bytes_sent: int,
        timing: Timing,
        precopy: PrecopyOutcome,
        downtime_bytes: int,
        timeline_window_s: float,
        meta: dict[str, Any],
    ) -> Result:
        n_vcpus = scenario.guest.vcpus
        fa = _fault_frame(faults, pages)
        end = timing.end_s
        blocked_end = np.minimum(fa["resumed_s"].to_numpy(), end)
        fa_start = fa["fault_s"].to_numpy()
        owners = fa["vcpu"].to_numpy()
        blocked = blocked_end - fa_start

        q, q_lat = _qemu_window(fa)

        vc = pd.DataFrame({"vcpu": np.arange(n_vcpus)})
        vc["accesses"] = np.asarray(accesses, dtype=np.int64)
        vc["faults"] = np.bincount(owners, minlength=n_vcpus)
        vc["blocked_s"] = np.bincount(owners, weights=blocked, minlength=n_vcpus)
        vc["qemu_blocktime_s"] = np.bincount(owners[q], weights=q_lat, minlength=n_vcpus)
        q_count = np.bincount(owners[q], minlength=n_vcpus)
        with np.errstate(invalid="ignore", divide="ignore"):
            vc["qemu_latency_s"] = vc["qemu_blocktime_s"] / q_count

        lat = fa["latency_s"].to_numpy()
        by = fa["satisfied_by"].value_counts()
        summary: dict[str, Any] = {
            "total_time_s": end,
            "setup_time_s": timing.setup_s,
            "downtime_s": timing.downtime_s,
            "switchover_time_s": timing.switchover_s,
            "destination_start_s": timing.dest_start_s,
            "postcopy_requests": int(requests_received),
            "duplicate_requests": int(requests_duplicate),
            "remote_faults": len(fa),
            "faults_by_request": int(by.get("request", 0)),
            "faults_by_other_request": int(by.get("other_request", 0)),
            "faults_by_background": int(by.get("background", 0)),
            "switchover_policy": scenario.migration.switchover,
            # How the migration completed ("precopy": stop-and-copy) and why then.
            "completed_by": precopy.mode,
            "switchover_reason": precopy.reason,
            "precopy_rounds": precopy.precopy_rounds,
            "precopy_bytes": int(precopy.precopy_bytes),
            "downtime_bytes": int(downtime_bytes),
            "postcopy_bytes": int(bytes_sent),
            "total_bytes": int(precopy.precopy_bytes + downtime_bytes + bytes_sent),
            "pages_fetched_after_switchover": int(
                np.count_nonzero((pages.via != VIA_PRECOPY) & (pages.via != VIA_NONE))
            ),
            "zero_pages": int(pages.zero.sum()),
            "accesses": int(vc["accesses"].sum()),
            "blocktime_s": overlap_all(fa_start, blocked_end, owners, n_vcpus),
            "vcpu_blocktime_s": vc["blocked_s"].tolist(),
            "latency_mean_s": float(lat.mean()) if lat.size else math.nan,
            "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else math.nan,
            "latency_p99_s": float(np.percentile(lat, 99)) if lat.size else math.nan,
            # How long uffd messages waited for the single fault thread to read them.
            "read_wait_mean_s": float((fa["read_s"] - fa["delivered_s"]).mean())
            if len(fa)
            else math.nan,
            "fault_path_source": _fault_path_source(scenario),
            "seed": scenario.seed,
            "scenario_hash": scenario.hash(),
            "version": meta.get("version"),
        }
        # Page bytes of the stop-and-copy (the rest of the downtime is device state, or the
        # discard bitmap before postcopy).
        stop_copy = downtime_bytes - scenario.migration.device_state_bytes
        timeline = _timeline(
            fa_start,
            blocked_end,
            pages,
            timing,
            precopy,
            stop_copy if precopy.mode == "precopy" else 0,
            scenario.network,
            n_vcpus,
            timeline_window_s,
        )
        return cls(
            scenario,
            fa,
            vc,
            timeline,
            _page_frame(pages),
            summary,
            dict(meta),
            _rounds_frame(precopy),
        )

    # ----------------------------------------------------------------------------------
    def qemu_blocktime(self) -> tuple[float, list[float]]:
        """Blocktime as QEMU's ``postcopy-blocktime`` counts it, in seconds: (all vCPUs
        blocked at once, per vCPU), each fault from the fault thread's read to the
        placement, faults whose page was placed before the read left out."""
        fa = self.faults
        q, _lat = _qemu_window(fa)
        blocktime = overlap_all(
            fa["read_s"].to_numpy()[q],
            fa["placed_s"].to_numpy()[q],
            fa["vcpu"].to_numpy()[q],
            self.scenario.guest.vcpus,
        )
        return blocktime, self.vcpus["qemu_blocktime_s"].tolist()

    def to_qemu(self) -> dict[str, Any]:
        """A dict shaped and named like QEMU's ``query-migrate`` reply (QEMU's own units)."""
        s, g, fa, vc = self.summary, self.scenario.guest, self.faults, self.vcpus
        per_host = g.host_page_bytes // TARGET_PAGE_BYTES
        zero_target = s["zero_pages"] * per_host
        normal_target = g.ram_bytes // TARGET_PAGE_BYTES - zero_target
        _q, lat = _qemu_window(fa)
        blocktime, _per_vcpu = self.qemu_blocktime()
        total_ms = _ms(s["total_time_s"])
        return {
            "status": "completed",
            "total-time": total_ms,
            "downtime": _ms(s["downtime_s"]),
            "setup-time": _ms(s["setup_time_s"]),
            "ram": {
                "transferred": s["total_bytes"],
                "remaining": 0,
                "total": g.ram_bytes,
                "duplicate": zero_target,
                "normal": normal_target,
                "normal-bytes": normal_target * TARGET_PAGE_BYTES,
                "page-size": TARGET_PAGE_BYTES,
                "mbps": s["total_bytes"] * 8 / 1e6 / max(s["total_time_s"], 1e-12),
                "postcopy-requests": s["postcopy_requests"],
                "postcopy-bytes": s["postcopy_bytes"],
                "precopy-bytes": s["precopy_bytes"],
                "downtime-bytes": s["downtime_bytes"],
                # One bitmap sync per round plus the final one at the stop.
                "dirty-sync-count": s["precopy_rounds"] + 1,
            },
            "postcopy-blocktime": _ms(blocktime),
            "postcopy-vcpu-blocktime": [_ms(x) for x in vc["qemu_blocktime_s"]],
            "postcopy-latency": round(float(lat.mean()) * 1e9) if lat.size else 0,
            "postcopy-vcpu-latency": [
                0 if math.isnan(x) else round(x * 1e9) for x in vc["qemu_latency_s"]
            ],
            "postcopy-latency-dist": _latency_dist(lat),
        }

    @classmethod
    def load(cls, out_dir: str | Path) -> Result:
        """A Result saved by ``save`` (or ``simpostcopy run --out DIR``)."""
        d = Path(out_dir)
        try:
            summary = json.loads((d / "summary.json").read_text())
            tables = {
                name: pd.read_parquet(d / f"{name}.parquet")
                for name in ("faults", "vcpus", "timeline", "pages")
            }
            rounds_path = d / "rounds.parquet"
            rounds = pd.read_parquet(rounds_path) if rounds_path.exists() else pd.DataFrame()
        except (OSError, ValueError) as exc:
            raise ScenarioError(
                f"cannot read a saved result from '{d}': {exc}", key="result", value=str(d)
            ) from None
        summary = {k: (math.nan if v is None else v) for k, v in summary.items()}
        scenario = Scenario.from_toml(d / "scenario.toml")
        return cls(scenario, summary=summary, rounds=rounds, **tables)

    def summary_json(self) -> str:
        """The summary as JSON (NaN written as null)."""
        clean = {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in self.summary.items()
        }
        return json.dumps(clean, indent=2, sort_keys=False)

    def save(self, out_dir: str | Path) -> Path:
        """Write the scenario, the summary, QEMU's view and the tables to ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scenario.toml").write_text(self.scenario.to_toml())
        (out / "summary.json").write_text(self.summary_json() + "\n")
        (out / "query-migrate.json").write_text(json.dumps(self.to_qemu(), indent=2) + "\n")
        self.faults.to_parquet(out / "faults.parquet", index=False)
        self.vcpus.to_parquet(out / "vcpus.parquet", index=False)
        self.timeline.to_parquet(out / "timeline.parquet", index=False)
        self.pages.to_parquet(out / "pages.parquet", index=False)
        self.rounds.to_parquet(out / "rounds.parquet", index=False)
        return out


def _channel(via: np.ndarray) -> pd.Categorical:
    """Which socket carried each page: the preempt channel or the main one."""
    return pd.Categorical.from_codes(
        (via == VIA_REQUEST_PREEMPT).astype(np.int8), categories=["main", "preempt"]
    )


def _page_frame(pages: Pages) -> pd.DataFrame:
    """One row per host page: how and when it reached the destination."""
    via_codes = np.array([2, 0, 1, 1, 3], dtype=np.int8)  # VIA_* -> category below
    return pd.DataFrame(
        {
            "host_page": np.arange(pages.count, dtype=np.int64),
            "zero": pages.zero,
            "wire_bytes": pages.wire_bytes,
            "sent_s": pages.sent_at,
            "arrived_s": pages.arrived_at,
            "placed_s": pages.placed_at,
            "via": pd.Categorical.from_codes(
                via_codes[pages.via], categories=["background", "request", "none", "precopy"]
            ),
            "channel": _channel(pages.via),
        }
    )


_DTYPES = {"int": np.int64, "float": np.float64, "bool": bool}


def _fault_frame(faults: list[Fault], pages: Pages) -> pd.DataFrame:
    # One column per Fault field, typed from its annotation (the module defers them).
    fa = pd.DataFrame(
        {
            f.name: np.fromiter((getattr(x, f.name) for x in faults), _DTYPES[f.type], len(faults))
            for f in dataclasses.fields(Fault)
        }
    )
    h = fa["host_page"].to_numpy()
    fa["page_sent_s"] = pages.sent_at[h]
    fa["page_arrived_s"] = pages.arrived_at[h]
    fa["placed_s"] = pages.placed_at[h]
    fa["latency_s"] = fa["resumed_s"] - fa["fault_s"]
    via = pages.via[h]
    own = pages.requester[h] == fa["fault_id"].to_numpy()
    fa["satisfied_by"] = pd.Categorical.from_codes(
        np.where(via == VIA_BACKGROUND, 2, np.where(own, 0, 1)),
        categories=["request", "other_request", "background"],
    )
    fa["channel"] = _channel(via)
    # Canonical order and numbering: by fault time, then vCPU (simultaneous faults of
    # different vCPUs would otherwise be numbered in event-processing order).
    fa = fa.sort_values(["fault_s", "vcpu"], kind="stable", ignore_index=True)
    fa["fault_id"] = np.arange(len(fa), dtype=np.int64)
    order = [
        "fault_id",
        "vcpu",
        "access",
        "target_page",
        "host_page",
        "fault_s",
        "delivered_s",
        "read_s",
        "request_sent_s",
        "request_at_source_s",
        "page_sent_s",
        "page_arrived_s",
        "placed_s",
        "resumed_s",
        "latency_s",
        "satisfied_by",
        "channel",
        "requested",
        "duplicate_request",
    ]
    return fa[order]


def _spread(edges: np.ndarray, start: float, end: float, total: float) -> np.ndarray:
    """``total`` spread evenly over [start, end], per window of ``edges``."""
    if end <= start:
        return np.histogram([start], bins=edges, weights=[total])[0]
    overlap = np.clip(np.minimum(edges[1:], end) - np.maximum(edges[:-1], start), 0, None)
    return total * overlap / (end - start)


def _timeline(
    fault_s: np.ndarray,
    blocked_end: np.ndarray,
    pages: Pages,
    timing: Timing,
    precopy: PrecopyOutcome,
    stop_copy_bytes: int,
    network: Network,
    n_vcpus: int,
    window_s: float,
) -> pd.DataFrame:
    """Per window over the whole migration: share of vCPU time running (the degradation
    curve; the guest runs unimpeded on the source during precopy) and page bytes received."""
    end = timing.end_s
    n_win = max(1, math.ceil(end / window_s - 1e-9))
    edges = np.minimum(np.arange(n_win + 1) * window_s, end)
    # vCPUs are stopped from switch-over until the destination resumes them.
    starts = np.concatenate((fault_s, np.full(n_vcpus, timing.switchover_s)))
    ends = np.concatenate((blocked_end, np.full(n_vcpus, timing.dest_start_s)))
    blocked = np.diff(_covered(edges, starts, ends))
    width = np.diff(edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        running = np.where(width > 0, 1.0 - blocked / (n_vcpus * width), 1.0)
    # Precopy rounds and stop-and-copy stream back to back at a steady rate: their bytes
    # arrive evenly, one latency after they leave.  Postcopy pages arrive one by one.
    lat = network.latency_s
    bytes_in = np.zeros(n_win)
    for r in precopy.rounds:
        bytes_in += _spread(edges, r.start_s + lat, r.end_s + lat, r.bytes_sent)
    if stop_copy_bytes:
        copy_end = timing.switchover_s + stop_copy_bytes / network.bandwidth_bytes_per_s
        bytes_in += _spread(edges, timing.switchover_s + lat, copy_end + lat, stop_copy_bytes)
    fetched = pages.via != VIA_PRECOPY
    bytes_in += np.histogram(
        pages.arrived_at[fetched], bins=edges, weights=pages.wire_bytes[fetched]
    )[0]
    placed = np.histogram(pages.placed_at[fetched], bins=edges)[0]
    faults = np.histogram(fault_s, bins=edges)[0]
    return pd.DataFrame(
        {
            "window_start_s": edges[:-1],
            "window_end_s": edges[1:],
            "running_fraction": np.clip(running, 0.0, 1.0),
            "bytes_received": np.rint(bytes_in).astype(np.int64),
            "pages_placed": placed.astype(np.int64),
            "faults": faults.astype(np.int64),
        }
    )


def _rounds_frame(precopy: PrecopyOutcome) -> pd.DataFrame:
    """One row per precopy round."""
    return pd.DataFrame(
        [dataclasses.asdict(r) for r in precopy.rounds],
        columns=[f.name for f in dataclasses.fields(Round)],
    )
