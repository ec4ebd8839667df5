"""Background scan order after a request, for each locality strategy (exact page order)."""

from __future__ import annotations

import pytest
from conftest import KIB, tiny

from simpostcopy.engine import simulate

# 16 pages; the paced background sends page 0 at t=0, then one page a second.  The
# vCPU's first access faults on page 8, whose request reaches the source at 215 us.
BASE = dict(guest__ram_bytes=64 * KIB, workload__working_set_offset_bytes=8 * 4 * KIB)


def send_order(**changes) -> list[int]:
    r = simulate(tiny(**{**BASE, **changes}))
    return r.pages.sort_values("sent_s").host_page.tolist()


@pytest.mark.parametrize(
    ("locality", "preempt", "expected"),
    [
        ("none", False, [0, 8, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]),
        ("none", True, [0, 8, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]),
        # QEMU vanilla: the scan continues after the requested page, then wraps round.
        ("continue", False, [0, 8, 9, 10, 11, 12, 13, 14, 15, 1, 2, 3, 4, 5, 6, 7]),
        # With preempt the urgent page bypasses the main stream, which keeps its place.
        ("continue", True, [0, 8, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]),
        # The 10.1 hint moves the main stream after the urgent page in both modes.
        ("hint", False, [0, 8, 9, 10, 11, 12, 13, 14, 15, 1, 2, 3, 4, 5, 6, 7]),
        ("hint", True, [0, 8, 9, 10, 11, 12, 13, 14, 15, 1, 2, 3, 4, 5, 6, 7]),
        # Bubbling: outwards from the pivot, forward first, alternating.
        ("bubbling", False, [0, 8, 9, 7, 10, 6, 11, 5, 12, 4, 13, 3, 14, 2, 15, 1]),
    ],
)
def test_scan_order_after_one_request(locality: str, preempt: bool, expected: list[int]):
    order = send_order(migration__locality=locality, network__preempt=preempt)
    assert order == expected


def test_bubbling_round_robins_over_recent_pivots():
    # A 12-page working set from page 4, swept by two vCPUs that start half-way apart:
    # vCPU 0 faults on page 4, vCPU 1 on page 10.
    order = send_order(
        guest__vcpus=2,
        workload__working_set_offset_bytes=4 * 4 * KIB,
        workload__working_set_bytes=16 * 4 * KIB - 4 * 4 * KIB,
        migration__locality="bubbling",
        migration__bubbling_pivots=2,
    )
    # Requests for 4 (vCPU 0) and 10 (vCPU 1 starts half-way through a 12-page set) are
    # served one fault-thread step apart.  Cursors take turns: newest pivot (10) forward
    # and backward, then pivot 4 forward and backward, and round again.
    assert order[:3] == [0, 4, 10]
    assert order[3:11] == [11, 9, 5, 3, 12, 8, 6, 2]
