"""Calibration on this host for real: the benchmark, the file, the CLI, and a lone fault."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import KIB, tiny

from simpostcopy import native
from simpostcopy.calibration import Calibration, Plan, calibrate
from simpostcopy.cli import main
from simpostcopy.engine import simulate


def _require_uffd() -> None:
    if not native.available():
        pytest.skip(native.unavailable_reason() or "native extension unavailable")
    try:
        native.probe_uffd()
    except (native.UffdPermissionError, native.UffdUnsupportedError) as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def quick_calibration(tmp_path_factory) -> Calibration:
    _require_uffd()
    plan = Plan(
        samples=1500,
        page_sizes=(4096,),
        threads=(1,),
        modes=("poll",),
        # "same" pins the faulting and handling threads to one core: on a small VM the
        # scheduler's placement changes from run to run, and with it every stage.
        affinities=("scheduler", "same"),
        network="loopback",
    )
    cal = calibrate(plan)
    cal.save(tmp_path_factory.mktemp("cal") / "calib.json")
    return cal


def test_calibration_rows_and_metadata(quick_calibration):
    cal = quick_calibration
    stages = set(cal.rows["stage"])
    assert {"delivery", "place", "wake", "round_trip", "request", "network"} <= stages
    for _, row in cal.rows.iterrows():
        assert 0 < row["min_s"] <= row["p50_s"] <= row["p90_s"] <= row["p99_s"] <= row["max_s"]
        assert row["count"] == 1500
    assert cal.host["uffd"]["opened_with"] in ("syscall", "/dev/userfaultfd")
    assert cal.placement_fit[4096]["per_byte_s"] > 0
    assert cal.overhead["p50_s"] < 1e-6
    back = Calibration.load(cal.path)
    assert back.rows["p50_s"].tolist() == cal.rows["p50_s"].tolist()


def test_lone_fault_under_calibration_reproduces_the_measured_round_trip(quick_calibration):
    cal = quick_calibration
    # Threads pinned to one core: the stages and the round trip see the same placement.
    pinned = {"affinity": "same"}
    measured = cal.select("round_trip", **pinned)["p50_s"]
    # 300 faults one at a time on distinct pages, nothing else on the link or in the
    # receiving thread, no network cost: each is a lone uffd round trip.
    trace_pages = 300
    s = tiny(
        guest__ram_bytes=512 * 4 * KIB,
        workload__pattern="uniform",
        workload__working_set_bytes=512 * 4 * KIB,
        workload__working_set_offset_bytes=0,
        workload__accesses_per_vcpu=trace_pages,
        network__latency_s=0,
        network__bandwidth_bytes_per_s=1e15,
        network__preempt=True,
    ).with_calibration(cal.path, **pinned)
    s = s.override({"fault_path.request_s": 0})
    r = simulate(s)
    assert len(r.faults) > 100
    simulated = float(np.median(r.faults.latency_s))
    assert simulated == pytest.approx(measured, rel=0.2), (simulated, measured)
    assert r.summary["fault_path_source"] == f"calibration {cal.path}"


def test_cli_calibrate_json_and_run_with_calibration(tmp_path, capsys):
    _require_uffd()
    out = tmp_path / "c.json"
    args = ["calibrate", "--out", str(out), "--samples", "300", "--page-sizes", "4KiB"]
    args += ["--threads", "1", "--modes", "poll", "--affinity", "scheduler", "--no-progress"]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    need = {"stage", "mode", "affinity", "page_bytes", "threads", "count", "p50_s", "p90_s"}
    assert all(need | {"p99_s", "mean_s"} <= set(r) for r in rows)
    assert {r["stage"] for r in rows} >= {"delivery", "place", "wake", "round_trip"}
    small = ["--set", "guest.ram_bytes=16MiB", "--set", "workload.working_set_bytes=8MiB"]
    assert main(["run", *small, "--calibration", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fault_path_source"] == f"calibration {out}"


def test_cli_calibrate_bad_values_exit_2(capsys):
    assert main(["calibrate", "--modes", "spin", "--no-progress"]) == 2
    assert "--modes: invalid value 'spin'" in capsys.readouterr().err
    assert main(["calibrate", "--network", "nohostport", "--no-progress"]) == 2
    assert main(["calibrate", "--page-sizes", "3 MiB", "--no-progress"]) == 2
