"""Real QEMU runs: the importer's exact mapping, the QMP client's error paths against a
fake monitor, and one real postcopy migration where QEMU is installed."""

from __future__ import annotations

import json
import math
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simpostcopy.cli import main
from simpostcopy.qemu import importer
from simpostcopy.qemu.errors import QemuError
from simpostcopy.qemu.guest import APT_PACKAGES
from simpostcopy.qemu.harness import RunRecord, RunSpec, drive
from simpostcopy.qemu.qmp import Qmp, QmpError

REAL = Path(__file__).parent / "data" / "qemu_run_tcg_256mib.json"


# -- importer -------------------------------------------------------------------------------------
def test_importer_maps_a_real_run_exactly():
    s = importer.summary(importer.load(REAL))
    assert s["total_time_s"] == 0.236 and s["setup_time_s"] == 0.001
    assert s["downtime_s"] == 0.002
    assert s["postcopy_requests"] == 24
    assert (s["precopy_bytes"], s["downtime_bytes"], s["postcopy_bytes"]) == (
        26845152,
        0,
        173071343,
    )
    assert s["total_bytes"] == 199916495
    assert s["precopy_rounds"] == 1  # dirty-sync-count 2: one round, then the stop's sync
    assert s["blocktime_s"] == 0.099 and s["vcpu_blocktime_s"] == [0.099]
    assert math.isnan(s["latency_mean_s"])  # QEMU 7.2 has no postcopy-latency
    assert s["switchover_time_s"] == pytest.approx(0.10246610641479492)
    assert s["guest_longest_stall_s"] == 0.059793


def test_importer_reads_a_plain_query_migrate_reply(tmp_path):
    record = json.loads(REAL.read_text())
    reply = tmp_path / "reply.json"
    reply.write_text(json.dumps({"return": record["source"]}))
    s = importer.summary(importer.load(reply))
    assert s["total_time_s"] == 0.236 and math.isnan(s["blocktime_s"])
    assert s["vcpu_blocktime_s"] == [] and math.isnan(s["switchover_time_s"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read migration record"),
        ("[1, 2]", "expected a JSON object"),
        ('{"foo": 1}', "neither a query-migrate reply nor a run record"),
        ('{"status": "active", "ram": {}}', "did not complete"),
    ],
)
def test_importer_errors(tmp_path, content, message, capsys):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(QemuError, match=message):
        importer.summary(importer.load(path))
    assert main(["qemu", "import", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_import_json(capsys):
    assert main(["qemu", "import", str(REAL), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["postcopy_requests"] == 24 and row["record"] == str(REAL)
    assert main(["qemu", "import"]) == 2
    assert "give at least one run record" in capsys.readouterr().err


# -- QMP against a fake monitor -------------------------------------------------------------------
class FakeQmp:
    """A scripted QMP server: ``answers`` maps a command to its reply (a dict, or "close"
    to drop the connection as a dying QEMU would)."""

    def __init__(self, path: Path, answers: dict) -> None:
        self.path, self.answers, self.commands = str(path), answers, []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        conn.sendall(b'{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}\n')
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                self.commands.append(msg["execute"])
                answer = self.answers.get(msg["execute"], {"return": {}})
                if callable(answer):
                    answer = answer(msg.get("arguments", {}))
                if answer == "close":
                    conn.close()
                    return
                conn.sendall(json.dumps({**answer, "id": msg["id"]}).encode() + b"\n")
        conn.close()


def _pair(tmp_path: Path, src_answers: dict, dst_answers: dict | None = None):
    src = FakeQmp(tmp_path / "src.qmp", src_answers)
    dst = FakeQmp(tmp_path / "dst.qmp", dst_answers or {})
    return (
        src,
        Qmp(src.path, name="source", timeout_s=5),
        Qmp(dst.path, name="destination", timeout_s=5),
    )


def _record() -> RunRecord:
    return RunRecord(spec={}, accel="tcg", qemu_version={}, source={}, destination={})


SPEC = RunSpec(ram_mib=64, migrate_timeout_s=5, poll_s=0.01)


def test_a_refused_capability_names_qemus_reason(tmp_path):
    refused = {"error": {"class": "GenericError", "desc": "Postcopy is not supported"}}
    _, src, dst = _pair(tmp_path, {"migrate-set-capabilities": refused})
    with pytest.raises(
        QmpError, match="source: migrate-set-capabilities failed: Postcopy is not supported"
    ):
        drive(src, dst, SPEC, _record())


def test_a_failed_migration_is_reported_with_its_reason(tmp_path):
    failed = {"return": {"status": "failed", "error-desc": "Unable to write to socket"}}
    fake, src, dst = _pair(tmp_path, {"query-migrate": failed})
    with pytest.raises(
        QemuError, match="migration failed on the source: Unable to write to socket"
    ):
        drive(src, dst, SPEC, _record())
    assert fake.commands[:4] == [
        "qmp_capabilities",
        "migrate-set-capabilities",
        "migrate-set-parameters",
        "migrate",
    ]


def test_a_dying_qemu_is_an_error_not_a_hang(tmp_path):
    _, src, dst = _pair(tmp_path, {"migrate": "close"})
    with pytest.raises(QmpError, match="source: QEMU closed its QMP socket"):
        drive(src, dst, SPEC, _record())


def test_a_migration_that_never_completes_times_out(tmp_path):
    _, src, dst = _pair(
        tmp_path,
        {
            "query-migrate": {"return": {"status": "active"}},
            "migrate-start-postcopy": {"return": {}},
        },
    )
    spec = RunSpec(ram_mib=64, migrate_timeout_s=0.3, poll_s=0.01)
    with pytest.raises(QemuError, match="not completed within 0 s"):
        drive(src, dst, spec, _record())


def test_bad_run_settings_are_clear_errors():
    with pytest.raises(QemuError, match="workload: invalid value 'sweep'"):
        RunSpec(workload="sweep")
    with pytest.raises(QemuError, match="accel: invalid value 'hvf'"):
        RunSpec(accel="hvf")


# -- one real migration ---------------------------------------------------------------------------
def _qemu_available() -> str | None:
    missing = [b for b in ("qemu-system-x86_64", "busybox", "gcc") if shutil.which(b) is None]
    if missing:
        return f"{', '.join(missing)} not installed: apt-get install {APT_PACKAGES}"
    if not list(Path("/boot").glob("vmlinuz-*")):
        return "no kernel under /boot: apt-get install linux-image-amd64"
    return None


def test_a_real_postcopy_migration(tmp_path):
    reason = _qemu_available()
    if reason:
        pytest.skip(reason)
    from simpostcopy.qemu import guest, harness

    image = guest.build(tmp_path / "guest")
    spec = RunSpec(
        ram_mib=256,  # the kernel and the unpacked initramfs need ~100 MiB of it
        workload="rand,64,16",
        max_bandwidth_bytes_per_s=64 << 20,
        accel="tcg",
        boot_timeout_s=120,
        migrate_timeout_s=120,
    )
    record = harness.run(spec, tmp_path / "run.json", image=image)
    assert record.source["status"] == record.destination["status"] == "completed"
    assert record.guest["destination_lines"] >= 2  # the guest ran on after the migration
    s = importer.summary(importer.load(tmp_path / "run.json"))
    assert s["postcopy_bytes"] > 0 and s["total_bytes"] > 64 << 20
    assert 0 < s["switchover_time_s"] < s["total_time_s"]
    statuses = [
        e["data"]["status"]
        for e in record.events
        if e["side"] == "source" and e["event"] == "MIGRATION"
    ]
    assert statuses[0] == "setup" and "postcopy-active" in statuses and statuses[-1] == "completed"


# -- simulation beside reality --------------------------------------------------------------------
def test_matching_scenario_follows_the_run():
    from simpostcopy.qemu.compare import matching_scenario

    record = importer.load(REAL)
    s = matching_scenario(record)
    real = importer.summary(record)
    assert s.guest.ram_bytes == 256 << 20 and s.guest.vcpus == 1
    assert s.network.bandwidth_bytes_per_s == pytest.approx(
        record["source"]["ram"]["mbps"] * 1e6 / 8
    )
    assert not s.network.preempt
    assert (s.workload.pattern, s.workload.working_set_bytes) == ("uniform", 32 << 20)
    assert s.workload.accesses_per_s == record["guest"]["touch_rate_per_s"]
    # Precopy at the run's max-bandwidth until QEMU's own switch-over instant.
    assert s.migration.switchover == "postcopy_after_timeout"
    assert s.migration.setup_s + s.migration.completion_timeout_per_gib_s / 4 == pytest.approx(
        real["switchover_time_s"]
    )


def test_matching_scenario_models_qemus_rate_limiter_version_and_idle_kernel():
    import copy

    from simpostcopy.config import Scenario
    from simpostcopy.qemu.compare import CAP_BOUND, matching_scenario

    record = importer.load(REAL)
    assert record["qemu_version"]["major"] == 7
    s = matching_scenario(record)
    # QEMU 7.2 sends requested pages from its migration thread; no cap: the link is the
    # rate the run achieved, in the default 100 ms windows.
    assert s.migration.urgent_sender == "migration_thread"
    # QEMU writes the main channel 32 data pages to a writev.
    assert s.network.send_batch_pages == 32
    assert s.migration.max_postcopy_bandwidth_bytes_per_s == 0
    assert s.migration.rate_limit_window_s == 0.1
    achieved = record["source"]["ram"]["mbps"] * 1e6 / 8
    # A cap the run reached: bursts at the host's link speed (the base scenario's).
    capped = copy.deepcopy(record)
    capped["spec"]["max_postcopy_bandwidth_bytes_per_s"] = achieved / CAP_BOUND
    base = Scenario().override({"network.bandwidth_bytes_per_s": 3 * achieved})
    s = matching_scenario(capped, base)
    assert s.network.bandwidth_bytes_per_s == pytest.approx(3 * achieved)
    assert s.migration.max_postcopy_bandwidth_bytes_per_s == pytest.approx(achieved / CAP_BOUND)
    # A cap it stayed well below: the link is what it achieved.
    capped["spec"]["max_postcopy_bandwidth_bytes_per_s"] = 2 * achieved
    assert matching_scenario(capped, base).network.bandwidth_bytes_per_s == pytest.approx(achieved)
    # With preempt, QEMU 7.x's background scan continues after a requested page (one
    # page-search state), unless the base asks for another locality.
    preempt = copy.deepcopy(capped)
    preempt["spec"]["preempt"] = True
    assert (s.network.preempt, s.migration.locality) == (False, "continue")
    assert matching_scenario(preempt).migration.locality == "hint"
    bubbling = Scenario().override({"migration.locality": "bubbling"})
    assert matching_scenario(preempt, bubbling).migration.locality == "bubbling"
    # QEMU 8 on: the return-path thread sends them, and the scan keeps its place.
    capped["qemu_version"] = preempt["qemu_version"] = {"major": 8, "minor": 2, "micro": 0}
    assert matching_scenario(capped).migration.urgent_sender == "return_path"
    assert matching_scenario(preempt).migration.locality == "continue"
    # The idle guest: its kernel's pages, scattered and written.
    capped["spec"]["workload"] = "idle"
    w = matching_scenario(capped).workload
    assert (w.layout, w.working_set_bytes, w.write_fraction) == ("scattered", 128 << 10, 1.0)


def test_simulated_blocktime_is_qemus():
    from simpostcopy.engine import simulate
    from simpostcopy.qemu.compare import matching_scenario, simulated

    s = matching_scenario(importer.load(REAL))
    r = simulate(s)
    out = simulated(s)
    q = r.to_qemu()
    assert out["blocktime_s"] == pytest.approx(q["postcopy-blocktime"] / 1e3, abs=5e-4)
    assert out["vcpu_blocktime_s"] == pytest.approx(r.vcpus["qemu_blocktime_s"].tolist())
    # QEMU's view leaves out what happens before the fault thread reads a fault.
    assert out["blocktime_s"] < r.summary["blocktime_s"]


def test_compare_table_and_figure(tmp_path, capsys):
    from simpostcopy.qemu.compare import METRICS, compare

    table = compare({"run": importer.load(REAL)})
    assert list(table["metric"]) == list(METRICS)
    row = table.set_index("metric").loc["total_time_s"]
    assert row["real"] == 0.236 and row["simulated"] > 0
    assert row["relative_error"] == pytest.approx((row["simulated"] - 0.236) / 0.236)
    out = tmp_path / "cmp.png"
    assert main(["compare", str(REAL), "--out", str(out)]) == 0
    assert "median |relative error| per metric" in capsys.readouterr().out
    assert out.stat().st_size > 10_000


def test_fit_moves_a_parameter_towards_the_data(tmp_path, capsys):
    from simpostcopy.qemu.compare import fit

    record = importer.load(REAL)
    result = fit([record], ["network.inflight_bytes"], rounds=1)
    lo, hi = 12 * 2**20 / 100, 12 * 2**20 * 100
    assert lo <= result.params["network.inflight_bytes"] <= hi
    assert math.isfinite(result.loss) and result.evaluations > 10
    out = tmp_path / "fitted.toml"
    assert (
        main(
            [
                "fit",
                str(REAL),
                "--params",
                "network.inflight_bytes",
                "--rounds",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "network.inflight_bytes = " in capsys.readouterr().out
    from simpostcopy.config import Scenario

    assert Scenario.from_toml(out).network.inflight_bytes == result.params["network.inflight_bytes"]


# -- where the guest's data lies ------------------------------------------------------------------
def test_memory_layout_maps_zero_pages_and_reads_the_buffer_frames(tmp_path):
    from simpostcopy.qemu.harness import decode_zero_map, memory_layout

    pages = 64
    ram = np.zeros((pages, 4096), dtype=np.uint8)
    nonzero = [1, 2, 40, 63]
    for p in nonzero:
        ram[p, 4095 if p % 2 else 0] = 7  # a single byte anywhere makes it non-zero

    def pmemsave(args):
        assert args["val"] == 0 and args["size"] == pages * 4096
        Path(args["filename"]).write_bytes(ram.tobytes())
        return {"return": {}}

    server = FakeQmp(tmp_path / "q.qmp", {"pmemsave": pmemsave})
    serial = tmp_path / "serial"
    serial.write_bytes(
        b"guest up\r\nwl frames mib=5 0 0 703 1280 12\r\n"
        b"wl frameruns 2560+640 1280+63\r\nwl frameruns 6400+12\r\nwl runs 3\r\n"
    )
    qmp = Qmp(server.path, timeout_s=5)
    layout = memory_layout(qmp, pages * 4096, serial)
    zero = decode_zero_map(layout["zero_map"], pages)
    assert np.flatnonzero(~zero).tolist() == nonzero
    assert layout["zero_pages"] == pages - len(nonzero)
    assert (layout["frames_bin_mib"], layout["frames"]) == (5, [0, 0, 703, 1280, 12])
    assert layout["frame_runs"] == [[2560, 640], [1280, 63], [6400, 12]]
    # A console cut short (fewer runs than announced): no runs rather than some.
    serial.write_bytes(b"wl frames mib=5 0 1\r\nwl frameruns 5+1\r\nwl runs 2\r\n")
    assert "frame_runs" not in memory_layout(qmp, pages * 4096, serial)
    assert not list(Path(tempfile.gettempdir()).glob("simpostcopy-ram-*"))  # dropped


def test_run_pages_keep_the_buffers_own_order():
    from simpostcopy.qemu.compare import run_pages

    assert run_pages([[10, 3], [2, 2], [100, 5]], 104 * 4096).tolist() == [
        10, 11, 12, 2, 3, 100, 101, 102, 103,
    ]  # fmt: skip
    assert run_pages([], 1 << 20).size == 0


def test_frame_pages_put_each_bins_pages_at_its_top():
    from simpostcopy.qemu.compare import frame_pages

    # 5 MiB bins of 1280 pages: 3 pages at the top of bin 1, all of bin 2, none beyond.
    pages = frame_pages([0, 3, 1280], 5, 1 << 30)
    assert pages.tolist() == [2557, 2558, 2559, *range(2560, 3840)]
    assert frame_pages([0, 0], 5, 1 << 30).size == 0
    assert frame_pages([1280, 1280], 5, 8 << 20).tolist() == list(range(2048))  # within RAM


def test_matching_scenario_uses_the_measured_zero_map_and_buffer(tmp_path, monkeypatch):
    import copy

    from simpostcopy.engine import simulate
    from simpostcopy.qemu import compare
    from simpostcopy.qemu.harness import encode_zero_map

    monkeypatch.setattr(compare, "MAP_DIR", tmp_path / "maps")
    record = copy.deepcopy(importer.load(REAL))
    pages = record["spec"]["ram_mib"] << 8
    zero = np.ones(pages, dtype=bool)
    zero[: pages // 4] = False  # the first quarter holds data
    record["guest"]["zero_map"] = encode_zero_map(zero)
    s = compare.matching_scenario(record)
    assert s.guest.zero_page_layout == "map"
    assert np.array_equal(np.load(s.guest.zero_page_map), zero)
    assert compare.matching_scenario(record).guest.zero_page_map == s.guest.zero_page_map
    r = simulate(s.override({"workload.write_fraction": 0.0}))
    assert r.summary["zero_pages"] == int(zero.sum())
    # The buffer's frames (2 MiB bins of 512 pages): the workload touches exactly those.
    record["guest"] |= {"frames_bin_mib": 2, "frames": [0, 100, 512]}
    s = compare.matching_scenario(record)
    assert (s.workload.layout, s.workload.working_set_bytes) == ("map", 612 * 4096)
    assert np.load(s.workload.working_set_map).tolist() == list(range(924, 1536))
    faults = simulate(s).faults
    assert len(faults) and faults.target_page.between(924, 1535).all()


def test_fit_losses_and_metrics(capsys):
    from simpostcopy.qemu.compare import _loss, fit

    res = np.array([0.0, 0.5, -3.0])
    assert _loss(res, "linear") == pytest.approx(0.25 + 9.0)
    # Soft L1: ~r^2 for small errors, ~2|r| for large ones.
    assert _loss(res, "soft_l1") == pytest.approx(2 * (np.sqrt(1.25) - 1) + 2 * (np.sqrt(10) - 1))
    with pytest.raises(QemuError, match="loss: invalid value 'huber'"):
        fit([importer.load(REAL)], ["network.inflight_bytes"], loss="huber")
    result = fit(
        [importer.load(REAL)],
        ["network.inflight_bytes"],
        metrics=["total_time_s"],
        loss="soft_l1",
        rounds=1,
    )
    assert math.isfinite(result.loss) and result.loss >= 0
    assert main(["fit", str(REAL), "--params", "network.inflight_bytes", "--metrics", "speed"]) == 2
    assert "--metrics: invalid value 'speed'" in capsys.readouterr().err
    assert main(["fit", str(REAL), "--params", "network.inflight_bytes", "--loss", "huber"]) == 2
    assert "loss: invalid value 'huber': one of linear, soft_l1" in capsys.readouterr().err


def test_trace_reader_matches_requests_to_placements(tmp_path):
    from simpostcopy.qemu import trace

    log = tmp_path / "destination.log"
    log.write_bytes(
        b"11@100.000000:postcopy_place_page host=0x7f0000000000\n"
        b"11@100.000005:postcopy_place_page host=0x7f0000001000\n"
        b"11@100.000010:postcopy_place_page_zero host=0x7f0000002000\n"
        b"12@100.000012:postcopy_ram_fault_thread_request Request for HVA=0x7f0000005000"
        b" rb=pc.ram offset=0x5000 pid=3\n"
        b"11@100.000040:postcopy_place_page host=0x7f0000003000\n"
        b"11@100.000045:postcopy_place_page host=0x7f0000004000\n"
        b"11@100.000050:postcopy_place_page host=0x7f0000005000\n"
        b"not a trace line\n"
        b"11@100.000080:postcopy_place_page host=0x7f0000006000\n"
    )
    t = trace.read(log)
    assert t.requests.offset.tolist() == [0x5000]
    assert t.requests.t_s.iloc[0] == pytest.approx(12e-6, abs=1e-9)
    assert t.requests.wait_s.iloc[0] == pytest.approx(38e-6, abs=1e-9)
    assert t.placements.size == 7
    # Lumps of three pages 5 us apart, then a 30 us gap.
    lumps = trace.lumps(t.placements)
    assert lumps["pages_per_lump"] == 3
    assert lumps["lump_gap_s"] == pytest.approx(30e-6, abs=1e-9)
    assert lumps["page_gap_s"] == pytest.approx(5e-6, abs=1e-9)


def test_trace_events_are_checked():
    with pytest.raises(QemuError, match="trace: invalid value 'a b'"):
        RunSpec(trace=("postcopy_place_page", "a b"))


def test_workers_change_nothing_and_a_distribution_is_fitted_by_its_mean():
    from simpostcopy.config import Scenario
    from simpostcopy.distributions import Dist
    from simpostcopy.qemu.compare import compare, fit, with_values

    records = {"a": importer.load(REAL), "b": importer.load(REAL)}
    pd.testing.assert_frame_equal(compare(records), compare(records, workers=2))
    base = Scenario().override(
        {"fault_path.recv_s": {"dist": "lognormal", "median": "2 us", "sigma": 1.0}}
    )
    scaled = with_values(base, {"fault_path.recv_s": 3 * base.fault_path.recv_s.mean})
    assert scaled.fault_path.recv_s == Dist("lognormal", (6e-6, 1.0))
    assert with_values(base, {"fault_path.wake_s": 2e-6}).fault_path.wake_s.params == (2e-6,)
    one = fit(list(records.values()), ["fault_path.recv_s"], base, rounds=1)
    two = fit(list(records.values()), ["fault_path.recv_s"], base, rounds=1, workers=2)
    assert one.params == two.params and one.loss == two.loss
    recv = one.scenario.fault_path.recv_s
    assert recv.kind == "lognormal" and recv.params[1] == 1.0
    assert recv.mean == pytest.approx(one.params["fault_path.recv_s"])
    with pytest.raises(QemuError, match="workers: invalid value 0"):
        compare(records, workers=0)


# -- the idle guest's footprint -------------------------------------------------------------------
def _requests(rows):
    return pd.DataFrame(rows, columns=["t_s", "offset", "wait_s", "ramblock"])


def test_footprint_keeps_first_touches_in_order_anchored_to_the_data():
    from simpostcopy.qemu import trace

    zero = np.ones(64, dtype=bool)
    zero[[3, 4, 5, 10, 11, 40]] = False  # pages with data: indices 0..5 among them
    requests = _requests(
        [
            (0.0000, 10 << 12, 0.0010, "pc.ram"),  # placed at 1.0 ms
            (0.0015, 4 << 12, 0.0020, "pc.ram"),  # 0.5 ms of guest time; placed at 3.5 ms
            (0.0034, 7 << 12, 0.0001, "pc.ram"),  # logged before that placement: gap 0
            (0.0040, 0 << 12, 0.0001, "pc.rom"),  # not the guest's RAM
            (0.0045, 4 << 12, 0.0001, "pc.ram"),  # asked again: not a first touch
            (0.0050, 50 << 12, 0.0001, "pc.ram"),  # beyond the last page with data
        ]
    )
    table = trace.footprint(requests, zero)
    assert table.columns.tolist() == ["page", "anchor", "delta_pages", "gap_s"]
    assert table.page.tolist() == [10, 4, 7, 50]
    assert table.anchor.tolist() == [3, 1, 3, 5]
    assert table.delta_pages.tolist() == [0, 0, -3, 10]
    # The guest's time before the repeat (1.0 ms) goes to the next first touch (+0.4 ms).
    assert table.gap_s.tolist() == pytest.approx([0.0, 0.0005, 0.0, 0.0014], abs=1e-12)
    # Another boot: the same data 10 pages higher, and one with fewer pages of data.
    moved = np.roll(zero, 10)
    assert trace.relocate(table, moved).tolist() == [20, 14, 17, 60]
    fewer = np.ones(64, dtype=bool)
    fewer[[30, 31]] = False
    assert trace.relocate(table, fewer).tolist() == [31, 31, 28, 41]
    assert trace.relocate(table, np.ones(16, dtype=bool) & (np.arange(16) != 0)).tolist() == [
        0,
        0,
        0,
        10,
    ]
    with pytest.raises(ValueError, match="no page with data"):
        trace.footprint(requests, np.ones(64, dtype=bool))
    with pytest.raises(ValueError, match="beyond the zero-page map"):
        trace.footprint(requests, zero[:32])


def test_idle_trace_replays_the_footprint_with_its_gaps():
    from simpostcopy.qemu.compare import IDLE_TRACE_RATE, idle_trace

    assert IDLE_TRACE_RATE == 1e5  # gaps in steps of 10 us
    zero = np.ones(32, dtype=bool)
    zero[[2, 5, 9]] = False
    footprint = pd.DataFrame(
        {"page": [5, 9, 2], "anchor": [1, 2, 0], "delta_pages": [0, 0, 0], "gap_s": [0, 3e-5, 0]}
    )
    # Two accesses on the source (to the first page), then the first touches, the second
    # 30 us of the guest's time (three accesses to the page before) after the first.
    assert idle_trace(footprint, zero, lead=2).tolist() == [5, 5, 5, 5, 5, 5, 9, 2]
    assert idle_trace(footprint, np.roll(zero, 1)).tolist() == [6, 6, 6, 6, 10, 3]


def test_the_idle_guest_replays_its_measured_footprint(tmp_path, monkeypatch):
    import copy

    from simpostcopy.engine import simulate
    from simpostcopy.qemu import compare
    from simpostcopy.qemu.harness import encode_zero_map

    monkeypatch.setattr(compare, "MAP_DIR", tmp_path / "maps")
    record = copy.deepcopy(importer.load(REAL))
    record["spec"]["workload"] = "idle"
    # Older records without a zero-page map: the scattered stand-in.
    w = compare.matching_scenario(record).workload
    assert (w.pattern, w.layout, w.working_set_bytes) == ("uniform", "scattered", 128 << 10)
    pages = record["spec"]["ram_mib"] << 8
    zero = np.ones(pages, dtype=bool)
    zero[1000:3000] = False  # where this boot's data lies
    record["guest"]["zero_map"] = encode_zero_map(zero)
    footprint = pd.DataFrame(
        {
            "page": [7, 8, 100],
            "anchor": [10, 11, 1500],
            "delta_pages": [0, 0, -4],
            "gap_s": [0.0, 0.002, 0.001],
        }
    )
    path = tmp_path / "footprint.csv"
    footprint.to_csv(path, index=False)
    monkeypatch.setattr(compare, "IDLE_FOOTPRINT", path)
    real = importer.summary(record)
    s = compare.matching_scenario(record, real=real)
    w = s.workload
    assert (w.pattern, w.accesses_per_s, w.write_fraction) == ("trace", 1e5, 1.0)
    lead = math.ceil((real["switchover_time_s"] - real["setup_time_s"]) * 1e5 - 1e-9)
    trace = pd.read_parquet(w.trace_path)
    assert trace.vcpu.eq(0).all()
    assert trace.page.tolist() == [1010] * (lead + 1) + [1010] * 200 + [1011] + [1011] * 100 + [
        2496
    ]
    # The guest on the destination touches the footprint's pages and no others.
    faults = simulate(s).faults
    assert set(faults.target_page) <= {1010, 1011, 2496} and len(faults)
    # A long pause in the footprint is replayed only as far as the run can need: twice
    # its length, at least a second, after the switch-over.
    footprint.loc[2, "gap_s"] = 30.0
    footprint.to_csv(path, index=False)
    horizon = max(2 * real["total_time_s"], 1.0)
    trace = pd.read_parquet(compare.matching_scenario(record, real=real).workload.trace_path)
    assert len(trace) == lead + math.ceil(horizon * 1e5)
    assert trace.page.iloc[-1] == 1011
    footprint.drop(columns="gap_s").to_csv(path, index=False)
    with pytest.raises(QemuError, match="lacks column"):
        compare.matching_scenario(record, real=real)


def test_the_shipped_idle_footprint_is_the_committed_runs():
    from simpostcopy.qemu import compare, trace
    from simpostcopy.qemu.harness import decode_zero_map

    here = Path(__file__).resolve().parents[1] / "experiments" / "qemu"
    record = importer.load(here / "idle_footprint_run.json")
    requests = pd.read_csv(here / "idle_footprint_requests.csv")
    zero = decode_zero_map(record["guest"]["zero_map"], record["spec"]["ram_mib"] << 8)
    shipped = pd.read_csv(compare.IDLE_FOOTPRINT)
    derived = trace.footprint(requests, zero)
    pd.testing.assert_frame_equal(shipped[["page", "anchor", "delta_pages"]], derived.iloc[:, :3])
    assert shipped.gap_s.to_numpy() == pytest.approx(derived.gap_s.to_numpy(), abs=2e-6)
    # Every page it touched first held data before the run.
    assert (shipped.delta_pages == 0).all() and len(shipped) > 100
