"""Closed-loop vCPUs: run accesses, fault on a missing page, block, resume."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from simpostcopy.distributions import Draws
from simpostcopy.models.destination import Destination
from simpostcopy.models.ledger import TIE_S, Fault
from simpostcopy.models.workload import BLOCK, AccessStream


class VCpu:
    """One vCPU thread on the destination.

    Access ``j`` of the current run segment happens at ``t_seg + (j - j_seg) / rate``
    plus ``first_touch_s`` for every earlier access of the segment that was this vCPU's
    first touch of a placed host page (see ``time_of``); a faulting access completes
    when the vCPU resumes (its first touch is then part of the wake-up), and the next
    one follows one think time later.  Between faults the vCPU skips over accesses to
    pages already placed with one numpy comparison per block: presence only ever grows,
    so a page placed *now* is placed for every later access, and only the first access
    to a page missing now needs an event (re-checked when its time comes).
    """

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        stream: AccessStream,
        dest: Destination,
        faults: list[Fault],
        *,
        rate: float,
        limit: int,
        host_shift: int,
        delivery_s: Draws,
        wake_s: Draws,
        start_s: float,
        first_access: int = 0,
        first_touch_s: float = 0.0,
        n_pages: int = 0,
    ) -> None:
        self.env = env
        self.index = index
        self.stream = stream
        self.dest = dest
        self.faults = faults
        self.dt = 1.0 / rate
        self.limit = limit if limit > 0 else np.iinfo(np.int64).max
        self.host_shift = host_shift
        self.delivery_s = delivery_s
        self.wake_s = wake_s
        self.t_seg = start_s
        self.j_seg = first_access  # accesses before it ran on the source (precopy)
        self.blocked: Fault | None = None
        # First touches: the host pages this vCPU has touched on the destination, and
        # the accesses of the current segment that were first touches (each delays the
        # accesses after it by first_touch_s).
        self.first_touch_s = first_touch_s
        self.touched = np.zeros(n_pages if first_touch_s else 0, dtype=bool)
        self._ft: list[int] = []
        env.process(self._run(start_s))

    def time_of(self, j: int) -> float:
        """When access ``j`` of the current segment happens (its first touches before it
        known: every access up to ``j`` has been looked at)."""
        t = self.t_seg + (j - self.j_seg) * self.dt
        if self._ft:
            t += self.first_touch_s * bisect_left(self._ft, j)
        return t

    def accesses_done(self, t: float) -> int:
        """Accesses completed by time ``t`` (a faulting access completes on resume).

        Instants within TIE_S count as simultaneous, and an access due within a
        billionth of a think time of ``t`` counts as done, so float rounding of ``t``
        cannot flip the count.
        """
        f = self.blocked
        if f is not None:
            # Resuming (its wake-up drawn) at t: the faulting access is complete.
            return f.access + 1 if f.resumed_s <= t + TIE_S else f.access
        k = int(np.floor((t - self.t_seg) / self.dt + 1e-9))
        if self._ft and k >= 0:
            # First touches delay the accesses after them: the last access whose time,
            # first touches included, is not after t (within a billionth of a think time).
            lo, hi = self.j_seg - 1, self.j_seg + k  # time_of(hi) >= time before delays
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.time_of(mid) <= t + 1e-9 * self.dt:
                    lo = mid
                else:
                    hi = mid - 1
            k = lo - self.j_seg
        return self.j_seg if k < 0 else min(self.j_seg + k + 1, self.limit)

    def _fault(self, j: int, target: int, h: int) -> Generator[simpy.Event, Any, None]:
        """Access ``j`` faults on host page ``h``: block until it is placed, then wake."""
        env = self.env
        f = Fault(len(self.faults), self.index, j, target, h, env.now)
        self.faults.append(f)
        self.blocked = f
        yield self.dest.fault(f, self.delivery_s.next(), self.wake_s)
        self.blocked = None
        self.j_seg, self.t_seg = j + 1, env.now + self.dt
        if self.first_touch_s:
            self.touched[h] = True
            self._ft = []

    def _first_touches(self, j: int, hosts: np.ndarray) -> None:
        """Accesses ``j, j+1, ...`` to placed host pages ``hosts`` happen: note the first
        touches among them."""
        if not self.first_touch_s or not hosts.size:
            return
        fresh = np.flatnonzero(~self.touched[hosts])
        if fresh.size:
            _, first = np.unique(hosts[fresh], return_index=True)
            at = np.sort(fresh[first])
            self.touched[hosts[at]] = True
            self._ft.extend((j + at).tolist())

    def _run(self, start_s: float) -> Generator[simpy.Event, Any, None]:
        env, placed_at, shift = self.env, self.dest.pages.placed_at, self.host_shift
        yield env.timeout(start_s - env.now)
        j = self.j_seg
        while j < self.limit:
            # Find the first access, from j on, to a page not placed yet.
            self.dest.sync()
            scanned, n, hit = 0, 64, -1
            while scanned < BLOCK and j < self.limit:
                m = int(min(n, self.limit - j))
                pages = self.stream.pages(j, m)
                hosts = pages >> shift
                missing = placed_at[hosts] > env.now + TIE_S
                k = int(np.argmax(missing))
                if missing[k]:
                    self._first_touches(j, hosts[:k])
                    hit = j + k
                    break
                self._first_touches(j, hosts)
                j += m
                scanned += m
                n = min(4 * n, BLOCK)
            if hit < 0:
                if j >= self.limit:
                    break
                # A long run of hits: let simulated time catch up, then look again.
                yield env.timeout(self.time_of(j) - env.now)
                continue
            t_access = self.time_of(hit)
            if t_access > env.now:
                yield env.timeout(t_access - env.now)
                self.dest.sync()
            target = int(self.stream.pages(hit, 1)[0])
            h = target >> shift
            if placed_at[h] <= env.now + TIE_S:
                self._first_touches(hit, np.array([h]))
                j = hit + 1  # the page arrived in the meantime: no fault
                continue
            yield from self._fault(hit, target, h)
            j = hit + 1
