"""Benchmark of the simulation engines: wall time, peak memory, events, throughput.

    python experiments/bench_engine.py [--only S,M,L,shared] [--scaling] [--out bench.csv]

Each scenario runs in a fresh subprocess (so peak RSS is its own) and prints one row:
wall time, peak RSS, SimPy events, guest accesses simulated, remote faults and accesses
per wall-second.  ``shared`` is the largest scenario the reference engine finishes in
about two minutes here, run on both engines.  ``--scaling`` adds wall time against RAM
size (1-64 GiB) and vCPU count (1-8).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

SCENARIOS: dict[str, dict[str, Any]] = {
    "S": {
        "guest.ram_bytes": "1 GiB",
        "guest.vcpus": 1,
        "workload.pattern": "uniform",
        "workload.working_set_bytes": "256 MiB",
        "workload.accesses_per_s": 1e6,
        "network.bandwidth_bytes_per_s": "10 Gbit/s",
        "network.preempt": False,
    },
    "M": {
        "guest.ram_bytes": "16 GiB",
        "guest.vcpus": 4,
        "workload.pattern": "hotset",
        "workload.working_set_bytes": "8 GiB",
        "workload.hot_fraction": 0.25,  # 2 GiB hot
        "workload.accesses_per_s": 1e6,
        "network.bandwidth_bytes_per_s": "10 Gbit/s",
        "network.preempt": True,
    },
    "L": {
        "guest.ram_bytes": "64 GiB",
        "guest.vcpus": 8,
        "workload.pattern": "zipf",
        "workload.working_set_bytes": "32 GiB",
        "workload.accesses_per_s": 1e6,
        "network.bandwidth_bytes_per_s": "25 Gbit/s",
        "network.preempt": True,
    },
    # The largest of this family (hot set, working set half of RAM) the reference engine
    # finishes within two minutes here (about 85 s; 10 GiB would take about 105 s).
    "shared": {
        "guest.ram_bytes": "8 GiB",
        "guest.vcpus": 2,
        "workload.pattern": "hotset",
        "workload.working_set_bytes": "4 GiB",
        "workload.accesses_per_s": 1e6,
        "network.bandwidth_bytes_per_s": "10 Gbit/s",
        "network.preempt": True,
    },
}


def run_one(overrides: dict[str, Any], engine: str) -> dict[str, Any]:
    """Simulate in this process and measure it (called in a fresh subprocess)."""
    from simpostcopy.config import Scenario
    from simpostcopy.engine import simulate

    scenario = Scenario().override(overrides)
    t0 = time.perf_counter()
    result = simulate(scenario, engine=engine)
    wall = time.perf_counter() - t0
    s = result.summary
    return {
        "engine": engine,
        "wall_s": wall,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "simpy_events": result.meta["simpy_events"],
        "accesses": s["accesses"],
        "remote_faults": s["remote_faults"],
        "accesses_per_wall_s": s["accesses"] / wall,
        "simulated_s": s["total_time_s"],
    }


def measure(name: str, overrides: dict[str, Any], engine: str, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(overrides), engine]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        row = {"engine": engine, "wall_s": float("inf"), "note": f"over {timeout:.0f} s"}
    return {"scenario": name, **row}


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | engine | wall s | peak RSS MiB | SimPy events | accesses"
        " | remote faults | accesses / wall-s |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['scenario']} | {r['engine']} | {r['note']} | | | | | |")
            continue
        lines.append(
            f"| {r['scenario']} | {r['engine']} | {r['wall_s']:.2f} | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} | {r['simpy_events']:,} | {r['accesses']:,} | "
            f"{r['remote_faults']:,} | {r['accesses_per_wall_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run_one(json.loads(sys.argv[2]), sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="S,M,L,shared")
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    parser.add_argument("--out", help="also write the rows as CSV")
    args = parser.parse_args()
    rows = []
    for name in args.only.split(","):
        engines = ["fast", "reference"] if name == "shared" else ["fast"]
        for engine in engines:
            rows.append(measure(name, SCENARIOS[name], engine, args.timeout))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.scaling:
        base = SCENARIOS["M"]
        for ram in ("1 GiB", "4 GiB", "16 GiB", "64 GiB"):
            ws = {"1 GiB": "512 MiB", "4 GiB": "2 GiB", "16 GiB": "8 GiB", "64 GiB": "32 GiB"}[ram]
            over = {**base, "guest.ram_bytes": ram, "workload.working_set_bytes": ws}
            rows.append(measure(f"M ram={ram}", over, "fast", args.timeout))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        for vcpus in (1, 2, 4, 8):
            over = {**base, "guest.vcpus": vcpus}
            rows.append(measure(f"M vcpus={vcpus}", over, "fast", args.timeout))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    if args.out:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
