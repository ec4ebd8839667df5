"""The command line: summary table, JSON, output files, clear errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from simpostcopy.cli import main
from simpostcopy.config import Scenario

SMALL = ["--set", "guest.ram_bytes=64 MiB", "--set", "workload.working_set_bytes=32MiB"]


def test_run_prints_a_summary_table(capsys):
    assert main(["run", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "total time" in out and "remote faults" in out and "blocktime per vCPU" in out


def test_run_json_and_out_dir(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert main(["run", *SMALL, "--json", "--out", str(out_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["remote_faults"] > 0 and summary["seed"] == 1
    assert json.loads((out_dir / "summary.json").read_text()) == summary
    faults = pd.read_parquet(out_dir / "faults.parquet")
    assert len(faults) == summary["remote_faults"]
    assert len(pd.read_parquet(out_dir / "pages.parquet")) == 64 * 1024 // 4
    assert pd.read_parquet(out_dir / "timeline.parquet").columns[0] == "window_start_s"
    assert len(pd.read_parquet(out_dir / "vcpus.parquet")) == 2
    qemu = json.loads((out_dir / "query-migrate.json").read_text())
    assert qemu["ram"]["postcopy-requests"] == summary["postcopy_requests"]
    # The scenario written out reproduces the run.
    again = Scenario.from_toml(out_dir / "scenario.toml")
    assert again.guest.ram_bytes == 64 * 1024 * 1024
    assert main(["run", str(out_dir / "scenario.toml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary


def test_scenario_file_and_overrides(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(
        'seed = 7\n[guest]\nram_bytes = "32 MiB"\n[workload]\nworking_set_bytes = "8 MiB"\n'
    )
    assert main(["scenario", str(path), "--set", "network.preempt=true"]) == 0
    s = Scenario.from_toml_string(capsys.readouterr().out)
    assert (s.seed, s.guest.ram_bytes, s.network.preempt) == (7, 32 << 20, True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "network.bandwith_bytes_per_s=1e9"],
            "did you mean 'network.bandwidth_bytes_per_s'",
        ),
        (["--set", "network.bandwidth_bytes_per_s=0"], "network.bandwidth_bytes_per_s"),
        (["--set", "guest.host_page_bytes=12KiB"], "4 KiB × 2^k"),
        (["--set", "guest.vcpus=two"], "guest.vcpus"),
        (["--set", "workload.pattern=random"], "workload.pattern"),
        (["--set", "guest.ram_bytes=3 MiB", "--set", "guest.host_page_bytes=2 MiB"], "multiple"),
        (["--set", "noequals"], "KEY=VALUE"),
        (["missing.toml"], "missing.toml"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "simpostcopy.cli", "run", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr
    assert proc.stderr.startswith("simpostcopy: error:")


def test_run_with_the_reference_engine_matches_the_fast_one(capsys):
    args = ["run", "--set", "guest.ram_bytes=8MiB", "--set", "workload.working_set_bytes=4MiB"]
    args += ["--set", "workload.accesses_per_vcpu=2000", "--json"]
    assert main([*args, "--engine", "reference"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    fast = json.loads(capsys.readouterr().out)
    assert ref["remote_faults"] == fast["remote_faults"] > 0
    assert ref["total_time_s"] == pytest.approx(fast["total_time_s"], abs=1e-9)
