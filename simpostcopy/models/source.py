"""Source side: background scan order, the page-request queue and locality strategies."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy

from simpostcopy.models.ledger import (
    VIA_BACKGROUND,
    VIA_NONE,
    VIA_REQUEST_MAIN,
    VIA_REQUEST_PREEMPT,
    Fault,
    Pages,
)
from simpostcopy.models.network import Channel


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


class BubblingScan:
    """Hines & Gopalan's bubbling: push outwards in both directions around recent faults.

    Up to ``pivots`` recent requested pages are kept; the stream alternates forward
    and backward around each, round-robin over pivots, newest first.  Before the first
    request the scan is linear from page 0.
    """

    def __init__(self, n_pages: int, pivots: int) -> None:
        self.max_pivots = pivots
        self.cursors: list[list[int]] = []  # [forward, backward] per pivot, newest first
        self.linear = LinearScan(n_pages)

    def add_pivot(self, page: int) -> None:
        self.cursors.insert(0, [page + 1, page - 1])
        del self.cursors[self.max_pivots :]

    def next_pages(self, sent: np.ndarray, n: int) -> np.ndarray:
        if not self.cursors:
            return self.linear.next_pages(sent, n)
        seqs, keys, ranks = [], [], []
        for rank, cur in enumerate(self.cursors):
            fwd = _unsent_from(sent, cur[0], n, +1)
            bwd = _unsent_from(sent, cur[1], n, -1)
            cur[0] = int(fwd[0]) if fwd.size else sent.size
            cur[1] = int(bwd[0]) if bwd.size else -1
            seqs += [fwd, bwd]
            keys += [2 * np.arange(fwd.size), 2 * np.arange(bwd.size) + 1]
            ranks += [np.full(fwd.size, rank), np.full(bwd.size, rank)]
        seq = np.concatenate(seqs)
        order = np.lexsort((np.concatenate(ranks), np.concatenate(keys)))
        seq = seq[order]
        _, first = np.unique(seq, return_index=True)
        return seq[np.sort(first)][:n]


class Source:
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
        preempt: Channel | None,
        scan: LinearScan | BubblingScan,
        locality: str,
        bandwidth: float,
        drain_rate: float,
        background_rate: float,
        inflight_bytes: int,
        chunk_pages: int,
        start_s: float,
        on_withdraw: Callable[[np.ndarray], None],
        on_all_sent: Callable[[], None],
    ) -> None:
        self.env = env
        self.pages = pages
        self.main = main
        self.preempt = preempt
        self.scan = scan
        self.locality = locality
        self.bandwidth = bandwidth
        self.drain_rate = drain_rate  # bytes/s the main channel drains at when busy
        self.background_rate = background_rate
        self.inflight_bytes = inflight_bytes
        self.chunk_pages = chunk_pages
        self.start_s = start_s
        self._on_withdraw = on_withdraw
        self._on_all_sent = on_all_sent
        self.sent = np.zeros(pages.count, dtype=bool)
        self.unsent = pages.count
        self.requests_received = 0
        self.requests_duplicate = 0
        self._queue: list[tuple[Fault, float]] = []
        self._kick: simpy.Event | None = None
        self._release = start_s  # rate limiter: earliest release of the next background byte
        self._plan_ready = np.empty(0)
        self._plan_end = start_s
        self.done = False
        env.process(self._run())

    # -- requests ------------------------------------------------------------------------
    def receive(self, f: Fault) -> None:
        """A REQ_PAGES message arrived on the return path."""
        f.request_at_source_s = self.env.now
        self.requests_received += 1
        if self.done:
            f.duplicate_request = True
            self.requests_duplicate += 1
            return
        self._queue.append((f, self.env.now))
        if self._kick is not None and not self._kick.triggered:
            self._kick.succeed()

    def _serve(self, f: Fault, t: float) -> None:
        h = f.host_page
        if self.pages.sent_at[h] <= t:
            # QEMU skips a queued page that is no longer dirty: it went out already.
            f.duplicate_request = True
            self.requests_duplicate += 1
            return
        self._withdraw(t)
        if self.preempt is not None:
            self.preempt.send_now(h, t)
            self.main.delay_pending(t, self.pages.wire_bytes[h] / self.bandwidth)
            via = VIA_REQUEST_PREEMPT
        else:
            self.main.send_now(h, t)
            via = VIA_REQUEST_MAIN
        self._mark_sent(np.array([h]), np.array([t]), via)
        self.pages.requester[h] = f.fault_id
        if self.locality == "hint" or (self.locality == "continue" and self.preempt is None):
            self.scan.jump(h + 1)
        elif self.locality == "bubbling":
            self.scan.add_pivot(h)

    # -- background stream ---------------------------------------------------------------
    def _mark_sent(self, pages: np.ndarray, at: np.ndarray, via: int) -> None:
        self.sent[pages] = True
        self.pages.sent_at[pages] = at
        self.pages.via[pages] = via
        self.unsent -= pages.size

    def _withdraw(self, t: float) -> None:
        pages = self.main.truncate_after(t)
        if pages.size:
            self._release = float(self._plan_ready[self._plan_ready.size - pages.size])
            self.sent[pages] = False
            self.pages.sent_at[pages] = np.inf
            self.pages.via[pages] = VIA_NONE
            self.unsent += pages.size
            self._on_withdraw(pages)
        self._plan_end = t

    def _plan(self, t: float) -> None:
        """Plan the next chunk of background pages from time ``t``."""
        self.main.compact(t)
        if self.preempt is not None:
            self.preempt.compact(t)
        pages = self.scan.next_pages(self.sent, self.chunk_pages)
        if pages.size == 0:
            return
        wire = self.pages.wire_bytes[pages]
        before = np.cumsum(wire) - wire
        base = max(t, self._release)
        if np.isfinite(self.background_rate):  # max-postcopy-bandwidth paces the stream
            ready = base + before / self.background_rate
            self._release = float(ready[-1] + wire[-1] / self.background_rate)
        else:
            ready = np.full(pages.size, base)
        free = self.main.free
        if self.preempt is not None:  # main bytes cannot go out while urgent ones do
            free = max(free, self.preempt.free)
        start, _ = self.main.schedule(pages, ready, free)
        # Keep at most inflight_bytes queued in the socket: write the next page once the
        # bytes still ahead of it have drained to inflight_bytes minus its own size.
        lead = np.maximum(self.inflight_bytes - wire, 0) / self.drain_rate
        enq = np.maximum(ready, start - lead)
        enq = np.maximum.accumulate(np.maximum(enq, self.main.enq[-1] if self.main.enq.size else t))
        self.main.mark_plan_start()
        self.main.append(pages, enq, start)
        self._mark_sent(pages, enq, VIA_BACKGROUND)
        self._plan_ready = ready
        self._plan_end = float(enq[-1])

    def _run(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        yield env.timeout(self.start_s - env.now)
        while True:
            while self._queue:
                f, t = self._queue.pop(0)
                self._serve(f, t)
            if self._plan_end <= env.now:
                if self.unsent == 0:
                    self.done = True
                    self._on_all_sent()
                    return
                self._plan(env.now)
            self._kick = env.event()
            yield env.timeout(self._plan_end - env.now) | self._kick
