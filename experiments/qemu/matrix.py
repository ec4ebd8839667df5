"""Ground truth: a matrix of real QEMU postcopy migrations on this machine.

    python experiments/qemu/matrix.py [--reps N] [--quick]

1 GiB guest, 1 vCPU; workloads idle, sequential over 512 MiB, random writes over a 64 MiB
hot set; bandwidth caps 100 / 300 / 1024 MiB/s (max-bandwidth and max-postcopy-bandwidth);
vanilla and postcopy-preempt; N repetitions (default 2).  Each run's record goes to
runs/NAME.json (a run already recorded is not run again) and every run's summary to
matrix.csv, next to this script.  Uses KVM if it boots the guest, else TCG.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from simpostcopy.qemu import guest, harness, importer

HERE = Path(__file__).resolve().parent
WORKLOADS = {"idle": "idle", "seq512": "seq,512", "rand64": "rand,64,64"}
CAPS_MIB = (100, 300, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one small run (for tests)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    image = guest.build()
    rows = []
    grid = (
        [("rand64", 1024, False, 1)]
        if args.quick
        else itertools.product(WORKLOADS, CAPS_MIB, (False, True), range(1, args.reps + 1))
    )
    with tempfile.TemporaryDirectory() as logs:
        for workload, cap, preempt, rep in grid:
            name = f"{workload}_{cap}mib_{'preempt' if preempt else 'vanilla'}_r{rep}"
            path = runs_dir / f"{name}.json"
            if not path.exists():
                spec = harness.RunSpec(
                    ram_mib=256 if args.quick else 1024,
                    workload="rand,64,16" if args.quick else WORKLOADS[workload],
                    max_bandwidth_bytes_per_s=cap << 20,
                    max_postcopy_bandwidth_bytes_per_s=cap << 20,
                    preempt=preempt,
                )
                t0 = time.time()
                harness.run(spec, path, workdir=Path(logs) / name, image=image)
                print(f"{name}: {time.time() - t0:.1f} s", flush=True)
            record = importer.load(path)
            summary = importer.summary(record)
            summary["vcpu_blocktime_s"] = json.dumps(summary["vcpu_blocktime_s"])
            rows.append(
                {
                    "run": name,
                    "workload": workload,
                    "cap_mib_per_s": cap,
                    "preempt": preempt,
                    "rep": rep,
                    "accel": record.get("accel"),
                    **summary,
                }
            )
    pd.DataFrame(rows).to_csv(args.out / "matrix.csv", index=False)
    print(f"{len(rows)} runs -> {args.out / 'matrix.csv'}")


if __name__ == "__main__":
    main()
