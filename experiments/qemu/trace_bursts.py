"""Why the model misses page requests: trace one real run's destination and set it beside
the model.

    python experiments/qemu/trace_bursts.py [--workload seq,512] [--cap-mib 300]
        [--requests-only] [--out trace_bursts.csv] [--log destination.log --record run.json]

Runs one TCG postcopy migration with QEMU's fault-thread requests and page placements
traced (or reads an earlier run's log and record), then prints and writes to
trace_bursts.csv (or --out), for QEMU and for the model fitted in fitted.toml: requests,
their median wait from the fault thread's request to the placement, how the placement
stream comes in lumps (pages between gaps of more than 15 us, and those gaps), and how
far apart consecutive requests are (median pages and seconds; a guest following the
stream asks once per batch the source writes: 32 pages).  --requests-only traces the
requests alone: tracing every placement slows QEMU's destination, which then asks two to
three times as often; the placement columns are then empty.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from simpostcopy.config import Scenario
from simpostcopy.engine import simulate
from simpostcopy.qemu import compare, harness, trace

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="seq,512")
    parser.add_argument("--cap-mib", type=int, default=300)
    parser.add_argument("--requests-only", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "trace_bursts.csv")
    parser.add_argument("--log", type=Path, help="an earlier run's destination log")
    parser.add_argument("--record", type=Path, help="that run's record")
    args = parser.parse_args()
    spec = harness.RunSpec(
        workload=args.workload,
        max_bandwidth_bytes_per_s=args.cap_mib << 20,
        max_postcopy_bandwidth_bytes_per_s=args.cap_mib << 20,
        accel="tcg",
        trace=trace.EVENTS[:1] if args.requests_only else trace.EVENTS,
    )
    with tempfile.TemporaryDirectory() as tmp:
        real, record = trace.traced_run(spec, Path(tmp), args.log, args.record)
    result = simulate(compare.matching_scenario(record, Scenario.from_toml(HERE / "fitted.toml")))
    fa = result.faults[result.faults.requested]
    placed = np.sort(result.pages.placed_s.to_numpy())
    placed = placed[placed > result.summary["destination_start_s"]]
    rows = [
        {
            "source": "QEMU",
            "requests": len(real.requests),
            "wait_median_s": float(real.requests.wait_s.median()),
            **trace.lumps(real.placements),
            **trace.request_steps(
                real.requests.t_s.to_numpy(), real.requests.offset.to_numpy() >> 12
            ),
        },
        {
            "source": "model",
            "requests": len(fa),
            "wait_median_s": float((fa.placed_s - fa.request_sent_s).median()),
            **trace.lumps(placed),
            **trace.request_steps(fa.request_sent_s.to_numpy(), fa.target_page.to_numpy()),
        },
    ]
    table = pd.DataFrame(rows)
    table.insert(1, "run", f"{args.workload} at {args.cap_mib} MiB/s")
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
