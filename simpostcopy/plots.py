"""Figures from results and sweep frames (matplotlib; no simulation here).

A *sweep frame* is a tidy table with one row per (scenario point, seed): a column per
varied setting, named by its dotted key (``network.bandwidth_bytes_per_s``), ``seed``,
and the summary metrics of ``Result.summary`` (``downtime_s``, ``total_time_s``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
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
}


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
            ax.set_xlabel(xlabel)
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
            if facet is not None:
                ax.set_title(f"{facet} = {_value_text(facet, value)}", fontsize=9)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(title=strategy, fontsize=8, title_fontsize=8)
    seeds = frame["seed"].nunique() if "seed" in frame.columns else 1
    fig.suptitle(
        title
        or f"{', '.join(METRIC_LABELS.get(m, m) for m in metrics)} vs {x}"
        f" (median; band: {'min-max' if band == 'range' else '10-90 %'} over {seeds} seeds)",
        fontsize=10,
    )
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG, SVG or PDF (by the file's suffix)."""
    out = Path(path)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise PlotError(f"output file {str(out)!r}: use a .png, .svg or .pdf name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    return out
