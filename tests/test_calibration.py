"""Calibration summaries, files and their use as a fault path (synthetic samples)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import tiny

from simpostcopy.calibration import Calibration, fault_path_updates, summarize
from simpostcopy.config import Scenario, ScenarioError
from simpostcopy.engine import simulate


def _samples(n: int = 101, **attrs) -> pd.DataFrame:
    """Benchmark-shaped rows: delivery i us, place 2 us + i ns, wake 3 us, round trip sum."""
    i = np.arange(n, dtype=np.float64)
    df = pd.DataFrame(
        {
            "thread": 0,
            "page": np.arange(n),
            "warmup": False,
            "eexist": False,
            "delivery_s": (1 + i) * 1e-6,
            "place_s": 2e-6 + i * 1e-9,
            "wake_s": 3e-6,
            "request_s": np.nan,
            "network_s": np.nan,
        }
    )
    df["round_trip_s"] = df.delivery_s + df.place_s + df.wake_s
    for k, v in {
        "mode": "poll",
        "affinity": "scheduler",
        "page_bytes": 4096,
        "threads": 1,
        "zeropage": False,
        "network": False,
        **attrs,
    }.items():
        df[k] = v
    return df


def _calibration(tmp_path, with_network: bool = False) -> Calibration:
    frames = [_samples(), _samples(mode="busy")]
    warm = _samples(5)
    warm["warmup"] = True
    warm["delivery_s"] = 1.0  # first-touch outliers must not pollute the stages
    frames.append(warm)
    if with_network:
        net = _samples(network=True)
        net["request_s"] = 4e-6
        net["network_s"] = 50e-6
        frames.append(net)
    rows = summarize(pd.concat(frames, ignore_index=True))
    rows["faults_per_s"] = 1e5
    cal = Calibration(
        rows=rows,
        host={"kernel": "test"},
        placement_fit={4096: {"fixed_s": 1.5e-6, "per_byte_s": 1e-10}},
    )
    cal.save(tmp_path / "calib.json")
    return cal


def test_summarize_excludes_warmup_and_unmeasured_stages(tmp_path):
    cal = _calibration(tmp_path)
    rows = cal.rows
    assert set(rows.stage) == {"delivery", "place", "wake", "round_trip"}  # no network
    d = cal.select("delivery")
    assert d["count"] == 101
    assert d["min_s"] == pytest.approx(1e-6) and d["max_s"] == pytest.approx(101e-6)
    assert d["p50_s"] == pytest.approx(51e-6) and d["p99_s"] == pytest.approx(100e-6)
    assert d["quantiles_s"][0] == pytest.approx(1e-6) and len(d["quantiles_s"]) == 101
    assert cal.select("delivery", mode="busy")["mode"] == "busy"


def test_file_round_trip(tmp_path):
    cal = _calibration(tmp_path)
    back = Calibration.load(tmp_path / "calib.json")
    pd.testing.assert_frame_equal(back.rows, cal.rows)
    assert back.placement_fit == cal.placement_fit
    assert back.host == {"kernel": "test"}


def test_fault_path_from_calibration(tmp_path):
    cal = _calibration(tmp_path, with_network=True)
    up = fault_path_updates(cal)
    assert up["fault_path.calibration"] == str(tmp_path / "calib.json")
    assert up["fault_path.delivery_s"].params == pytest.approx(
        cal.select("delivery")["quantiles_s"]
    )
    assert up["fault_path.request_s"].params[0] == pytest.approx(4e-6)
    # Placement: the single-page measurement minus the fitted per-byte copy of 4 KiB.
    place = np.asarray(cal.select("place")["quantiles_s"]) - 4096e-10
    assert up["fault_path.place_fixed_s"].params == pytest.approx(place.tolist())
    assert up["fault_path.place_per_byte_s"] == 1e-10
    s = Scenario().with_calibration(tmp_path / "calib.json")
    r = simulate(s.override({"guest.ram_bytes": "16 MiB", "workload.working_set_bytes": "8 MiB"}))
    assert r.summary["fault_path_source"] == f"calibration {tmp_path / 'calib.json'}"


def test_fitted_kinds_use_the_sample_moments(tmp_path):
    cal = _calibration(tmp_path)
    d = cal.select("delivery")
    ln = fault_path_updates(cal, "lognormal")["fault_path.delivery_s"]
    assert ln.kind == "lognormal"
    assert ln.params == pytest.approx((np.exp(d["log_mean"]), d["log_std"]))
    g = fault_path_updates(cal, "gamma")["fault_path.delivery_s"]
    assert g.params == pytest.approx((d["mean_s"], d["std_s"] / d["mean_s"]))


def test_calibration_table_in_a_scenario_file(tmp_path):
    _calibration(tmp_path)
    (tmp_path / "s.toml").write_text(
        '[fault_path]\nwake_s = { dist = "empirical", file = "calib.json", stage = "wake" }\n'
    )
    s = Scenario.from_toml(tmp_path / "s.toml")
    assert s.fault_path.wake_s.kind == "empirical"
    assert s.fault_path.wake_s.params[0] == pytest.approx(3e-6)
    assert "calib.json: wake" in s.fault_path.wake_s.source
    assert Scenario.from_toml_string(s.to_toml()) == s  # written back with its quantiles


def test_calibration_errors(tmp_path):
    with pytest.raises(ScenarioError) as e:
        Scenario().with_calibration(tmp_path / "none.json")
    assert e.value.key == "fault_path.calibration" and "none.json" in str(e.value)
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ScenarioError, match="not a simpostcopy calibration file"):
        Scenario().with_calibration(tmp_path / "x.json")
    _calibration(tmp_path)
    with pytest.raises(ScenarioError, match="no 'delivery' row for mode=read"):
        Scenario().with_calibration(tmp_path / "calib.json", mode="read")
    with pytest.raises(ScenarioError, match="stage = one of"):
        tiny(fault_path__wake_s={"dist": "empirical", "file": str(tmp_path / "calib.json")})


def test_stages_follow_the_guests_host_page_size(tmp_path):
    rows = summarize(pd.concat([_samples(), _samples(page_bytes=2 << 20)], ignore_index=True))
    huge = rows["page_bytes"] == 2 << 20
    rows.loc[huge, "quantiles_s"] = pd.Series(
        [[250e-6, 260e-6]] * int(huge.sum()), index=rows.index[huge]
    )
    fits = {
        4096: {"fixed_s": 1e-6, "per_byte_s": 3e-10},
        2 << 20: {"fixed_s": 1e-5, "per_byte_s": 1e-10},
    }
    cal = Calibration(rows=rows, host={}, placement_fit=fits)
    cal.save(tmp_path / "c.json")
    for host_page, measured in [(4096, 4096), (2 << 20, 2 << 20), (1 << 30, 2 << 20)]:
        up = fault_path_updates(cal, host_page_bytes=host_page)
        assert up["fault_path.place_per_byte_s"] == fits[measured]["per_byte_s"]
        assert f"page_bytes={measured}" in up["fault_path.delivery_s"].source
    up = fault_path_updates(cal, host_page_bytes=2 << 20)
    assert up["fault_path.place_fixed_s"].params == pytest.approx(
        (250e-6 - 1e-10 * (2 << 20), 260e-6 - 1e-10 * (2 << 20))
    )
    s = (
        Scenario()
        .override({"guest.host_page_bytes": "2 MiB"})
        .with_calibration(tmp_path / "c.json")
    )
    assert s.fault_path.place_per_byte_s == 1e-10
