"""Fit the model to a third of the real runs and compare it with the rest.

    python experiments/qemu/fit_and_compare.py [--params a,b] [--metrics m,n] [--rounds N]

Training set: repetition 1 at 100 and 1024 MiB/s (12 of the 36 runs of matrix.py);
held out: everything else.  Writes fitted.toml, compare_default.csv (all runs, default
scenario), compare_heldout.csv (held-out runs, fitted scenario) and compare.png next to
this script, and prints the median relative errors beside QEMU's own repeat-to-repeat
spread.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from simpostcopy import plots
from simpostcopy.config import Scenario
from simpostcopy.qemu import compare, importer

HERE = Path(__file__).resolve().parent


def spread(records: dict[str, dict]) -> pd.Series:
    """QEMU's own repeat-to-repeat spread: |r1 - r2| / mean per configuration, median."""
    rows = []
    for name, record in records.items():
        if name.endswith("_r1") and name[:-1] + "2" in records:
            a = importer.summary(record)
            b = importer.summary(records[name[:-1] + "2"])
            for metric in compare.METRICS:
                x, y = compare._value(a.get(metric)), compare._value(b.get(metric))
                if x + y > 0:
                    rows.append({"metric": metric, "spread": abs(x - y) / ((x + y) / 2)})
    return pd.DataFrame(rows).groupby("metric", sort=False)["spread"].median()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params",
        default="fault_path.place_fixed_s,network.inflight_bytes,network.bandwidth_bytes_per_s",
    )
    # Page requests are left out of the fit: the model misses them by orders of magnitude
    # for reasons no fitted setting can fix (see the README); they are still compared on
    # the held-out runs.
    parser.add_argument("--metrics", default="total_time_s,postcopy_bytes,blocktime_s")
    parser.add_argument("--loss", default="soft_l1", choices=("linear", "soft_l1"))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    records = {p.stem: importer.load(p) for p in sorted((HERE / "runs").glob("*.json"))}
    train = {
        k: v
        for k, v in records.items()
        if k.endswith("_r1") and ("_100mib" in k or "_1024mib" in k)
    }
    held = {k: v for k, v in records.items() if k not in train}
    default = compare.compare(records)
    default.to_csv(HERE / "compare_default.csv", index=False)
    keys = args.params.split(",")
    result = compare.fit(
        list(train.values()),
        keys,
        Scenario(),
        metrics=args.metrics.split(","),
        loss=args.loss,
        rounds=args.rounds,
        progress=lambda m: print(m, flush=True),
    )
    fitted = Scenario().override(result.params)
    (HERE / "fitted.toml").write_text(fitted.to_toml())
    heldout = compare.compare(held, fitted)
    heldout.to_csv(HERE / "compare_heldout.csv", index=False)
    plots.save(
        plots.real_vs_simulated(
            heldout,
            title=f"Held-out real QEMU runs ({len(held)}) vs the model fitted on {len(train)}"
            f" ({', '.join(f'{k} = {v:.3g}' for k, v in result.params.items())})",
        ),
        HERE / "compare.png",
    )

    def med(t: pd.DataFrame) -> pd.Series:
        return t.groupby("metric", sort=False)["relative_error"].apply(lambda e: e.abs().median())

    summary = pd.DataFrame(
        {
            "default, all runs": med(default),
            "fitted, held out": med(heldout),
            "QEMU repeat spread": spread(records),
        }
    )
    for k in keys:
        print(f"fitted {k} = {result.params[k]:.4g} +- {result.stderr[k]:.2g}")
    print(summary.to_string(float_format=lambda v: f"{v:.1%}"))
    summary.to_csv(HERE / "compare_summary.csv")


if __name__ == "__main__":
    main()
