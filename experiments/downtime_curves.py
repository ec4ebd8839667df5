"""Downtime curves: precopy vs postcopy vs hybrids across bandwidth and dirty rate.

    python experiments/downtime_curves.py [--quick] [--jobs N] [--out DIR]

Sweeps link bandwidth (1-100 Gbit/s) and the guest's dirty rate (write share of its
accesses) for pure precopy, pure postcopy and two hybrids (postcopy after one precopy
round, as libvirt's --postcopy-after-precopy; postcopy once precopy stalls), several
seeds each, and writes ``downtime_curves.parquet`` (one row per run: the varied settings,
the seed and every summary metric) and ``downtime_curves.png`` to DIR (default: this
script's folder).  ``--quick`` is a small version for the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from simpostcopy import plots
from simpostcopy.config import Scenario
from simpostcopy.engine import simulate

BASE: dict[str, Any] = {
    "guest.ram_bytes": "2 GiB",
    "guest.vcpus": 2,
    "workload.pattern": "hotset",
    "workload.working_set_bytes": "1 GiB",
    "workload.hot_fraction": 0.25,
    "workload.accesses_per_s": 1e6,
    "network.preempt": True,
    "migration.max_rounds": 10,
}
FULL = {
    "network.bandwidth_bytes_per_s": [f"{g} Gbit/s" for g in (1, 2.5, 5, 10, 25, 50, 100)],
    "workload.write_fraction": [0.02, 0.2],
    "migration.switchover": [
        "precopy",
        "postcopy",
        "postcopy_after_rounds",
        "postcopy_when_stalled",
    ],
    "seed": [1, 2, 3],
}
QUICK_BASE = {**BASE, "guest.ram_bytes": "128 MiB", "workload.working_set_bytes": "64 MiB"}
QUICK = {**FULL, "network.bandwidth_bytes_per_s": ["1 Gbit/s", "10 Gbit/s"], "seed": [1]}


def run_point(point: dict[str, Any]) -> dict[str, Any]:
    """Simulate one point; a row of the frame."""
    base = point.pop("_base")
    scenario = Scenario().override({**base, **point})
    summary = simulate(scenario).summary
    row = {k: v for k, v in summary.items() if not isinstance(v, list)}
    w, g = scenario.workload, scenario.guest
    row.update(
        {
            "network.bandwidth_bytes_per_s": scenario.network.bandwidth_bytes_per_s,
            "workload.write_fraction": w.write_fraction,
            "migration.switchover": scenario.migration.switchover,
            # Writes per second, in bytes (before several writes hit the same page).
            "dirty_rate_bytes_per_s": g.vcpus * w.accesses_per_s * w.write_fraction * 4096,
        }
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sweep (for tests)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    grid, base = (QUICK, QUICK_BASE) if args.quick else (FULL, BASE)
    keys = list(grid)
    points = [
        {"_base": base, **dict(zip(keys, values, strict=True))}
        for values in itertools.product(*grid.values())
    ]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(run_point, points))
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(args.out / "downtime_curves.parquet", index=False)
    fig = plots.downtime_curve(
        frame,
        x="network.bandwidth_bytes_per_s",
        facet="dirty_rate_bytes_per_s",
        title=(
            f"{'quick: ' if args.quick else ''}{base['guest.ram_bytes']} guest, "
            f"{base['guest.vcpus']} vCPUs, hot set in {base['workload.working_set_bytes']}, "
            "preempt: downtime, total time and all-vCPU blocktime (median, min-max over seeds)"
        ),
    )
    plots.save(fig, args.out / "downtime_curves.png")
    print(
        f"{len(frame)} runs in {time.perf_counter() - t0:.1f} s -> "
        f"{args.out / 'downtime_curves.parquet'}, {args.out / 'downtime_curves.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
