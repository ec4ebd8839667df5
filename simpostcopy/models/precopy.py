"""Precopy on the source and the switch-over decision (QEMU ``migration/ram.c``).

The guest runs on the source while the migration thread streams RAM in rounds: the first
round sends every target page (a zero page as its header plus one byte), each later round
resends the target pages written since the previous dirty-bitmap sync.  At the end of a
round QEMU syncs the bitmap and completes by stop-and-copy once what is left goes out
within ``downtime_limit_s``; a switch-over policy may instead start postcopy, when the
pages left (never sent, or written since their last send) form the discard bitmap,
canonicalised to whole host pages, that the destination must fetch.

Work per round is vectorised: the round's sends are a cumulative sum over the pages in
scan order, and the pages the guest wrote meanwhile come from the vCPUs' access streams
in blocks (one SimPy event per round, not per page or per access).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from simpostcopy.config import TARGET_PAGE_BYTES, Scenario
from simpostcopy.models.workload import AccessStream

# Accesses examined at once when collecting the pages written during a round.
SCAN_ACCESSES = 1 << 20
# Bytes per range of the discard bitmap on the wire (start and length, 64 bits each:
# QEMU's postcopy_discard_send_range).
DISCARD_RANGE_BYTES = 16


@dataclass
class Round:
    """One precopy round: what it sent and what the guest dirtied meanwhile."""

    round: int
    start_s: float
    end_s: float
    pages_sent: int  # target pages
    bytes_sent: int
    dirty_bytes: int  # left to send after the round's bitmap sync
    cut: bool = False  # ended early by a switch-over


@dataclass
class PrecopyOutcome:
    """Where precopy left the migration when the guest stopped on the source."""

    mode: str  # "precopy": stop-and-copy completes it; "postcopy": the destination fetches
    switchover_s: float  # the guest stops on the source
    rounds: list[Round]
    # Per target page: still to send after the stop (stop-and-copy set, or the pages behind
    # the discard bitmap), zero content, and when its last precopy send ended (inf: never).
    remaining: np.ndarray
    zero: np.ndarray
    sent_end_s: np.ndarray
    accesses: list[int]  # per vCPU, made on the source
    precopy_bytes: int = 0
    reason: str = ""  # why the switch-over happened then

    @property
    def precopy_rounds(self) -> int:
        return len(self.rounds)


def wire_bytes(zero: np.ndarray, header: int) -> np.ndarray:
    """Bytes on the wire per target page: QEMU sends a zero page as header + 1 byte."""
    return np.where(zero, header + 1, header + TARGET_PAGE_BYTES).astype(np.int64)


def discard_ranges(host_discard: np.ndarray) -> int:
    """Runs of consecutive host pages in the discard bitmap (one range message each)."""
    if host_discard.size == 0:
        return 0
    starts = host_discard[1:] & ~host_discard[:-1]
    return int(starts.sum()) + int(host_discard[0])


class Precopy:
    """The source's migration thread before switch-over, as one SimPy process.

    ``outcome`` is set when the guest stops.  Accesses of vCPU ``v`` happen at
    ``start_s + j / accesses_per_s`` (the guest runs unimpeded on the source); access
    ``j`` dirties its host page's target page when the stream says it writes.
    """

    def __init__(
        self,
        env: simpy.Environment,
        scenario: Scenario,
        streams: list[AccessStream],
        zero: np.ndarray,
        start_s: float,
    ) -> None:
        self.env = env
        self.s = scenario
        self.streams = streams
        self.zero = zero.copy()  # per target page
        self.start_s = start_s
        net, mig = scenario.network, scenario.migration
        cap = mig.max_bandwidth_bytes_per_s
        self.rate = min(net.bandwidth_bytes_per_s, cap) if cap > 0 else net.bandwidth_bytes_per_s
        self.dt = 1.0 / scenario.workload.accesses_per_s
        limit = scenario.workload.accesses_per_vcpu
        self.limit = limit if limit > 0 else np.iinfo(np.int64).max
        self.done_accesses = [0] * len(streams)
        self.outcome: PrecopyOutcome | None = None
        self.process = env.process(self._run())

    # -- the guest ---------------------------------------------------------------------------
    def _written(self, t1: float) -> np.ndarray:
        """Target pages the guest wrote since the last call, up to ``t1``: a mask over RAM."""
        dirty = np.zeros(self.zero.size, dtype=bool)
        for v, stream in enumerate(self.streams):
            j = self.done_accesses[v]
            # Accesses with start + j * dt < t1 (float rounding cannot add one).
            j_end = min(self.limit, max(j, math.ceil((t1 - self.start_s) / self.dt - 1e-9)))
            while j < j_end:
                n = min(SCAN_ACCESSES, j_end - j)
                pages = stream.pages(j, n)
                dirty[pages[stream.writes(j, n)]] = True
                j += n
            self.done_accesses[v] = j
        return dirty

    # -- the migration thread ----------------------------------------------------------------
    def _run(self) -> Generator[simpy.Event, Any, None]:
        env, mig = self.env, self.s.migration
        g = self.s.guest
        n = self.zero.size
        header = mig.page_header_bytes
        sent_end = np.full(n, np.inf)
        yield env.timeout(self.start_s - env.now)
        t = self.start_s
        deadline = math.inf
        if mig.switchover == "postcopy_after_timeout":
            deadline = t + mig.completion_timeout_per_gib_s * g.ram_bytes / 2**30
        to_send = np.ones(n, dtype=bool)
        rounds: list[Round] = []
        stalled = 0
        while True:
            idx = np.flatnonzero(to_send)
            wire = wire_bytes(self.zero[idx], header)
            ends = t + np.cumsum(wire) / self.rate
            round_end = float(ends[-1]) if idx.size else t
            cut = round_end > deadline
            stop = deadline if cut else round_end
            k = int(np.searchsorted(ends, stop, side="right")) if cut else idx.size
            sent_end[idx[:k]] = ends[:k]
            written = self._written(stop)
            self.zero &= ~written
            yield env.timeout(max(stop - env.now, 0.0))
            left = written.copy()
            left[idx[k:]] = True  # cut short: the rest of the round was never sent
            dirty_bytes = int(wire_bytes(self.zero[left], header).sum())
            previous = rounds[-1].dirty_bytes if rounds else math.inf
            rounds.append(Round(len(rounds) + 1, t, stop, k, int(wire[:k].sum()), dirty_bytes, cut))
            t = stop
            shrank = dirty_bytes < previous * (1.0 - mig.stall_shrink_fraction)
            stalled = 0 if shrank else stalled + 1
            decision = self._decide(cut, dirty_bytes, len(rounds), stalled)
            if decision is not None:
                mode, reason = decision
                self.outcome = PrecopyOutcome(
                    mode=mode,
                    switchover_s=t,
                    rounds=rounds,
                    remaining=left,
                    zero=self.zero,
                    sent_end_s=sent_end,
                    accesses=list(self.done_accesses),
                    precopy_bytes=sum(r.bytes_sent for r in rounds),
                    reason=reason,
                )
                return
            to_send = left

    def _decide(
        self, cut: bool, dirty_bytes: int, rounds: int, stalled: int
    ) -> tuple[str, str] | None:
        """After a round's bitmap sync: (mode, reason) to stop the guest, or None to go on.

        Convergence wins for every policy (QEMU completes whenever precopy converges);
        a timeout cut is a switch to postcopy; at ``max_rounds`` precopy stops and copies,
        a hybrid switches."""
        mig = self.s.migration
        policy = mig.switchover
        if cut:
            return "postcopy", "timeout"
        if dirty_bytes <= self.rate * mig.downtime_limit_s:
            return "precopy", "converged"
        if policy == "postcopy_after_rounds" and rounds >= mig.switchover_rounds:
            return "postcopy", "rounds"
        if policy == "postcopy_when_stalled" and stalled >= mig.stalled_rounds:
            return "postcopy", "stalled"
        if rounds >= mig.max_rounds:
            return ("precopy" if policy == "precopy" else "postcopy"), "max_rounds"
        return None


def run_precopy(
    env: simpy.Environment,
    scenario: Scenario,
    streams: list[AccessStream],
    zero: np.ndarray,
    start_s: float,
) -> PrecopyOutcome:
    """Run precopy from ``start_s`` until the guest stops on the source.

    ``zero`` marks the target pages whose content is zero.  With ``switchover =
    "postcopy"`` the guest stops at ``start_s`` with nothing sent (no SimPy event).
    """
    if scenario.migration.switchover == "postcopy":
        n = zero.size
        return PrecopyOutcome(
            mode="postcopy",
            switchover_s=start_s,
            rounds=[],
            remaining=np.ones(n, dtype=bool),
            zero=zero,
            sent_end_s=np.full(n, np.inf),
            accesses=[0] * len(streams),
            reason="immediate",
        )
    precopy = Precopy(env, scenario, streams, zero, start_s)
    env.run(until=precopy.process)
    assert precopy.outcome is not None
    return precopy.outcome
