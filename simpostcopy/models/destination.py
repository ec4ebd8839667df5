"""Destination side: the fault thread, request de-duplication, placement and wake-ups."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import numpy as np
import simpy
from simpy.core import NORMAL

from simpostcopy.distributions import Draws
from simpostcopy.models.ledger import TIE_S, Fault, Pages
from simpostcopy.models.network import Channel


class Destination:
    """QEMU's postcopy fault thread plus the placement bookkeeping that wakes vCPUs.

    One fault thread reads uffd messages serially (``postcopy_ram_fault_thread``),
    skips pages already placed or already requested (QEMU's ``page_requested``
    tree) and sends one ``REQ_PAGES`` per host page.  A placement wakes every
    thread waiting on the host page, however the page arrived.
    """

    def __init__(
        self,
        env: simpy.Environment,
        pages: Pages,
        *,
        request_s: Draws,
        latency_s: float,
        send_request: Callable[[Fault], None],
    ) -> None:
        self.env = env
        self.pages = pages
        self.request_s = request_s
        self.latency_s = latency_s
        self._send_request = send_request
        self.requested = np.zeros(pages.count, dtype=bool)
        # The main channel, whose in-flight placements are not in the ledger yet (fast
        # engine only; set once the channel exists).
        self.in_flight: Channel | None = None
        self._waiters: dict[int, list[tuple[simpy.Event, Fault, Draws]]] = {}
        self._check_at: dict[int, float] = {}
        self._inbox: list[tuple[float, int, int, Fault]] = []  # readable uffd messages
        self._readable = env.event()
        env.process(self._fault_thread())

    # -- placement schedule (driven by the channels) -----------------------------------
    def sync(self) -> None:
        """Bring the ledger up to now: pages placed by now are marked placed."""
        if self.in_flight is not None:
            self.in_flight.settle(self.env.now)

    def placement(self, h: int) -> float:
        """When host page ``h`` is or will be placed, as far as is known now (inf: unknown).

        Main-channel placements still in flight can only be delayed (by pauses) or
        withdrawn; a wake-up is checked when it is due and re-armed if it moved.
        """
        t = float(self.pages.placed_at[h])
        if t == np.inf and self.in_flight is not None:
            return self.in_flight.placement(h)
        return t

    def last_placement(self) -> float:
        """When the last page sent so far is placed."""
        placed = self.pages.placed_at
        last = float(placed[np.isfinite(placed)].max(initial=0.0))
        if self.in_flight is not None:
            last = max(last, self.in_flight.last_placement())
        return last

    def channel_changed(self) -> None:
        """The main channel took new pages (a page someone waits for may be among them) or
        its placements moved in a way that can bring one forward: check the waits again."""
        for h in self._waiters:
            self._schedule_wake(h)

    def update_one(self, h: int, arrived: float, placed: float) -> None:
        """A page's final arrival and placement (the preempt channel, the reference engine):
        the threads waiting on it now resume one wake-up after the placement."""
        self.pages.arrived_at[h] = arrived
        self.pages.placed_at[h] = placed
        if h in self._waiters:
            self._check_at.pop(h, None)
            self._release(self._waiters.pop(h), placed)

    def _schedule_wake(self, h: int) -> None:
        t = self.placement(h)
        if t == np.inf or self._check_at.get(h) == t:
            return
        self._check_at[h] = t
        self.env.timeout(t - self.env.now).callbacks.append(partial(self._wake, h, t))

    def _wake(self, h: int, t: float, _event: simpy.Event) -> None:
        if self._check_at.get(h) != t:
            return  # a later check replaced this one
        del self._check_at[h]
        if self.placement(h) != t:
            # Delayed since (a pause) or withdrawn: check again when it is due.
            self._schedule_wake(h)
            return
        self._release(self._waiters.pop(h, ()), self.env.now)

    def _release(self, waiters: list[tuple[simpy.Event, Fault, Draws]], placed: float) -> None:
        """UFFDIO_COPY at ``placed`` wakes every waiter; each resumes after its wake cost."""
        for event, f, wake_s in waiters:
            f.resumed_s = placed + wake_s.next()
            # The waiter's event fires at its resume time (pre-triggered, as a Timeout is).
            event._ok, event._value = True, None
            self.env.schedule(event, NORMAL, max(f.resumed_s - self.env.now, 0.0))

    # -- faults --------------------------------------------------------------------------
    def fault(self, f: Fault, delivery_s: float, wake_s: Draws) -> simpy.Event:
        """A vCPU blocked on ``f.host_page``: the uffd message is readable ``delivery_s``
        later; returns the event that fires when the vCPU resumes (placement, then a
        wake-up cost drawn from ``wake_s``)."""
        h = f.host_page
        waiter = self.env.event()
        self._waiters.setdefault(h, []).append((waiter, f, wake_s))
        self._schedule_wake(h)
        self.env.timeout(delivery_s).callbacks.append(lambda _e: self._deliver(f))
        return waiter

    def _deliver(self, f: Fault) -> None:
        """The uffd message of ``f`` becomes readable."""
        f.delivered_s = self.env.now
        heapq.heappush(self._inbox, (self.env.now, f.vcpu, f.fault_id, f))
        if not self._readable.triggered:
            self._readable.succeed()

    def _fault_thread(self) -> Generator[simpy.Event, Any, None]:
        env, placed_at = self.env, self.pages.placed_at
        while True:
            # Let every message that becomes readable at this instant arrive, then read
            # them in a fixed order (earliest first, then by vCPU), whatever the order
            # of simultaneous events: an idle thread is woken by an event scheduled
            # behind the first message's, a busy one looks again behind its own.
            if not self._inbox:
                self._readable = env.event()
                yield self._readable
            else:
                yield env.timeout(0)
            f: Fault = heapq.heappop(self._inbox)[-1]
            f.read_s = env.now
            h = f.host_page
            self.sync()
            if placed_at[h] <= env.now + TIE_S or self.requested[h]:
                continue  # already here, or someone asked for it: just wait
            self.requested[h] = True
            f.requested = True
            cost = self.request_s.next()
            if cost > 0:
                yield env.timeout(cost)
            f.request_sent_s = env.now
            self.env.timeout(self.latency_s).callbacks.append(lambda _e, f=f: self._send_request(f))
