"""Precopy rounds, switch-over policies and the discard bitmap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import MIB

from simpostcopy.config import Scenario, ScenarioError
from simpostcopy.engine import simulate

HEADER = 8
WIRE = HEADER + 4096  # a non-zero 4 KiB target page on the wire


def scenario(**over: object) -> Scenario:
    base = {
        "guest.ram_bytes": 64 * MIB,
        "guest.vcpus": 2,
        "guest.zero_page_fraction": 0.0,
        "workload.pattern": "uniform",
        "workload.working_set_bytes": 64 * MIB,
        "workload.accesses_per_s": 1e5,
        "network.bandwidth_bytes_per_s": 1.25e9,
        "migration.page_header_bytes": HEADER,
    }
    return Scenario().override(base | {k.replace("__", "."): v for k, v in over.items()})


def test_without_dirtying_precopy_converges_in_one_round():
    s = scenario(migration__switchover="precopy", workload__write_fraction=0.0)
    sm = simulate(s).summary
    bw, mig = s.network.bandwidth_bytes_per_s, s.migration
    ram_wire = s.guest.ram_bytes // 4096 * WIRE
    assert (sm["completed_by"], sm["switchover_reason"], sm["precopy_rounds"]) == (
        "precopy",
        "converged",
        1,
    )
    assert sm["precopy_bytes"] == ram_wire
    assert sm["switchover_time_s"] == pytest.approx(mig.setup_s + ram_wire / bw, rel=1e-12)
    # Nothing left to copy: the downtime is the device state over the link.
    assert sm["downtime_bytes"] == mig.device_state_bytes
    assert sm["downtime_s"] == pytest.approx(mig.device_state_bytes / bw, rel=1e-12)
    assert sm["total_time_s"] == pytest.approx(
        sm["switchover_time_s"] + sm["downtime_s"] + s.network.latency_s, rel=1e-12
    )
    assert sm["remote_faults"] == sm["postcopy_bytes"] == 0


def test_zero_pages_go_out_cheaply_in_the_first_round():
    s = scenario(
        migration__switchover="precopy",
        workload__write_fraction=0.0,
        guest__zero_page_fraction=1.0,
    )
    r = simulate(s)
    assert r.summary["precopy_bytes"] == s.guest.ram_bytes // 4096 * (HEADER + 1)


def test_without_dirtying_postcopy_after_one_round_fetches_nothing():
    s = scenario(migration__switchover="postcopy_after_rounds", workload__write_fraction=0.0)
    r = simulate(s)
    sm = r.summary
    assert sm["precopy_rounds"] == 1
    assert sm["remote_faults"] == sm["postcopy_bytes"] == sm["pages_fetched_after_switchover"] == 0
    assert (r.pages.via == "precopy").all()


def _expected_distinct(pages: int, draws: float) -> float:
    """Distinct pages hit by ``draws`` uniform draws over ``pages`` (expected)."""
    return pages * (1.0 - (1.0 - 1.0 / pages) ** draws)


def test_rounds_follow_the_closed_form_of_iterative_precopy():
    # Dirty rate D = 2 vCPUs x 1e5 accesses/s x 0.5 writes x 4104 B = 410 MB/s against
    # B = 1.25 GB/s: each round sends what the previous one let the guest dirty,
    # V[i+1] = W (1 - (1 - 1/W)^(writes in round i)) pages (~ V[i] D / B while far from
    # saturating the working set of W pages).
    s = scenario(
        migration__switchover="precopy",
        workload__write_fraction=0.5,
        migration__downtime_limit_s=1e-5,
    )
    r = simulate(s)
    rounds = r.rounds
    assert len(rounds) >= 4
    w = s.guest.ram_bytes // 4096
    writes_per_s = s.guest.vcpus * s.workload.accesses_per_s * s.workload.write_fraction
    rate = s.network.bandwidth_bytes_per_s
    d_over_b = writes_per_s * WIRE / rate
    for prev, cur in zip(rounds.itertuples(), rounds.iloc[1:].itertuples(), strict=False):
        assert cur.bytes_sent == prev.dirty_bytes  # a round sends what the last one dirtied
        assert cur.end_s - cur.start_s == pytest.approx(cur.bytes_sent / rate, rel=1e-9)
        expected = _expected_distinct(w, writes_per_s * (prev.end_s - prev.start_s))
        observed = cur.bytes_sent / WIRE
        assert abs(observed - expected) <= 4 * math.sqrt(expected) + 2, (cur.round, expected)
        if prev.round > 1 and prev.bytes_sent >= 500 * WIRE:
            # Far from saturating the working set: the classic geometric shrink.
            assert cur.bytes_sent / prev.bytes_sent == pytest.approx(d_over_b, rel=0.1)
    assert rounds.dirty_bytes.iloc[-1] <= rate * s.migration.downtime_limit_s


def _overloaded(policy: str) -> Scenario:
    # D = 2 x 1e6 x 4 KiB = 8 GB/s against 1 Gbit/s: precopy cannot converge.
    return scenario(
        migration__switchover=policy,
        workload__write_fraction=1.0,
        workload__accesses_per_s=1e6,
        workload__working_set_bytes=16 * MIB,
        network__bandwidth_bytes_per_s=1.25e8,
        migration__max_rounds=6,
        migration__downtime_limit_s=0.01,  # 1.25 MB: far below the 16 MiB working set
    )


def test_when_dirtying_outpaces_the_link_precopy_gives_up_with_a_long_downtime():
    s = _overloaded("precopy")
    sm = simulate(s).summary
    ws_wire = s.workload.working_set_bytes // 4096 * WIRE
    assert (sm["completed_by"], sm["switchover_reason"], sm["precopy_rounds"]) == (
        "precopy",
        "max_rounds",
        6,
    )
    # The whole (re-dirtied) working set goes in the stop-and-copy.
    assert sm["downtime_bytes"] == ws_wire + s.migration.device_state_bytes
    assert sm["downtime_s"] == pytest.approx(sm["downtime_bytes"] / 1.25e8, rel=1e-12)


def test_postcopy_when_stalled_switches_and_bounds_the_traffic():
    s = _overloaded("postcopy_when_stalled")
    r = simulate(s)
    sm = r.summary
    ws_pages = s.workload.working_set_bytes // 4096
    assert (sm["completed_by"], sm["switchover_reason"]) == ("postcopy", "stalled")
    # Round 1 leaves the working set dirty, round 2 resends it and it is dirty again:
    # no shrink for stalled_rounds (2) rounds after the first.
    assert sm["precopy_rounds"] == 3
    # Device state and a one-range discard bitmap only.
    assert sm["downtime_bytes"] == s.migration.device_state_bytes + 16
    ram_wire = s.guest.ram_bytes // 4096 * WIRE
    assert sm["precopy_bytes"] == ram_wire + 2 * ws_pages * WIRE
    # After the switch only the dirty pages move, each exactly once.
    fetched = r.pages[r.pages.via != "precopy"]
    assert set(fetched.host_page) == set(range(ws_pages))
    assert sm["postcopy_bytes"] == fetched.wire_bytes.sum() == ws_pages * WIRE
    precopy_only = simulate(_overloaded("precopy")).summary
    assert sm["downtime_s"] < precopy_only["downtime_s"] / 10


def test_discard_bitmap_is_canonicalised_to_whole_host_pages(tmp_path):
    # 2 MiB host pages: one dirty 4 KiB target page makes its whole host page be fetched.
    trace = tmp_path / "trace.csv"
    trace.write_text("vcpu,page\n0,5\n0,600\n0,1030\n")
    s = scenario(
        guest__ram_bytes=16 * MIB,
        guest__vcpus=1,
        guest__host_page_bytes=2 * MIB,
        workload__working_set_bytes=16 * MIB,
        workload__pattern="trace",
        workload__trace_path=str(trace),
        workload__write_fraction=1.0,
        workload__accesses_per_s=1e4,
        migration__switchover="postcopy_after_rounds",
        migration__downtime_limit_s=0.0,
    )
    r = simulate(s)
    fetched = r.pages[r.pages.via != "precopy"]
    assert list(fetched.host_page) == [0, 1, 2]  # target pages 5, 600, 1030
    assert r.summary["postcopy_bytes"] == 3 * 512 * WIRE
    # The discard bitmap is one range (host pages 0-2) of 16 bytes.
    assert r.summary["downtime_bytes"] == s.migration.device_state_bytes + 16


def test_a_timeout_mid_round_leaves_the_unsent_pages_to_postcopy():
    # No writes: exactly the pages the first round had not sent by the deadline are fetched.
    s = scenario(
        workload__write_fraction=0.0,
        migration__switchover="postcopy_after_timeout",
        migration__completion_timeout_per_gib_s=0.5,  # x 1/16 GiB: 31 ms, before round 1 ends
    )
    r = simulate(s)
    sm = r.summary
    deadline = s.migration.setup_s + 0.5 / 16
    assert sm["switchover_time_s"] == deadline
    assert (sm["switchover_reason"], sm["precopy_rounds"]) == ("timeout", 1)
    rate = s.network.bandwidth_bytes_per_s
    sent = int(np.floor((deadline - s.migration.setup_s) * rate / WIRE))
    fetched = r.pages[r.pages.via != "precopy"]
    assert list(fetched.host_page) == list(range(sent, s.guest.ram_bytes // 4096))
    assert r.rounds.pages_sent.iloc[0] == sent and bool(r.rounds.cut.iloc[0])


def test_the_guest_keeps_its_access_count_across_the_switch():
    s = scenario(
        migration__switchover="postcopy_after_rounds",
        workload__accesses_per_vcpu=20_000,
        migration__downtime_limit_s=0.0,
    )
    r = simulate(s)
    assert (r.vcpus.accesses <= 20_000).all()
    assert (r.faults.access >= 5_000).all()  # 54 ms of precopy at 1e5 accesses/s


def test_qemu_view_splits_the_bytes_by_phase():
    s = _overloaded("postcopy_when_stalled")
    r = simulate(s)
    q, sm = r.to_qemu()["ram"], r.summary
    assert q["precopy-bytes"] == sm["precopy_bytes"]
    assert q["downtime-bytes"] == sm["downtime_bytes"]
    assert q["postcopy-bytes"] == sm["postcopy_bytes"]
    assert q["transferred"] == sm["total_bytes"]
    assert q["dirty-sync-count"] == sm["precopy_rounds"] + 1


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("migration.switchover", "sometimes", "must be one of 'postcopy', 'precopy'"),
        ("migration.downtime_limit_s", "-1 ms", "must be >= 0"),
        ("migration.max_rounds", 0, "must be >= 1"),
        ("migration.switchover_rounds", 0, "must be >= 1"),
        ("migration.completion_timeout_per_gib_s", 0, "must be > 0"),
        ("migration.stalled_rounds", 0, "must be >= 1"),
        ("migration.stall_shrink_fraction", 1.5, "must be <= 1"),
        ("migration.max_bandwidth_bytes_per_s", "-1 Gbit/s", "must be >= 0"),
        ("workload.write_fraction", 2, "must be <= 1"),
    ],
)
def test_bad_precopy_settings_are_clear_errors(key: str, value: object, message: str):
    with pytest.raises(ScenarioError, match=message) as err:
        Scenario().override({key: value})
    assert err.value.key == key
    assert key in str(err.value)


def test_switchover_policies_behave_the_same_in_both_engines():
    for policy in ("precopy", "postcopy_after_rounds", "postcopy_when_stalled"):
        s = _overloaded(policy).override(
            {
                "guest.ram_bytes": 4 * MIB,
                "workload.working_set_bytes": 1 * MIB,
                "workload.accesses_per_vcpu": 60_000,
                "guest.vcpus": 1,
            }
        )
        fast, ref = simulate(s), simulate(s, engine="reference")
        for key in ("precopy_rounds", "remote_faults", "postcopy_bytes", "downtime_bytes"):
            assert fast.summary[key] == ref.summary[key], (policy, key)
        assert fast.summary["total_time_s"] == pytest.approx(ref.summary["total_time_s"], abs=1e-9)


def test_zero_pages_can_lie_outside_the_working_set():
    s = scenario(
        guest__zero_page_fraction=0.5,
        guest__zero_page_layout="outside_working_set",
        workload__working_set_bytes=16 * MIB,
        workload__working_set_offset_bytes=16 * MIB,
        migration__switchover="precopy",
        workload__write_fraction=1.0,
    )
    pages = simulate(s).pages
    ws = pages.host_page.between(16 * MIB // 4096, 32 * MIB // 4096 - 1)
    assert not pages.zero[ws].any()  # the working set holds data
    # Half of RAM is zero, all of it outside the working set (2/3 of the rest).
    assert abs(pages.zero.mean() - 0.5) < 0.02
    # More zeros than pages outside the working set: all of those, and no more.
    full = simulate(s.override({"guest.zero_page_fraction": 0.9})).pages
    assert full.zero.sum() == (~ws).sum() and not full.zero[ws].any()
