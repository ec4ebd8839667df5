"""Exact event logs of the fault/ack pipeline on tiny, hand-computable scenarios."""

from __future__ import annotations

import pytest
from conftest import MIB, PLACE4K, WAKE, WIRE4K, D, L, R, tiny

from simpostcopy.engine import simulate


def approx(x: float):
    return pytest.approx(x, abs=1e-12)


def test_lone_fault_latency_is_the_sum_of_its_stages():
    r = simulate(tiny())
    assert len(r.faults) == 1
    f = r.faults.iloc[0]
    # Guest resumes on the destination one latency after switch-over (no device state).
    assert f.fault_s == approx(L)
    assert f.read_s == approx(L + D)
    assert f.request_sent_s == approx(L + D + R)
    assert f.request_at_source_s == approx(L + D + R + L)
    assert f.page_sent_s == approx(L + D + R + L)
    assert f.page_arrived_s == approx(L + D + R + L + WIRE4K + L)
    assert f.placed_s == approx(L + D + R + L + WIRE4K + L + PLACE4K)
    assert f.resumed_s == approx(L + D + R + L + WIRE4K + L + PLACE4K + WAKE)
    assert f.latency_s == approx(D + R + L + WIRE4K + L + PLACE4K + WAKE)
    assert f.satisfied_by == "request"
    assert f.channel == "main"
    assert r.summary["postcopy_requests"] == 1
    # The paced background stream sends pages 0, 1, 2 at t = 0, 1, 2 s; page 2 ends it.
    assert r.summary["total_time_s"] == approx(2.0 + WIRE4K + L + PLACE4K)
    assert r.pages.placed_s.tolist() == [
        approx(WIRE4K + L + PLACE4K),
        approx(1.0 + WIRE4K + L + PLACE4K),
        approx(2.0 + WIRE4K + L + PLACE4K),
        approx(f.placed_s),
    ]
    assert r.pages.via.tolist() == ["background", "background", "background", "request"]


def test_preempt_lone_fault_has_the_same_stages():
    r = simulate(tiny(network__preempt=True))
    f = r.faults.iloc[0]
    assert f.latency_s == approx(D + R + L + WIRE4K + L + PLACE4K + WAKE)
    assert f.channel == "preempt"


def test_vanilla_waits_behind_inflight_bytes_and_preempt_does_not():
    inflight = 1 * MIB
    base = dict(
        guest__ram_bytes=64 * MIB,
        workload__working_set_offset_bytes=64 * MIB - 4096,
        migration__max_postcopy_bandwidth_bytes_per_s=0,  # background at full speed
        network__inflight_bytes=inflight,
    )
    vanilla = simulate(tiny(**base)).faults.iloc[0]
    preempt = simulate(tiny(**base, network__preempt=True)).faults.iloc[0]
    assert preempt.latency_s == approx(D + R + L + WIRE4K + L + PLACE4K + WAKE)
    # The urgent page goes out once the bytes buffered ahead of it have drained: the
    # source keeps (inflight - page) bytes queued, plus the page on the wire at the time.
    extra = vanilla.latency_s - preempt.latency_s
    lead = (inflight - 4096) / 1e9
    assert lead < extra <= lead + WIRE4K + 1e-12


def test_two_vcpus_on_one_host_page_make_one_request_and_wake_together():
    # Both vCPUs sweep a one-page working set: both touch page 3 at the same time.
    r = simulate(tiny(guest__vcpus=2))
    fa = r.faults.sort_values("vcpu")
    assert len(fa) == 2
    assert r.summary["postcopy_requests"] == 1
    assert fa.requested.tolist() == [True, False]
    assert fa.read_s.tolist() == [approx(L + D), approx(L + D + R)]  # one fault thread
    assert fa.placed_s.nunique() == 1
    assert fa.resumed_s.tolist() == [approx(fa.placed_s.iloc[0] + WAKE)] * 2
    assert sorted(fa.satisfied_by.tolist()) == ["other_request", "request"]
    # Both blocked over the same interval, so all vCPUs were blocked for all of it.
    assert r.summary["blocktime_s"] == approx(fa.latency_s.iloc[0])


def test_background_page_satisfies_fault_and_later_access_is_no_fault():
    # One-page working set at page 0: the first access faults just before the background
    # stream's first page lands; the second access, 1 ms later, finds it present.
    r = simulate(tiny(workload__working_set_offset_bytes=0, workload__accesses_per_vcpu=2))
    assert len(r.faults) == 1
    f = r.faults.iloc[0]
    assert f.fault_s == approx(L)
    assert f.placed_s == approx(WIRE4K + L + PLACE4K)
    # The fault thread reads the message after placement, so no request is sent.
    assert f.read_s == approx(L + D) and f.read_s > f.placed_s
    assert not f.requested
    assert f.satisfied_by == "background"
    assert r.summary["postcopy_requests"] == 0
    assert f.resumed_s == approx(WIRE4K + L + PLACE4K + WAKE)
    assert r.vcpus.accesses.tolist() == [2]


def test_huge_page_fault_waits_for_the_whole_host_page():
    two_mib = 2 * MIB
    r = simulate(
        tiny(
            guest__ram_bytes=2 * two_mib,
            guest__host_page_bytes=two_mib,
            workload__working_set_offset_bytes=two_mib + 300 * 4096,  # host page 1
            network__preempt=True,
        )
    )
    f = r.faults.iloc[0]
    assert f.host_page == 1 and f.target_page == 512 + 300
    wire = two_mib / 1e9
    place = 2e-6 + two_mib * 1e-10
    assert f.page_arrived_s - f.request_at_source_s == approx(wire + L)
    assert f.latency_s == approx(D + R + L + wire + L + place + WAKE)


def test_downtime_is_device_state_over_the_link():
    r = simulate(tiny(migration__setup_s=0.5, migration__device_state_bytes=1_000_000))
    assert r.summary["setup_time_s"] == 0.5
    assert r.summary["downtime_s"] == approx(1e-3)
    # The destination resumes when the device state has arrived.
    assert r.faults.fault_s.iloc[0] == approx(0.5 + 1e-3 + L)


def test_zero_pages_cost_only_headers_and_a_zeropage_ioctl():
    r = simulate(tiny(guest__zero_page_fraction=1.0, migration__page_header_bytes=8))
    assert r.summary["postcopy_bytes"] == 4 * (8 + 1)
    f = r.faults.iloc[0]
    assert f.latency_s == approx(D + R + L + 9 / 1e9 + L + 2e-6 + WAKE)


def test_qemu_view_uses_qemus_units_and_window():
    r = simulate(tiny())
    q = r.to_qemu()
    f = r.faults.iloc[0]
    assert q["total-time"] == round(r.summary["total_time_s"] * 1e3)
    assert q["ram"]["postcopy-requests"] == 1
    # QEMU measures from the fault thread's read to placement.
    assert q["postcopy-latency"] == round((f.placed_s - f.read_s) * 1e9)
    assert len(q["postcopy-latency-dist"]) == 24
    bucket = int((f.placed_s - f.read_s) * 1e6).bit_length() - 1
    assert q["postcopy-latency-dist"][bucket] == 1 and sum(q["postcopy-latency-dist"]) == 1
