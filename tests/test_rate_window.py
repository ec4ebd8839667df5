"""QEMU's postcopy rate limit in windows: exact event logs on a tiny guest.

16 pages of 4 KiB, a 100 ms window and a cap of two pages per window (8192 B): QEMU
writes while the bytes charged to the window do not exceed the budget, so the third
write (8192 B before it) still goes out and the fourth waits for the next window.  The
socket buffers everything (1 MiB), so each window's writes happen at its start.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import KIB, MIB, PLACE4K, WAKE, WIRE4K, D, L, R, tiny

from simpostcopy.engine import simulate
from simpostcopy.models.source import RateWindow

W = 0.1


def windowed(**changes):
    base = dict(
        guest__ram_bytes=64 * KIB,
        workload__working_set_offset_bytes=36 * KIB,  # the vCPU touches page 9 once
        network__inflight_bytes=1 * MIB,
        migration__max_postcopy_bandwidth_bytes_per_s=2 * 4096 / W,
        migration__rate_limit_window_s=W,
    )
    base.update(changes)
    return tiny(**base)


def sent(r) -> dict[int, float]:
    return dict(zip(r.pages.host_page, r.pages.sent_s.round(9), strict=True))


def test_background_goes_out_in_bursts_of_the_budget_plus_the_crossing_write():
    r = simulate(windowed(workload__working_set_offset_bytes=0))  # page 0: no fault
    assert r.summary["postcopy_requests"] == 0
    times = sorted(sent(r).values())
    assert times == [0.0] * 3 + [0.1] * 3 + [0.2] * 3 + [0.3] * 3 + [0.4] * 3 + [0.5]


def test_vanilla_request_waits_for_the_next_window_and_goes_first():
    r = simulate(windowed())
    f = r.faults.iloc[0]
    assert f.request_at_source_s == pytest.approx(f.fault_s + D + R + L, abs=1e-12)
    # Pages 0-2 spent window 0 at t=0: the request waits for t=0.1, then goes out first
    # and is charged; pages 3 and 4 fill the rest of window 1.
    assert f.page_sent_s == pytest.approx(W)
    assert f.latency_s == pytest.approx(W - f.fault_s + WIRE4K + L + PLACE4K + WAKE, abs=1e-12)
    s = sent(r)
    assert [h for h, t in s.items() if t == W] == [3, 4, 9]
    assert s[5] == pytest.approx(2 * W)


def test_preempt_from_the_return_path_ignores_the_window():
    r = simulate(windowed(network__preempt=True))
    f = r.faults.iloc[0]
    assert f.channel == "preempt"
    assert f.latency_s == pytest.approx(D + R + L + WIRE4K + L + PLACE4K + WAKE, abs=1e-12)
    assert [h for h, t in sent(r).items() if t == W] == [3, 4, 5]  # not charged


def test_preempt_from_the_migration_thread_waits_like_qemu_7():
    r = simulate(windowed(network__preempt=True, migration__urgent_sender="migration_thread"))
    f = r.faults.iloc[0]
    assert f.channel == "preempt"
    assert f.page_sent_s == pytest.approx(W)
    assert f.latency_s == pytest.approx(W - f.fault_s + WIRE4K + L + PLACE4K + WAKE, abs=1e-12)
    # Not charged either; the main channel pauses while the urgent page is on the wire.
    later = round(W + WIRE4K, 9)
    assert [h for h, t in sent(r).items() if t == later] == [3, 4, 5]


def test_smooth_pacing_serves_the_request_at_once():
    r = simulate(windowed(migration__rate_limit_window_s=0))
    f = r.faults.iloc[0]
    assert f.page_sent_s == pytest.approx(f.fault_s + D + R + L, abs=1e-12)


def test_a_slow_link_never_spends_the_budget():
    link = 40_000.0  # B/s: a page every ~0.1 s, below the cap of 81,920 B/s
    r = simulate(windowed(network__bandwidth_bytes_per_s=link, network__inflight_bytes=0))
    f = r.faults.iloc[0]
    # The request is written as soon as it arrives (the window is not spent: the socket
    # holds the writes back), then waits only behind the page on the wire.
    assert f.request_at_source_s == pytest.approx(f.fault_s + D + R + L, abs=1e-12)
    assert f.page_sent_s == pytest.approx(f.request_at_source_s, abs=1e-12)


def test_rate_window_ledger():
    w = RateWindow(rate=1000.0, window=0.1, start=1.0)  # 100 B a window
    assert w.index(1.0) == 0 and w.index(1.0999999) == 0 and w.index(1.1) == 1
    assert w.end(0) == pytest.approx(1.1)
    w.charge(np.array([1.0, 1.05]), np.array([60, 40]))
    assert w.used(0) == 100 and not w.spent(1.05)  # at the budget: one more may go
    w.charge(np.array([1.06]), np.array([1]))
    assert w.spent(1.07) and not w.spent(1.1)
    w.charge(np.array([1.06]), np.array([1]), -1)  # a withdrawn write is refunded
    assert not w.spent(1.07)
