"""The reference engine: the same model, one event per page and one per guest access.

Nothing here plans ahead, vectorises or skips: the background writer decides and writes
one host page at a time, every page's arrival and placement is an event of its own, and
every vCPU access is a step of its own.  It is slow and obviously follows the rules the
fast engine (source.Source, network.Channel, vcpu.VCpu) computes in bulk, so it is the
oracle the fast engine is tested against on small scenarios.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy
from simpy.core import URGENT

from simpostcopy.models.destination import Destination
from simpostcopy.models.ledger import (
    TIE_S,
    VIA_BACKGROUND,
    VIA_REQUEST_MAIN,
    VIA_REQUEST_PREEMPT,
    Fault,
    Pages,
)
from simpostcopy.models.network import Batches, Clock, Reader
from simpostcopy.models.source import BubblingScan, LinearScan, RateWindow, RequestQueue
from simpostcopy.models.vcpu import VCpu


def _urgent_timeout(env: simpy.Environment, delay: float) -> simpy.Event:
    """A timeout processed before ordinary events at the same instant (a write at t
    happens before a request that arrives at t)."""
    event = simpy.Event(env)
    # Pre-trigger it the way SimPy's own Timeout does, then schedule it as URGENT.
    event._ok = True
    event._value = None
    env.schedule(event, URGENT, delay)
    return event


class RefReceiver:
    """A channel's receiving thread: reads the pages that have arrived, a buffer at a time,
    and places them one by one (see network.Reader).

    A read is an event of its own, due when the thread has placed everything it read
    before or, idle, when a page arrives; it takes the pages arrived by then (pages
    arriving at that very instant too) that fit in the buffer, or only the first with
    ``alone`` (the preempt channel's thread reads each urgent page on its own).
    """

    def __init__(
        self,
        env: simpy.Environment,
        pages: Pages,
        dest: Destination,
        free: float,
        reader: Reader,
        on_placed: Callable[[], None],
        alone: bool = False,
    ):
        self.env, self.pages, self.dest, self.free = env, pages, dest, free
        self.reader, self.alone, self._on_placed = reader, alone, on_placed
        self.placed = 0
        self.reads = 0  # reads made (read n costs reader.costs.total(n))
        self._arrived: list[tuple[int, float]] = []
        self._read_due = False

    def arrive(self, h: int) -> None:
        now = self.env.now
        if not self.reader.mean_s:
            # Reads cost nothing: each page is placed as soon as it is here and the thread
            # has placed the one before.
            self.free = max(now, self.free) + float(self.pages.place_cost_s[h])
            self.placed += 1
            self.dest.update_one(h, now, self.free)
            self._on_placed()
            return
        self._arrived.append((h, now))
        if not self._read_due:
            self._read_due = True
            # Behind every arrival at the read's instant (theirs are URGENT events).
            at = max(self.env.now, self.free) + TIE_S
            self.env.timeout(at - self.env.now).callbacks.append(self._read)

    def _read(self, _event: simpy.Event) -> None:
        h, arrived = self._arrived[0]
        t = max(arrived, self.free)
        wire = self.pages.wire_bytes
        size = self.reader.buffer_bytes
        n, used = 1, int(wire[h])
        while (
            not self.alone
            and n < len(self._arrived)
            and self._arrived[n][1] <= t + TIE_S
            and used + wire[self._arrived[n][0]] <= size
        ):
            used += int(wire[self._arrived[n][0]])
            n += 1
        taken, self._arrived = self._arrived[:n], self._arrived[n:]
        k = int(self.reader.reads(wire[h]))
        free = t + self.reader.costs.total(self.reads, k)
        self.reads += k
        for page, at in taken:
            free += float(self.pages.place_cost_s[page])
            self.placed += 1
            self.dest.update_one(page, at, free)
        self.free = free
        self._on_placed()
        self._read_due = False
        if self._arrived:
            self._read_due = True
            when = max(self.free, self._arrived[0][1]) + TIE_S
            self.env.timeout(max(when - self.env.now, 0.0)).callbacks.append(self._read)


class RefSource(RequestQueue):
    """The source's migration thread, page by page, with the main channel in its own clock.

    Per page: serve queued requests first; pick the next page of the scan; write it once
    the rate limit allows and the bytes ahead of it in the socket have drained to
    ``inflight_bytes`` minus its size; the socket starts it when it has finished the page
    before (holding each page for max(wire time, the receiving thread's time per page));
    it arrives one latency after its last byte leaves and its batch is written
    (Batches), and the receiving thread reads and places it (RefReceiver).  An urgent
    page on the preempt channel pauses the main channel's clock for its wire time.
    """

    def __init__(
        self,
        env: simpy.Environment,
        pages: Pages,
        dest: Destination,
        *,
        preempt: bool,
        scan: LinearScan | BubblingScan,
        locality: str,
        bandwidth: float,
        latency: float,
        drain_rate: float,
        background_rate: float,
        inflight_bytes: int,
        start_s: float,
        on_all_placed: Callable[[], None],
        window: RateWindow | None = None,
        hold_urgent: bool = True,
        reader: Reader | None = None,
        preempt_reader: Reader | None = None,
        batches: Batches | None = None,
    ) -> None:
        super().__init__(env, pages, scan, locality, preempt, window, hold_urgent)
        # How the main channel's pages are written (Batches): data target pages written
        # so far and when the last page written can be read.
        self.batches = batches or Batches()
        self._fill, self._ready = 0, -np.inf
        # Main-channel pages written, handed to the receiver, and arrived but waiting for
        # an earlier one (by write number).
        self._main_written = self._main_handed = 0
        self._main_arrived: dict[int, int] = {}
        self.dest, self.preempt = dest, preempt
        self.reader = reader or Reader()
        self.preempt_reader = preempt_reader or Reader()
        self.bandwidth, self.latency, self.drain_rate = bandwidth, latency, drain_rate
        self.background_rate, self.inflight_bytes = background_rate, inflight_bytes
        self.clock = Clock()
        self.main_free = start_s  # channel time the main socket can start its next page
        self.preempt_free = start_s
        self.release = start_s  # channel time the next background byte may leave
        self._written: list[tuple[int, float]] = []  # background writes: (page, channel time)
        self.main_rx = RefReceiver(env, pages, dest, start_s, self.reader, self._placed)
        self.preempt_rx = RefReceiver(
            env, pages, dest, start_s, self.preempt_reader, self._placed, alone=True
        )
        self.to_place = self.unsent  # pages this run must place
        self.bytes_sent = 0
        self._on_all_placed = on_all_placed
        env.process(self._run(start_s))

    # -- the wire ------------------------------------------------------------------------
    def _hold(self, h: int, preempt: bool = False) -> tuple[float, float]:
        """Page ``h``'s wire time and how long it holds its socket (the receiving thread's
        pace limits the socket's: TCP flow control)."""
        nbytes = self.pages.wire_bytes[h]
        wire = nbytes / self.bandwidth
        cost = float(self.pages.place_cost_s[h])
        busy = (
            self.preempt_reader.busy_alone(nbytes, cost)
            if preempt
            else float(self.reader.busy(np.array([nbytes]), np.array([cost]))[0])
        )
        return wire, max(wire, busy)

    def _main_write(self, h: int, enq_tau: float) -> None:
        """The socket takes page ``h`` written at channel time ``enq_tau``."""
        wire, hold = self._hold(h)
        start = max(enq_tau, self.main_free)
        self.main_free = start + hold
        self.bytes_sent += int(self.pages.wire_bytes[h])
        ready, fill = self.batches.ready(
            np.array([start + wire]), self.pages.zero[[h]], self._fill, self._ready
        )
        self._fill, self._ready = int(fill[0]), float(ready[0])
        self._deliver(h, self._ready, self.main_rx, self.clock)

    def _deliver(self, h: int, end: float, rx: RefReceiver, clock: Clock | None) -> None:
        """Hand page ``h`` to ``rx`` one latency after it is ready (``end``: its last byte
        has left and, on the main channel, its batch is written); main-channel times are
        re-read when the event fires, as pauses may move them.  The main channel hands
        its pages over in the order they were written (TCP keeps it: a batch's pages
        arrive at one instant, and a re-armed event must not overtake them)."""
        seq = -1
        if clock is not None:
            seq = self._main_written
            self._main_written += 1

        def check(_e: simpy.Event) -> None:
            arrival = (clock.real(end) if clock else end) + self.latency
            if arrival > self.env.now + TIE_S:
                _urgent_timeout(self.env, arrival - self.env.now).callbacks.append(check)
                return
            if seq < 0:
                rx.arrive(h)
                return
            self._main_arrived[seq] = h
            while self._main_handed in self._main_arrived:
                rx.arrive(self._main_arrived.pop(self._main_handed))
                self._main_handed += 1

        arrival = (clock.real(end) if clock else end) + self.latency
        _urgent_timeout(self.env, arrival - self.env.now).callbacks.append(check)

    def _placed(self) -> None:
        if self.main_rx.placed + self.preempt_rx.placed == self.to_place:
            self._on_all_placed()

    def _mark(self, h: int, at: float, via: int) -> None:
        self.sent[h] = True
        self.pages.sent_at[h] = at
        self.pages.via[h] = via
        self.unsent -= 1

    # -- requests ------------------------------------------------------------------------
    def _serve(self, f: Fault, t: float) -> None:
        h = f.host_page
        if self.sent[h]:
            self._duplicate(f)
            return
        wire, hold = self._hold(h, preempt=self.preempt)
        if self.preempt:
            start = max(t, self.preempt_free)
            self.preempt_free = start + hold
            self.bytes_sent += int(self.pages.wire_bytes[h])
            self._deliver(h, start + wire, self.preempt_rx, None)
            sigma = self.clock.pause(start, wire)
            # Background writes already made at or after the pause move with it.
            for page, tau in self._written:
                if tau >= sigma:
                    self.pages.sent_at[page] = self.clock.real(tau)
            via = VIA_REQUEST_PREEMPT
        else:
            self._main_write(h, self.clock.tau(t))
            self._charge_main(h, t)
            via = VIA_REQUEST_MAIN
        self._mark(h, t, via)
        self._served(f)

    # -- the background writer -------------------------------------------------------------
    def _run(self, start_s: float) -> Generator[simpy.Event, Any, None]:
        env = self.env
        yield env.timeout(start_s - env.now)
        window = self.window
        while True:
            # A spent rate-limit window holds requests back until it ends.
            if not self.held(env.now):
                while self._queue:
                    f, _t = self._queue.pop(0)
                    self._serve(f, env.now)
            if self.unsent == 0:
                self.done = True
                return
            h = int(self.scan.next_pages(self.sent, 1)[0])
            wire_bytes = int(self.pages.wire_bytes[h])
            now = self.clock.tau(env.now)
            wake = np.inf  # a spent window's end: the thread wakes then, whatever the socket
            if window is not None:
                if window.spent(env.now):
                    wake = window.end(window.index(env.now))
                ready = self.clock.tau(wake) if wake < np.inf else now
            elif np.isfinite(self.background_rate):
                ready = self.release
            else:
                ready = now
            lead = max(self.inflight_bytes - wire_bytes, 0) / self.drain_rate
            start = max(ready, now, self.main_free)
            enq = max(ready, now, start - lead)
            self._kick = env.event()
            due = min(float(self.clock.real(enq)), wake)
            yield _urgent_timeout(env, max(due - env.now, 0.0)) | self._kick
            if (
                self.clock.real(enq) > env.now + TIE_S
                or (window is not None and window.spent(env.now))
                or (self._queue and not self.held(env.now))
            ):
                # A request came first (or a held one may go now), or the budget is
                # spent: decide again.
                self.scan.keep(0)
                continue
            if window is not None:
                window.charge(env.now, wire_bytes)
            elif np.isfinite(self.background_rate):
                self.release = ready + wire_bytes / self.background_rate
            self._main_write(h, enq)
            self._mark(h, self.clock.real(enq), VIA_BACKGROUND)
            self._written = [(p, tau) for p, tau in self._written if tau >= now] + [(h, enq)]


class RefVCpu(VCpu):
    """A closed-loop vCPU stepping through every access as an event of its own."""

    def _run(self, start_s: float) -> Generator[simpy.Event, Any, None]:
        env, placed_at = self.env, self.dest.pages.placed_at
        yield env.timeout(start_s - env.now)
        j = self.j_seg
        while j < self.limit:
            t_access = self.time_of(j)
            if t_access > env.now:
                yield env.timeout(t_access - env.now)
            target = int(self.stream.pages(j, 1)[0])
            h = target >> self.host_shift
            if placed_at[h] <= env.now + TIE_S:
                if self.first_touch_s and not self.touched[h]:
                    # This vCPU's first touch of the page: the accesses after it wait.
                    self.touched[h] = True
                    self._ft.append(j)
                j += 1
                continue
            yield from self._fault(j, target, h)
            j += 1
