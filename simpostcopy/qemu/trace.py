"""Read a destination QEMU's trace log (``qemu run --trace``): when each page request
left the fault thread and when its page was placed, and the placement stream itself.

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

LINE = re.compile(rb"^\d+@(?P<t>\d+\.\d+):(?P<event>\w+) (?P<args>.*)$", re.M)
REQUEST = re.compile(rb"HVA=(0x[0-9a-f]+) rb=\S+ offset=(0x[0-9a-f]+)")
PLACE = re.compile(rb"host=(0x[0-9a-f]+)")
EVENTS = (
    "postcopy_ram_fault_thread_request",
    "postcopy_place_page",
    "postcopy_place_page_zero",
)


@dataclass
class Trace:
    """``requests``: one row per request (``t_s`` from the first placement, ``offset``,
    ``wait_s`` until its page was placed); ``placements``: placement times (s, sorted)."""

    requests: pd.DataFrame
    placements: np.ndarray


def read(path: str | Path) -> Trace:
    """Parse a destination log written with the EVENTS traced."""
    requests: list[tuple[float, int, int]] = []
    placed: dict[int, float] = {}
    for m in LINE.finditer(Path(path).read_bytes()):
        event, t = m["event"].decode(), float(m["t"])
        if event == "postcopy_ram_fault_thread_request":
            r = REQUEST.search(m["args"])
            if r:
                requests.append((t, int(r[1], 16), int(r[2], 16)))
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
        }
        for t, hva, offset in requests
    ]
    return Trace(pd.DataFrame(rows, columns=["t_s", "offset", "wait_s"]), times - t0)


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
