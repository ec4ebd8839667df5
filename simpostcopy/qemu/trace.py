"""Read a destination QEMU's trace log (``qemu run --trace``): when each page request
left the fault thread and when its page was placed, the placement stream itself, and a
guest's first touches (``footprint``).

Lines look like ``PID@SECONDS.MICROS:event args`` (QEMU's log trace backend with
``-msg timestamp=on``).  Host addresses are mapped to RAM offsets through the requests,
which carry both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simpostcopy.qemu import harness, importer

LINE = re.compile(rb"^\d+@(?P<t>\d+\.\d+):(?P<event>\w+) (?P<args>.*)$", re.M)
REQUEST = re.compile(rb"HVA=(0x[0-9a-f]+) rb=(\S+) offset=(0x[0-9a-f]+)")
PLACE = re.compile(rb"host=(0x[0-9a-f]+)")
EVENTS = (
    "postcopy_ram_fault_thread_request",
    "postcopy_place_page",
    "postcopy_place_page_zero",
)


@dataclass
class Trace:
    """``requests``: one row per request (``t_s`` from the first placement, ``offset`` in
    its RAM block ``ramblock``, ``wait_s`` until its page was placed); ``placements``:
    placement times (s, sorted)."""

    requests: pd.DataFrame
    placements: np.ndarray


def read(path: str | Path) -> Trace:
    """Parse a destination log written with the EVENTS traced."""
    requests: list[tuple[float, int, int, str]] = []
    placed: dict[int, float] = {}
    for m in LINE.finditer(Path(path).read_bytes()):
        event, t = m["event"].decode(), float(m["t"])
        if event == "postcopy_ram_fault_thread_request":
            r = REQUEST.search(m["args"])
            if r:
                requests.append((t, int(r[1], 16), int(r[3], 16), r[2].decode()))
        elif event in ("postcopy_place_page", "postcopy_place_page_zero"):
            p = PLACE.search(m["args"])
            if p:
                placed.setdefault(int(p[1], 16), t)
    times = np.sort(np.fromiter(placed.values(), dtype=float, count=len(placed)))
    t0 = float(times[0]) if times.size else 0.0
    rows = [
        {
            "t_s": t - t0,
            "offset": offset,
            "wait_s": placed.get(hva, np.nan) - t,
            "ramblock": ramblock,
        }
        for t, hva, offset, ramblock in requests
    ]
    columns = ["t_s", "offset", "wait_s", "ramblock"]
    return Trace(pd.DataFrame(rows, columns=columns), times - t0)


def traced_run(
    spec: harness.RunSpec, workdir: Path, log: Path | None = None, record: Path | None = None
) -> tuple[Trace, dict]:
    """The destination's trace and the record of an earlier run (its ``log`` and
    ``record`` given), or of a new run of ``spec`` (which should trace EVENTS) with its
    record and logs in ``workdir``."""
    if log is None or record is None:
        out = workdir / "run.json"
        harness.run(spec, out, workdir=workdir / "logs")
        log, record = workdir / "logs" / "destination.log", out
    return read(log), importer.load(record)


def lumps(placements: np.ndarray, gap_s: float = 15e-6) -> dict[str, float]:
    """How the placement stream comes in lumps: the median number of pages between gaps
    longer than ``gap_s``, the median such gap and the median gap between pages."""
    gaps = np.diff(placements)
    big = np.flatnonzero(gaps > gap_s)
    return {
        "pages_per_lump": float(np.median(np.diff(big))) if big.size > 1 else float("nan"),
        "lump_gap_s": float(np.median(gaps[big])) if big.size else float("nan"),
        "page_gap_s": float(np.median(gaps)) if gaps.size else float("nan"),
    }


def request_steps(t_s: np.ndarray, page: np.ndarray) -> dict[str, float]:
    """How far apart consecutive requests are: the median page step between them (pages;
    negative where the guest asked for an earlier page) and the median time between
    them (s)."""
    order = np.argsort(t_s, kind="stable")
    t, p = np.asarray(t_s, dtype=float)[order], np.asarray(page, dtype=np.int64)[order]
    step = np.diff(p)
    return {
        "step_pages_median": float(np.median(step)) if step.size else float("nan"),
        "request_gap_s": float(np.median(np.diff(t))) if step.size else float("nan"),
    }


FOOTPRINT_COLUMNS = ["page", "anchor", "delta_pages", "gap_s"]


def footprint(requests: pd.DataFrame, zero: np.ndarray) -> pd.DataFrame:
    """A guest's first touches, in its own order, from the requests of a run whose
    background stream delivered almost nothing (a tiny postcopy cap: every first touch of
    a page not yet there is a request; ``requests`` as ``read`` gives them) and the run's
    zero-page map ``zero`` (True: the page held only zeros before the run).

    One row per requested page of ``pc.ram`` (the guest's RAM), in request order:
    ``page`` (4 KiB target page), where it lies relative to the pages holding data --
    ``anchor``, the index among them of the first one at or after it (the last one for a
    page beyond them), and ``delta_pages``, its distance from that one (0 for a page with
    data) -- so that ``relocate`` finds it again in another boot of the guest, whose data
    lies elsewhere; and ``gap_s``, the guest's own run time before it: from the placement
    of the page requested before to this request (0 for the first, and where the log has
    the request first)."""
    r = requests[requests["ramblock"] == "pc.ram"].reset_index(drop=True)
    page = (r["offset"].to_numpy(np.int64) >> 12) if len(r) else np.empty(0, np.int64)
    data = _data_pages(zero, "anchor the footprint")
    if page.size and page.max() >= zero.size:
        raise ValueError(f"requested page {int(page.max())} lies beyond the zero-page map")
    anchor = np.minimum(np.searchsorted(data, page), data.size - 1)
    placed = (r["t_s"] + r["wait_s"]).shift(1)
    gap = (r["t_s"] - placed).fillna(0.0).clip(lower=0.0).to_numpy(float)
    # A page asked for again is not a first touch: the guest's time before it goes to
    # the next first touch.
    first = ~pd.Series(page).duplicated().to_numpy()
    run = np.cumsum(gap)[first]
    gap = np.diff(run, prepend=0.0)
    table = pd.DataFrame(
        {
            "page": page[first],
            "anchor": anchor[first],
            "delta_pages": (page - data[anchor])[first],
            "gap_s": gap,
        }
    )
    return table[FOOTPRINT_COLUMNS]


def relocate(table: pd.DataFrame, zero: np.ndarray) -> np.ndarray:
    """``footprint``'s pages in another boot of the guest, whose zero-page map is
    ``zero``: each at its distance from the pages with data it was anchored to (an anchor
    beyond this map's data: its last page with data), kept within RAM."""
    data = _data_pages(zero, "relocate onto")
    anchor = np.minimum(table["anchor"].to_numpy(np.int64), data.size - 1)
    pages = data[anchor] + table["delta_pages"].to_numpy(np.int64)
    return np.clip(pages, 0, zero.size - 1)


def _data_pages(zero: np.ndarray, purpose: str) -> np.ndarray:
    """The pages holding data by a zero-page map (at least one, for ``purpose``)."""
    data = np.flatnonzero(~np.asarray(zero, dtype=bool))
    if not data.size:
        raise ValueError(f"the zero-page map has no page with data to {purpose}")
    return data
