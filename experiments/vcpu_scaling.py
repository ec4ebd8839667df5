"""vCPU scaling with one fault thread: queueing for the thread and blocktime.

    python experiments/vcpu_scaling.py [--quick] [--jobs N] [--out DIR]

1-16 vCPUs faulting at random over a working set, vanilla and preempt, with the measured
request cost (10 us) and a ten times slower one.  QEMU reads all userfaults with one
thread, which spends ``request_s`` per request: as vCPUs are added the messages wait
longer for it (``read_wait_mean_s``).
Writes vcpu_scaling.parquet and .png to DIR (default experiments/results).
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
            "guest.ram_bytes": "128 MiB" if args.quick else "2 GiB",
            "workload.pattern": "uniform",
            "workload.working_set_bytes": "128 MiB" if args.quick else "1 GiB",
            "workload.accesses_per_s": 1e6,
        }
    )
    sweep = Sweep(
        base=base,
        factors={
            "guest.vcpus": [1, 4] if args.quick else [1, 2, 4, 8, 16],
            "network.preempt": [False, True],
            # The measured cost of sending one request, and a ten times slower one.
            "fault_path.request_s": [10e-6] if args.quick else [10e-6, 100e-6],
        },
        seeds=(1,) if args.quick else (1, 2, 3),
    )
    df = frame("vcpu_scaling", sweep, args)
    fig = plots.metric_curves(
        df,
        "guest.vcpus",
        strategy="network.preempt",
        metrics=["read_wait_mean_s", "latency_mean_s", "remote_faults", "blocktime_s"],
        facet="fault_path.request_s",
        title=f"vCPU scaling, one fault thread: {base.describe()} (vCPUs varied)",
    )
    save({"vcpu_scaling": fig}, args)
    medians(
        df,
        ["fault_path.request_s", "network.preempt", "guest.vcpus"],
        ["read_wait_mean_s", "latency_mean_s", "remote_faults", "blocktime_s"],
        "Medians over seeds:",
    )


if __name__ == "__main__":
    main(study, __doc__)
