"""The idle test guest's footprint: which pages it touches first, in what order, and how
much of its own run time passes between them -- what the comparison's idle guest replays.

    python experiments/qemu/idle_footprint.py [--cap-mib 1] [--log destination.log
        --record run.json]

Runs one TCG postcopy migration of the idle 1 GiB guest (switch-over after its first
100 ms of precopy) with a postcopy cap so low (1 MiB/s: ~25 pages of data per 100 ms
window) that the background stream delivers almost nothing while the guest runs through
its first touches, and QEMU's fault-thread requests and placements traced: every page the
guest touches that holds data is then requested, in the guest's own order. About 90 s
(the stream takes that long to finish at 1 MiB/s). Or reads an earlier run's log and
record. Writes:

- simpostcopy/qemu/idle_footprint.csv: the footprint (trace.footprint: page, where it
  lies among the pages holding data, the guest's run time before its first touch);
- experiments/qemu/idle_footprint_requests.csv: the run's requests (time, RAM block,
  offset, wait until placed), from which the footprint is derived;
- experiments/qemu/idle_footprint_run.json: the run's record (with its zero-page map).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from simpostcopy.qemu import harness, importer, trace
from simpostcopy.qemu.compare import IDLE_FOOTPRINT, IDLE_TRACE_RATE

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-mib", type=float, default=1.0, help="postcopy cap, MiB/s")
    parser.add_argument("--log", type=Path, help="an earlier run's destination log")
    parser.add_argument("--record", type=Path, help="that run's record")
    args = parser.parse_args()
    spec = harness.RunSpec(
        ram_mib=1024,
        workload="idle",
        max_bandwidth_bytes_per_s=100 << 20,
        max_postcopy_bandwidth_bytes_per_s=int(args.cap_mib * (1 << 20)),
        accel="tcg",
        trace=trace.EVENTS,
    )
    with tempfile.TemporaryDirectory() as tmp:
        real, record = trace.traced_run(spec, Path(tmp), args.log, args.record)
    requests = real.requests
    zero = harness.decode_zero_map(record["guest"]["zero_map"], record["spec"]["ram_mib"] << 8)
    table = trace.footprint(requests, zero)
    # Temporary paths, and ~1,700 query-migrate polls the footprint does not need.
    for key in ("logs", "samples"):
        record.pop(key, None)
    (HERE / "idle_footprint_run.json").write_text(json.dumps(record, indent=1) + "\n")
    requests.to_csv(HERE / "idle_footprint_requests.csv", index=False, float_format="%.6f")
    table.to_csv(IDLE_FOOTPRINT, index=False, float_format="%.6f")
    summary = importer.summary(record)
    busy = table["gap_s"].cumsum().to_numpy()
    print(
        f"{len(requests)} requests (QEMU counted {summary['postcopy_requests']}), "
        f"{len(table)} distinct pages; the guest's run time between first touches: median "
        f"{table['gap_s'].median() * 1e3:.2f} ms; run time until the first touch of page "
        + ", ".join(
            f"{n}: {busy[n - 1]:.3f} s" for n in (10, 50, 100, len(table)) if n <= len(busy)
        )
    )
    print(f"replayed at {IDLE_TRACE_RATE:.0f} accesses/s; wrote {IDLE_FOOTPRINT}")


if __name__ == "__main__":
    main()
