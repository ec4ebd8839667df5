"""Calibrated vs default fault path: what measuring this host changes.

    python experiments/calibration_effect.py [--quick] [--jobs N] [--out DIR]

Times real userfaultfd round trips on this host (``simpostcopy calibrate``: 4 KiB pages,
QEMU-like poll handler, loopback page server), then runs the same scenarios with the
defaults and with the calibration (empirical distributions of each stage) at 1-100 Gbit/s,
vanilla and preempt.  Local costs are microseconds, so they matter where the network is
fast: preempt at high bandwidth.  Writes calibration_effect.parquet, the calibration file
and calibration_effect.png to DIR (default experiments/results).  Needs userfaultfd; it
says why and stops where the host refuses it.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
from _study import frame, main, medians, save

from simpostcopy import native, plots
from simpostcopy.calibration import Plan, calibrate
from simpostcopy.config import Scenario
from simpostcopy.sweep import Sweep


def study(args: argparse.Namespace) -> None:
    reason = native.unavailable_reason()
    if reason is None:
        try:
            native.probe_uffd()
        except native.NativeError as exc:
            reason = str(exc)
    if reason:
        print(f"calibration_effect: skipped: {reason}")
        sys.exit(3)
    args.out.mkdir(parents=True, exist_ok=True)
    cal_path = args.out / "calibration_effect_calib.json"
    plan = Plan(
        samples=500 if args.quick else 4000,
        page_sizes=(4096,),
        threads=(1,),
        modes=("poll",),
        affinities=("scheduler",),
        network="loopback",
    )
    calibrate(plan).save(cal_path)
    print(f"calibration written to {cal_path}")
    base = Scenario().override(
        {
            "guest.ram_bytes": "128 MiB" if args.quick else "1 GiB",
            "guest.vcpus": 2,
            "workload.pattern": "uniform",
            "workload.working_set_bytes": "128 MiB" if args.quick else "1 GiB",
        }
    )
    gbits = (1, 100) if args.quick else (1, 10, 25, 100)
    factors = {
        "network.bandwidth_bytes_per_s": [g * 1.25e8 for g in gbits],
        "network.preempt": [False, True],
    }
    seeds = (1,) if args.quick else (1, 2, 3)
    frames = []
    for label, scenario in (
        ("defaults", base),
        ("calibrated", base.with_calibration(cal_path)),
    ):
        sweep = Sweep(base=scenario, factors=factors, seeds=seeds)
        frames.append(frame(f"calibration_effect_{label}", sweep, args).assign(fault_path=label))
    df = pd.concat(frames, ignore_index=True)
    df.to_parquet(args.out / "calibration_effect.parquet", index=False)
    preempt = df[df["network.preempt"]]
    fig = plots.metric_curves(
        preempt,
        "network.bandwidth_bytes_per_s",
        strategy="fault_path",
        metrics=["latency_p50_s", "latency_mean_s", "remote_faults"],
        title=f"Default vs calibrated fault path, preempt: {base.describe()}",
    )
    save({"calibration_effect": fig}, args)
    medians(
        df,
        ["network.preempt", "network.bandwidth_bytes_per_s", "fault_path"],
        ["latency_p50_s", "latency_mean_s", "remote_faults", "blocktime_s"],
        "Medians over seeds:",
    )


if __name__ == "__main__":
    main(study, __doc__)
