"""The fast engine gives the reference engine's results on random small scenarios."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_invariants import scenarios

from simpostcopy.config import Scenario
from simpostcopy.engine import simulate


def assert_same(fast, ref) -> None:
    fa, fr = fast.faults, ref.faults
    times = [c for c in fa.columns if c.endswith("_s")]  # every timestamp and latency
    exact = [c for c in fa.columns if c not in times]
    pd.testing.assert_frame_equal(fa[exact], fr[exact])
    np.testing.assert_allclose(fa[times], fr[times], rtol=0, atol=1e-9)
    pd.testing.assert_frame_equal(fast.vcpus, ref.vcpus, rtol=0, atol=1e-9, check_exact=False)
    for key, value in fast.summary.items():
        other = ref.summary[key]
        if isinstance(value, float):
            assert math.isclose(value, other, rel_tol=0, abs_tol=1e-9) or (
                math.isnan(value) and math.isnan(other)
            ), key
        elif isinstance(value, list):
            np.testing.assert_allclose(value, other, rtol=0, atol=1e-9)
        else:
            assert value == other, key


@st.composite
def small(draw: st.DrawFn) -> Scenario:
    s = draw(scenarios())
    # Bounded work for the reference engine: at most a few hundred accesses per vCPU.
    return s.override({"workload.accesses_per_vcpu": draw(st.integers(1, 300))})


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small())
def test_fast_equals_reference(s: Scenario) -> None:
    assert_same(simulate(s), simulate(s, engine="reference"))


# Reads free, and reads of varying cost (the lazy channel's non-monotone case).
RECV = [0.0, {"dist": "lognormal", "median": "5 us", "sigma": 1.5}]


@pytest.mark.parametrize("batch", [1, 32], ids=["one_by_one", "batches"])
@pytest.mark.parametrize("recv", RECV, ids=["free_reads", "costly_reads"])
@pytest.mark.parametrize("locality", ["none", "continue", "hint", "bubbling"])
@pytest.mark.parametrize("preempt", [False, True])
def test_fast_equals_reference_on_a_busy_guest(
    locality: str, preempt: bool, recv, batch: int
) -> None:
    # Many faults racing the background stream: every request path gets exercised.
    s = Scenario().override(
        {
            "guest.ram_bytes": "8 MiB",
            "guest.vcpus": 3,
            "workload.pattern": "uniform",
            "workload.working_set_bytes": "6 MiB",
            "workload.accesses_per_vcpu": 3000,
            "network.bandwidth_bytes_per_s": "1 Gbit/s",
            "network.inflight_bytes": "256 KiB",
            "network.preempt": preempt,
            "migration.locality": locality,
            "migration.bubbling_pivots": 2,
            "fault_path.recv_s": recv,
            "network.send_batch_pages": batch,
        }
    )
    fast, ref = simulate(s), simulate(s, engine="reference")
    assert len(fast.faults) > 40
    assert_same(fast, ref)
    assert ref.meta["simpy_events"] > fast.meta["simpy_events"]


@pytest.mark.parametrize(
    ("preempt", "sender"),
    [(False, "return_path"), (True, "return_path"), (True, "migration_thread")],
)
@pytest.mark.parametrize("locality", ["continue", "bubbling"])
@pytest.mark.parametrize("recv", RECV, ids=["free_reads", "costly_reads"])
@pytest.mark.parametrize("batch", [1, 32], ids=["one_by_one", "batches"])
def test_fast_equals_reference_under_rate_limit_windows(
    preempt: bool, sender: str, locality: str, recv, batch: int
) -> None:
    # A cap well below the link, in windows short enough that dozens of them pass: bursts,
    # spent windows holding requests back, and writes the socket carries into a new window.
    s = Scenario().override(
        {
            "guest.ram_bytes": "8 MiB",
            "guest.vcpus": 2,
            "workload.pattern": "uniform",
            "workload.working_set_bytes": "6 MiB",
            "workload.accesses_per_vcpu": 2000,
            "workload.accesses_per_s": 2e5,
            "network.bandwidth_bytes_per_s": "1 Gbit/s",
            "network.inflight_bytes": "256 KiB",
            "network.preempt": preempt,
            "migration.max_postcopy_bandwidth_bytes_per_s": "40 MiB/s",
            "migration.rate_limit_window_s": 0.002,
            "migration.urgent_sender": sender,
            "migration.locality": locality,
            "fault_path.recv_s": recv,
            "network.send_batch_pages": batch,
        }
    )
    fast, ref = simulate(s), simulate(s, engine="reference")
    assert len(fast.faults) > 50
    assert fast.summary["total_time_s"] > 0.1  # ~50 windows
    assert_same(fast, ref)
