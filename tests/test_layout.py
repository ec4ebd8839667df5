"""A scattered working set: its pages drawn from all of RAM, as a kernel's lie."""

from __future__ import annotations

import numpy as np
import pytest

from simpostcopy.config import Scenario, ScenarioError
from simpostcopy.engine import _working_set, _zero_pages, simulate


def scattered(**over) -> Scenario:
    return Scenario().override(
        {
            "guest.ram_bytes": "64 MiB",
            "workload.pattern": "uniform",
            "workload.working_set_bytes": "1 MiB",
            "workload.layout": "scattered",
            "workload.accesses_per_vcpu": 2000,
            **over,
        }
    )


def test_pages_are_distinct_sorted_spread_and_seeded():
    s = scattered()
    ws = _working_set(s)
    assert ws is not None and ws.size == 256 and np.unique(ws).size == 256
    assert (np.diff(ws) > 0).all() and 0 <= ws[0] and ws[-1] < 16384
    # Spread over RAM: every quarter of it holds some (P(a quarter is empty) ~ 1e-32).
    assert np.unique(ws // 4096).size == 4
    assert np.array_equal(ws, _working_set(scattered()))
    assert not np.array_equal(ws, _working_set(scattered(seed=2)))
    assert _working_set(scattered(**{"workload.layout": "contiguous"})) is None


def test_accesses_and_zero_pages_follow_the_scattered_set():
    s = scattered(
        **{"guest.zero_page_fraction": 0.5, "guest.zero_page_layout": "outside_working_set"}
    )
    ws = _working_set(s)
    r = simulate(s)
    assert len(r.faults) > 0
    assert np.isin(r.faults.target_page, ws).all()
    zero = _zero_pages(s, ws)
    assert not zero[ws].any() and zero.sum() > 0


def test_scattered_needs_no_offset():
    with pytest.raises(ScenarioError, match="workload.working_set_offset_bytes.*scattered"):
        scattered(**{"workload.working_set_offset_bytes": "4 KiB"})
