"""Each named experiment runs in its --quick mode and shows what it is about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, f"experiments/{script}.py", "--quick", "--jobs", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode == 3:  # the experiment says the host cannot run it
        pytest.skip(proc.stdout.strip())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _frame(out: Path, name: str) -> pd.DataFrame:
    assert (out / f"{name}.png").stat().st_size > 10_000
    return pd.read_parquet(out / f"{name}.parquet")


def test_vanilla_vs_preempt(tmp_path):
    _run("vanilla_vs_preempt", tmp_path)
    df = _frame(tmp_path, "vanilla_vs_preempt")
    at10 = df[
        (df["network.bandwidth_bytes_per_s"] == 1.25e9) & (df["workload.pattern"] == "uniform")
    ]
    p50 = at10.set_index("network.preempt")["latency_p50_s"]
    # QEMU at 10 Gbit/s: vanilla ~10-12 ms, preempt ~230-500 us per 4 KiB request.
    assert 8e-3 < p50[False] < 12e-3
    assert 150e-6 < p50[True] < 500e-6


def test_host_page_size(tmp_path):
    _run("host_page_size", tmp_path)
    df = _frame(tmp_path, "host_page_size").set_index(["guest.host_page_bytes", "network.preempt"])
    # QEMU: a 1 GiB page takes ~1 s at 10 Gbit/s (wire ~0.86 s plus placing it).
    assert 0.85 < df.loc[(1 << 30, True), "latency_p50_s"] < 1.5
    assert df.loc[(2 << 20, True), "latency_p50_s"] > df.loc[(4096, True), "latency_p50_s"]


def test_prefetch(tmp_path):
    _run("prefetch", tmp_path)
    df = _frame(tmp_path, "prefetch")
    share = df.groupby(["workload.pattern", "strategy"])["faults_per_ws_page"].median()
    for pattern in ("hotset", "uniform"):
        assert share[(pattern, "hint")] < share[(pattern, "none")] / 2
        assert share[(pattern, "bubbling x1")] < share[(pattern, "none")] / 2


def test_closed_loop(tmp_path):
    _run("closed_loop", tmp_path)
    df = _frame(tmp_path, "closed_loop")
    vanilla = df[df["mode"] == "vanilla"].sort_values("latency_mean_s")
    assert vanilla["remote_faults"].is_monotonic_decreasing
    assert vanilla["remote_faults"].iloc[0] > 20 * vanilla["remote_faults"].iloc[-1]


def test_vcpu_scaling(tmp_path):
    _run("vcpu_scaling", tmp_path)
    df = _frame(tmp_path, "vcpu_scaling").set_index(["network.preempt", "guest.vcpus"])
    for preempt in (False, True):
        assert df.loc[(preempt, 1), "read_wait_mean_s"] == 0  # nobody else to wait for
        assert df.loc[(preempt, 4), "read_wait_mean_s"] > 0
        assert df.loc[(preempt, 4), "remote_faults"] > df.loc[(preempt, 1), "remote_faults"]


def test_calibration_effect(tmp_path):
    _run("calibration_effect", tmp_path)
    df = _frame(tmp_path, "calibration_effect")
    assert set(df["fault_path"]) == {"defaults", "calibrated"}
    assert set(df.loc[df["fault_path"] == "calibrated", "fault_path_source"]) == {
        f"calibration {tmp_path / 'calibration_effect_calib.json'}"
    }
    assert (tmp_path / "calibration_effect_calib.json").exists()
