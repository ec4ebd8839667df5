"""The receiving thread's reads (network.Reader): hand-computed lumps, both engines."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PLACE4K, WAKE, WIRE4K, D, L, R, tiny

from simpostcopy.distributions import Dist, IndexedDraws
from simpostcopy.engine import simulate
from simpostcopy.models.network import Reader, fifo_finish

US = 1e-6
PAGE = 4104  # a 4 KiB page and its 8-byte header


def receive(reader: Reader, arrived, wire, cost, state=(0.0, -np.inf, np.inf, 0)):
    return reader.receive(
        np.asarray(arrived, dtype=float),
        np.asarray(wire, dtype=np.int64),
        np.asarray(cost, dtype=float),
        state,
    )


def test_a_busy_thread_reads_what_has_arrived_and_an_idle_one_each_page():
    reader = Reader.constant(5 * US, 3 * PAGE)
    place, read_t, read_used, reads = receive(
        reader, [0, 1 * US, 2 * US, 10 * US], [PAGE] * 4, [2 * US] * 4
    )
    # Idle at 0: page 0 alone (page 1 is not here yet), placed 0 + 5 + 2.  At 7 pages 1
    # and 2 have arrived: one read, placed 7 + 5 + 2 and + 2.  Page 3 arrived at 10,
    # during that read: the next read, at 16.
    assert place / US == pytest.approx([7, 14, 16, 23], abs=1e-9)
    assert read_t / US == pytest.approx([0, 7, 7, 16], abs=1e-9)
    assert read_used.tolist() == [PAGE, PAGE, 2 * PAGE, PAGE]
    assert reads.tolist() == [1, 2, 2, 3]


def test_a_read_takes_at_most_a_buffer_and_a_huge_page_takes_a_read_per_buffer():
    place, *_ = receive(Reader.constant(5 * US, 2 * PAGE), [0] * 5, [PAGE] * 5, [1 * US] * 5)
    # Reads of pages {0, 1}, {2, 3}, {4}.
    assert place / US == pytest.approx([6, 7, 13, 14, 20], abs=1e-9)
    huge = 512 * PAGE  # a 2 MiB page: 64.125 buffers of 32 KiB
    place, _, _, reads = receive(
        Reader.constant(1 * US, 32768), [0, 0], [huge, 9], [3 * US, 1 * US]
    )
    assert place / US == pytest.approx([65 + 3, 68 + 1 + 1], abs=1e-9)
    assert reads.tolist() == [65, 66]


def test_the_state_carries_a_read_across_calls():
    reader = Reader.constant(5 * US, 3 * PAGE)
    args = ([0, 1 * US, 2 * US, 10 * US], [PAGE] * 4, [2 * US] * 4)
    whole = receive(reader, *args)
    head = receive(reader, *(a[:2] for a in args))
    state = tuple(float(x[-1]) for x in head)
    tail = receive(reader, *(a[2:] for a in args), state=state)
    for w, h, t in zip(whole, head, tail, strict=True):
        assert w.tolist() == h.tolist() + t.tolist()


def test_drawn_read_costs_follow_the_read_number_across_calls():
    def reader() -> Reader:
        dist = Dist("lognormal", (5 * US, 1.0))
        return Reader(IndexedDraws(dist, np.random.default_rng(7)), 2 * PAGE)

    arrived = np.sort(np.random.default_rng(1).random(40)) * 200 * US
    args = (arrived, [PAGE] * 40, [2 * US] * 40)
    whole = receive(reader(), *args)
    r = reader()
    head = receive(r, *(a[:17] for a in args))
    tail = receive(r, *(a[17:] for a in args), state=tuple(x[-1].item() for x in head))
    for w, h, t in zip(whole, head, tail, strict=True):
        assert w.tolist() == h.tolist() + t.tolist()
    # Read n costs draw n: the first read (page 0 alone, idle) costs draw 0.
    draws = Dist("lognormal", (5 * US, 1.0)).sample(np.random.default_rng(7), 4096)
    assert whole[0][0] == arrived[0] + draws[0] + 2 * US


def test_free_reads_are_the_plain_fifo_and_busy_time_is_amortised():
    arrived, cost = np.array([0, 1e-6, 5e-6]), np.array([2e-6, 2e-6, 2e-6])
    place, *_ = receive(Reader(), arrived, [PAGE] * 3, cost)
    assert place.tolist() == fifo_finish(arrived, cost, 0.0).tolist()
    busy = Reader.constant(8 * US, 4 * PAGE).busy(
        np.array([PAGE, 9, 2 * 4 * PAGE]), np.ones(3) * US
    )
    assert busy / US == pytest.approx([1 + 2, 1 + 8 * 9 / (4 * PAGE), 1 + 8 * 2], abs=1e-12)


# The tiny scenario with the background at full speed, a buffer of two 4 KiB pages (no
# headers there) and reads of 50 us: the guest touches page 0 at L.
READ, BUSY = 50e-6, PLACE4K + 50e-6 / 2


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_exact_log_with_costly_reads(engine: str):
    s = tiny(
        migration__max_postcopy_bandwidth_bytes_per_s=0,
        workload__working_set_offset_bytes=0,
        network__recv_buffer_bytes=8192,
        fault_path__recv_s=READ,
    )
    r = simulate(s, engine=engine)
    # The socket drains at the thread's pace for full buffers: pages 0-3 leave BUSY apart.
    arrived = [k * BUSY + WIRE4K + L for k in range(4)]
    assert r.pages.arrived_s.tolist() == pytest.approx(arrived, abs=1e-12)
    p0 = arrived[0] + READ + PLACE4K  # idle: page 0 read alone
    p1 = p0 + READ + PLACE4K  # at p0 only page 1 has arrived
    p2 = p1 + READ + PLACE4K  # at p1 pages 2 and 3 have: one read
    p3 = p2 + PLACE4K
    assert r.pages.placed_s.tolist() == pytest.approx([p0, p1, p2, p3], abs=1e-12)
    f = r.faults.iloc[0]
    # The fault thread asks for page 0 (not placed yet); the source has written it.
    assert f.read_s == pytest.approx(L + D, abs=1e-12)
    assert f.request_sent_s == pytest.approx(L + D + R, abs=1e-12)
    assert bool(f.duplicate_request)
    assert f.placed_s == pytest.approx(p0, abs=1e-12)
    assert f.resumed_s == pytest.approx(p0 + WAKE, abs=1e-12)


# -- a vCPU's first touch of a placed page ---------------------------------------------------
C = 50e-6  # guest.first_touch_s


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("first_touch", [0.0, C])
def test_first_touches_delay_the_accesses_after_them(tmp_path, engine: str, first_touch: float):
    # Background pages one per ms from 0 (page k placed at k ms + WIRE4K + L + PLACE4K);
    # accesses 0.1 ms apart from L: page 0 faults (placed before the fault thread reads
    # it: no request), ten touches of page 0 (faulted in: no first-touch cost), page 1
    # at 1.11 ms (placed, never touched: a first touch), page 0 again, then page 2,
    # which faults: its time shows the one first touch.
    trace = tmp_path / "trace.csv"
    pages = [0] * 10 + [1, 0, 2]
    trace.write_text("vcpu,page\n" + "".join(f"0,{p}\n" for p in pages))
    s = tiny(
        workload__pattern="trace",
        workload__trace_path=str(trace),
        workload__accesses_per_vcpu=len(pages),
        workload__accesses_per_s=1e4,
        migration__max_postcopy_bandwidth_bytes_per_s=4096e3,
        guest__first_touch_s=first_touch,
    )
    r = simulate(s, engine=engine)
    f0, f1 = r.faults.iloc[0], r.faults.iloc[1]
    resumed = WIRE4K + L + PLACE4K + WAKE  # page 0 placed, then the wake-up
    assert f0.target_page == 0 and not f0.requested
    assert f0.resumed_s == pytest.approx(resumed, abs=1e-12)
    assert f1.target_page == 2 and f1.access == 12
    assert f1.fault_s == pytest.approx(resumed + 12 * 1e-4 + first_touch, abs=1e-12)
