"""Figures render from small frames with the expected axes; the downtime experiment runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simpostcopy import plots
from simpostcopy.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _frame() -> pd.DataFrame:
    rows = []
    for policy in ("precopy", "postcopy", "postcopy_when_stalled"):
        for gbit in (1, 10, 100):
            for dirty in (1e8, 1e9):
                for seed in (1, 2):
                    rows.append(
                        {
                            "network.bandwidth_bytes_per_s": gbit * 1.25e8,
                            "dirty_rate_bytes_per_s": dirty,
                            "migration.switchover": policy,
                            "seed": seed,
                            "downtime_s": 1.0 / gbit + 0.01 * seed,
                            "total_time_s": 10.0 / gbit,
                            "blocktime_s": 0.0 if policy == "precopy" else 0.5 / gbit,
                        }
                    )
    return pd.DataFrame(rows)


def test_downtime_curve_draws_a_line_per_strategy_and_a_panel_per_metric(tmp_path):
    fig = plots.downtime_curve(_frame(), facet="dirty_rate_bytes_per_s")
    axes = fig.axes
    assert len(axes) == 2 * 3  # two dirty rates x three metrics
    assert [a.get_ylabel() for a in axes[:3]] == [
        "downtime (s)",
        "total migration time (s)",
        "vCPU blocktime, all at once (s)",
    ]
    assert axes[0].get_xlabel() == "network.bandwidth_bytes_per_s (Gbit/s)"
    assert axes[0].get_xscale() == "log"  # 1-100 Gbit/s
    assert axes[0].get_title() == "dirty_rate_bytes_per_s = 0.8 Gbit/s"
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["precopy", "postcopy", "postcopy_when_stalled"]
    # The line is the median over seeds, in the axis unit (Gbit/s).
    line = axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [1, 10, 100])
    np.testing.assert_allclose(line.get_ydata(), [1.015, 0.115, 0.025])
    assert line.get_color() == plots.STRATEGY_COLOURS["precopy"]
    for suffix in ("png", "svg", "pdf"):
        out = plots.save(fig, tmp_path / f"fig.{suffix}")
        assert out.stat().st_size > 1000


def test_downtime_curve_names_what_the_frame_lacks():
    with pytest.raises(plots.PlotError, match=r"frame lacks column.*'nope'"):
        plots.downtime_curve(_frame(), x="nope")
    with pytest.raises(plots.PlotError, match=r"use a \.png, \.svg or \.pdf"):
        plots.save(plots.downtime_curve(_frame()), "fig.jpeg")


def test_cli_plot_downtime(tmp_path, capsys):
    frame = tmp_path / "frame.parquet"
    _frame().to_parquet(frame)
    out = tmp_path / "d.png"
    assert main(["plot", "downtime", str(frame), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert main(["plot", "downtime", str(frame), "--x", "nope", "--out", str(out)]) == 2
    assert "frame lacks column(s) 'nope'" in capsys.readouterr().err
    assert main(["plot", "downtime", str(tmp_path / "missing.parquet")]) == 2


def test_downtime_experiment_quick(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "experiments/downtime_curves.py",
            "--quick",
            "--jobs",
            "2",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    frame = pd.read_parquet(tmp_path / "downtime_curves.parquet")
    assert (tmp_path / "downtime_curves.png").stat().st_size > 10_000
    assert len(frame) == 2 * 2 * 4  # bandwidths x dirty rates x strategies
    slow_dirty = frame[
        (frame["network.bandwidth_bytes_per_s"] == 1.25e8)
        & (frame["workload.write_fraction"] == 0.2)
    ].set_index("migration.switchover")
    # Dirtying outpaces 1 Gbit/s: precopy pays in downtime, postcopy in blocked vCPUs.
    assert slow_dirty.loc["precopy", "downtime_s"] > 10 * slow_dirty.loc["postcopy", "downtime_s"]
    assert slow_dirty.loc["precopy", "blocktime_s"] == 0
    assert slow_dirty.loc["postcopy", "blocktime_s"] > 0


@pytest.fixture(scope="module")
def small_results():
    from simpostcopy.config import Scenario
    from simpostcopy.engine import simulate

    base = {
        "guest.ram_bytes": 32 * 2**20,
        "workload.working_set_bytes": 16 * 2**20,
        "workload.pattern": "uniform",
    }
    return {
        "vanilla": simulate(Scenario().override(base)),
        "preempt": simulate(Scenario().override({**base, "network.preempt": True})),
    }


@pytest.mark.parametrize(
    ("draw", "xlabel", "ylabel"),
    [
        (plots.latency_cdf, "fault latency (µs), touch → resume", "fraction of faults ≤ latency"),
        (
            plots.latency_histogram,
            "QEMU latency bucket: read → placed, lower edge (2^N µs)",
            "faults",
        ),
        (plots.vcpu_blocktime, "vCPU", "time blocked on faults (s)"),
        (
            plots.degradation,
            "time since migration start (s); dashed: switch-over, dotted: end",
            "fraction of vCPU time running",
        ),
    ],
)
def test_result_figures_have_their_axes(small_results, tmp_path, draw, xlabel, ylabel):
    for results in (small_results, small_results["preempt"]):
        fig = draw(results)
        ax = fig.axes[0]
        assert (ax.get_xlabel(), ax.get_ylabel()) == (xlabel, ylabel)
        assert plots.save(fig, tmp_path / "f.png").stat().st_size > 1000
    # One result: the title names its scenario.
    title = draw(small_results["preempt"]).get_suptitle().replace("\n", " ")
    assert small_results["preempt"].scenario.describe() in title


def test_latency_histogram_counts_every_fault_in_qemus_window(small_results):
    r = small_results["preempt"]
    fig = plots.latency_histogram(r)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert sum(heights) == sum(r.to_qemu()["postcopy-latency-dist"])
    assert heights == r.to_qemu()["postcopy-latency-dist"]


def test_page_arrival_map_colours_by_how_pages_came(small_results, tmp_path):
    r = small_results["preempt"]
    fig = plots.page_arrival_map(r)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("time placed on the destination (s)", "host page")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("background (") and labels[1].startswith("request (")
    shown = sum(len(c.get_offsets()) for c in ax.collections)
    assert shown == len(r.pages)
    thin = plots.page_arrival_map(r, max_points=1000)
    assert sum(len(c.get_offsets()) for c in thin.axes[0].collections) <= 1000
    plots.save(fig, tmp_path / "m.svg")


def test_cli_plots_saved_results(small_results, tmp_path):
    dirs = []
    for name, r in small_results.items():
        dirs.append(str(r.save(tmp_path / name)))
    for kind in ("latency-cdf", "latency-hist", "blocktime", "timeline"):
        out = tmp_path / f"{kind}.pdf"
        assert main(["plot", kind, *dirs, "--out", str(out)]) == 0
        assert out.stat().st_size > 1000
    assert main(["plot", "arrivals", dirs[0], "--out", str(tmp_path / "a.png")]) == 0
    assert main(["plot", "arrivals", *dirs]) == 2
    assert main(["plot", "timeline", str(tmp_path / "nothing")]) == 2


def test_latency_histogram_in_log_bins_counts_every_fault(small_results, tmp_path):
    r = small_results["preempt"]
    fig = plots.latency_histogram(r, qemu_buckets=False)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("fault latency (µs), touch → resume", "faults")
    assert ax.get_xscale() == "log"
    counts = ax.patches[0].get_path().vertices[:, 1]  # the step outline of one histogram
    assert counts.max() > 0
    dirs = [str(x.save(tmp_path / n)) for n, x in small_results.items()]
    out = tmp_path / "h.png"
    assert main(["plot", "latency-hist", *dirs, "--log-bins", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_frame_figures_have_their_axes(tmp_path):
    frame = _frame()
    bars = plots.metric_bars(frame, "migration.switchover", "downtime_s", hue="seed")
    ax = bars.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("migration.switchover", "downtime (s)")
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "precopy",
        "postcopy",
        "postcopy_when_stalled",
    ]
    # Bar heights: the median over the other factors, per strategy (seed 1 first).
    expected = frame[frame.seed == 1].groupby("migration.switchover", sort=False)["downtime_s"]
    heights = [p.get_height() for p in ax.patches[:3]]
    np.testing.assert_allclose(heights, expected.median().to_numpy())
    scatter = plots.metric_scatter(
        frame, "total_time_s", "downtime_s", strategy="migration.switchover"
    )
    ax = scatter.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("total migration time (s)", "downtime (s)")
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(frame)
    table = pd.DataFrame(
        {
            "run": ["a", "a", "b", "b"],
            "metric": ["total_time_s", "postcopy_bytes"] * 2,
            "real": [1.0, 100.0, 2.0, 200.0],
            "simulated": [1.1, 90.0, 2.2, 210.0],
        }
    )
    fig = plots.real_vs_simulated(table)
    labels = [(a.get_xlabel(), a.get_ylabel()) for a in fig.axes if a.get_visible()]
    assert labels == [
        ("real total_time_s (s)", "simulated (s)"),
        ("real postcopy_bytes (B)", "simulated (B)"),
    ]
    for name, f in (("bars", bars), ("scatter", scatter), ("rvs", fig)):
        assert plots.save(f, tmp_path / f"{name}.svg").stat().st_size > 1000
