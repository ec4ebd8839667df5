"""Figures from results and sweep frames (matplotlib; no simulation here).

A *sweep frame* is a tidy table with one row per (scenario point, seed): a column per
varied setting, named by its dotted key (``network.bandwidth_bytes_per_s``), ``seed``,
and the summary metrics of ``Result.summary`` (``downtime_s``, ``total_time_s``, ...).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# One colour per switch-over policy / strategy, the same in every figure.
STRATEGY_COLOURS = {
    "postcopy": "#1b9e77",
    "precopy": "#d95f02",
    "postcopy_after_rounds": "#7570b3",
    "postcopy_after_timeout": "#e7298a",
    "postcopy_when_stalled": "#66a61e",
}
_FALLBACK = matplotlib.colormaps["tab10"].colors

METRIC_LABELS = {
    "downtime_s": "downtime (s)",
    "total_time_s": "total migration time (s)",
    "blocktime_s": "vCPU blocktime, all at once (s)",
    "latency_mean_s": "mean fault latency (s)",
    "latency_p99_s": "p99 fault latency (s)",
    "remote_faults": "remote faults",
    "total_bytes": "bytes sent (B)",
    "precopy_rounds": "precopy rounds",
    "latency_p50_s": "median fault latency (s)",
    "faults_per_ws_page": "remote faults / working-set host pages",
    "accesses": "guest accesses completed",
    "read_wait_mean_s": "mean wait for the fault thread (s)",
}
# How a page reached the destination, the same colours everywhere.
VIA_COLOURS = {"background": "#66a61e", "request": "#d95f02", "precopy": "#7570b3"}


class PlotError(ValueError):
    """A frame lacks what the figure needs."""


def _axis_label(key: str) -> tuple[str, float]:
    """A readable axis label for a dotted key, and the factor that converts to its unit."""
    if key.endswith("bytes_per_s"):
        return f"{key} (Gbit/s)", 8 / 1e9
    if key.endswith("_bytes"):
        return f"{key} (MiB)", 1 / 2**20
    if key.endswith("_s"):
        return f"{key} (s)", 1.0
    return key, 1.0


def _value_text(key: str, value: Any) -> str:
    """``value`` of setting ``key`` in the unit its axis would use."""
    label, scale = _axis_label(key)
    if scale != 1.0 or label != key:
        unit = label[label.rindex("(") + 1 : -1]
        return f"{float(value) * scale:.3g} {unit}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def colour(strategy: Any, index: int = 0) -> Any:
    """The colour of a strategy (fixed for the known switch-over policies)."""
    return STRATEGY_COLOURS.get(str(strategy), _FALLBACK[index % len(_FALLBACK)])


def _require(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PlotError(
            f"frame lacks column(s) {', '.join(map(repr, missing))}; it has: "
            + ", ".join(map(str, frame.columns))
        )


def downtime_curve(
    frame: pd.DataFrame,
    x: str = "network.bandwidth_bytes_per_s",
    *,
    strategy: str = "migration.switchover",
    metrics: Sequence[str] = ("downtime_s", "total_time_s", "blocktime_s"),
    facet: str | None = None,
    title: str | None = None,
    band: str = "range",
) -> Figure:
    """Downtime, total time and all-vCPU blocktime against a swept setting, one line per
    switch-over policy (``metric_curves`` with those defaults)."""
    return metric_curves(
        frame, x, strategy=strategy, metrics=metrics, facet=facet, title=title, band=band
    )


def metric_curves(
    frame: pd.DataFrame,
    x: str,
    *,
    strategy: str,
    metrics: Sequence[str],
    facet: str | None = None,
    title: str | None = None,
    band: str = "range",
    logy: bool = False,
) -> Figure:
    """Metrics against a swept setting, one line per strategy, bands across seeds.

    Lines are medians across seeds; the band is the min-max range (``band="range"``) or
    the 10-90 % quantiles (``band="quantiles"``).  ``facet`` gives one row of panels per
    value of another column (a dirty rate, say).  The x axis is logarithmic when the
    values span more than a decade.
    """
    if band not in ("range", "quantiles"):
        raise PlotError(f"band: invalid value {band!r}: use 'range' or 'quantiles'")
    _require(frame, [x, strategy, *metrics, *([facet] if facet else [])])
    if frame.empty:
        raise PlotError("frame has no rows")
    facets = sorted(frame[facet].unique()) if facet else [None]
    # A bare Figure (no pyplot): no global state, any backend, shown by notebooks.
    fig = Figure(
        figsize=(4.2 * len(metrics), 3.2 * len(facets)),
        layout="constrained",
    )
    axes = fig.subplots(len(facets), len(metrics), squeeze=False)
    xlabel, xscale = _axis_label(x)
    strategies = list(dict.fromkeys(frame[strategy]))
    lo_q, hi_q = (0.0, 1.0) if band == "range" else (0.1, 0.9)
    for r, value in enumerate(facets):
        part = frame if facet is None else frame[frame[facet] == value]
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for i, name in enumerate(strategies):
                rows = part[part[strategy] == name]
                if rows.empty:
                    continue
                grouped = rows.groupby(x)[metric]
                xs = np.asarray(grouped.median().index, dtype=float) * xscale
                ax.plot(
                    xs,
                    grouped.median().to_numpy(),
                    marker="o",
                    ms=3,
                    color=colour(name, i),
                    label=str(name),
                )
                ax.fill_between(
                    xs,
                    grouped.quantile(lo_q).to_numpy(),
                    grouped.quantile(hi_q).to_numpy(),
                    color=colour(name, i),
                    alpha=0.2,
                    linewidth=0,
                )
            values = frame[x].to_numpy(dtype=float)
            if values.min() > 0 and values.max() / values.min() > 10:
                ax.set_xscale("log")
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            if facet is not None:
                ax.set_title(f"{facet} = {_value_text(facet, value)}", fontsize=9)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(title=strategy, fontsize=8, title_fontsize=8)
    seeds = frame["seed"].nunique() if "seed" in frame.columns else 1
    _suptitle(
        fig,
        title
        or f"{', '.join(METRIC_LABELS.get(m, m) for m in metrics)} vs {x}"
        f" (median; band: {'min-max' if band == 'range' else '10-90 %'} over {seeds} seeds)",
        fontsize=10,
    )
    return fig


def _suptitle(fig: Figure, text: str, fontsize: float = 9) -> None:
    """A figure title wrapped to the figure's width."""
    width = int(fig.get_figwidth() * 120 / fontsize)
    lines = [textwrap.fill(line, width) for line in text.split("\n")]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG, SVG or PDF (by the file's suffix)."""
    out = Path(path)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise PlotError(f"output file {str(out)!r}: use a .png, .svg or .pdf name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    return out


# -- figures of single results -------------------------------------------------------------------
def _named(results: Any) -> dict[str, Any]:
    """``{label: Result}`` from one Result, a list of them or a mapping."""
    if isinstance(results, Mapping):
        named = dict(results)
    elif isinstance(results, Sequence) and not isinstance(results, str):
        named = {r.scenario.describe(): r for r in results}
    else:
        named = {"": results}
    if not named:
        raise PlotError("no results to plot")
    return named


def _title(named: dict[str, Any], what: str, title: str | None) -> str:
    if title:
        return title
    if len(named) == 1:
        return f"{what}\n{next(iter(named.values())).scenario.describe()}"
    return what


def latency_cdf(results: Any, *, title: str | None = None, qemu: bool = False) -> Figure:
    """Cumulative distribution of fault latency, one curve per result (log time axis).

    Latency is the vCPU's: touch to resume; ``qemu=True`` uses QEMU's window instead
    (fault thread's read to placement, faults whose page was already placed left out).
    """
    named = _named(results)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (label, r) in enumerate(named.items()):
        fa = r.faults
        lat = (fa["placed_s"] - fa["read_s"]).to_numpy() if qemu else fa["latency_s"].to_numpy()
        lat = np.sort(lat[lat > 0] if qemu else lat) * 1e6
        if lat.size == 0:
            continue
        y = np.arange(1, lat.size + 1) / lat.size
        ax.step(
            lat,
            y,
            where="post",
            color=_FALLBACK[i % len(_FALLBACK)],
            label=f"{label} ({lat.size:,} faults)" if label else f"{lat.size:,} faults",
        )
    ax.set_xscale("log")
    ax.set_xlabel("fault latency (µs), " + ("read → placed (QEMU)" if qemu else "touch → resume"))
    ax.set_ylabel("fraction of faults ≤ latency")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    _suptitle(fig, _title(named, "Fault latency CDF", title), fontsize=9)
    return fig


def latency_histogram(
    results: Any, *, qemu_buckets: bool = True, title: str | None = None
) -> Figure:
    """Fault latencies, one bar group per result: by default in QEMU's power-of-two µs
    buckets (``postcopy-latency-dist``: bucket N counts faults in [2^N, 2^(N+1)) µs, read
    → placed); ``qemu_buckets=False`` bins the vCPU's latency (touch → resume) in 40
    log-spaced bins instead."""
    from simpostcopy.result import LATENCY_BUCKETS, _latency_dist, _qemu_window

    named = _named(results)
    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    ax = fig.subplots()
    if qemu_buckets:
        width = 0.8 / len(named)
        buckets = np.arange(LATENCY_BUCKETS)
        for i, (label, r) in enumerate(named.items()):
            counts = _latency_dist(_qemu_window(r.faults)[1])
            ax.bar(
                buckets + i * width,
                counts,
                width=width,
                color=_FALLBACK[i % len(_FALLBACK)],
                label=label or None,
            )
        ax.set_xticks(buckets[::2] + 0.4 - width / 2)
        ax.set_xticklabels([_us_text(2**n) for n in buckets[::2]], rotation=45, fontsize=7)
        ax.set_xlabel("QEMU latency bucket: read → placed, lower edge (2^N µs)")
        what = "postcopy-latency-dist"
    else:
        lat = {label: r.faults["latency_s"].to_numpy() * 1e6 for label, r in named.items()}
        every = np.concatenate([v for v in lat.values() if v.size] or [np.ones(1)])
        edges = np.geomspace(max(every.min(), 0.1), max(every.max(), 0.2), 41)
        for i, (label, us) in enumerate(lat.items()):
            ax.hist(
                us,
                bins=edges,
                histtype="step",
                color=_FALLBACK[i % len(_FALLBACK)],
                label=label or None,
            )
        ax.set_xscale("log")
        ax.set_xlabel("fault latency (µs), touch → resume")
        what = "Fault latency"
    ax.set_ylabel("faults")
    ax.grid(True, axis="y", alpha=0.3)
    if len(named) > 1:
        ax.legend(fontsize=7)
    _suptitle(fig, _title(named, what, title), fontsize=9)
    return fig


def _us_text(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:g} s"
    if us >= 1e3:
        return f"{us / 1e3:g} ms"
    return f"{us:g} µs"


def vcpu_blocktime(results: Any, *, title: str | None = None) -> Figure:
    """Per-vCPU time blocked on faults (touch → resume), one bar group per result."""
    named = _named(results)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(named)
    for i, (label, r) in enumerate(named.items()):
        vc = r.vcpus
        ax.bar(
            vc["vcpu"] + i * width,
            vc["blocked_s"],
            width=width,
            color=_FALLBACK[i % len(_FALLBACK)],
            label=label or None,
        )
    ax.set_xticks(range(max(len(r.vcpus) for r in named.values())))
    ax.set_xlabel("vCPU")
    ax.set_ylabel("time blocked on faults (s)")
    ax.grid(True, axis="y", alpha=0.3)
    if len(named) > 1:
        ax.legend(fontsize=7)
    _suptitle(fig, _title(named, "Per-vCPU blocktime", title), fontsize=9)
    return fig


def degradation(results: Any, *, title: str | None = None) -> Figure:
    """The degradation curve: share of vCPU time running per timeline window, over the
    whole migration, with the switch-over and the destination's start marked."""
    named = _named(results)
    fig = Figure(figsize=(7.2, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (label, r) in enumerate(named.items()):
        tl, c = r.timeline, _FALLBACK[i % len(_FALLBACK)]
        ax.step(
            tl["window_start_s"],
            tl["running_fraction"],
            where="post",
            color=c,
            label=label or "running fraction",
        )
        ax.axvline(r.summary["switchover_time_s"], color=c, ls="--", lw=0.8)
        ax.axvline(r.summary["total_time_s"], color=c, ls=":", lw=0.8)
    ax.set_xlabel("time since migration start (s); dashed: switch-over, dotted: end")
    ax.set_ylabel("fraction of vCPU time running")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    _suptitle(fig, _title(named, "Degradation over the migration", title), fontsize=9)
    return fig


def page_arrival_map(result: Any, *, title: str | None = None, max_points: int = 200_000) -> Figure:
    """Host page against the time it was placed, coloured by how it came (background push,
    request, precopy).  Large guests are thinned to ``max_points`` pages (every k-th)."""
    pages = result.pages
    step = max(1, math.ceil(len(pages) / max_points))
    shown = pages.iloc[::step]
    fig = Figure(figsize=(7.2, 4.8), layout="constrained")
    ax = fig.subplots()
    for via, colour_ in VIA_COLOURS.items():
        part = shown[shown["via"] == via]
        if len(part):
            ax.scatter(
                part["placed_s"],
                part["host_page"],
                s=1.5,
                color=colour_,
                label=f"{via} ({int((pages['via'] == via).sum()):,} pages)",
                linewidths=0,
                rasterized=True,
            )
    ax.set_xlabel("time placed on the destination (s)")
    ax.set_ylabel("host page")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, markerscale=6)
    what = "Page arrivals" + (f" (every {step}th page)" if step > 1 else "")
    _suptitle(fig, title or f"{what}\n{result.scenario.describe()}", fontsize=9)
    return fig


def metric_bars(
    frame: pd.DataFrame,
    category: str,
    metric: str,
    *,
    hue: str | None = None,
    title: str | None = None,
) -> Figure:
    """One bar per value of ``category`` (grouped by ``hue``): the median of ``metric``
    over seeds, with the min-max range as an error bar."""
    _require(frame, [category, metric, *([hue] if hue else [])])
    cats = list(dict.fromkeys(frame[category]))
    hues = list(dict.fromkeys(frame[hue])) if hue else [None]
    width_in = min(11.0, max(6.4, 2.0 + 0.45 * len(cats) * len(hues)))
    fig = Figure(figsize=(width_in, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(hues)
    for i, h in enumerate(hues):
        part = frame if h is None else frame[frame[hue] == h]
        g = part.groupby(category, sort=False)[metric]
        med = g.median().reindex(cats)
        lo, hi = g.min().reindex(cats), g.max().reindex(cats)
        xs = np.arange(len(cats)) + i * width
        ax.bar(
            xs,
            med,
            width=width,
            color=_FALLBACK[i % len(_FALLBACK)],
            label=None if h is None else f"{hue} = {h}",
        )
        ax.errorbar(xs, med, yerr=[med - lo, hi - med], fmt="none", ecolor="black", lw=0.8)
    ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2)
    ax.set_xticklabels([str(c) for c in cats], fontsize=8)
    ax.set_xlabel(category)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(True, axis="y", alpha=0.3)
    if hue:
        ax.legend(fontsize=7)
    _suptitle(fig, title or f"{METRIC_LABELS.get(metric, metric)} by {category}", fontsize=9)
    return fig


def metric_scatter(
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    strategy: str | None = None,
    logx: bool = True,
    logy: bool = True,
    title: str | None = None,
) -> Figure:
    """Every run as a point of ``y`` against ``x`` (two metrics), coloured by strategy."""
    _require(frame, [x, y, *([strategy] if strategy else [])])
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    groups = frame.groupby(strategy, sort=False) if strategy else [(None, frame)]
    for i, (name, part) in enumerate(groups):
        ax.scatter(
            part[x],
            part[y],
            s=14,
            color=colour(name, i),
            label=None if name is None else f"{strategy} = {name}",
        )
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(METRIC_LABELS.get(x, x))
    ax.set_ylabel(METRIC_LABELS.get(y, y))
    ax.grid(True, which="both", alpha=0.3)
    if strategy:
        ax.legend(fontsize=7)
    _suptitle(fig, title or f"{METRIC_LABELS.get(y, y)} vs {METRIC_LABELS.get(x, x)}", fontsize=9)
    return fig


def real_vs_simulated(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """One panel per compared metric: simulated against real, one point per run, with the
    line of perfect agreement (a comparison table from ``qemu.compare.compare``)."""
    _require(table, ["run", "metric", "real", "simulated"])
    metrics = list(dict.fromkeys(table["metric"]))
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(4.0 * cols, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        part = table[table["metric"] == metric]
        real, sim = part["real"].to_numpy(float), part["simulated"].to_numpy(float)
        ax.scatter(real, sim, s=14, color=_FALLBACK[0])
        finite = np.concatenate([real[np.isfinite(real)], sim[np.isfinite(sim)]])
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1)
        unit = " (s)" if metric.endswith("_s") else (" (B)" if metric.endswith("bytes") else "")
        ax.set_xlabel(f"real {metric}{unit}")
        ax.set_ylabel(f"simulated{unit}")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    _suptitle(fig, title or "Simulated vs real QEMU runs (dashed: perfect agreement)")
    return fig
