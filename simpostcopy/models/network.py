"""The migration link: a main channel and, with postcopy-preempt, a preempt channel.

A channel is a TCP socket plus the destination thread that drains it (QEMU's
listen thread for the main channel, the preempt thread for the preempt one).
Items are whole host pages; all arithmetic is vectorised so that a chunk of
background pages costs one numpy call, not one event per page.

Bandwidth is shared: an urgent page on the preempt channel goes out at once and
pauses the main channel for its wire time (see ``Clock``), so it never waits
behind buffered background data and every byte it sends delays the main
channel's pending work by the same time.
"""

from __future__ import annotations

from bisect import bisect_right
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


class Clock:
    """The main channel's own time: it stops while an urgent page is on the preempt channel.

    Postcopy-preempt shares the link: while an urgent page of wire time ``d`` is being sent
    from real time ``s``, the main channel (its socket and the background writer) is paused.
    Main-channel times are kept in this clock (``tau``) and mapped to real time by adding
    the pauses that start at or before them: ``real(tau) = tau + sum(d_p, sigma_p <= tau)``,
    so everything the main channel had scheduled from ``s`` on happens ``d`` later.
    Without pauses (vanilla) the mapping is the identity.
    """

    def __init__(self) -> None:
        self._s: list[float] = []  # pause starts, real time
        self._d: list[float] = []  # pause lengths
        self._sigma: list[float] = []  # pause starts, channel time
        self._cum: list[float] = [0.0]  # pause time before pause k (relative to _base)
        self._base = 0.0  # pause time folded in by prune()
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def real(self, tau: np.ndarray | float) -> np.ndarray | float:
        if not self._s:
            return tau + self._base if self._base else tau
        if self._arrays is None:
            self._arrays = (np.asarray(self._sigma), self._base + np.asarray(self._cum))
        sigma, cum = self._arrays
        return tau + cum[np.searchsorted(sigma, tau, side="right")]

    def tau(self, x: float) -> float:
        """Channel time of real time ``x`` (the pause's start while ``x`` is inside it)."""
        k = bisect_right(self._s, x)
        if not k:
            return x - self._base
        if x < self._s[k - 1] + self._d[k - 1]:
            return self._sigma[k - 1]
        # Never before the last pause's start (float rounding at its end).
        return max(x - self._base - self._cum[k], self._sigma[k - 1])

    def pause(self, s: float, d: float) -> float:
        """Pause the channel for ``d`` from real time ``s`` (not before any earlier pause
        has ended); returns the pause's start in channel time."""
        sigma = self.tau(s)
        self._s.append(s)
        self._d.append(d)
        self._sigma.append(sigma)
        self._cum.append(self._cum[-1] + d)
        self._arrays = None
        return sigma

    def prune(self, tau_min: float) -> None:
        """Fold pauses that precede every channel time still in use into a constant."""
        k = bisect_right(self._sigma, tau_min)
        if k:
            self._base += self._cum[k]
            del self._s[:k], self._d[:k], self._sigma[:k]
            self._cum = [c - self._cum[k] for c in self._cum[k:]]
            self._arrays = None


class Channel:
    """Host pages in flight on one socket and waiting for its receiving thread.

    Per item, in the channel's clock: ``enq`` (written to the socket by the source),
    ``end`` (last byte sent), ``after`` (when the socket can start the next item); in
    real time: ``place_end`` (placement done).  A socket cannot drain faster than its
    receiving thread places pages (TCP flow control), so an item holds it for the longer
    of its wire time and its placement cost, while its own bytes still travel at wire
    speed.  Only items whose times may still change are kept; ``compact`` drops the
    rest.  ``on_update(pages, arrived, placed)`` reports new or moved real times.
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
        self.clock = Clock()
        self._place_cost = place_cost
        self._wire_bytes = wire_bytes
        self._on_update = on_update
        self.free = free  # channel time when the socket can take the next item
        self.bytes_sent = 0  # bytes written to this socket (withdrawn plans excluded)
        self._free_before_plan = free
        self._recv_free = free  # real time the receiving thread placed everything dropped
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
        oldest = self.clock.tau(now)
        self.clock.prune(min(oldest, float(self.enq[0])) if self.enq.size else oldest)

    def schedule(self, pages: np.ndarray, ready: np.ndarray, free: float) -> np.ndarray:
        """Channel times at which ``pages``, written no earlier than ``ready``, start."""
        wire_time = self._wire_bytes(pages) / self.bandwidth
        hold = np.maximum(wire_time, self._place_cost(pages))
        return fifo_finish(ready, hold, free) - hold

    def _placements(self, k: int) -> None:
        """(Re)compute real arrival and placement of items ``k:`` and report them."""
        recv_free = float(self.place_end[k - 1]) if k else self._recv_free
        pages = self.page[k:]
        arrived = self.clock.real(self.end[k:]) + self.latency
        placed = fifo_finish(arrived, self._place_cost(pages), recv_free)
        self.place_end = np.concatenate((self.place_end[:k], placed))
        self._on_update(pages, arrived, placed)

    def append(self, pages: np.ndarray, enq: np.ndarray, start: np.ndarray) -> None:
        """Add items that start on the socket at channel times ``start``."""
        wire_time = self._wire_bytes(pages) / self.bandwidth
        k = self.page.size
        self.page = np.concatenate((self.page, pages))
        self.enq = np.concatenate((self.enq, enq))
        self.end = np.concatenate((self.end, start + wire_time))
        self.after = np.concatenate(
            (self.after, start + np.maximum(wire_time, self._place_cost(pages)))
        )
        self.free = max(self.free, float(self.after[-1]))
        self.bytes_sent += int(self._wire_bytes(pages).sum())
        self._placements(k)

    def send_now(self, page: int, t: float) -> float:
        """Write one host page at real time ``t`` behind everything already buffered;
        returns the real time its first byte goes out."""
        tau = self.clock.tau(t)
        start = max(tau, self.free)  # exactly t when the socket is idle
        self.append(np.array([page], dtype=np.int64), np.array([tau]), np.array([start]))
        return float(self.clock.real(start))

    def mark_plan_start(self) -> None:
        """Remember the socket's state before a plan is appended (restored by truncation)."""
        self._free_before_plan = self.free

    def truncate_after(self, t: float) -> np.ndarray:
        """Withdraw items planned but not yet written at real time ``t``; return their pages."""
        k = int(np.searchsorted(self.clock.real(self.enq), t, side="right"))
        withdrawn = self.page[k:]
        if withdrawn.size:
            self._slice(0, k)
            self.free = float(self.after[-1]) if k else self._free_before_plan
            self.bytes_sent -= int(self._wire_bytes(withdrawn).sum())
        return withdrawn

    def pause(self, s: float, d: float) -> tuple[np.ndarray, np.ndarray]:
        """Pause for ``d`` from real time ``s`` (an urgent page on the preempt channel).

        Returns the pages whose (future) write moved, with their new real write times.
        """
        sigma = self.clock.pause(s, d)
        k = int(np.searchsorted(self.end, sigma, side="left"))
        if k < self.end.size:
            self._placements(k)
        k = int(np.searchsorted(self.enq, sigma, side="left"))
        return self.page[k:], self.clock.real(self.enq[k:])


class UrgentChannel:
    """The preempt channel: urgent host pages one at a time, placed by its own thread.

    Its pages never wait for background data and nothing ever delays them once sent,
    so each page's times are final when it is written: plain scalars, no arrays.
    """

    def __init__(
        self,
        bandwidth: float,
        latency: float,
        place_cost: np.ndarray,
        wire_bytes: np.ndarray,
        on_update: Callable[[int, float, float], None],
        free: float,
    ) -> None:
        self.bandwidth = bandwidth
        self.latency = latency
        self._place_cost = place_cost
        self._wire_bytes = wire_bytes
        self._on_update = on_update
        self.free = free  # when the socket can take the next page
        self._recv_free = free  # when the receiving thread is done placing
        self.bytes_sent = 0

    def send_now(self, page: int, t: float) -> float:
        """Write host page ``page`` at ``t``; returns when its first byte goes out."""
        wire = self._wire_bytes[page] / self.bandwidth
        cost = float(self._place_cost[page])
        start = max(t, self.free)
        self.free = start + max(wire, cost)
        arrived = (start + wire) + self.latency
        placed = max(arrived, self._recv_free) + cost
        self._recv_free = placed
        self.bytes_sent += int(self._wire_bytes[page])
        self._on_update(page, arrived, placed)
        return start

    def compact(self, now: float) -> None:
        """Nothing to forget: no page is kept."""
