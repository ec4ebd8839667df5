"""Command line: ``simpostcopy run|scenario|sweep|plot|calibrate ...``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from simpostcopy import __version__
from simpostcopy.config import Scenario, ScenarioError, parse_override
from simpostcopy.result import Result


def _scenario(args: argparse.Namespace) -> Scenario:
    """The scenario file (or the built-in default) with every ``--set`` applied at once.

    All overrides are validated together, so settings that depend on each other (RAM
    and working set, say) can change in one command; a repeated key: the last one wins.
    ``--calibration`` applies before the overrides, so ``--set`` can still adjust a stage.
    """
    scenario = Scenario.from_toml(args.scenario) if args.scenario else Scenario()
    if getattr(args, "calibration", None):
        scenario = scenario.with_calibration(args.calibration)
    return scenario.override(dict(parse_override(text) for text in args.set))


def _fmt_time(x: float) -> str:
    if math.isnan(x):
        return "-"
    if x >= 1:
        return f"{x:.3f} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3f} ms"
    return f"{x * 1e6:.1f} us"


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def summary_table(result: Result) -> str:
    """A readable two-column table of the summary, units included."""
    s, sc = result.summary, result.scenario
    blocked = ", ".join(_fmt_time(x) for x in s["vcpu_blocktime_s"])
    rows: list[tuple[str, Any]] = [
        ("scenario", sc.describe()),
        ("total time", _fmt_time(s["total_time_s"])),
        ("setup time", _fmt_time(s["setup_time_s"])),
        (
            "switch-over",
            f"{s['switchover_policy']}: completed by {s['completed_by']}"
            f" ({s['switchover_reason']}) at {_fmt_time(s['switchover_time_s'])}",
        ),
        ("precopy rounds", s["precopy_rounds"]),
        ("downtime", _fmt_time(s["downtime_s"])),
        ("precopy bytes", _fmt_bytes(s["precopy_bytes"])),
        ("downtime bytes", _fmt_bytes(s["downtime_bytes"])),
        ("postcopy bytes", _fmt_bytes(s["postcopy_bytes"])),
        ("pages fetched after switch-over", s["pages_fetched_after_switchover"]),
        ("remote faults", s["remote_faults"]),
        ("  by own request", s["faults_by_request"]),
        ("  by another vCPU's request", s["faults_by_other_request"]),
        ("  by background push", s["faults_by_background"]),
        ("postcopy requests", s["postcopy_requests"]),
        ("  already sent (duplicate)", s["duplicate_requests"]),
        ("fault latency mean", _fmt_time(s["latency_mean_s"])),
        ("fault latency p50", _fmt_time(s["latency_p50_s"])),
        ("fault latency p99", _fmt_time(s["latency_p99_s"])),
        ("blocktime (all vCPUs)", _fmt_time(s["blocktime_s"])),
        ("blocktime per vCPU", blocked),
        ("guest accesses", s["accesses"]),
        ("fault-path costs", s["fault_path_source"]),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _run(args: argparse.Namespace) -> int:
    from simpostcopy.engine import simulate  # keeps `--help` fast

    result = simulate(_scenario(args), engine=args.engine, timeline_window_s=args.timeline_window)
    if args.out:
        result.save(args.out)
    if args.json:
        print(result.summary_json())
    else:
        print(summary_table(result))
        if args.out:
            print(
                f"\nwrote {args.out}/: scenario.toml summary.json query-migrate.json "
                "faults.parquet vcpus.parquet timeline.parquet pages.parquet"
            )
    return 0


def _print_scenario(args: argparse.Namespace) -> int:
    print(_scenario(args).to_toml(), end="")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _calibrate(args: argparse.Namespace) -> int:
    from simpostcopy import native

    try:
        return _calibrate_native(args)
    except native.NativeError as exc:  # permissions, kernel support, page server, ...
        raise CliError(str(exc)) from None


def _calibrate_native(args: argparse.Namespace) -> int:
    from simpostcopy import calibration, native

    if args.action == "serve":
        print(f"serving pages on {args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr)
        native.serve(args.host, args.port, calibration.parse_sizes(args.page_sizes)[0])
        return 0
    plan = _calibration_plan(args)
    progress = None
    if not args.no_progress:
        from functools import partial

        from tqdm import tqdm

        progress = partial(tqdm, desc="calibrating", unit="run", file=sys.stderr)
    cal = calibration.calibrate(plan, progress=progress)
    cal.save(args.out)
    if args.json:
        print(json.dumps(cal.summary_records(), indent=1, default=calibration.json_default))
    else:
        print(cal.table())
        for note in cal.notes:
            print(f"note: {note}")
        print(f"\nwrote {args.out}")
    return 0


def _calibration_plan(args: argparse.Namespace) -> Any:
    from simpostcopy import calibration
    from simpostcopy.units import UnitError

    try:
        network: Any = None
        if args.network == "loopback":
            network = "loopback"
        elif args.network:
            host, sep, port = args.network.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(
                    f"--network: invalid value {args.network!r}: use HOST:PORT or loopback"
                )
            network = (host, int(port))
        return calibration.Plan(
            samples=args.samples,
            page_sizes=calibration.parse_sizes(args.page_sizes),
            threads=tuple(int(x) for x in args.threads.split(",")),
            modes=calibration.sequence_arg(args.modes, ("read", "poll", "busy"), "--modes"),
            affinities=calibration.sequence_arg(
                args.affinity, ("scheduler", "same", "different"), "--affinity"
            ),
            network=network,
        )
    except (ValueError, UnitError) as exc:
        raise CliError(str(exc)) from None


class CliError(ValueError):
    """A bad command-line value, reported in one line with exit status 2."""


def _positive_time(text: str) -> float:
    from simpostcopy.units import UnitError, parse_time

    try:
        value = parse_time(text)
    except UnitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


FRAME_PLOTS = ("downtime", "metric")
RESULT_PLOTS = {
    "latency-cdf": "latency_cdf",
    "latency-hist": "latency_histogram",
    "blocktime": "vcpu_blocktime",
    "timeline": "degradation",
    "arrivals": "page_arrival_map",
}


def _plot(args: argparse.Namespace) -> int:
    """``simpostcopy plot KIND SOURCE...``: a figure from a sweep frame or saved results."""
    import pandas as pd

    from simpostcopy import plots

    try:
        if args.kind in FRAME_PLOTS:
            if len(args.sources) != 1:
                raise CliError(f"plot {args.kind}: give one sweep frame (.parquet or .csv)")
            path = args.sources[0]
            try:
                frame = (
                    pd.read_csv(path) if path.lower().endswith(".csv") else pd.read_parquet(path)
                )
            except (OSError, ValueError) as exc:
                raise CliError(f"cannot read frame {path!r}: {exc}") from None
            metrics = [m for m in args.metrics.split(",") if m]
            fig = plots.metric_curves(
                frame,
                args.x,
                strategy=args.strategy,
                metrics=metrics,
                facet=args.facet,
                title=args.title,
                band=args.band,
            )
        else:
            results = {Path(d).name: Result.load(d) for d in args.sources}
            draw = getattr(plots, RESULT_PLOTS[args.kind])
            if args.kind == "arrivals":
                if len(results) != 1:
                    raise CliError("plot arrivals: give one result directory")
                fig = draw(next(iter(results.values())), title=args.title)
            else:
                extra = {"qemu_buckets": not args.log_bins} if args.kind == "latency-hist" else {}
                fig = draw(
                    results if len(results) > 1 else next(iter(results.values())),
                    title=args.title,
                    **extra,
                )
        out = plots.save(fig, args.out)
    except plots.PlotError as exc:
        raise CliError(str(exc)) from None
    print(out)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """``simpostcopy sweep SWEEP.toml --out results.parquet``."""
    import time

    from simpostcopy.sweep import Sweep, run

    sweep = Sweep.from_toml(args.sweep)
    t0 = time.perf_counter()
    frame = run(
        sweep,
        args.out,
        jobs=args.jobs,
        keep=[k for k in (args.keep or "").split(",") if k],
        scheduler=args.scheduler,
        dask_local=args.dask_local,
        progress=not args.no_progress,
        flush_every=args.flush_every,
    )
    failed = int(frame["error"].notna().sum()) if "error" in frame else 0
    print(f"{len(frame)} runs ({failed} failed) in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0


def _qemu(args: argparse.Namespace) -> int:
    """``simpostcopy qemu build-guest|run|import``."""
    from simpostcopy.qemu import guest, harness, importer

    if args.action == "build-guest":
        image = guest.build(args.guest_dir)
        print(f"kernel {image.kernel}\ninitrd {image.initrd}")
    elif args.action == "run":
        spec = harness.RunSpec(
            ram_mib=args.ram_mib,
            vcpus=args.vcpus,
            workload=args.workload,
            max_bandwidth_bytes_per_s=args.max_bandwidth,
            max_postcopy_bandwidth_bytes_per_s=args.max_postcopy_bandwidth,
            preempt=args.preempt,
            precopy_s=args.precopy_s,
            accel=args.accel,
            trace=tuple(t for t in (args.trace or "").split(",") if t),
        )
        record = harness.run(spec, Path(args.out), image=guest.build(args.guest_dir))
        print(json.dumps(importer.summary(asdict(record)), indent=2))
        print(f"record: {args.out}")
    else:
        if not args.records:
            raise CliError("qemu import: give at least one run record or query-migrate JSON")
        for path in args.records:
            s = importer.summary(importer.load(path))
            if args.json:
                print(json.dumps({"record": path, **s}, allow_nan=True))
            else:
                print(path)
                for k, v in s.items():
                    print(f"  {k:<24} {v}")
    return 0


def _records(paths: Sequence[str]) -> dict[str, Any]:
    from simpostcopy.qemu import importer

    return {Path(p).stem: importer.load(p) for p in paths}


def _compare(args: argparse.Namespace) -> int:
    """``simpostcopy compare REAL... [--scenario S.toml]``: simulation beside reality."""
    from simpostcopy import plots
    from simpostcopy.qemu import compare

    base = Scenario.from_toml(args.scenario) if args.scenario else None
    table = compare.compare(_records(args.records), base, workers=args.workers)
    if args.json:
        print(table.to_json(orient="records"))
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        errors = table.groupby("metric", sort=False)["relative_error"]
        print("\nmedian |relative error| per metric:")
        print(errors.apply(lambda e: e.abs().median()).to_string(float_format=lambda v: f"{v:.1%}"))
    if args.out:
        print(plots.save(plots.real_vs_simulated(table), args.out))
    return 0


def _fit(args: argparse.Namespace) -> int:
    """``simpostcopy fit REAL... --params a,b``: fit settings to real runs."""
    from simpostcopy import calibration
    from simpostcopy.qemu import compare

    base = Scenario.from_toml(args.scenario) if args.scenario else Scenario()
    keys = [k for k in args.params.split(",") if k]
    if not keys:
        raise CliError("--params: give at least one dotted setting key")
    try:
        metrics = (
            calibration.sequence_arg(args.metrics, tuple(compare.METRICS), "--metrics")
            if args.metrics is not None
            else compare.FIT_METRICS
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    result = compare.fit(
        list(_records(args.records).values()),
        keys,
        base,
        metrics=metrics,
        loss=args.loss,
        rounds=args.rounds,
        progress=lambda m: print(m, flush=True),
        workers=args.workers,
    )
    for key in keys:
        print(f"{key} = {result.params[key]:.6g} +- {result.stderr[key]:.2g}")
    print(f"loss {result.loss:.4g} after {result.evaluations} evaluations")
    Path(args.out).write_text(result.scenario.to_toml())
    print(f"calibrated scenario -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simpostcopy",
        description="Discrete-event simulator of QEMU/KVM postcopy live migration.",
    )
    parser.add_argument("--version", action="version", version=f"simpostcopy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def scenario_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("scenario", nargs="?", help="scenario TOML file (default: built-in)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a setting, e.g. --set network.bandwidth_bytes_per_s='25 Gbit/s'",
        )

    run = sub.add_parser("run", help="simulate one migration and print its summary")
    scenario_args(run)
    run.add_argument("--out", metavar="DIR", help="write scenario, summary and tables to DIR")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument(
        "--timeline-window",
        type=_positive_time,
        default=0.01,
        metavar="TIME",
        help="width of the degradation-timeline windows (default 10 ms)",
    )
    run.add_argument(
        "--engine",
        choices=["fast", "reference"],
        default="fast",
        help="fast (default) or reference: one event per page and per access, for checking",
    )
    run.add_argument(
        "--calibration",
        metavar="FILE",
        help="take the fault-path costs from a calibration file (simpostcopy calibrate)",
    )
    run.set_defaults(func=_run)

    show = sub.add_parser("scenario", help="print the resolved scenario as TOML")
    scenario_args(show)
    show.add_argument("--calibration", metavar="FILE", help="apply a calibration file")
    show.set_defaults(func=_print_scenario)

    cal = sub.add_parser(
        "calibrate",
        help="time real userfaultfd round trips on this host (or: calibrate serve)",
        description="Time real userfaultfd round trips and write a calibration file. "
        "'simpostcopy calibrate serve' runs the page server for --network on another host.",
    )
    cal.add_argument("action", nargs="?", choices=["run", "serve"], default="run")
    cal.add_argument("--out", default="calib.json", help="calibration file (default calib.json)")
    cal.add_argument("--samples", type=_positive_int, default=2000, help="faults per run")
    cal.add_argument("--page-sizes", default="4KiB,2MiB", help="e.g. 4KiB,2MiB")
    cal.add_argument("--threads", default="1,2,4", help="faulting-thread counts, e.g. 1,2,4")
    cal.add_argument("--modes", default="read,poll,busy", help="handler modes")
    cal.add_argument("--affinity", default="scheduler,same,different", help="thread placements")
    cal.add_argument(
        "--network",
        metavar="HOST:PORT|loopback",
        help="also time the request/response hop to a page server",
    )
    cal.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    cal.add_argument("--no-progress", action="store_true", help="no progress bar")
    cal.add_argument("--host", default="0.0.0.0", help="serve: address to listen on")
    cal.add_argument("--port", type=int, default=4444, help="serve: TCP port (default 4444)")
    cal.set_defaults(func=_calibrate)

    sw = sub.add_parser(
        "sweep",
        help="run a parameter sweep (grid or random design x seeds); resumable",
        description="Run every (point, seed) of a sweep file; rows are saved as they come, "
        "and rerunning the same command runs only what is missing.",
    )
    sw.add_argument("sweep", help="sweep TOML file ([sweep], [base], [factors])")
    sw.add_argument("--out", default="results.parquet", help="results parquet file")
    sw.add_argument(
        "--jobs", type=_positive_int, help="local worker processes (default: all cores)"
    )
    sw.add_argument("--keep", metavar="faults", help="also save each run's fault table")
    sw.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run on a Dask cluster")
    sw.add_argument(
        "--dask-local", type=_positive_int, metavar="N", help="run on a local Dask cluster"
    )
    sw.add_argument(
        "--flush-every", type=_positive_int, default=16, help="rows per saved part (default 16)"
    )
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.set_defaults(func=_sweep)

    qemu = sub.add_parser(
        "qemu",
        help="real QEMU postcopy migrations: build-guest, run, import",
        description="build-guest: the tiny test guest (Debian kernel + initramfs); run: one"
        " real postcopy migration between two local QEMUs, recorded as JSON; import: a run"
        " record or any query-migrate JSON in the summary schema.",
    )
    qemu.add_argument("action", choices=["build-guest", "run", "import"])
    qemu.add_argument("records", nargs="*", help="import: run records or query-migrate JSON")
    qemu.add_argument("--guest-dir", help="where the test guest is built (default: ~/.cache)")
    qemu.add_argument("--out", default="run.json", help="run: the record to write")
    qemu.add_argument("--ram-mib", type=_positive_int, default=1024)
    qemu.add_argument("--vcpus", type=_positive_int, default=1)
    qemu.add_argument("--workload", default="idle", help="idle | seq,MIB | rand,MIB,HOTMIB")
    qemu.add_argument("--max-bandwidth", type=_positive_int, default=128 << 20, help="bytes/s")
    qemu.add_argument("--max-postcopy-bandwidth", type=int, default=0, help="bytes/s, 0: none")
    qemu.add_argument("--preempt", action="store_true", help="postcopy-preempt capability")
    qemu.add_argument("--precopy-s", type=float, default=0.0, help="precopy before the switch")
    qemu.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    qemu.add_argument(
        "--trace", help="QEMU trace events to log with timestamps, comma-separated (run)"
    )
    qemu.add_argument("--json", action="store_true", help="import: one JSON line per record")
    qemu.set_defaults(func=_qemu)

    cmp = sub.add_parser(
        "compare",
        help="simulate the scenarios matching real QEMU runs; side-by-side table and figure",
    )
    cmp.add_argument("records", nargs="+", help="run records (simpostcopy qemu run)")
    cmp.add_argument("--scenario", help="base scenario TOML (e.g. from 'simpostcopy fit')")
    cmp.add_argument(
        "--workers", type=_positive_int, default=1, help="processes simulating the runs"
    )
    cmp.add_argument("--out", help="also draw simulated vs real (.png, .svg, .pdf)")
    cmp.add_argument("--json", action="store_true", help="the table as JSON records")
    cmp.set_defaults(func=_compare)

    fitp = sub.add_parser(
        "fit", help="fit scenario settings to real QEMU runs (least squares on log errors)"
    )
    fitp.add_argument("records", nargs="+", help="run records to fit on")
    fitp.add_argument("--params", required=True, help="dotted keys, e.g. network.inflight_bytes")
    fitp.add_argument("--scenario", help="base scenario TOML")
    fitp.add_argument(
        "--metrics",
        help="what the fit matches (comma-separated summary keys; default: total time,"
        " postcopy bytes, requests, blocktime)",
    )
    fitp.add_argument(
        "--loss",
        default="linear",
        help="linear: squared log errors; soft_l1: robust to runs the model cannot explain",
    )
    fitp.add_argument("--rounds", type=_positive_int, default=3, help="search passes")
    fitp.add_argument(
        "--workers", type=_positive_int, default=1, help="processes simulating the runs"
    )
    fitp.add_argument("--out", default="fitted.toml", help="the calibrated scenario")
    fitp.set_defaults(func=_fit)

    plot = sub.add_parser(
        "plot",
        help="draw a figure from a sweep frame or from saved results (run --out DIR)",
        description="Frame figures (downtime, metric) read a sweep frame: one row per run, a"
        " column per varied setting (dotted key), summary metrics as columns. Result figures"
        " (latency-cdf, latency-hist, blocktime, timeline, arrivals) read directories written"
        " by 'simpostcopy run --out DIR'; several directories are compared, named by folder.",
    )
    plot.add_argument("kind", choices=[*FRAME_PLOTS, *RESULT_PLOTS], help="what to draw")
    plot.add_argument("sources", nargs="+", help="sweep frame, or result directories")
    plot.add_argument("--x", default="network.bandwidth_bytes_per_s", help="x-axis column")
    plot.add_argument(
        "--strategy", default="migration.switchover", help="one line per value of this column"
    )
    plot.add_argument("--facet", help="one row of panels per value of this column")
    plot.add_argument(
        "--metrics",
        default="downtime_s,total_time_s,blocktime_s",
        help="comma-separated summary metrics, one panel each",
    )
    plot.add_argument("--band", choices=["range", "quantiles"], default="range")
    plot.add_argument(
        "--log-bins",
        action="store_true",
        help="latency-hist: the vCPU's latency (touch -> resume) in log bins, not QEMU's buckets",
    )
    plot.add_argument("--title", help="figure title")
    plot.add_argument("--out", default="figure.png", help="output .png, .svg or .pdf")
    plot.set_defaults(func=_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with a one-line error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from simpostcopy.calibration import CalibrationError
    from simpostcopy.qemu.errors import QemuError

    try:
        return args.func(args)
    except (ScenarioError, CalibrationError, QemuError, CliError) as e:
        print(f"simpostcopy: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
