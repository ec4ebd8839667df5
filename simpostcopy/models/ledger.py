"""Per-host-page bookkeeping shared by the models: what happened to each page, and when.

The ledger records facts for the results; each model still acts only on what
its own side of the migration would know (the source on ``sent_at``, the
destination on ``placed_at`` and its own request tree).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Two times closer than this are simultaneous: the engines compute the same instant
# with different float operations, and a decision (is the page there yet?) must not
# flip on rounding noise.  Far below any modelled delay, far above float error.
TIE_S = 1e-12

# How a host page reached the destination (precopy: before the guest stopped, or by
# stop-and-copy).
VIA_NONE, VIA_BACKGROUND, VIA_REQUEST_MAIN, VIA_REQUEST_PREEMPT, VIA_PRECOPY = 0, 1, 2, 3, 4


@dataclass(slots=True)
class Pages:
    """Arrays indexed by host page number."""

    zero: np.ndarray  # bool: the page's content is all zeros
    wire_bytes: np.ndarray  # int64: bytes on the wire (headers + payload)
    place_cost_s: np.ndarray  # float64: UFFDIO_COPY / UFFDIO_ZEROPAGE duration
    sent_at: np.ndarray = field(init=False)  # when the source enqueued it (inf: not yet)
    arrived_at: np.ndarray = field(init=False)  # when its last byte reached the destination
    placed_at: np.ndarray = field(init=False)  # when placement completed (inf: not yet)
    via: np.ndarray = field(init=False)  # VIA_* code
    requester: np.ndarray = field(init=False)  # fault id whose request made it urgent, or -1

    def __post_init__(self) -> None:
        n = self.zero.size
        self.sent_at = np.full(n, np.inf)
        self.arrived_at = np.full(n, np.inf)
        self.placed_at = np.full(n, np.inf)
        self.via = np.zeros(n, dtype=np.int8)
        self.requester = np.full(n, -1, dtype=np.int64)

    @property
    def count(self) -> int:
        return int(self.zero.size)


@dataclass(slots=True)
class Fault:
    """One vCPU fault on a missing page, filled in as it moves through the pipeline."""

    fault_id: int
    vcpu: int
    access: int
    target_page: int
    host_page: int
    fault_s: float
    delivered_s: float = np.nan  # the uffd message became readable
    read_s: float = np.nan
    request_sent_s: float = np.nan
    request_at_source_s: float = np.nan
    resumed_s: float = np.nan
    requested: bool = False  # this fault's message made the fault thread send REQ_PAGES
    duplicate_request: bool = False  # the source had already sent the page
