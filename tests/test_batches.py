"""The source's batched writes (network.Batches): hand-computed readable times, and an
exact log in both engines."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PLACE4K, WAKE, WIRE4K, D, L, R, tiny

from simpostcopy.engine import simulate
from simpostcopy.models.network import Batches


def test_a_page_is_readable_once_its_batch_is_written():
    b = Batches(3, 1.0)
    end = np.arange(6, dtype=float)
    zero = np.array([False, True, False, False, False, False])
    ready, fill = b.ready(end, zero, 0, -np.inf)
    # Data pages 0, 2, 3 make the first batch; the zero page rides with it.  The model
    # counts the pages still to come at one page time each: page 0 expects two more
    # (2), the zero page and page 2 one or none more after their own ends (3), page 3
    # completes it (3); pages 4 and 5 wait for a sixth (6).
    assert ready.tolist() == [2, 3, 3, 3, 6, 6]
    assert fill.tolist() == [1, 1, 2, 3, 4, 5]
    # Carried across calls: after five data pages, the next completes the batch.
    ready, fill = b.ready(np.array([7.0]), np.array([False]), 5, 6.0)
    assert (ready.tolist(), fill.tolist()) == ([7.0], [6])
    # A zero page after a full batch waits for the next one; readable times never go back.
    ready, _ = b.ready(np.array([7.0]), np.array([True]), 6, 8.0)
    assert ready.tolist() == [10.0]
    ready, _ = b.ready(np.array([1.0]), np.array([False]), 5, 8.0)
    assert ready.tolist() == [8.0]
    # Huge pages (512 target pages, 512 page times each) fill whole batches: a data one
    # is readable at its own end; a zero one waits for the next batch's 32 data pages.
    huge = np.array([512.0, 1024.0, 1536.0])
    ready, fill = Batches(32, 1.0, per_host=512).ready(huge, zero[:3], 0, -np.inf)
    assert ready.tolist() == [512.0, 1056.0, 1536.0] and fill.tolist() == [512, 512, 1024]
    # One page a batch: the last byte's own time, unchanged.
    ready, _ = Batches().ready(end, zero, 0, -np.inf)
    assert ready is end


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("batch", [1, 2])
def test_exact_log_with_batched_writes(engine: str, batch: int):
    # Four 4 KiB pages back to back at the link's pace; the guest touches page 0 at L.
    s = tiny(
        migration__max_postcopy_bandwidth_bytes_per_s=0,
        workload__working_set_offset_bytes=0,
        network__send_batch_pages=batch,
    )
    r = simulate(s, engine=engine)
    end = [(k + 1) * WIRE4K for k in range(4)]
    ready = end if batch == 1 else [end[1], end[1], end[3], end[3]]
    arrived = [t + L for t in ready]
    assert r.pages.arrived_s.tolist() == pytest.approx(arrived, abs=1e-12)
    placed = []
    for a in arrived:
        placed.append(max(a, placed[-1] if placed else 0.0) + PLACE4K)
    assert r.pages.placed_s.tolist() == pytest.approx(placed, abs=1e-12)
    f = r.faults.iloc[0]
    assert f.read_s == pytest.approx(L + D, abs=1e-12)
    if batch == 1:
        # Page 0 was placed before the fault thread read the fault: no request.
        assert placed[0] < L + D and not f.requested
    else:
        # Page 0 waits for page 1 to complete its batch: placed after the read, so the
        # fault thread asks for it (the source has written it already: a duplicate).
        assert placed[0] > L + D and f.requested and f.duplicate_request
        assert f.request_sent_s == pytest.approx(L + D + R, abs=1e-12)
    assert f.placed_s == pytest.approx(placed[0], abs=1e-12)
    assert f.resumed_s == pytest.approx(max(placed[0], L) + WAKE, abs=1e-12)
