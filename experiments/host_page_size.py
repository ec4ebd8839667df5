"""Host page size: 4 KiB vs 2 MiB vs 1 GiB backing, vanilla and preempt.

    python experiments/host_page_size.py [--quick] [--jobs N] [--out DIR]

A fault fetches and places the whole host page, so bigger pages mean fewer but far longer
faults (QEMU: a 1 GiB page takes ~1 s at 10 Gbit/s).  Median and p99 fault latency,
remote faults and all-vCPU blocktime per page size.  Writes host_page_size.parquet and
.png to DIR (default experiments/results).
"""

from __future__ import annotations

import argparse

from _study import frame, main, medians, save

from simpostcopy import plots
from simpostcopy.config import Scenario
from simpostcopy.sweep import Sweep


def study(args: argparse.Namespace) -> None:
    base = Scenario().override(
        {
            "guest.ram_bytes": "1 GiB" if args.quick else "4 GiB",
            "guest.vcpus": 2,
            "workload.pattern": "uniform",
            "workload.working_set_bytes": "256 MiB" if args.quick else "2 GiB",
            "workload.accesses_per_s": 1e5 if args.quick else 1e6,
        }
    )
    sweep = Sweep(
        base=base,
        factors={
            "guest.host_page_bytes": [4096, 2 << 20, 1 << 30],
            "network.preempt": [False, True],
        },
        seeds=(1,) if args.quick else (1, 2, 3),
    )
    df = frame("host_page_size", sweep, args)
    fig = plots.metric_curves(
        df,
        "guest.host_page_bytes",
        strategy="network.preempt",
        metrics=["latency_p50_s", "latency_p99_s", "remote_faults", "blocktime_s"],
        logy=True,
        title=f"Host page size: {base.describe()}",
    )
    save({"host_page_size": fig}, args)
    medians(
        df,
        ["guest.host_page_bytes", "network.preempt"],
        ["latency_p50_s", "latency_p99_s", "remote_faults", "blocktime_s", "total_time_s"],
        "Medians over seeds (QEMU: a 1 GiB page takes ~1 s at 10 Gbit/s):",
    )


if __name__ == "__main__":
    main(study, __doc__)
