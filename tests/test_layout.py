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
    assert (np.diff(ws) > 0).all() and ws[0] >= 0 and ws[-1] < 16384
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
    with pytest.raises(ScenarioError, match=r"workload\.working_set_offset_bytes.*scattered"):
        scattered(**{"workload.working_set_offset_bytes": "4 KiB"})


# -- a measured zero-page map ----------------------------------------------------------------
def mapped(path, **over) -> Scenario:
    return Scenario().override(
        {
            "guest.ram_bytes": "8 MiB",
            "guest.host_page_bytes": "2 MiB",
            "guest.zero_page_layout": "map",
            "guest.zero_page_map": str(path),
            "workload.working_set_bytes": "4 KiB",
            **over,
        }
    )


def test_zero_map_marks_host_pages_whose_target_pages_are_all_zero(tmp_path):
    zero = np.ones(2048, dtype=bool)
    zero[5] = False  # one 4 KiB page of data in host page 0
    zero[1024:1536] = False  # all of host page 2
    np.save(tmp_path / "z.npy", zero)
    s = mapped(tmp_path / "z.npy")
    assert _zero_pages(s, None).tolist() == [False, True, False, True]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"guest\.zero_page_map: invalid value ''.*required"),
        (np.ones(100, dtype=bool), r"guest\.zero_page_map: .*shape \(100,\).*\(2048\)"),
        (np.ones(2048, dtype=np.int8), r"guest\.zero_page_map: .*holds int8"),
        (b"not numpy", r"guest\.zero_page_map: .*cannot read it as a \.npy file"),
    ],
)
def test_bad_zero_maps_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "z.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(ScenarioError, match=message):
        mapped(path if content is not None else "")


# -- a working set given page by page ----------------------------------------------------------
def listed(path, **over) -> Scenario:
    return Scenario().override(
        {
            "guest.ram_bytes": "8 MiB",
            "workload.pattern": "sequential",
            "workload.working_set_bytes": "12 KiB",
            "workload.layout": "map",
            "workload.working_set_map": str(path),
            "workload.accesses_per_vcpu": 30,
            **over,
        }
    )


def test_a_listed_working_set_is_swept_in_its_own_order(tmp_path):
    np.save(tmp_path / "ws.npy", np.array([2000, 1000, 2047]))  # as a guest's frames may lie
    # No socket buffer: each fault is served before the background reaches the next page.
    s = listed(tmp_path / "ws.npy", **{"guest.vcpus": 1, "network.inflight_bytes": 0})
    assert _working_set(s).tolist() == [2000, 1000, 2047]
    fa = simulate(s).faults
    # 2000 first, then 1000 (far behind the scan, which moved past 2000); 2047 comes
    # right after 2000 in the scan and is there before the guest asks.
    assert fa[["access", "target_page"]].values.tolist()[:2] == [[0, 2000], [1, 1000]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"workload\.working_set_map: invalid value ''.*required"),
        (np.array([1, 2]), r"lists 2 pages; workload\.working_set_bytes asks for 3"),
        (np.array([3, 3, 9]), r"distinct, within 0\.\.2047"),
        (np.array([1, 2, 2048]), r"distinct, within 0\.\.2047"),
        (np.array([-1, 2, 3]), r"distinct, within 0\.\.2047"),
        (np.array([0.5, 1, 2]), r"holds float64"),
    ],
)
def test_bad_working_set_maps_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "ws.npy"
    if content is not None:
        np.save(path, content)
    with pytest.raises(ScenarioError, match=message):
        listed(path if content is not None else "")
