"""Sweep throughput: points per second with 1 process, all cores and a local Dask cluster.

    python experiments/bench_sweep.py [--seeds N]

Runs a 1 GiB-guest grid (3 bandwidths x vanilla/preempt x N seeds) sequentially, with
one process per core and on a Dask LocalCluster of one worker per core, checks the three
give identical rows, and prints runs per second for each.  The Dask overhead per run is
measured on tiny runs (16 MiB guests) where the simulation itself costs almost nothing.
"""

from __future__ import annotations

import argparse
import os
import time

from simpostcopy.config import Scenario
from simpostcopy.sweep import Sweep, run

FACTORS = {
    "network.bandwidth_bytes_per_s": ["1 Gbit/s", "10 Gbit/s", "40 Gbit/s"],
    "network.preempt": [False, True],
}


def timed(sweep: Sweep, **kwargs: object) -> tuple[float, object]:
    t0 = time.perf_counter()
    frame = run(sweep, **kwargs)
    return time.perf_counter() - t0, frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    seeds = tuple(range(1, args.seeds + 1))
    big = Sweep(
        base=Scenario().override(
            {"guest.ram_bytes": "1 GiB", "workload.working_set_bytes": "256 MiB"}
        ),
        factors=FACTORS,
        seeds=seeds,
    )
    tiny = Sweep(
        base=Scenario().override(
            {"guest.ram_bytes": "16 MiB", "workload.working_set_bytes": "8 MiB"}
        ),
        factors=FACTORS,
        seeds=seeds,
    )
    rows = []
    for name, sweep in (("1 GiB guest", big), ("16 MiB guest", tiny)):
        n = len(sweep.runs())
        t1, f1 = timed(sweep, jobs=1)
        tn, fn = timed(sweep, jobs=cores)
        td, fd = timed(sweep, dask_local=cores)
        drop = ["wall_time_s"]
        assert f1.drop(columns=drop).equals(fn.drop(columns=drop))
        assert f1.drop(columns=drop).equals(fd.drop(columns=drop))
        rows.append((name, n, t1, tn, td))
        print(
            f"{name}: {n} runs; 1 process {n / t1:.1f} runs/s ({t1:.1f} s); "
            f"{cores} processes {n / tn:.1f} runs/s ({tn:.1f} s); "
            f"Dask LocalCluster x{cores} {n / td:.1f} runs/s ({td:.1f} s, cluster start included)",
            flush=True,
        )
    name, n, t1, tn, td = rows[-1]
    print(
        f"Dask overhead per run (tiny runs, vs local processes): {(td - tn) / n * 1e3:.1f} ms "
        f"(cluster start and teardown included)"
    )


if __name__ == "__main__":
    main()
