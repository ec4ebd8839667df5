"""Plumbing shared by the named experiments: arguments, a resumable sweep, figures."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from simpostcopy import plots
from simpostcopy.sweep import Sweep, run

HERE = Path(__file__).resolve().parent


def arguments(doc: str) -> argparse.Namespace:
    """``--quick`` (a small version, for the test suite), ``--jobs``, ``--out``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small version (for tests)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output folder")
    return parser.parse_args()


def frame(name: str, sweep: Sweep, args: argparse.Namespace) -> pd.DataFrame:
    """Run ``sweep`` into OUT/NAME.parquet (resumable: rerunning skips what is saved)."""
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = run(sweep, args.out / f"{name}.parquet", jobs=args.jobs, progress=sys.stderr.isatty())
    failed = result["error"].notna().sum()
    print(f"{name}: {len(result)} runs ({failed} failed) in {time.perf_counter() - t0:.1f} s")
    if failed:
        print(result.loc[result["error"].notna(), "error"].head().to_string())
    return result[result["error"].isna()].reset_index(drop=True)


def save(figures: dict[str, Figure], args: argparse.Namespace) -> None:
    for name, fig in figures.items():
        print(plots.save(fig, args.out / f"{name}.png"))


def main(body: Callable[[argparse.Namespace], None], doc: str) -> None:
    body(arguments(doc))


def medians(df: pd.DataFrame, by: list[str], cols: list[str], heading: str) -> None:
    """Print the medians over seeds of ``cols`` per ``by`` group."""
    print(heading)
    print(df.groupby(by, dropna=False)[cols].median().to_string(float_format=lambda v: f"{v:.6g}"))
