"""Source side: background scan order, the page-request queue and locality strategies."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import simpy

from simpostcopy.models.ledger import (
    TIE_S,
    VIA_BACKGROUND,
    VIA_NONE,
    VIA_REQUEST_MAIN,
    VIA_REQUEST_PREEMPT,
    Fault,
    Pages,
)
from simpostcopy.models.network import Channel, UrgentChannel


def _unsent_from(sent: np.ndarray, start: int, n: int, step: int) -> np.ndarray:
    """Up to ``n`` unsent pages from ``start`` walking by ``step`` (+1 or -1), no wrap."""
    out: list[np.ndarray] = []
    have, window, pos, size = 0, max(2 * n, 1024), start, sent.size
    while have < n and 0 <= pos < size:
        if step > 0:
            hi = min(size, pos + window)
            found = pos + np.flatnonzero(~sent[pos:hi])
            pos = hi
        else:
            lo = max(0, pos - window + 1)
            found = lo + np.flatnonzero(~sent[lo : pos + 1])[::-1]
            pos = lo - 1
        out.append(found[: n - have])
        have += out[-1].size
        window *= 4
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


class LinearScan:
    """QEMU's background scan: ascending host pages, wrapping round to pick up skipped ones."""

    def __init__(self, n_pages: int) -> None:
        self.pos = 0
        self.n_pages = n_pages

    def next_pages(self, sent: np.ndarray, n: int) -> np.ndarray:
        ahead = _unsent_from(sent, self.pos, n, +1)
        if ahead.size:
            self.pos = int(ahead[0])  # everything before it is already sent for good
        if ahead.size == n or self.pos == 0:
            return ahead
        behind = _unsent_from(sent[: self.pos], 0, n - ahead.size, +1)
        return np.concatenate((ahead, behind))

    def jump(self, page: int) -> None:
        """Continue the scan from ``page`` (QEMU vanilla: after the last requested page)."""
        self.pos = page % self.n_pages

    def keep(self, count: int) -> None:
        """Nothing to rewind: the position only ever moves to the first unsent page."""


class BubblingScan:
    """Hines & Gopalan's bubbling: push outwards in both directions around recent faults.

    Up to ``pivots`` recent requested pages are kept, each with a forward and a backward
    cursor; the stream takes one page from each cursor in turn (newest pivot first,
    forward before backward), skipping pages already sent and exhausted cursors.  Before
    the first request the scan is linear from page 0.  A batch is exactly the pages that
    repeated single steps would give.
    """

    def __init__(self, n_pages: int, pivots: int) -> None:
        self.n_pages = n_pages
        self.max_pivots = pivots
        self.slots: list[list[int]] = []  # [cursor, step] per cursor, newest pivot first
        self.turn = 0
        self.linear = LinearScan(n_pages)
        self._history: list[tuple[int, list[int]]] = []

    def add_pivot(self, page: int) -> None:
        self.slots[:0] = [[page + 1, 1], [page - 1, -1]]
        del self.slots[2 * self.max_pivots :]
        self.turn = 0
        self._history = []

    def _state(self) -> tuple[int, list[int]]:
        return self.turn, [slot[0] for slot in self.slots]

    def _advance(self, sent: np.ndarray, cursor: int, step: int, taken: set[int]) -> int:
        """The first page from ``cursor`` in direction ``step`` not sent or taken (or off
        the end of guest RAM)."""
        while 0 <= cursor < self.n_pages:
            if sent[cursor]:
                found = _unsent_from(sent, cursor, 1, step)
                cursor = int(found[0]) if found.size else (self.n_pages if step > 0 else -1)
            elif cursor in taken:
                cursor += step
            else:
                break
        return cursor

    def next_pages(self, sent: np.ndarray, n: int) -> np.ndarray:
        if not self.slots:
            return self.linear.next_pages(sent, n)
        out: list[int] = []
        taken: set[int] = set()
        self._history = [self._state()]
        while len(out) < n:
            for _ in range(len(self.slots)):
                slot = self.slots[self.turn]
                self.turn = (self.turn + 1) % len(self.slots)
                slot[0] = self._advance(sent, slot[0], slot[1], taken)
                if 0 <= slot[0] < self.n_pages:
                    out.append(slot[0])
                    taken.add(slot[0])
                    slot[0] += slot[1]
                    self._history.append(self._state())
                    break
            else:
                break  # every cursor ran off guest RAM: all pages sent
        return np.asarray(out, dtype=np.int64)

    def keep(self, count: int) -> None:
        """Only the first ``count`` pages of the last batch were sent: rewind to there."""
        if self._history:
            self.turn, cursors = self._history[count]
            for slot, cursor in zip(self.slots, cursors, strict=True):
                slot[0] = cursor


class RateWindow:
    """QEMU's rate limiter in postcopy: a budget of ``rate * window`` bytes per window.

    Windows of ``window`` seconds are counted from ``start`` (when the postcopy stream
    begins).  A write is charged to the window it happens in; the migration thread may
    write while the bytes already charged to the current window do not exceed the budget
    (so the write that crosses it still goes out), and once they do it sleeps until the
    window ends (``migration_rate_limit``).  ``qemu_savevm_state_iterate`` returns early
    while the budget is spent, so requests that arrive then wait for the next window too.
    """

    def __init__(self, rate: float, window: float, start: float) -> None:
        self.budget = rate * window
        self.window = window
        self.start = start
        self._used: dict[int, int] = {}

    def _indices(self, at: np.ndarray | float) -> np.ndarray:
        return np.floor((np.asarray(at, dtype=float) - self.start + TIE_S) / self.window)

    def index(self, t: float) -> int:
        """The window real time ``t`` falls in (a boundary belongs to the window it opens)."""
        return int(self._indices(t))

    def end(self, k: int) -> float:
        return self.start + (k + 1) * self.window

    def used(self, k: int) -> int:
        return self._used.get(k, 0)

    def spent(self, t: float) -> bool:
        """Whether the window of ``t`` has no budget left (by the writes charged so far)."""
        return self.used(self.index(t)) > self.budget

    def charge(self, at: np.ndarray | float, nbytes: np.ndarray | int, sign: int = 1) -> None:
        """Charge (``sign`` -1: refund) writes of ``nbytes`` at real times ``at``."""
        k = np.atleast_1d(self._indices(at)).astype(np.int64)
        b = np.atleast_1d(np.asarray(nbytes, dtype=np.int64))
        if k.size > 1:
            # One sum per run of writes in the same window (they come in time order).
            first = np.concatenate(([0], np.flatnonzero(np.diff(k)) + 1))
            k, b = k[first], np.add.reduceat(b, first)
        for kk, bb in zip(k.tolist(), b.tolist(), strict=True):
            self._used[kk] = self._used.get(kk, 0) + sign * bb
        # Windows that ended long ago can no longer be charged or asked about.
        if len(self._used) > 64:
            newest = max(self._used)
            self._used = {kk: b for kk, b in self._used.items() if kk > newest - 8}


class RequestQueue:
    """What both engines' sources share: the REQ_PAGES queue and QEMU's locality rules."""

    def __init__(
        self,
        env: simpy.Environment,
        pages: Pages,
        scan: LinearScan | BubblingScan,
        locality: str,
        preempt: bool,
        window: RateWindow | None = None,
        hold_urgent: bool = True,
    ) -> None:
        self.env = env
        self.pages = pages
        self.window = window
        # Whether a spent rate-limit window holds requests back (always for vanilla; with
        # preempt only when the migration thread sends urgent pages, QEMU 7.x).
        self.hold_requests = window is not None and (not preempt or hold_urgent)
        self.scan = scan
        self.locality = locality
        # Whether serving a request moves the background scan: QEMU vanilla continues
        # after the requested page, 10.1's hint does so with preempt too, bubbling pivots.
        self.moves_scan = locality in ("hint", "bubbling") or (
            locality == "continue" and not preempt
        )
        self.requests_received = 0
        self.requests_duplicate = 0
        self.done = False  # every page sent: later requests are duplicates
        self.sent = pages.via != VIA_NONE  # already at the destination after precopy
        self.unsent = int(pages.count - self.sent.sum())
        self._queue: list[tuple[Fault, float]] = []
        self._kick: simpy.Event | None = None

    def _arrived(self, f: Fault) -> bool:
        """Count a REQ_PAGES message arriving now; False if every page went out already."""
        f.request_at_source_s = self.env.now
        self.requests_received += 1
        if self.done:
            self._duplicate(f)
            return False
        return True

    def receive(self, f: Fault) -> None:
        """A REQ_PAGES message arrived on the return path: queue it, wake the sender."""
        if not self._arrived(f):
            return
        self._queue.append((f, self.env.now))
        if self._kick is not None and not self._kick.triggered:
            self._kick.succeed()

    def held(self, t: float) -> bool:
        """Whether a request arriving at real time ``t`` must wait for the next window."""
        return self.hold_requests and self.window.spent(t)  # type: ignore[union-attr]

    def _charge_main(self, h: int, t: float) -> None:
        """An urgent page written on the main channel at ``t`` counts against the cap."""
        if self.window is not None:
            self.window.charge(t, self.pages.wire_bytes[h])

    def _duplicate(self, f: Fault) -> None:
        # QEMU skips a queued page that is no longer dirty: it went out already.
        f.duplicate_request = True
        self.requests_duplicate += 1

    def _served(self, f: Fault) -> None:
        """Bookkeeping after page ``f.host_page`` was sent for request ``f``."""
        h = f.host_page
        self.pages.requester[h] = f.fault_id
        if self.locality == "bubbling":
            self.scan.add_pivot(h)
        elif self.moves_scan:
            self.scan.jump(h + 1)


class Source(RequestQueue):
    """The source's migration thread in postcopy: requests first, then the background scan.

    Requests are served FIFO as they arrive, ahead of the background stream.  Vanilla
    sends the urgent page on the main channel behind the data already buffered there;
    preempt sends it at once on the preempt channel.  The background stream is planned
    a chunk at a time; a request withdraws whatever part of the plan the source had not
    yet written to the socket, so the plan always reflects what QEMU would do.
    """

    def __init__(
        self,
        env: simpy.Environment,
        pages: Pages,
        *,
        main: Channel,
        preempt: UrgentChannel | None,
        scan: LinearScan | BubblingScan,
        locality: str,
        bandwidth: float,
        drain_rate: float,
        background_rate: float,
        inflight_bytes: int,
        chunk_pages: int,
        start_s: float,
        on_all_sent: Callable[[], None],
        window: RateWindow | None = None,
        hold_urgent: bool = True,
    ) -> None:
        super().__init__(env, pages, scan, locality, preempt is not None, window, hold_urgent)
        self.main = main
        self.preempt = preempt
        self.bandwidth = bandwidth
        self.drain_rate = drain_rate  # bytes/s the main channel drains at when busy
        self.background_rate = background_rate
        self.inflight_bytes = inflight_bytes
        self.chunk_pages = chunk_pages
        self.start_s = start_s
        self._on_all_sent = on_all_sent
        # Channel times (see network.Clock): pacing of the next background byte, the
        # ready times of the current plan, and when its last page is written.
        self._release = start_s
        self._plan_ready = np.empty(0)
        self._plan_end = start_s
        self._timer_at = np.inf  # when the armed timer fires
        env.timeout(start_s - env.now).callbacks.append(lambda _e: self._advance())

    @property
    def bytes_sent(self) -> int:
        """Bytes written to the sockets (withdrawn plans excluded)."""
        return self.main.bytes_sent + (self.preempt.bytes_sent if self.preempt else 0)

    # -- requests ------------------------------------------------------------------------
    def _written_by(self, h: int, t: float) -> bool:
        """Whether host page ``h`` was written to a socket by real time ``t``."""
        at = float(self.pages.sent_at[h])
        if at > t + TIE_S:
            return False  # a pause only ever moves a planned write later
        # The ledger's time of a page still in the main channel may predate pauses.
        kept = self.main.sent_time(h)
        return (at if kept == np.inf else kept) <= t + TIE_S

    def _serve(self, f: Fault, t: float) -> None:
        h = f.host_page
        if self._written_by(h, t):
            self._duplicate(f)
            return
        if self.window is not None or self.preempt is None or self.moves_scan or self.sent[h]:
            # The background plan changes (vanilla queues behind it, the scan moves, or the
            # page itself was planned): take back what is not written yet and re-plan.
            self._withdraw(t)
        if self.preempt is not None:
            start = self.preempt.send_now(h, t)
            self.main.pause(start, self.pages.wire_bytes[h] / self.bandwidth)
            via = VIA_REQUEST_PREEMPT
        else:
            self.main.send_now(h, t)
            self._charge_main(h, t)
            via = VIA_REQUEST_MAIN
        self._mark_sent(np.array([h]), np.array([t]), via)
        self._served(f)

    # -- background stream ---------------------------------------------------------------
    def _mark_sent(self, pages: np.ndarray, at: np.ndarray, via: int) -> None:
        self.sent[pages] = True
        self.pages.sent_at[pages] = at
        self.pages.via[pages] = via
        self.unsent -= pages.size

    def _withdraw(self, t: float) -> None:
        pages = self.main.truncate_after(t + TIE_S)
        if pages.size:
            if self.window is not None:
                self.window.charge(self.pages.sent_at[pages], self.pages.wire_bytes[pages], -1)
            kept = self._plan_ready.size - pages.size
            self._release = float(self._plan_ready[kept])
            self.scan.keep(kept)
            self.sent[pages] = False
            self.pages.sent_at[pages] = np.inf
            self.pages.via[pages] = VIA_NONE
            self.unsent += pages.size
        self._plan_end = self.main.clock.tau(t)

    def _plan(self, t: float) -> None:
        """Plan the next chunk of background pages from real time ``t`` (channel times)."""
        self.main.compact(t)
        if self.preempt is not None:
            self.preempt.compact(t)
        pages = self.scan.next_pages(self.sent, self.chunk_pages)
        if pages.size == 0:
            return
        now = self.main.clock.tau(t)
        wire = self.pages.wire_bytes[pages]
        if self.window is not None:
            self._plan_window(pages, wire, now)
            return
        if np.isfinite(self.background_rate):
            # max-postcopy-bandwidth: the k-th background byte leaves no earlier than
            # start + k / rate (counted over the pages actually sent in the background).
            ready = self._release + (np.cumsum(wire) - wire) / self.background_rate
            self._release = float(ready[-1] + wire[-1] / self.background_rate)
        else:
            ready = np.full(pages.size, now)
        self._plan_ready = ready
        start, enq = self._enqueue_times(pages, np.maximum(ready, now), now)
        self.main.mark_plan_start()
        self.main.append(pages, enq, start)
        self._mark_sent(pages, self.main.clock.real(enq), VIA_BACKGROUND)
        self._plan_end = float(enq[-1])

    def _enqueue_times(
        self, pages: np.ndarray, ready: np.ndarray, now: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Socket start and write times (channel times) of ``pages`` released at ``ready``."""
        wire = self.pages.wire_bytes[pages]
        start = self.main.schedule(pages, ready, self.main.free)
        # Keep at most inflight_bytes queued in the socket: write the next page once the
        # bytes still ahead of it have drained to inflight_bytes minus its own size.
        lead = np.maximum(self.inflight_bytes - wire, 0) / self.drain_rate
        enq = np.maximum(ready, start - lead)
        enq = np.maximum.accumulate(
            np.maximum(enq, self.main.enq[-1] if self.main.enq.size else now)
        )
        return start, enq

    def _plan_window(self, pages: np.ndarray, wire: np.ndarray, now: float) -> None:
        """Plan the pages the current rate-limit window admits (see RateWindow)."""
        window = self.window
        assert window is not None
        start, enq = self._enqueue_times(pages, np.full(pages.size, now), now)
        real = self.main.clock.real(enq)
        k = window.index(float(real[0]))
        before = window.used(k) + np.cumsum(wire) - wire
        in_window = real < window.end(k) - TIE_S
        fits = in_window & (before <= window.budget)
        n = int(np.argmin(fits)) if not fits.all() else pages.size
        self.scan.keep(n)
        if n == 0:
            # The window's budget is spent: the thread sleeps to the window's end.
            self._plan_ready = np.empty(0)
            self._plan_end = self.main.clock.tau(window.end(k))
            return
        pages, start, enq = pages[:n], start[:n], enq[:n]
        self._plan_ready = np.full(n, now)
        self.main.mark_plan_start()
        self.main.append(pages, enq, start)
        self._mark_sent(pages, real[:n], VIA_BACKGROUND)
        window.charge(real[:n], wire[:n])
        # Next: once the plan is written (the socket may carry it into the next window),
        # or at the window's end if the budget stopped it.
        self._plan_end = float(enq[-1])
        if n < pages.size and in_window[n]:  # stopped by the budget, not by the window's end
            self._plan_end = self.main.clock.tau(window.end(k))

    # -- the migration thread ------------------------------------------------------------
    # It costs no time, so it is not a process: a request is served the instant it
    # arrives, and a timer wakes the thread when the plan's last page is written.
    def receive(self, f: Fault) -> None:
        """A REQ_PAGES message arrived: serve it now, ahead of the background stream,
        unless the rate-limit window is spent (then at the window's end)."""
        if not self._arrived(f):
            return
        now = self.env.now
        if self.hold_requests:
            window = self.window
            assert window is not None
            self._withdraw(now)
            held = self.held(now)
            if held or self._queue:
                self._queue.append((f, now))
                self._arm(window.end(window.index(now)) if held else now)
                return
        self._serve(f, now)
        self._advance()

    def _advance(self) -> None:
        """Serve held requests once their window is over; plan the next chunk if the
        current plan is all written; re-arm the timer."""
        now = self.env.now
        if self._queue and not self.held(now):
            queued, self._queue = self._queue, []
            for f, _t in queued:
                self._serve(f, now)
        if self.main.clock.real(self._plan_end) <= now + TIE_S:
            if self.unsent == 0:
                if not self.done:
                    self.done = True
                    self._on_all_sent()
                return
            self._plan(now)
        self._arm(float(self.main.clock.real(self._plan_end)))

    def _arm(self, t: float) -> None:
        if self._timer_at <= t:
            return  # an earlier check is pending: it re-arms if the plan moved later
        self._timer_at = t
        self.env.timeout(max(t - self.env.now, 0.0)).callbacks.append(partial(self._tick, t))

    def _tick(self, t: float, _event: simpy.Event) -> None:
        if t == self._timer_at:  # else superseded by an earlier timer
            self._timer_at = np.inf
            self._advance()
