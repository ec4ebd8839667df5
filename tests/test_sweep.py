"""Sweeps: design expansion, executors giving identical rows, resume, failures, bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simpostcopy import sweep as sweep_mod
from simpostcopy.cli import main
from simpostcopy.config import Scenario
from simpostcopy.sweep import Range, Sweep, SweepError, run, summarize

ROOT = Path(__file__).resolve().parents[1]
TINY_BASE = """
[base]
guest.ram_bytes = "16 MiB"
guest.vcpus = 2
workload.working_set_bytes = "8 MiB"
workload.accesses_per_s = 1e5
network.bandwidth_bytes_per_s = "1 Gbit/s"
"""
GRID = (
    """
[sweep]
design = "grid"
seeds = [1, 2, 3]
"""
    + TINY_BASE
    + """
[factors]
"network.bandwidth_bytes_per_s" = ["1 Gbit/s", "10 Gbit/s", "40 Gbit/s"]
"network.preempt" = [false, true]
"""
)


def _write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    drop = ["wall_time_s", "traceback"]
    pd.testing.assert_frame_equal(
        a.drop(columns=drop, errors="ignore"), b.drop(columns=drop, errors="ignore")
    )


# -- definition and expansion -------------------------------------------------------------------
def test_grid_expands_every_combination_times_every_seed(tmp_path):
    sw = Sweep.from_toml(_write(tmp_path, GRID))
    points = sw.expand()
    assert len(points) == 6 and sw.seeds == (1, 2, 3)
    assert [p.values for p in points[:2]] == [
        {"network.bandwidth_bytes_per_s": 1.25e8, "network.preempt": False},
        {"network.bandwidth_bytes_per_s": 1.25e8, "network.preempt": True},
    ]
    runs = sw.runs()
    assert len(runs) == 18 and len({r.key for r in runs}) == 18
    assert [r.scenario.seed for r in runs[:3]] == [1, 2, 3]


def test_seed_count_counts_from_the_base_seed(tmp_path):
    text = GRID.replace("seeds = [1, 2, 3]", "seeds = 4").replace("[base]", "[base]\nseed = 10")
    assert Sweep.from_toml(_write(tmp_path, text)).seeds == (10, 11, 12, 13)


def test_base_scenario_file(tmp_path):
    _write(
        tmp_path,
        'seed = 5\n[guest]\nram_bytes = "32 MiB"\n[workload]\nworking_set_bytes = "8 MiB"\n',
        "base.toml",
    )
    text = '[sweep]\nbase = "base.toml"\n[factors]\n"guest.vcpus" = [1, 2]\n'
    sw = Sweep.from_toml(_write(tmp_path, text))
    assert sw.base.guest.ram_bytes == 32 << 20 and sw.seeds == (5,)


def test_random_design_draws_within_ranges_and_from_lists():
    sw = Sweep(
        factors={
            "network.bandwidth_bytes_per_s": Range(1.25e8, 1.25e10, "log"),
            "guest.vcpus": Range(1, 8, integer=True),
            "network.preempt": [False, True],
        },
        design="random",
        points=200,
    )
    pts = sw.expand()
    bw = np.array([p.values["network.bandwidth_bytes_per_s"] for p in pts])
    assert len(pts) == 200 and (bw >= 1.25e8).all() and (bw <= 1.25e10).all()
    # Log scale: about half the draws below the geometric midpoint 1.25e9.
    assert 70 < (bw < 1.25e9).sum() < 130
    assert {p.values["guest.vcpus"] for p in pts} <= set(range(1, 9))
    assert {p.values["network.preempt"] for p in pts} == {False, True}
    assert [p.values for p in pts] == [p.values for p in sw.expand()]  # reproducible
    other = Sweep(factors=sw.factors, design="random", points=200, design_seed=1).expand()
    assert [p.values for p in other] != [p.values for p in pts]


def test_latin_hypercube_puts_one_point_in_every_stratum():
    n = 50
    sw = Sweep(
        factors={
            "network.latency_s": Range(0.0, 1e-3),
            "workload.hot_fraction": Range(0.05, 0.55),
        },
        design="latin_hypercube",
        points=n,
    )
    pts = sw.expand()
    for key, (lo, hi) in {
        "network.latency_s": (0, 1e-3),
        "workload.hot_fraction": (0.05, 0.55),
    }.items():
        v = np.array([p.values[key] for p in pts])
        strata = np.floor((v - lo) / (hi - lo) * n).astype(int)
        assert sorted(strata) == list(range(n))


# -- running --------------------------------------------------------------------------------------
def test_sequential_processes_and_dask_give_identical_rows(tmp_path):
    sw = Sweep.from_toml(_write(tmp_path, GRID))
    seq = run(sw, jobs=1)
    par = run(sw, jobs=2)
    dsk = run(sw, dask_local=2)
    assert len(seq) == 18 and seq["error"].isna().all()
    _same_rows(seq, par)
    _same_rows(seq, dsk)
    assert list(seq.columns[:4]) == [
        "point",
        "seed",
        "network.bandwidth_bytes_per_s",
        "network.preempt",
    ]
    for column in (
        "total_time_s",
        "downtime_s",
        "remote_faults",
        "scenario_hash",
        "version",
        "wall_time_s",
        "error",
    ):
        assert column in seq.columns
    # Each row is exactly what simulate gives for its scenario.
    row = seq.iloc[7]
    s = sw.base.override(
        {
            "network.bandwidth_bytes_per_s": row["network.bandwidth_bytes_per_s"],
            "network.preempt": bool(row["network.preempt"]),
            "seed": int(row["seed"]),
        }
    )
    from simpostcopy.engine import simulate

    assert simulate(s).summary["total_time_s"] == row["total_time_s"]
    assert s.hash() == row["scenario_hash"]


def test_a_failing_run_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    real = sweep_mod.simulate

    def flaky(scenario: Scenario, engine: str = "fast"):
        if scenario.network.preempt and scenario.seed == 2:
            raise RuntimeError("boom")
        return real(scenario, engine=engine)

    monkeypatch.setattr(sweep_mod, "simulate", flaky)
    frame = run(Sweep.from_toml(_write(tmp_path, GRID)), tmp_path / "r.parquet", jobs=1)
    failed = frame[frame["error"].notna()]
    assert len(frame) == 18 and len(failed) == 3
    assert (failed["error"] == "RuntimeError: boom").all()
    assert failed["network.preempt"].all() and (failed["seed"] == 2).all()
    assert frame.loc[frame["error"].isna(), "total_time_s"].notna().all()
    # Summaries across seeds leave failed runs out.
    summary = summarize(frame, ["total_time_s"])
    assert list(summary["runs"]) == [3, 2, 3, 2, 3, 2]


def test_keep_faults_writes_a_partitioned_dataset(tmp_path):
    out = tmp_path / "r.parquet"
    frame = run(Sweep.from_toml(_write(tmp_path, GRID)), out, jobs=2, keep=["faults"])
    faults = pd.read_parquet(tmp_path / "r.parquet.faults")
    assert set(faults["point"].astype(int)) == set(range(6))
    per_run = faults.groupby([faults["point"].astype(int), faults["seed"].astype(int)]).size()
    expected = frame.set_index(["point", "seed"])["remote_faults"]
    assert (per_run == expected[expected > 0]).all()


def _cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "simpostcopy.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_resume_after_sigkill_runs_only_the_missing_points(tmp_path, monkeypatch):
    text = GRID.replace("seeds = [1, 2, 3]", "seeds = 8")
    path = _write(tmp_path, text)
    reference = run(Sweep.from_toml(path), jobs=2)
    out = tmp_path / "r.parquet"
    args = [
        "sweep",
        str(path),
        "--out",
        str(out),
        "--jobs",
        "2",
        "--flush-every",
        "1",
        "--no-progress",
    ]
    proc = _cli(args)
    parts = tmp_path / "r.parquet.parts"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if parts.exists() and len([p for p in parts.iterdir() if p.suffix == ".parquet"]) >= 5:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = Sweep.from_toml(path)
    before = sweep_mod.Store(out).load()
    assert 5 <= len(before) < 48, "killed part-way"
    # Rerun: only the missing runs, then exactly the full set with no duplicates.
    ran = []
    real = sweep_mod.simulate_run
    monkeypatch.setattr(sweep_mod, "simulate_run", lambda r: ran.append(r.key) or real(r))
    frame = run(saved, out, jobs=1)
    assert len(ran) == 48 - len(before)
    assert not set(ran) & set(before["scenario_hash"])
    assert frame["scenario_hash"].is_unique and len(frame) == 48
    _same_rows(frame, reference)
    _same_rows(pd.read_parquet(out), reference)


def test_a_truncated_last_part_is_detected_and_redone(tmp_path):
    path = _write(tmp_path, GRID)
    out = tmp_path / "r.parquet"
    full = run(Sweep.from_toml(path), out, jobs=1, flush_every=4)
    parts = sorted((tmp_path / "r.parquet.parts").iterdir())
    assert len(parts) == 5  # 4 + 4 + 4 + 4 + 2 rows
    data = parts[-1].read_bytes()
    parts[-1].write_bytes(data[: len(data) // 2])  # a write cut short
    (tmp_path / "r.parquet.parts" / ".part-x.parquet.tmp").write_bytes(b"PAR1")
    again = run(Sweep.from_toml(path), out, jobs=1)
    _same_rows(again, full)
    assert not any(p.name.startswith(".") for p in (tmp_path / "r.parquet.parts").iterdir())


def test_cli_sweep_runs_and_resumes(tmp_path, capsys):
    path = _write(tmp_path, GRID)
    out = tmp_path / "r.parquet"
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "2", "--no-progress"]) == 0
    assert "18 runs (0 failed)" in capsys.readouterr().out
    assert len(pd.read_parquet(out)) == 18
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 0


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('"network.preempt"', '"network.preempted"'), "did you mean 'network.preempt'"),
        (("[false, true]", "[]"), "factors.network.preempt: invalid value \\[\\]: empty"),
        (('design = "grid"', 'design = "sobol"'), "sweep.design: invalid value 'sobol'"),
        (('design = "grid"', 'desing = "grid"'), "sweep.desing: invalid value"),
        (("seeds = [1, 2, 3]", "seeds = 0"), "sweep.seeds: invalid value 0"),
        (("seeds = [1, 2, 3]", "seeds = [1, 1]"), "seeds must be distinct"),
        (('"1 Gbit/s", "10 Gbit/s"', '"-1 Gbit/s", "10 Gbit/s"'), "network.bandwidth_bytes_per_s"),
        (
            ('["1 Gbit/s", "10 Gbit/s", "40 Gbit/s"]', '{ min = "1 Gbit/s", max = "40 Gbit/s" }'),
            "a grid needs a list of values",
        ),
    ],
)
def test_bad_sweep_files_fail_before_anything_runs(tmp_path, change, message):
    old, new = change
    path = _write(tmp_path, GRID.replace(old, new))
    with pytest.raises(SweepError, match=message):
        run(Sweep.from_toml(path), tmp_path / "r.parquet")
    assert not (tmp_path / "r.parquet.parts").exists()
    assert main(["sweep", str(path), "--out", str(tmp_path / "r.parquet")]) == 2


@pytest.mark.parametrize(
    ("factor", "message"),
    [
        ('{ min = "10 Gbit/s", max = "1 Gbit/s" }', "is above max"),
        ('{ min = 0, max = "1 Gbit/s", scale = "log" }', "a log range needs min > 0"),
        ('{ min = "1 Gbit/s", max = "2 Gbit/s", scale = "cubic" }', "scale must be"),
        ('{ min = "1 Gbit/s" }', "a range is"),
    ],
)
def test_bad_ranges_are_clear_errors(tmp_path, factor, message):
    text = (
        '[sweep]\ndesign = "random"\npoints = 4\n'
        + TINY_BASE
        + f'[factors]\n"network.bandwidth_bytes_per_s" = {factor}\n'
    )
    with pytest.raises(SweepError, match=message):
        Sweep.from_toml(_write(tmp_path, text))


def test_asking_for_dask_without_it_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    sw = Sweep.from_toml(_write(tmp_path, GRID))
    with pytest.raises(SweepError, match=r"pip install 'simpostcopy\[dask\]'"):
        run(sw, dask_local=2)


def test_summarize_gives_student_t_intervals():
    frame = pd.DataFrame(
        {
            "a.b": [1, 1, 1, 2, 2],
            "seed": [1, 2, 3, 1, 2],
            "m": [1.0, 2.0, 3.0, 5.0, 5.0],
            "error": [None] * 5,
        }
    )
    s = summarize(frame, ["m"]).set_index("a.b")
    assert s.loc[1, "runs"] == 3 and s.loc[1, "m_mean"] == 2.0
    # t(0.975, 2) = 4.3027; sd = 1; half-width = 4.3027 / sqrt(3)
    assert s.loc[1, "m_ci_high"] == pytest.approx(2.0 + 4.302653 / np.sqrt(3), rel=1e-5)
    assert s.loc[2, "m_sd"] == 0.0 and s.loc[2, "m_ci_low"] == 5.0


def test_an_existing_dask_cluster_by_its_address(tmp_path):
    from distributed import LocalCluster

    sw = Sweep.from_toml(_write(tmp_path, GRID))
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        remote = run(sw, scheduler=cluster.scheduler_address)
    _same_rows(run(sw, jobs=1), remote)


def test_distribution_factors_become_plain_columns(tmp_path):
    sw = Sweep(
        base=Scenario().override(
            {"guest.ram_bytes": 8 << 20, "workload.working_set_bytes": 4 << 20}
        ),
        factors={
            "fault_path.request_s": ["10 us", {"dist": "lognormal", "median": 1e-5, "sigma": 0.5}]
        },
    )
    frame = run(sw, tmp_path / "r.parquet", jobs=1)
    assert list(frame["fault_path.request_s"]) == [
        "1e-05",
        '{"dist": "lognormal", "median": 1e-05, "sigma": 0.5}',
    ]
    constant = Sweep(base=sw.base, factors={"fault_path.request_s": ["10 us", "20 us"]})
    assert [p.values["fault_path.request_s"] for p in constant.expand()] == [1e-5, 2e-5]


def test_saved_runs_take_their_factors_from_the_current_sweep(tmp_path):
    # Run a one-factor sweep, then add a factor whose first value is the base's: those
    # runs are reused, and their rows gain the new column and the new point numbers.
    out = tmp_path / "r.parquet"
    base = Scenario().override({"guest.ram_bytes": 8 << 20, "workload.working_set_bytes": 4 << 20})
    run(Sweep(base=base, factors={"guest.vcpus": [1, 2]}), out, jobs=1)
    wider = Sweep(
        base=base,
        factors={"network.preempt": [True, False], "guest.vcpus": [1, 2]},
    )
    frame = run(wider, out, jobs=1)
    fresh = run(wider, jobs=1)
    _same_rows(frame, fresh)
    assert list(frame.columns[:4]) == ["point", "seed", "network.preempt", "guest.vcpus"]
