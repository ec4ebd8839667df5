"""Access streams: the sequence of 4 KiB target pages each vCPU touches.

Streams are generated in fixed-size numpy blocks from the vCPU's own random
stream, so the values never depend on how far ahead the simulator looks.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

BLOCK = 65536  # accesses generated per draw; part of the stream's definition


@lru_cache(maxsize=8)
def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """Cumulative distribution of a bounded Zipf law over ranks 1..n."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    cdf.flags.writeable = False
    return cdf


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
    ) -> None:
        self.pattern = pattern
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
        self._buf = np.empty(0, dtype=np.int64)
        self._base = 0  # access number of self._buf[0]
        self._generated = 0  # blocks drawn so far

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
            cdf = _zipf_cdf(w, self._zipf_exponent)
            rel = np.minimum(np.searchsorted(cdf, rng.random(BLOCK), side="right"), w - 1)
        elif self.pattern == "sequential":
            i = np.arange(b * BLOCK, (b + 1) * BLOCK, dtype=np.int64)
            rel = (self._seq_start + i * self._stride) % w
        elif self.pattern == "trace":
            assert self._trace is not None
            i = np.arange(b * BLOCK, (b + 1) * BLOCK, dtype=np.int64)
            return self._trace[i % self._trace.size]
        else:  # pragma: no cover - the scenario validates pattern names
            raise ValueError(f"unknown pattern {self.pattern!r}")
        return rel.astype(np.int64) + self._off

    def pages(self, j: int, n: int) -> np.ndarray:
        """Target pages of accesses ``j .. j+n-1`` (``j`` never moves backwards)."""
        lo = j - self._base
        if lo > 0:
            self._buf = self._buf[lo:]
            self._base = j
        while self._buf.size < n:
            self._buf = np.concatenate((self._buf, self._block()))
        return self._buf[:n]
