"""Fault-path distributions: parsing, TOML round trip, sampling statistics, use in the model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny

from simpostcopy.config import Scenario, ScenarioError
from simpostcopy.distributions import Dist, Draws, parse_dist
from simpostcopy.engine import simulate
from simpostcopy.rng import stream
from simpostcopy.units import UnitError

LOGNORMAL = {"dist": "lognormal", "median": "10 us", "sigma": 0.5}
GAMMA = {"dist": "gamma", "mean": "20 us", "cv": 0.25}
EMPIRICAL = {"dist": "empirical", "quantiles": [1e-6, 2e-6, 4e-6, 8e-6, 16e-6]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10 us", Dist("constant", (1e-5,))),
        (2e-6, Dist("constant", (2e-6,))),
        ({"dist": "constant", "value": "3 ms"}, Dist("constant", (3e-3,))),
        (LOGNORMAL, Dist("lognormal", (1e-5, 0.5))),
        (GAMMA, Dist("gamma", (2e-5, 0.25))),
        (EMPIRICAL, Dist("empirical", (1e-6, 2e-6, 4e-6, 8e-6, 16e-6))),
    ],
)
def test_parse(value, expected):
    assert parse_dist(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", "'10 us'"),
        ({"dist": "weibull"}, "'dist' must be one of"),
        ({"dist": "lognormal", "median": "1 us"}, "missing sigma"),
        ({"dist": "gamma", "mean": "1 us", "cv": 0.1, "shape": 2}, "unknown shape"),
        ({"dist": "gamma", "mean": "1 us", "cv": 0}, "must be > 0"),
        ({"dist": "empirical", "quantiles": [3e-6, 1e-6]}, "increasing"),
        ({"dist": "empirical", "quantiles": []}, "non-empty"),
    ],
)
def test_bad_specs(value, message):
    with pytest.raises(UnitError, match=message):
        parse_dist(value)


def test_bad_spec_in_a_scenario_names_the_key():
    with pytest.raises(ScenarioError) as e:
        Scenario().override({"fault_path.wake_s": {"dist": "lognormal", "median": "1 us"}})
    assert e.value.key == "fault_path.wake_s" and "missing sigma" in str(e.value)
    with pytest.raises(ScenarioError, match=">= 0"):
        Scenario().override({"fault_path.wake_s": {"dist": "empirical", "quantiles": [-1.0, 1.0]}})


def test_scenario_round_trips_every_kind():
    s = Scenario().override(
        {
            "fault_path.delivery_s": LOGNORMAL,
            "fault_path.request_s": GAMMA,
            "fault_path.wake_s": {**EMPIRICAL, "source": "measured somewhere"},
        }
    )
    assert Scenario.from_toml_string(s.to_toml()) == s
    assert Scenario.from_dict(s.to_dict()) == s
    assert s.hash() != Scenario().hash()


def test_sampling_statistics():
    n = 200_000
    rng = stream(7, "test")
    ln = parse_dist(LOGNORMAL).sample(rng, n)
    assert np.median(ln) == pytest.approx(1e-5, rel=0.02)
    assert np.std(np.log(ln)) == pytest.approx(0.5, rel=0.02)
    g = parse_dist(GAMMA).sample(rng, n)
    assert g.mean() == pytest.approx(2e-5, rel=0.01)
    assert g.std() / g.mean() == pytest.approx(0.25, rel=0.02)
    e = parse_dist(EMPIRICAL).sample(rng, n)
    # Inverse-CDF interpolation: each quartile of probability maps onto one segment.
    assert e.min() >= 1e-6 and e.max() <= 16e-6
    assert np.median(e) == pytest.approx(4e-6, rel=0.02)
    assert np.mean(e < 2e-6) == pytest.approx(0.25, abs=0.01)
    assert parse_dist(EMPIRICAL).mean == pytest.approx(np.mean(e), rel=0.01)


def test_draws_are_the_distribution_sampled_in_fixed_blocks():
    d = parse_dist(LOGNORMAL)
    draws = Draws(d, stream(1, "x"))
    got = [draws.next() for _ in range(600)]
    rng = stream(1, "x")
    blocks = np.concatenate([d.sample(rng, Draws.BLOCK) for _ in range(3)])
    assert got == blocks[:600].tolist()


def test_random_costs_flow_into_the_model_deterministically():
    s = tiny(
        guest__vcpus=2,
        workload__pattern="uniform",
        workload__working_set_bytes=16 * 1024,
        workload__working_set_offset_bytes=0,
        workload__accesses_per_vcpu=20,
        fault_path__delivery_s=LOGNORMAL,
        fault_path__wake_s=GAMMA,
        fault_path__place_fixed_s=EMPIRICAL,
    )
    a, b = simulate(s), simulate(s)
    assert a.faults.equals(b.faults)
    fa = a.faults
    wakes = fa.resumed_s - fa.placed_s
    assert wakes.nunique() == len(fa) > 1  # a fresh draw per fault
    assert a.summary["fault_path_source"] == "custom"
