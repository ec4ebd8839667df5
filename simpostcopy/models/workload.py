"""Access streams: the sequence of 4 KiB target pages each vCPU touches.

Streams are generated in fixed-size numpy blocks from the vCPU's own random
stream, so the values never depend on how far ahead the simulator looks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

BLOCK = 65536  # accesses generated per draw; part of the stream's definition


@lru_cache(maxsize=8)
def _zipf_table(n: int, exponent: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative distribution of a bounded Zipf law over ranks 1..n, with a guide table.

    ``guide[b]`` counts the CDF entries <= b / buckets, so a draw ``u`` in bucket
    ``floor(u * buckets)`` has its rank between ``guide[b]`` and ``guide[b + 1]``: a
    short search instead of a search over the whole CDF (tens of MiB for big guests).
    """
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    cdf.flags.writeable = False
    buckets = 1 << max(10, (n - 1).bit_length())  # a power of two: u * buckets is exact
    edges = np.arange(buckets + 1, dtype=np.float64) / buckets
    guide = np.searchsorted(cdf, edges, side="right").astype(np.int64)
    guide.flags.writeable = False
    return cdf, guide, buckets


def zipf_ranks(u: np.ndarray, n: int, exponent: float) -> np.ndarray:
    """``searchsorted(cdf, u, side="right")`` for draws ``u`` in [0, 1), via the guide."""
    cdf, guide, buckets = _zipf_table(n, exponent)
    b = (u * buckets).astype(np.int64)
    lo, hi = guide[b], guide[b + 1]
    # Binary search for the first index in [lo, hi] whose CDF entry exceeds u.
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        mid = (lo + hi) >> 1
        above = cdf[np.minimum(mid, n - 1)] > u
        hi = np.where(open_ & above, mid, hi)
        lo = np.where(open_ & ~above, mid + 1, lo)


class _Blocks:
    """An endless sequence drawn ``BLOCK`` values at a time, read forward only."""

    def __init__(self, draw: Callable[[], np.ndarray]) -> None:
        self._draw = draw
        self._buf: np.ndarray | None = None
        self._base = 0  # index of self._buf[0]

    def get(self, j: int, n: int) -> np.ndarray:
        """Values ``j .. j+n-1`` (``j`` never moves backwards)."""
        if self._buf is None:
            self._buf = self._draw()
        lo = j - self._base
        if lo > 0:
            self._buf = self._buf[lo:]
            self._base = j
        while self._buf.size < n:
            self._buf = np.concatenate((self._buf, self._draw()))
        return self._buf[:n]


class AccessStream:
    """The target pages one vCPU accesses, indexable by access number."""

    def __init__(
        self,
        pattern: str,
        *,
        working_set_pages: int,
        offset_pages: int,
        vcpu: int,
        vcpus: int,
        rng: np.random.Generator,
        hot_fraction: float = 1.0,
        hot_probability: float = 1.0,
        zipf_exponent: float = 1.0,
        stride_pages: int = 1,
        trace: np.ndarray | None = None,
        write_rng: np.random.Generator | None = None,
        write_fraction: float = 0.0,
        page_map: np.ndarray | None = None,
    ) -> None:
        self.pattern = pattern
        # A scattered working set: relative page i is target page page_map[i].
        self._map = page_map
        self._w = working_set_pages
        self._off = offset_pages
        self._rng = rng
        self._hot = min(working_set_pages, max(1, round(hot_fraction * working_set_pages)))
        self._p_hot = hot_probability
        self._zipf_exponent = zipf_exponent
        self._stride = stride_pages
        # Sequential vCPUs start evenly spread over the working set.
        self._seq_start = (vcpu * working_set_pages) // vcpus
        self._trace = trace
        self._generated = 0  # blocks drawn so far
        self._pages = _Blocks(self._block)
        # Which accesses write (dirty their page): a stream of its own, so the pages
        # accessed never depend on the write share.
        self._write_rng = write_rng if write_rng is not None else np.random.default_rng(0)
        self._write_fraction = write_fraction
        self._writes = _Blocks(self._write_block)

    def _block(self) -> np.ndarray:
        """Draw the next BLOCK accesses (absolute target-page numbers)."""
        b = self._generated
        self._generated += 1
        w, rng = self._w, self._rng
        if self.pattern == "uniform":
            rel = rng.integers(0, w, BLOCK)
        elif self.pattern == "hotset":
            hot = rng.random(BLOCK) < self._p_hot
            u = rng.random(BLOCK)
            cold = w - self._hot
            if cold == 0:
                rel = (u * self._hot).astype(np.int64)
            else:
                rel = np.where(hot, u * self._hot, self._hot + u * cold).astype(np.int64)
        elif self.pattern == "zipf":
            rel = np.minimum(zipf_ranks(rng.random(BLOCK), w, self._zipf_exponent), w - 1)
        elif self.pattern == "sequential":
            i = np.arange(b * BLOCK, (b + 1) * BLOCK, dtype=np.int64)
            rel = (self._seq_start + i * self._stride) % w
        elif self.pattern == "trace":
            assert self._trace is not None
            i = np.arange(b * BLOCK, (b + 1) * BLOCK, dtype=np.int64)
            return self._trace[i % self._trace.size]
        else:  # pragma: no cover - the scenario validates pattern names
            raise ValueError(f"unknown pattern {self.pattern!r}")
        if self._map is not None:
            return self._map[rel]
        return rel.astype(np.int64) + self._off

    def _write_block(self) -> np.ndarray:
        return self._write_rng.random(BLOCK) < self._write_fraction

    def pages(self, j: int, n: int) -> np.ndarray:
        """Target pages of accesses ``j .. j+n-1`` (``j`` never moves backwards)."""
        return self._pages.get(j, n)

    def writes(self, j: int, n: int) -> np.ndarray:
        """Whether accesses ``j .. j+n-1`` write (``j`` never moves backwards)."""
        return self._writes.get(j, n)
