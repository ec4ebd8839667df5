"""The migration link: a main channel and, with postcopy-preempt, a preempt channel.

A channel is a TCP socket plus the destination thread that drains it (QEMU's
listen thread for the main channel, the preempt thread for the preempt one).
Items are whole host pages; all arithmetic is vectorised so that a chunk of
background pages costs one numpy call, not one event per page.

Bandwidth is shared: the preempt channel has strict (fluid) priority over the
main channel, so an urgent page never waits behind buffered background data and
every byte it sends delays the main channel's pending bytes by the same time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_EMPTY_F = np.empty(0, dtype=np.float64)
_EMPTY_I = np.empty(0, dtype=np.int64)


def fifo_finish(ready: np.ndarray, service: np.ndarray, free: float) -> np.ndarray:
    """Finish times of a FIFO single server: ``f[i] = max(ready[i], f[i-1]) + service[i]``.

    ``free`` is when the server finishes its earlier work.  Solved as a max-plus
    prefix scan (no Python loop): with ``S`` the running sum of service times,
    ``f[i] = S[i] + max(free, max_{k<=i} (ready[k] - S[k-1]))``.
    """
    if ready.size == 0:
        return _EMPTY_F
    total = np.cumsum(service)
    start_slack = np.maximum.accumulate(ready - (total - service))
    return total + np.maximum(start_slack, free)


class Channel:
    """Host pages in flight on one socket and waiting for its receiving thread.

    Per item: ``enq`` (written to the socket by the source), ``end`` (last byte
    sent), ``after`` (when the socket can start the next item) and ``place_end``
    (placement done).  A socket cannot drain faster than its receiving thread
    places pages (TCP flow control), so an item holds it for the longer of its
    wire time and its placement cost, while its own bytes still travel at wire
    speed.  Only items whose times may still change are kept; ``compact`` drops
    the rest.  ``on_update(pages, arrived, placed)`` reports new or moved times.
    """

    def __init__(
        self,
        bandwidth: float,
        latency: float,
        place_cost: Callable[[np.ndarray], np.ndarray],
        wire_bytes: Callable[[np.ndarray], np.ndarray],
        on_update: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
        free: float,
    ) -> None:
        self.bandwidth = bandwidth
        self.latency = latency
        self._place_cost = place_cost
        self._wire_bytes = wire_bytes
        self._on_update = on_update
        self.free = free  # when the socket can take the next item
        self.bytes_sent = 0  # bytes written to this socket (withdrawn plans excluded)
        self._free_before_plan = free
        self._recv_free = free  # when the receiving thread has placed everything dropped
        self.page = _EMPTY_I
        self.enq = _EMPTY_F
        self.end = _EMPTY_F
        self.after = _EMPTY_F
        self.place_end = _EMPTY_F

    def _slice(self, lo: int, hi: int | None) -> None:
        self.page = self.page[lo:hi]
        self.enq = self.enq[lo:hi]
        self.end = self.end[lo:hi]
        self.after = self.after[lo:hi]
        self.place_end = self.place_end[lo:hi]

    def compact(self, now: float) -> None:
        """Forget items already placed by ``now`` (their times can no longer move)."""
        k = int(np.searchsorted(self.place_end, now, side="right"))
        if k:
            self._recv_free = float(self.place_end[k - 1])
            self._slice(k, None)

    def schedule(
        self, pages: np.ndarray, ready: np.ndarray, free: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Socket times of ``pages`` written no earlier than ``ready``: (start, end) arrays."""
        wire_time = self._wire_bytes(pages) / self.bandwidth
        hold = np.maximum(wire_time, self._place_cost(pages))
        after = fifo_finish(ready, hold, free)
        start = after - hold
        return start, start + wire_time

    def append(self, pages: np.ndarray, enq: np.ndarray, start: np.ndarray) -> None:
        """Add items that start on the socket at ``start``; place them in FIFO order."""
        wire_time = self._wire_bytes(pages) / self.bandwidth
        end = start + wire_time
        after = start + np.maximum(wire_time, self._place_cost(pages))
        recv_free = float(self.place_end[-1]) if self.place_end.size else self._recv_free
        arrived = end + self.latency
        placed = fifo_finish(arrived, self._place_cost(pages), recv_free)
        self.page = np.concatenate((self.page, pages))
        self.enq = np.concatenate((self.enq, enq))
        self.end = np.concatenate((self.end, end))
        self.after = np.concatenate((self.after, after))
        self.place_end = np.concatenate((self.place_end, placed))
        self.free = max(self.free, float(after[-1]))
        self.bytes_sent += int(self._wire_bytes(pages).sum())
        self._on_update(pages, arrived, placed)

    def send_now(self, page: int, t: float) -> None:
        """Write one host page at ``t`` behind everything already buffered."""
        pages = np.array([page], dtype=np.int64)
        start, _ = self.schedule(pages, np.array([t]), self.free)
        self.append(pages, np.array([t]), start)

    def mark_plan_start(self) -> None:
        """Remember the socket's state before a plan is appended (restored by truncation)."""
        self._free_before_plan = self.free

    def truncate_after(self, t: float) -> np.ndarray:
        """Withdraw items planned but not yet written at ``t``; return their pages."""
        k = int(np.searchsorted(self.enq, t, side="right"))
        withdrawn = self.page[k:]
        if withdrawn.size:
            self._slice(0, k)
            self.free = float(self.after[-1]) if k else self._free_before_plan
            self.bytes_sent -= int(self._wire_bytes(withdrawn).sum())
        return withdrawn

    def delay_pending(self, t: float, delay: float) -> None:
        """Preempt traffic of ``delay`` seconds at ``t``: every byte not yet sent moves later."""
        k = int(np.searchsorted(self.end, t, side="right"))
        if k == self.end.size:
            return  # nothing pending; later plans start after the preempt channel is free
        self.end = np.concatenate((self.end[:k], self.end[k:] + delay))
        self.after = np.concatenate((self.after[:k], self.after[k:] + delay))
        self.free = float(self.after[-1])
        recv_free = float(self.place_end[k - 1]) if k else self._recv_free
        pages = self.page[k:]
        arrived = self.end[k:] + self.latency
        placed = fifo_finish(arrived, self._place_cost(pages), recv_free)
        self.place_end = np.concatenate((self.place_end[:k], placed))
        self._on_update(pages, arrived, placed)
