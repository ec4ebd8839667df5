"""Shared helpers: tiny scenarios whose every timestamp can be worked out by hand."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import settings

from simpostcopy.config import Scenario

# CI runs the same examples every time (a red build must be reproducible); local runs
# explore new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

KIB = 1024
MIB = 1024 * KIB

# Round numbers: 4096 B at 1e9 B/s is 4.096 us on the wire.
TINY: dict[str, Any] = {
    "guest.ram_bytes": 16 * KIB,
    "guest.host_page_bytes": 4 * KIB,
    "guest.vcpus": 1,
    "guest.zero_page_fraction": 0.0,
    "workload.pattern": "sequential",
    "workload.working_set_bytes": 4 * KIB,
    "workload.working_set_offset_bytes": 12 * KIB,  # always page 3
    "workload.accesses_per_s": 1000.0,
    "workload.accesses_per_vcpu": 1,
    "network.bandwidth_bytes_per_s": 1e9,
    "network.latency_s": 100e-6,
    "network.inflight_bytes": 0,
    "network.preempt": False,
    "migration.setup_s": 0.0,
    "migration.device_state_bytes": 0,
    "migration.max_postcopy_bandwidth_bytes_per_s": 4096.0,  # one background page per second
    "migration.rate_limit_window_s": 0.0,  # paced smoothly, not in QEMU's 100 ms windows
    "migration.locality": "none",
    "migration.page_header_bytes": 0,
    "fault_path.delivery_s": 10e-6,
    "fault_path.request_s": 5e-6,
    "fault_path.place_fixed_s": 2e-6,
    "fault_path.place_per_byte_s": 1e-10,
    "fault_path.wake_s": 5e-6,
}

# The tiny scenario's stage costs: uffd delivery, request, one-way latency, placing a 4 KiB
# page, wake-up, and a 4 KiB page's wire time.
D, R, L, WAKE = 10e-6, 5e-6, 100e-6, 5e-6
PLACE4K = 2e-6 + 4096 * 1e-10
WIRE4K = 4096 / 1e9


def tiny(**changes: Any) -> Scenario:
    """The tiny scenario with ``changes`` given as keyword names using '__' for '.'."""
    over = dict(TINY)
    over.update({k.replace("__", "."): v for k, v in changes.items()})
    return Scenario().override(over)


@pytest.fixture
def tiny_scenario() -> Scenario:
    return tiny()
