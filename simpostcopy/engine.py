"""Wire a Scenario into a SimPy environment, run the migration, return a Result."""

from __future__ import annotations

import time
from math import isnan

import numpy as np
import simpy

from simpostcopy import __version__
from simpostcopy.config import (
    TARGET_PAGE_BYTES,
    Scenario,
    load_page_list,
    load_trace,
    load_zero_map,
)
from simpostcopy.distributions import Draws, IndexedDraws
from simpostcopy.models.destination import Destination
from simpostcopy.models.ledger import VIA_PRECOPY, Fault, Pages
from simpostcopy.models.network import Batches, Channel, Reader, UrgentChannel
from simpostcopy.models.precopy import (
    DISCARD_RANGE_BYTES,
    PrecopyOutcome,
    discard_ranges,
    run_precopy,
    wire_bytes,
)
from simpostcopy.models.reference import RefSource, RefVCpu
from simpostcopy.models.source import BubblingScan, LinearScan, RateWindow, Source
from simpostcopy.models.vcpu import VCpu
from simpostcopy.models.workload import AccessStream
from simpostcopy.result import Result, Timing
from simpostcopy.rng import stream

# Background pages are planned this many bytes at a time (one event per chunk).
CHUNK_BYTES = 8 << 20


def _working_set(s: Scenario) -> np.ndarray | None:
    """The target pages of a scattered working set (in address order) or a mapped one (in
    the map's order); None: contiguous."""
    g, w = s.guest, s.workload
    if w.layout == "contiguous" or w.pattern == "trace":
        return None
    if w.layout == "map":
        return load_page_list(
            w.working_set_map, g.ram_bytes // TARGET_PAGE_BYTES,
            w.working_set_bytes // TARGET_PAGE_BYTES,
        )  # fmt: skip
    rng = stream(s.seed, "workload.layout")
    pages = rng.choice(
        g.ram_bytes // TARGET_PAGE_BYTES, w.working_set_bytes // TARGET_PAGE_BYTES, replace=False
    )
    return np.sort(pages).astype(np.int64)


def _zero_pages(s: Scenario, working_set: np.ndarray | None) -> np.ndarray:
    """Host pages whose content is zero when the migration starts."""
    g, w = s.guest, s.workload
    n = g.ram_bytes // g.host_page_bytes
    u = stream(s.seed, "guest.zero_pages").random(n)
    if g.zero_page_layout == "random":
        return u < g.zero_page_fraction
    if g.zero_page_layout == "map":
        # A host page is a zero page when all its target pages are.
        zero = load_zero_map(g.zero_page_map, g.ram_bytes // TARGET_PAGE_BYTES)
        return zero.reshape(n, -1).all(axis=1)
    # Only pages outside the working set hold zeros: the same share of RAM, drawn among
    # them (all of them if the share is larger).
    outside = np.ones(n, dtype=bool)
    if working_set is not None:
        outside[working_set // (g.host_page_bytes // TARGET_PAGE_BYTES)] = False
    else:
        lo = w.working_set_offset_bytes // g.host_page_bytes
        hi = -(-(w.working_set_offset_bytes + w.working_set_bytes) // g.host_page_bytes)
        outside[lo:hi] = False
    share = min(1.0, g.zero_page_fraction * n / max(1, int(outside.sum())))
    return outside & (u < share)


def _pages(s: Scenario, zero: np.ndarray) -> Pages:
    """Host pages with their zero-ness (when postcopy starts), wire size and placement cost."""
    g, fp = s.guest, s.fault_path
    n = zero.size
    per_host = g.host_page_bytes // TARGET_PAGE_BYTES
    header = s.migration.page_header_bytes
    # QEMU sends a zero target page as its header plus one byte (save_zero_page).
    wire = np.where(zero, per_host * (header + 1), per_host * (header + TARGET_PAGE_BYTES))
    fixed = fp.place_fixed_s.sample(stream(s.seed, "fault_path.place"), n)
    copy_cost = fixed + fp.place_per_byte_s * g.host_page_bytes
    # UFFDIO_ZEROPAGE maps the zero page without a copy; huge pages have no such ioctl,
    # so QEMU copies a zeroed host page instead.
    cost = np.where(zero, fixed if per_host == 1 else copy_cost, copy_cost)
    return Pages(zero=zero, wire_bytes=wire.astype(np.int64), place_cost_s=cost.astype(np.float64))


def _per_host(values: np.ndarray, per_host: int) -> np.ndarray:
    """Latest of each host page's target-page values."""
    return values.reshape(-1, per_host).max(axis=1) if per_host > 1 else values


def _streams(s: Scenario, working_set: np.ndarray | None) -> list[AccessStream]:
    g, w = s.guest, s.workload
    traces = (
        load_trace(w.trace_path, g.vcpus, g.ram_bytes // TARGET_PAGE_BYTES)
        if w.pattern == "trace"
        else [None] * g.vcpus
    )
    return [
        AccessStream(
            w.pattern,
            working_set_pages=w.working_set_bytes // TARGET_PAGE_BYTES,
            offset_pages=w.working_set_offset_bytes // TARGET_PAGE_BYTES,
            vcpu=v,
            vcpus=g.vcpus,
            rng=stream(s.seed, f"workload.vcpu{v}"),
            hot_fraction=w.hot_fraction,
            hot_probability=w.hot_probability,
            zipf_exponent=w.zipf_exponent,
            stride_pages=w.stride_bytes // TARGET_PAGE_BYTES,
            trace=traces[v],
            write_rng=stream(s.seed, f"workload.writes.vcpu{v}"),
            write_fraction=w.write_fraction,
            page_map=working_set,
        )
        for v in range(g.vcpus)
    ]


def _in_flight(f: Fault) -> bool:
    return isnan(f.read_s) or isnan(f.resumed_s) or (f.requested and isnan(f.request_at_source_s))


ENGINES = ("fast", "reference")


def simulate(
    scenario: Scenario, *, engine: str = "fast", timeline_window_s: float = 0.01
) -> Result:
    """Simulate one migration of ``scenario``: precopy rounds as its switch-over policy
    says, then stop-and-copy or postcopy.

    ``engine="fast"`` (default) costs work per fault and per background chunk;
    ``engine="reference"`` takes one event per page and per access: same results
    (to float rounding), for small scenarios and as the oracle of the fast one.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: invalid value {engine!r}: use one of {', '.join(ENGINES)}")
    wall0 = time.perf_counter()
    s = scenario
    g, net, mig, fp = s.guest, s.network, s.migration, s.fault_path
    env = simpy.Environment()
    bw = net.bandwidth_bytes_per_s
    per_host = g.host_page_bytes // TARGET_PAGE_BYTES
    working_set = _working_set(s)
    streams = _streams(s, working_set)

    # Precopy (none with an immediate switch-over) until the guest stops on the source.
    pre = run_precopy(
        env, s, streams, np.repeat(_zero_pages(s, working_set), per_host), mig.setup_s
    )
    pages = _pages(s, pre.zero.reshape(-1, per_host).all(axis=1))
    switchover_s = pre.switchover_s
    remaining = pre.remaining.reshape(-1, per_host).any(axis=1)  # host pages to move now
    sent_end = pre.sent_end_s
    if pre.mode == "precopy":
        # Stop-and-copy: the dirty target pages go out unthrottled, then the device state.
        left = np.flatnonzero(pre.remaining)
        wire = wire_bytes(pre.zero[left], mig.page_header_bytes)
        sent_end = sent_end.copy()
        sent_end[left] = switchover_s + np.cumsum(wire) / bw
        downtime_bytes = int(wire.sum()) + mig.device_state_bytes
    else:
        # Postcopy: the discard bitmap (whole host pages; nothing to discard when nothing
        # was sent) and the device state, unthrottled (QEMU lifts the rate limit).
        ranges = discard_ranges(remaining) if pre.rounds else 0
        downtime_bytes = ranges * DISCARD_RANGE_BYTES + mig.device_state_bytes
    # QEMU's downtime ends when the last of it is sent; the destination resumes once it
    # has arrived.
    downtime_s = downtime_bytes / bw
    link_free_s = switchover_s + downtime_s
    dest_start_s = link_free_s + net.latency_s
    # Pages already at the destination: last byte of their last copy sent, arrived, placed
    # (by the destination's load thread, not a userfault).
    here = ~remaining if pre.mode == "postcopy" else np.ones(pages.count, dtype=bool)
    last = _per_host(sent_end, per_host)[here]
    pages.sent_at[here] = last
    pages.arrived_at[here] = last + net.latency_s
    pages.placed_at[here] = last + net.latency_s
    pages.via[here] = VIA_PRECOPY
    if pre.mode == "precopy" or here.all():
        return _result(
            s,
            engine,
            env,
            pages,
            pre,
            [],
            pre.accesses,
            None,
            downtime_bytes,
            Timing(mig.setup_s, switchover_s, downtime_s, dest_start_s, dest_start_s),
            timeline_window_s,
            wall0,
        )

    faults: list[Fault] = []
    done = env.event()
    source: Source | RefSource

    dest = Destination(
        env,
        pages,
        request_s=Draws(fp.request_s, stream(s.seed, "fault_path.request")),
        latency_s=net.latency_s,
        send_request=lambda f: source.receive(f),
    )

    def finish() -> None:
        end = max(dest.last_placement(), dest_start_s)
        env.timeout(end - env.now).callbacks.append(lambda _e: done.succeed(end))

    n_pages = pages.count
    scan = (
        BubblingScan(n_pages, mig.bubbling_pivots)
        if mig.locality == "bubbling"
        else LinearScan(n_pages)
    )
    limit = mig.max_postcopy_bandwidth_bytes_per_s
    background_rate = limit if limit > 0 else np.inf
    # QEMU enforces the cap per window (see RateWindow); one budget ledger per run.
    window = (
        RateWindow(limit, mig.rate_limit_window_s, link_free_s)
        if limit > 0 and mig.rate_limit_window_s > 0
        else None
    )
    hold_urgent = mig.urgent_sender == "migration_thread"
    # Each channel's receiving thread draws its reads' costs from a stream of its own.
    reader, preempt_reader = (
        Reader(
            IndexedDraws(s.fault_path.recv_s, stream(s.seed, f"fault_path.recv.{channel}")),
            net.recv_buffer_bytes,
        )
        for channel in ("main", "preempt")
    )
    # The source's QEMUFile writes the main channel's pages in batches (Batches).
    batches = Batches(
        net.send_batch_pages, (TARGET_PAGE_BYTES + mig.page_header_bytes) / bw, per_host
    )
    busy = reader.busy(pages.wire_bytes, pages.place_cost_s)
    drain_rate = min(bw, float(pages.wire_bytes.max() / np.median(busy)))
    if engine == "reference":
        source = RefSource(
            env,
            pages,
            dest,
            preempt=net.preempt,
            scan=scan,
            locality=mig.locality,
            bandwidth=bw,
            latency=net.latency_s,
            drain_rate=drain_rate,
            background_rate=background_rate,
            inflight_bytes=net.inflight_bytes,
            start_s=link_free_s,
            on_all_placed=finish,
            window=window,
            hold_urgent=hold_urgent,
            reader=reader,
            preempt_reader=preempt_reader,
            batches=batches,
        )
    else:
        main = Channel(
            bw,
            net.latency_s,
            pages,
            dest.channel_changed,
            free=link_free_s,
            reader=reader,
            batches=batches,
        )
        dest.in_flight = main
        preempt = (
            UrgentChannel(
                bw,
                net.latency_s,
                pages.place_cost_s,
                pages.wire_bytes,
                dest.update_one,
                link_free_s,
                preempt_reader,
            )
            if net.preempt
            else None
        )
        source = Source(
            env,
            pages,
            main=main,
            preempt=preempt,
            scan=scan,
            locality=mig.locality,
            bandwidth=bw,
            drain_rate=drain_rate,
            background_rate=background_rate,
            inflight_bytes=net.inflight_bytes,
            chunk_pages=max(1, CHUNK_BYTES // g.host_page_bytes),
            start_s=link_free_s,
            on_all_sent=finish,
            window=window,
            hold_urgent=hold_urgent,
        )
    host_shift = int(g.host_page_bytes // TARGET_PAGE_BYTES).bit_length() - 1
    vcpu_class = RefVCpu if engine == "reference" else VCpu
    vcpus = [
        vcpu_class(
            env,
            v,
            st,
            dest,
            faults,
            rate=s.workload.accesses_per_s,
            limit=s.workload.accesses_per_vcpu,
            host_shift=host_shift,
            delivery_s=Draws(fp.delivery_s, stream(s.seed, f"fault_path.delivery.vcpu{v}")),
            wake_s=Draws(fp.wake_s, stream(s.seed, f"fault_path.wake.vcpu{v}")),
            start_s=dest_start_s,
            first_access=pre.accesses[v],
            first_touch_s=g.first_touch_s,
            n_pages=pages.count,
        )
        for v, st in enumerate(streams)
    ]
    end_s = float(env.run(until=done))
    accesses = [v.accesses_done(end_s) for v in vcpus]
    # Let the pipeline finish the faults still in flight (read, request, wake-up): QEMU's
    # source keeps its return path open until the destination closes it.
    open_faults = [f for f in faults if _in_flight(f)]
    while any(_in_flight(f) for f in open_faults):
        env.step()
    if engine == "fast":
        main.settle_all()

    timing = Timing(mig.setup_s, switchover_s, downtime_s, dest_start_s, end_s)
    return _result(
        s,
        engine,
        env,
        pages,
        pre,
        faults,
        accesses,
        source,
        downtime_bytes,
        timing,
        timeline_window_s,
        wall0,
    )


def _result(
    s: Scenario,
    engine: str,
    env: simpy.Environment,
    pages: Pages,
    pre: PrecopyOutcome,
    faults: list[Fault],
    accesses: list[int],
    source: Source | RefSource | None,
    downtime_bytes: int,
    timing: Timing,
    timeline_window_s: float,
    wall0: float,
) -> Result:
    result = Result.build(
        scenario=s,
        pages=pages,
        faults=faults,
        accesses=accesses,
        requests_received=source.requests_received if source else 0,
        requests_duplicate=source.requests_duplicate if source else 0,
        bytes_sent=source.bytes_sent if source else 0,
        timing=timing,
        precopy=pre,
        downtime_bytes=downtime_bytes,
        timeline_window_s=timeline_window_s,
        meta={
            "version": __version__,
            "engine": engine,
            "simpy_events": next(env._eid),
        },
    )
    result.meta["wall_time_s"] = time.perf_counter() - wall0
    return result
