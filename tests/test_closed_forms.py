"""Closed forms: background push time, trace replay."""

from __future__ import annotations

import pytest
from conftest import MIB, tiny

from simpostcopy.config import ScenarioError
from simpostcopy.engine import simulate


@pytest.mark.parametrize("preempt", [False, True])
def test_push_time_is_ram_over_bandwidth_plus_one_page_path(preempt: bool):
    # A saturated link sends every page once, back to back, whatever the faults did.
    s = tiny(
        guest__ram_bytes=64 * MIB,
        migration__max_postcopy_bandwidth_bytes_per_s=0,
        migration__setup_s=0.25,
        migration__device_state_bytes=500_000,
        network__inflight_bytes=2 * MIB,
        network__preempt=preempt,
    )
    r = simulate(s)
    n = 64 * MIB // 4096
    expected = 0.25 + 500_000 / 1e9 + n * 4096 / 1e9 + 100e-6 + (2e-6 + 4096e-10)
    assert r.summary["total_time_s"] == pytest.approx(expected, rel=0, abs=1e-9)
    assert r.summary["postcopy_bytes"] == 64 * MIB


def test_trace_replays_each_vcpus_pages_in_order(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("vcpu,page\n0,3\n1,1\n0,2\n0,3\n1,1\n")
    r = simulate(
        tiny(
            guest__vcpus=2,
            workload__pattern="trace",
            workload__trace_path=str(trace),
            workload__accesses_per_vcpu=3,
        )
    )
    fa = r.faults.sort_values(["vcpu", "fault_s"])
    # vCPU 0 replays 3, 2, 3; vCPU 1 replays 1, 1, 1 (its trace wraps round).
    rows = fa[["vcpu", "target_page", "access"]].values.tolist()
    assert rows == [[0, 3, 0], [0, 2, 1], [1, 1, 0]]
    # Placing page 2 (vCPU 0's request) completes the migration at 1.548 ms: vCPU 0 is
    # still waking up from it, and vCPU 1's third access (at 2.33 ms) comes later.
    assert r.summary["total_time_s"] == pytest.approx(fa.placed_s.iloc[1], abs=1e-12)
    assert r.vcpus.accesses.tolist() == [1, 2]


def test_unreadable_trace_is_a_scenario_error(tmp_path):
    with pytest.raises(ScenarioError) as e:
        tiny(workload__pattern="trace", workload__trace_path=str(tmp_path / "missing.csv"))
    assert e.value.key == "workload.trace_path"
