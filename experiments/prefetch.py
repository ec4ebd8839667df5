"""Prefetch and locality: none vs continue vs hint vs bubbling (one and several pivots).

    python experiments/prefetch.py [--quick] [--jobs N] [--out DIR]

Remote faults as a share of the working set's host pages, for workloads with and without
spatial locality, with postcopy-preempt (so that `continue` keeps the background stream
in place and `hint` moves it).  Hines & Gopalan report that prepaging brings network
faults down to about 17-21 % of the working set.  Writes prefetch.parquet and .png to DIR
(default experiments/results).
"""

from __future__ import annotations

import argparse

import pandas as pd
from _study import frame, main, save

from simpostcopy import plots
from simpostcopy.config import Scenario
from simpostcopy.sweep import Sweep

STRATEGIES = {  # label: settings
    "none": {"migration.locality": "none"},
    "continue": {"migration.locality": "continue"},
    "hint": {"migration.locality": "hint"},
    "bubbling x1": {"migration.locality": "bubbling", "migration.bubbling_pivots": 1},
    "bubbling x4": {"migration.locality": "bubbling", "migration.bubbling_pivots": 4},
}


def study(args: argparse.Namespace) -> None:
    ws = "64 MiB" if args.quick else "512 MiB"
    base = Scenario().override(
        {
            "guest.ram_bytes": "256 MiB" if args.quick else "2 GiB",
            "guest.vcpus": 2,
            "workload.working_set_bytes": ws,
            # The working set starts mid-RAM: a linear scan reaches it only late.
            "workload.working_set_offset_bytes": "128 MiB" if args.quick else "1 GiB",
            "workload.accesses_per_s": 1e6,
            "network.preempt": True,
        }
    )
    seeds = (1,) if args.quick else (1, 2, 3)
    frames = []
    for label, settings in STRATEGIES.items():
        sweep = Sweep(
            base=base.override(settings),
            factors={"workload.pattern": ["sequential", "hotset", "zipf", "uniform"]},
            seeds=seeds,
        )
        part = frame(f"prefetch_{label.replace(' ', '')}", sweep, args)
        frames.append(part.assign(strategy=label))
    df = pd.concat(frames, ignore_index=True)
    ws_pages = base.workload.working_set_bytes // base.guest.host_page_bytes
    df["faults_per_ws_page"] = df["remote_faults"] / ws_pages
    df.to_parquet(args.out / "prefetch.parquet", index=False)
    fig = plots.metric_bars(
        df,
        "workload.pattern",
        "faults_per_ws_page",
        hue="strategy",
        title=f"Remote faults per working-set page by locality strategy: {base.describe()}",
    )
    save({"prefetch": fig}, args)
    table = df.groupby(["workload.pattern", "strategy"], sort=False)["faults_per_ws_page"]
    print("Remote faults / working-set host pages (median over seeds; Hines & Gopalan: 17-21 %):")
    print(table.median().unstack().to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main(study, __doc__)
