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

from simpostcopy.distributions import Dist, IndexedDraws
from simpostcopy.models.ledger import TIE_S, Pages

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


class Reader:
    """How a channel's receiving thread reads its socket: QEMU's ``QEMUFile`` fills a
    buffer of ``buffer_bytes`` (IO_BUF_SIZE, 32 KiB) with one read, then the thread places
    the pages in it one by one.  Read number ``n`` costs ``costs.total(n)`` (drawn per
    read from the channel's own stream; a constant draws nothing).

    A read takes the whole pages that have arrived when it starts, up to the buffer's
    size; a page larger than the buffer is read alone, in as many reads as it fills
    buffers.  The thread starts a read when it has placed everything it read before, or,
    idle, when the next page arrives.  So a busy thread places pages in lumps of a
    buffer, with one read's cost between lumps, and an idle one pays a read per page.
    With reads free, each page is placed when it has arrived and the page before it is
    placed.
    """

    def __init__(self, costs: IndexedDraws | None = None, buffer_bytes: int = 32768) -> None:
        self.costs = costs or IndexedDraws(Dist("constant", (0.0,)), np.random.default_rng(0))
        self.buffer_bytes = buffer_bytes
        # A read's mean cost: the thread's pace on full buffers (and 0: reads are free).
        self.mean_s = self.costs.mean

    @classmethod
    def constant(cls, cost_s: float, buffer_bytes: int = 32768) -> Reader:
        """Reads that all cost ``cost_s``."""
        return cls(
            IndexedDraws(Dist("constant", (cost_s,)), np.random.default_rng(0)), buffer_bytes
        )

    def reads(self, wire: np.ndarray) -> np.ndarray:
        """Reads needed by a page of ``wire`` bytes read alone."""
        return np.maximum(1, -(-wire // self.buffer_bytes))

    def busy(self, wire: np.ndarray, cost: np.ndarray) -> np.ndarray:
        """The thread's mean time per page while it reads full buffers (its placement
        cost plus its share of a read): how fast it lets a socket drain."""
        if not self.mean_s:
            return cost
        share = np.where(wire > self.buffer_bytes, self.reads(wire), wire / self.buffer_bytes)
        return cost + self.mean_s * share

    def reads_alone(self, wire: int) -> int:
        """Reads a page of ``wire`` bytes read on its own takes (none if reads are free)."""
        return max(1, -(-int(wire) // self.buffer_bytes)) if self.mean_s else 0

    def busy_alone(self, wire: int, cost: float) -> float:
        """The thread's mean time for a page read on its own."""
        return cost + self.mean_s * self.reads_alone(wire) if self.mean_s else cost

    def alone(self, n: int, arrived: float, free: float, wire: int, cost: float) -> float:
        """Placement of a page read on its own, by reads ``n`` on (the preempt channel's
        urgent pages)."""
        if not self.mean_s:
            return max(arrived, free) + cost
        return max(arrived, free) + self.costs.total(n, self.reads_alone(wire)) + cost

    def receive(
        self,
        arrived: np.ndarray,
        wire: np.ndarray,
        cost: np.ndarray,
        state: tuple[float, float, float, int],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Placement times of pages arriving (in order) at ``arrived``, and for each the
        time of the read that took it, the bytes that read had taken up to it and the
        number of reads made up to and with it.

        ``state`` is the thread's after the page before: when it placed it, the time of
        its read, that read's bytes so far and the reads made.
        """
        n = arrived.size
        free, t, used, done = state
        if not self.mean_s:
            place = fifo_finish(arrived, cost, free)
            return place, np.full(n, -np.inf), np.full(n, np.inf), np.zeros(n, dtype=np.int64)
        # One page at a time (a scalar loop: reads group pages irregularly, and the sums
        # run in the reference engine's order).
        size, total = self.buffer_bytes, self.costs.total
        p, rt, ru, rd = [0.0] * n, [0.0] * n, [0.0] * n, [0] * n
        items = zip(arrived.tolist(), wire.tolist(), cost.tolist(), strict=True)
        for i, (a, w, c) in enumerate(items):
            if a <= t + TIE_S and used + w <= size:
                used += w  # joins the read under way
                free += c
            else:
                t = a if a > free else free
                used = w
                k = 1 if w <= size else -(-w // size)
                free = t + total(done, k) + c
                done += k
            p[i], rt[i], ru[i], rd[i] = free, t, used, done
        return np.array(p), np.array(rt), np.array(ru), np.array(rd, dtype=np.int64)


PAUSE_TIE = 1e-14  # relative channel-time rounding between back-to-back pauses


class Batches:
    """How the source's ``QEMUFile`` writes a channel's pages: it queues them as iovec
    entries -- a header and the page's data each, by reference -- and writes them out with
    one ``writev`` when ``MAX_IOV_SIZE`` (64) entries are queued: every ``pages`` (32)
    target pages holding data.  A zero page's few bytes join the buffer between them and
    add no entry.  So a page can be read at the destination only once its batch is
    written: when the last data page of the batch has been produced, which the model
    takes to follow at the link's pace (``page_s``: one data target page's wire time).
    ``pages = 1``: every page is written on its own.  Not modelled: QEMU also writes a
    partial batch at the end of an iteration (a spent rate-limit window, the last page),
    which the model then sees at most a batch's wire time late.
    """

    def __init__(self, pages: int = 1, page_s: float = 0.0, per_host: int = 1) -> None:
        self.pages = pages
        self.page_s = page_s
        self.per_host = per_host  # target pages per host page

    def ready(
        self, end: np.ndarray, zero: np.ndarray, fill: int, last: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Channel times at which items whose last bytes leave at ``end`` can be read
        (their batches written, in order), and the data target pages written after each
        (a running count): ``zero`` marks zero pages, ``fill`` and ``last`` are the count
        and the readable time after the item before."""
        counts = np.where(zero, 0, self.per_host)
        after = fill + np.cumsum(counts)
        if self.pages == 1:
            return end, after
        # Data pages still to come before the batch is written: a data page's batch ends
        # at the next multiple of `pages`; a zero page waits for the next data page's.
        rest = np.where(counts > 0, (-after) % self.pages, self.pages - after % self.pages)
        return np.maximum.accumulate(np.maximum(end + rest * self.page_s, last)), after


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
        if isinstance(tau, float):
            return tau + (self._base + self._cum[bisect_right(self._sigma, tau)])
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
        if self._sigma and sigma - self._sigma[-1] <= PAUSE_TIE * max(1.0, abs(sigma)):
            # Back to back with the last pause (the channel has not moved in between): the
            # same channel instant, not one a rounding error later.
            sigma = self._sigma[-1]
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
    ``ready`` (its batch written and its last byte sent: see ``Batches``; with batches of
    one page, when its last byte leaves), ``after`` (when the socket can start the next
    item); in real time: ``place_end`` (placement done).  A socket cannot drain faster than its
    receiving thread places pages (TCP flow control), so an item holds it for the longer
    of its wire time and the thread's time for it (``Reader.busy``), while its own bytes
    still travel at wire speed.  An item arrives one latency after it is ready
    (``real(ready)``) and the receiving thread reads and places them in order (see
    ``Reader``; with reads free, ``P[i] = max(A[i], P[i-1]) + cost[i]``).

    Placements are computed lazily.  A pause (an urgent page on the preempt channel)
    only delays the arrivals of the items it catches, so it just marks the placements
    from the first of them as stale.  With reads free a stale value is a lower bound of
    the true one; with costly reads it need not be (a later arrival can join a fuller
    read and be placed sooner, though never before the pause), so the channel then tells
    its listener (the destination re-checks its waits) and never reads a stale value as
    a bound.  Exact values are computed (vectorised while reads are free) only as far as
    someone needs them:
    ``settle(now)`` writes the items placed by ``now`` into the page ledger (what
    presence checks read) and ``placement(h)`` answers for one page.  So the cost of a
    pause does not grow with the data in flight.  Items placed by the time of a
    ``compact`` are dropped.
    """

    def __init__(
        self,
        bandwidth: float,
        latency: float,
        pages: Pages,
        on_change: Callable[[], None],
        free: float,
        reader: Reader | None = None,
        batches: Batches | None = None,
    ) -> None:
        self.bandwidth = bandwidth
        self.latency = latency
        self.clock = Clock()
        self.pages = pages
        self.reader = reader or Reader()
        self.batches = batches or Batches()
        # After the items dropped: data target pages written and the last readable time.
        self._fill0, self._ready0 = 0, -np.inf
        self._on_change = on_change
        self.free = free  # channel time when the socket can take the next item
        self.bytes_sent = 0  # bytes written to this socket (withdrawn plans excluded)
        self._free_before_plan = free
        # The receiving thread after the items dropped: when it placed the last, that
        # item's read's time and bytes (see Reader.receive).
        self._recv: tuple[float, float, float, int] = (free, -np.inf, np.inf, 0)
        self.page = _EMPTY_I
        self.enq = _EMPTY_F
        self.ready = _EMPTY_F
        self.fill = _EMPTY_I  # data target pages written up to and with the item
        self.after = _EMPTY_F
        self.place_end = _EMPTY_F  # exact below _valid, a lower bound from there on
        self.read_t = _EMPTY_F  # real time of the read that took the item
        self.read_used = _EMPTY_F  # bytes that read had taken up to and with the item
        self.read_done = _EMPTY_I  # reads made up to and with the item's
        self._valid = 0
        self._settled = 0  # items [0, _settled) are placed in the ledger
        self._base = 0  # item number of the first item kept
        self._item = np.full(pages.count, -1, dtype=np.int64)  # a page's latest item number

    def _slice(self, lo: int, hi: int | None) -> None:
        self.page = self.page[lo:hi]
        self.enq = self.enq[lo:hi]
        self.ready = self.ready[lo:hi]
        self.fill = self.fill[lo:hi]
        self.after = self.after[lo:hi]
        self.place_end = self.place_end[lo:hi]
        self.read_t = self.read_t[lo:hi]
        self.read_used = self.read_used[lo:hi]
        self.read_done = self.read_done[lo:hi]

    # -- placement times -------------------------------------------------------------------
    def _placed(
        self, pages: np.ndarray, ready: np.ndarray, after: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Placement times of ``pages`` (ready at channel times ``ready``), queued behind
        the first ``after`` items, with their reads' state (Reader.receive): arrival one
        latency after they are ready, then the receiving thread's reads from where it was
        after the item before."""
        arrived = self.clock.real(ready) + self.latency
        k = after - 1
        state = self._state(k) if after else self._recv
        return self.reader.receive(
            arrived, self.pages.wire_bytes[pages], self.pages.place_cost_s[pages], state
        )

    def _state(self, k: int) -> tuple[float, float, float, int]:
        """The receiving thread's state after item ``k`` (see Reader.receive)."""
        return (
            float(self.place_end[k]),
            float(self.read_t[k]),
            float(self.read_used[k]),
            int(self.read_done[k]),
        )

    def _refresh(self, hi: int) -> None:
        """Make the placements of items ``[0, hi)`` exact."""
        lo = self._valid
        if hi <= lo:
            return
        (
            self.place_end[lo:hi],
            self.read_t[lo:hi],
            self.read_used[lo:hi],
            self.read_done[lo:hi],
        ) = self._placed(self.page[lo:hi], self.ready[lo:hi], lo)
        self._valid = hi

    def _index(self, h: int) -> int:
        """Position of host page ``h`` among the items kept, or -1."""
        i = int(self._item[h]) - self._base
        return i if 0 <= i < self.page.size and self.page[i] == h else -1

    def placement(self, h: int) -> float:
        """When host page ``h``, in flight here, will be placed (inf: not here)."""
        i = self._index(h)
        if i < 0:
            return np.inf
        self._refresh(i + 1)
        return float(self.place_end[i])

    def last_placement(self) -> float:
        """When the last item kept will be placed (-inf: none)."""
        self._refresh(self.page.size)
        return float(self.place_end[-1]) if self.page.size else -np.inf

    def sent_time(self, h: int) -> float:
        """Real time at which host page ``h``, kept here, is written (inf: not here)."""
        i = self._index(h)
        return float(self.clock.real(float(self.enq[i]))) if i >= 0 else np.inf

    def settle(self, now: float) -> None:
        """Mark the items placed by ``now`` (within TIE_S) placed in the page ledger."""
        lo, n, due = self._settled, self.page.size, now + TIE_S
        bound = lo < self._valid or not self.reader.mean_s  # exact, or a lower bound
        if lo == n or (bound and self.place_end[lo] > due):  # later: not yet
            return
        width = 512 if bound else 16
        # Exact placements (sorted: FIFO) until one is later than now.
        while self._valid < n and (self._valid == lo or self.place_end[self._valid - 1] <= due):
            self._refresh(min(n, self._valid + width))
            width *= 4
        hi = lo + int(np.searchsorted(self.place_end[lo : self._valid], due, side="right"))
        self.pages.placed_at[self.page[lo:hi]] = self.place_end[lo:hi]
        self._settled = hi

    def _record(self, lo: int, hi: int) -> None:
        """Write items ``[lo, hi)``, whose times are final, into the ledger."""
        self._refresh(hi)
        pages = self.page[lo:hi]
        self.pages.placed_at[pages] = self.place_end[lo:hi]
        self.pages.arrived_at[pages] = self.clock.real(self.ready[lo:hi]) + self.latency
        self.pages.sent_at[pages] = self.clock.real(self.enq[lo:hi])

    def settle_all(self) -> None:
        """Write every item still kept into the ledger (the run is over)."""
        self._record(0, self.page.size)
        self._settled = self.page.size

    def _invalidate(self, k: int) -> None:
        """The placements of items from ``k`` on may have moved."""
        self._valid = min(self._valid, k)
        if k < self._settled:  # within TIE_S of a change: take the placements back
            self.pages.placed_at[self.page[k : self._settled]] = np.inf
            self._settled = k

    def compact(self, now: float) -> None:
        """Forget items already placed by ``now`` (their times can no longer move)."""
        self.settle(now)
        k = int(np.searchsorted(self.place_end[: self._settled], now, side="right"))
        if k:
            self._record(0, k)
            self._recv = self._state(k - 1)
            self._fill0, self._ready0 = int(self.fill[k - 1]), float(self.ready[k - 1])
            self._slice(k, None)
            self._base += k
            self._settled -= k
            self._valid -= k
        oldest = self.clock.tau(now)
        self.clock.prune(min(oldest, float(self.enq[0])) if self.enq.size else oldest)

    # -- the socket --------------------------------------------------------------------------
    def _hold(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        wire = self.pages.wire_bytes[pages]
        wire_time = wire / self.bandwidth
        return wire_time, np.maximum(
            wire_time, self.reader.busy(wire, self.pages.place_cost_s[pages])
        )

    def schedule(self, pages: np.ndarray, ready: np.ndarray, free: float) -> np.ndarray:
        """Channel times at which ``pages``, written no earlier than ``ready``, start."""
        _, hold = self._hold(pages)
        return fifo_finish(ready, hold, free) - hold

    def append(self, pages: np.ndarray, enq: np.ndarray, start: np.ndarray) -> None:
        """Add items that start on the socket at channel times ``start``."""
        wire_time, hold = self._hold(pages)
        k = self.page.size
        ready, fill = self.batches.ready(
            start + wire_time,
            self.pages.zero[pages],
            int(self.fill[-1]) if k else self._fill0,
            float(self.ready[-1]) if k else self._ready0,
        )
        if self.reader.mean_s:
            # Left to be computed when needed: a plan is often withdrawn unread, and the
            # reads' loop is not vectorised.
            placed = read_t = np.full(pages.size, -np.inf)
            read_used = np.full(pages.size, np.inf)
            read_done = np.zeros(pages.size, dtype=np.int64)
        else:
            # Exact if every placement before them is, else lower bounds (FIFO is monotone).
            placed, read_t, read_used, read_done = self._placed(pages, ready, k)
        self._item[pages] = self._base + k + np.arange(pages.size)
        self.page = np.concatenate((self.page, pages))
        self.enq = np.concatenate((self.enq, enq))
        self.ready = np.concatenate((self.ready, ready))
        self.fill = np.concatenate((self.fill, fill))
        self.after = np.concatenate((self.after, start + hold))
        self.place_end = np.concatenate((self.place_end, placed))
        self.read_t = np.concatenate((self.read_t, read_t))
        self.read_used = np.concatenate((self.read_used, read_used))
        self.read_done = np.concatenate((self.read_done, read_done))
        if self._valid == k and not self.reader.mean_s:
            self._valid = self.page.size
        self.free = max(self.free, float(self.after[-1]))
        self.bytes_sent += int(self.pages.wire_bytes[pages].sum())
        self._on_change()

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
            self._invalidate(k)
            self._slice(0, k)
            self.free = float(self.after[-1]) if k else self._free_before_plan
            self.bytes_sent -= int(self.pages.wire_bytes[withdrawn].sum())
        return withdrawn

    def pause(self, s: float, d: float) -> None:
        """Pause for ``d`` from real time ``s`` (an urgent page on the preempt channel):
        every item not ready by then arrives ``d`` later."""
        sigma = self.clock.pause(s, d)
        self._invalidate(int(np.searchsorted(self.ready, sigma, side="left")))
        if self.reader.mean_s:
            self._on_change()  # a placement may now come sooner (see the class docstring)


class UrgentChannel:
    """The preempt channel: urgent host pages one at a time, placed by its own thread,
    which reads each page on its own (QEMU flushes the channel after every urgent page).

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
        reader: Reader | None = None,
    ) -> None:
        self.bandwidth = bandwidth
        self.latency = latency
        self.reader = reader or Reader()
        self._place_cost = place_cost
        self._wire_bytes = wire_bytes
        self._on_update = on_update
        self.free = free  # when the socket can take the next page
        self._recv_free = free  # when the receiving thread is done placing
        self._reads = 0  # reads its receiving thread made
        self.bytes_sent = 0

    def send_now(self, page: int, t: float) -> float:
        """Write host page ``page`` at ``t``; returns when its first byte goes out."""
        nbytes = self._wire_bytes[page]
        wire = nbytes / self.bandwidth
        cost = float(self._place_cost[page])
        start = max(t, self.free)
        self.free = start + max(wire, self.reader.busy_alone(nbytes, cost))
        arrived = (start + wire) + self.latency
        placed = self.reader.alone(self._reads, arrived, self._recv_free, nbytes, cost)
        self._reads += self.reader.reads_alone(nbytes)
        self._recv_free = placed
        self.bytes_sent += int(self._wire_bytes[page])
        self._on_update(page, arrived, placed)
        return start

    def compact(self, now: float) -> None:
        """Nothing to forget: no page is kept."""
