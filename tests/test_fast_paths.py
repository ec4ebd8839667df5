"""The fast engine's shortcuts give exactly what the plain computation gives.

- The main channel computes placements lazily (a pause only marks them stale); after
  any sequence of appends, pauses, truncations, settles and compactions its answers
  equal an eager recomputation of the receiving thread's reads from the clock, with reads
  free and with reads that cost more than placing a page, pages written one by one and
  in batches; its batches' readable times equal a recomputation over every page it ever
  kept.
- Zipf ranks drawn through the guide table equal a search over the whole CDF.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simpostcopy.models.ledger import Pages
from simpostcopy.models.network import Batches, Channel, Reader
from simpostcopy.models.workload import _zipf_table, zipf_ranks

N_PAGES = 64
BW = 1e9


def _pages(seed: int) -> Pages:
    rng = np.random.default_rng(seed)
    zero = rng.random(N_PAGES) < 0.3
    wire = np.where(zero, 9, 4104).astype(np.int64)
    cost = np.where(zero, 1.0e-6, rng.choice([1e-6, 3e-6, 8e-6], N_PAGES))
    return Pages(zero=zero, wire_bytes=wire, place_cost_s=cost)


# A chain scanned from a different start rounds differently; any modelled delay is
# microseconds, the tie tolerance a picosecond.
ROUNDING = 1e-15


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ROUNDING)


def _eager(ch: Channel) -> np.ndarray:
    """Placements of every item kept, recomputed from scratch."""
    arrived = ch.clock.real(ch.ready) + ch.latency
    pages = ch.pages
    return ch.reader.receive(
        arrived, pages.wire_bytes[ch.page], pages.place_cost_s[ch.page], ch._recv
    )[0]


ops = st.lists(
    st.tuples(
        st.sampled_from(["plan", "urgent", "settle", "compact", "truncate", "look"]),
        st.floats(0.0, 30e-6),
    ),
    min_size=1,
    max_size=40,
)


# Reads free; reads of three 4 KiB pages at 5 us, longer than any placement.
READERS = st.sampled_from([Reader(), Reader.constant(5e-6, 3 * 4104)])
# Pages written one by one; in batches of three data pages.
BATCHES = st.sampled_from([Batches(), Batches(3, 4104 / BW)])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**16), ops, READERS, BATCHES)
def test_lazy_placements_equal_an_eager_recomputation(
    seed: int, steps, reader: Reader, batches: Batches
) -> None:
    pages = _pages(seed)
    ch = Channel(BW, 50e-6, pages, on_change=lambda: None, free=0.0, reader=reader, batches=batches)
    rng = np.random.default_rng(seed)
    now, unsent = 0.0, list(rng.permutation(N_PAGES))
    kept: list[tuple[int, float]] = []  # every item the channel kept: (page, last byte)
    for op, dt in steps:
        now += dt
        if op == "plan" and unsent:
            batch = np.array(unsent[:8], dtype=np.int64)
            del unsent[:8]
            tau = ch.clock.tau(now)
            ready = np.full(batch.size, tau)
            start = ch.schedule(batch, ready, max(ch.free, tau))
            ch.mark_plan_start()
            ch.append(batch, np.maximum.accumulate(np.maximum(start, tau)), start)
            end = start + pages.wire_bytes[batch] / BW
            kept += zip(batch.tolist(), end.tolist(), strict=True)
        elif op == "urgent":
            ch.pause(now, 4104 / BW)
        elif op == "settle":
            ch.settle(now)
        elif op == "compact":
            ch.compact(now)
        elif op == "truncate":
            withdrawn = ch.truncate_after(now).tolist()
            unsent.extend(withdrawn)
            del kept[len(kept) - len(withdrawn) :]
        elif op == "look" and ch.page.size:
            h = int(ch.page[rng.integers(ch.page.size)])
            assert abs(ch.placement(h) - _eager(ch)[ch._index(h)]) <= ROUNDING
        # Whatever the ledger says is placed by now is exact, and nothing placed by now
        # is missing from it.
        eager = _eager(ch)
        if op in ("settle", "compact"):
            done = eager <= now + 1e-12
            close(pages.placed_at[ch.page[done]], eager[done])
        known = np.isfinite(pages.placed_at[ch.page])
        close(pages.placed_at[ch.page[known]], eager[known])
        # With reads free stale values are lower bounds; the exact prefix is exact.
        if not reader.mean_s:
            assert (ch.place_end <= eager + ROUNDING).all()
        close(ch.place_end[: ch._valid], eager[: ch._valid])
        # Batches: readable times as if no item had been dropped or withdrawn.
        if kept:
            page, end = (np.array(v) for v in zip(*kept, strict=True))
            ready, _ = batches.ready(end, pages.zero[page], 0, -np.inf)
            assert ch.ready.size <= len(kept)
            np.testing.assert_array_equal(ch.ready, ready[len(kept) - ch.ready.size :])
    ch.settle_all()
    close(pages.placed_at[ch.page], _eager(ch))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5000),
    st.sampled_from([0.5, 1.0, 1.2, 2.0]),
    st.integers(0, 2**32),
)
def test_zipf_ranks_equal_a_full_cdf_search(n: int, exponent: float, seed: int) -> None:
    cdf, _, _ = _zipf_table(n, exponent)
    u = np.random.default_rng(seed).random(4096)
    # Also the CDF's own values and their neighbours: the edges of every rank.
    edges = np.concatenate((cdf[:-1], np.nextafter(cdf[:-1], 0), [0.0]))
    for draws in (u, edges):
        np.testing.assert_array_equal(
            zipf_ranks(draws, n, exponent), np.searchsorted(cdf, draws, side="right")
        )
