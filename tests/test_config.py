"""Tests for unit parsing (simpostcopy.units) and scenario configuration (simpostcopy.config)."""

import dataclasses
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from simpostcopy.config import (
    TARGET_PAGE_BYTES,
    FaultPath,
    Guest,
    Migration,
    Network,
    Scenario,
    ScenarioError,
    Workload,
    load_trace,
    parse_override,
)
from simpostcopy.units import (
    UnitError,
    format_bytes,
    format_rate,
    format_time,
    parse_bytes,
    parse_number,
    parse_rate,
    parse_time,
)

KiB, MiB, GiB = 1024, 1024**2, 1024**3

# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16 GiB", 16 * GiB),
        ("4KiB", 4 * KiB),
        ("4 KiB", 4 * KiB),
        ("2 MiB", 2 * MiB),
        ("1 GiB", GiB),
        ("1 TiB", 1024 * GiB),
        ("4 kB", 4000),
        ("4 KB", 4000),
        ("3 MB", 3_000_000),
        ("2 GB", 2_000_000_000),
        ("1 TB", 10**12),
        ("512 B", 512),
        ("1e9", 10**9),
        ("1.5 GiB", 3 * GiB // 2),
        (" 7 ", 7),
        (4096, 4096),
        (4096.0, 4096),
        (np.int64(8), 8),
    ],
)
def test_parse_bytes(text, expected):
    result = parse_bytes(text)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10 Gbit/s", 1.25e9),
        ("10 Gb/s", 1.25e9),
        ("10 Gbps", 1.25e9),
        ("10 GB/s", 1e10),  # byte, not bit
        ("10 GBps", 1e10),
        ("1.25 GB/s", 1.25e9),
        ("100 MiB/s", 100 * MiB),
        ("1 Mbit/s", 125_000.0),
        ("500 kbit/s", 62_500.0),
        ("8 bit/s", 1.0),
        ("1 Kibit/s", 128.0),
        ("1000 B/s", 1000.0),
        (5, 5.0),
        (2.5, 2.5),
        ("1e6", 1e6),
    ],
)
def test_parse_rate(text, expected):
    result = parse_rate(text)
    assert result == expected
    assert type(result) is float


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250 us", 250e-6),
        ("250 µs", 250e-6),  # U+00B5 micro sign
        ("250 μs", 250e-6),  # U+03BC Greek mu
        ("1.5 ms", 1.5e-3),
        ("2 s", 2.0),
        ("100 ns", 100e-9),
        ("1 min", 60.0),
        (3, 3.0),
        (0.25, 0.25),
        ("1e-4", 1e-4),
    ],
)
def test_parse_time(text, expected):
    result = parse_time(text)
    assert result == expected
    assert type(result) is float


def test_parse_number():
    assert parse_number("1e6") == 1e6
    assert parse_number(3) == 3.0
    with pytest.raises(UnitError, match="no unit"):
        parse_number("3 s")


@pytest.mark.parametrize("parse", [parse_bytes, parse_rate, parse_time, parse_number])
@pytest.mark.parametrize(
    "bad", [True, False, "abc", "", "1 2", "5 parsecs", None, [1], float("nan"), float("inf")]
)
def test_parsers_reject_bad_values(parse, bad):
    with pytest.raises(UnitError) as info:
        parse(bad)
    assert repr(bad) in str(info.value)
    assert "expected" in str(info.value)


@pytest.mark.parametrize("parse", [parse_rate, parse_time, parse_number])
@pytest.mark.parametrize("huge", ["1e400", 10**400])
def test_float_parsers_reject_values_beyond_float_range(parse, huge):
    with pytest.raises(UnitError, match="too large"):
        parse(huge)


@pytest.mark.parametrize("bad", ["1.5 B", "4 Kb", "4 kbit", "1 GiB/s", "10 s", "1 b"])
def test_parse_bytes_rejects_fractions_bits_and_other_units(bad):
    with pytest.raises(UnitError, match="KiB"):
        parse_bytes(bad)


@pytest.mark.parametrize("bad", ["10 Gbit", "10 GiB", "10 s", "10 Gbit/min"])
def test_parse_rate_needs_per_second(bad):
    with pytest.raises(UnitError, match="Gbit/s"):
        parse_rate(bad)


@pytest.mark.parametrize("bad", ["1 h", "5 m", "2 GiB", "1 sec"])
def test_parse_time_rejects_other_units(bad):
    with pytest.raises(UnitError, match="ms"):
        parse_time(bad)


def test_unit_error_is_value_error():
    assert issubclass(UnitError, ValueError)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (4 * GiB, "4 GiB"),
        (2 * MiB, "2 MiB"),
        (4 * KiB, "4 KiB"),
        (2048 * GiB, "2 TiB"),
        (12345, "12345 B"),
        (1536, "1536 B"),
        (0, "0 B"),
        (3 * MiB, "3 MiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text
    assert parse_bytes(text) == n


def test_format_round_trips_exactly():
    rng = np.random.default_rng(0)
    for n in rng.integers(0, 2**50, 200):
        assert parse_bytes(format_bytes(int(n))) == n
    for x in [*rng.random(200) * 1e10, 1e-9, 2e-10, 1.25e9, 0.1, 1 / 3]:
        assert parse_rate(format_rate(x)) == x
        assert parse_time(format_time(x)) == x


# --------------------------------------------------------------------------- sections


def test_defaults():
    s = Scenario()
    assert s.guest == Guest(ram_bytes=4 * GiB, host_page_bytes=4096, vcpus=2)
    assert s.guest.zero_page_fraction == 0.1
    assert s.workload.pattern == "hotset"
    assert s.workload.working_set_bytes == GiB
    assert s.workload.accesses_per_s == 1e6
    assert s.workload.accesses_per_vcpu == 0
    assert s.network.bandwidth_bytes_per_s == 1.25e9
    assert s.network.latency_s == pytest.approx(100e-6)
    assert s.network.inflight_bytes == 12 * MiB
    assert s.network.preempt is False
    assert s.migration.setup_s == pytest.approx(0.01)
    assert s.migration.device_state_bytes == MiB
    assert s.migration.max_postcopy_bandwidth_bytes_per_s == 0.0
    assert s.migration.locality == "continue"
    assert s.migration.page_header_bytes == 8
    assert s.fault_path == FaultPath(
        delivery_s=9e-6,
        request_s=10e-6,
        place_fixed_s=1.6e-6,
        place_per_byte_s=3.5e-10,
        wake_s=8e-6,
    )
    assert s.seed == 1
    assert TARGET_PAGE_BYTES == 4096


def test_strings_with_units_are_coerced():
    net = Network(bandwidth_bytes_per_s="10 Gbit/s", latency_s="250 µs", inflight_bytes="1 MiB")
    assert net.bandwidth_bytes_per_s == 1.25e9
    assert net.latency_s == 250e-6
    assert net.inflight_bytes == MiB
    assert Workload(accesses_per_s="2e6").accesses_per_s == 2e6
    assert Migration(max_postcopy_bandwidth_bytes_per_s="1 GB/s").max_postcopy_bandwidth_bytes_per_s
    assert Guest(ram_bytes="2 GiB", host_page_bytes="2 MiB") == Guest(
        ram_bytes=2 * GiB, host_page_bytes=2 * MiB
    )


def test_sections_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Scenario().guest.vcpus = 4  # type: ignore[misc]


@pytest.mark.parametrize(("page", "per_host"), [(4 * KiB, 1), (2 * MiB, 512), (GiB, 262144)])
def test_guest_derived_properties(page, per_host):
    g = Guest(ram_bytes=4 * GiB, host_page_bytes=page)
    assert g.host_pages == 4 * GiB // page
    assert g.target_pages_per_host_page == per_host


BAD_SCENARIOS = [
    # (input, dotted key, bad value as shown, allowed thing)
    ({"network": {"bandwith_bytes_per_s": 1}}, "network.bandwith_bytes_per_s", "bandwith",
     "did you mean 'network.bandwidth_bytes_per_s'?"),
    ({"netwrk": {"latency_s": 0}}, "netwrk", "netwrk", "did you mean 'network'?"),
    ({"sed": 3}, "sed", "sed", "did you mean 'seed'?"),
    ({"guest": 5}, "guest", "5", "table"),
    ({"guest": {"vcpus": "two"}}, "guest.vcpus", "'two'", "integer"),
    ({"guest": {"vcpus": 2.5}}, "guest.vcpus", "2.5", "integer"),
    ({"guest": {"vcpus": 0}}, "guest.vcpus", "0", ">= 1"),
    ({"network": {"preempt": "yes"}}, "network.preempt", "'yes'", "boolean"),
    ({"network": {"preempt": 1}}, "network.preempt", "1", "boolean"),
    ({"workload": {"pattern": 3}}, "workload.pattern", "3", "string"),
    ({"workload": {"pattern": "random"}}, "workload.pattern", "'random'", "'hotset'"),
    ({"network": {"bandwidth_bytes_per_s": 0}}, "network.bandwidth_bytes_per_s", "0", "> 0"),
    ({"network": {"bandwidth_bytes_per_s": "-1 Gbit/s"}}, "network.bandwidth_bytes_per_s",
     "'-1 Gbit/s'", "> 0"),
    ({"network": {"bandwidth_bytes_per_s": "10 Gbit"}}, "network.bandwidth_bytes_per_s",
     "'10 Gbit'", "Gbit/s"),
    ({"network": {"latency_s": "-5 us"}}, "network.latency_s", "'-5 us'", ">= 0"),
    ({"network": {"latency_s": True}}, "network.latency_s", "True", "seconds"),
    ({"guest": {"host_page_bytes": "8 KiB"}}, "guest.host_page_bytes", "'8 KiB'",
     "supported host page sizes are 4 KiB, 2 MiB, 1 GiB"),
    ({"guest": {"host_page_bytes": "12 KiB"}}, "guest.host_page_bytes", "'12 KiB'",
     "must be 4 KiB × 2^k"),
    ({"guest": {"ram_bytes": "3 MiB", "host_page_bytes": "2 MiB"}}, "guest.ram_bytes", "3 MiB",
     "multiple of the host page size guest.host_page_bytes = 2 MiB"),
    ({"guest": {"ram_bytes": "1.5 B"}}, "guest.ram_bytes", "'1.5 B'", "whole number"),
    ({"guest": {"zero_page_fraction": 1.5}}, "guest.zero_page_fraction", "1.5", "<= 1"),
    ({"workload": {"working_set_bytes": "8 GiB"}}, "workload.working_set_bytes", "8 GiB",
     "<= guest.ram_bytes"),
    ({"workload": {"working_set_offset_bytes": "3584 MiB"}}, "workload.working_set_offset_bytes",
     "3584 MiB", "<= guest.ram_bytes"),
    ({"workload": {"working_set_bytes": 1000}}, "workload.working_set_bytes", "1000",
     "multiple of 4 KiB"),
    ({"workload": {"hot_fraction": 0}}, "workload.hot_fraction", "0", "> 0"),
    ({"workload": {"stride_bytes": "2 KiB"}}, "workload.stride_bytes", "'2 KiB'", ">= 4096"),
    ({"workload": {"accesses_per_s": "fast"}}, "workload.accesses_per_s", "'fast'", "number"),
    ({"workload": {"pattern": "trace"}}, "workload.trace_path", "''", "required"),
    ({"workload": {"pattern": "trace", "trace_path": "/no/such/trace.csv"}},
     "workload.trace_path", "/no/such/trace.csv", "cannot read trace file"),
    ({"migration": {"locality": "far"}}, "migration.locality", "'far'", "'bubbling'"),
    ({"migration": {"bubbling_pivots": 0}}, "migration.bubbling_pivots", "0", ">= 1"),
    ({"fault_path": {"wake_s": "-1 ms"}}, "fault_path.wake_s", "'-1 ms'", ">= 0"),
    ({"fault_path": {"recv_s": "-2 us"}}, "fault_path.recv_s", "'-2 us'", ">= 0"),
    ({"network": {"recv_buffer_bytes": 0}}, "network.recv_buffer_bytes", "0", "> 0"),
    ({"guest": {"first_touch_s": "-1 us"}}, "guest.first_touch_s", "'-1 us'", ">= 0"),
    ({"seed": -1}, "seed", "-1", ">= 0"),
    ({"guest.ram_bytes": "1 GiB", "guest": {"ram_bytes": 1}}, "guest.ram_bytes", "1", "twice"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "key", "shown", "allowed"), BAD_SCENARIOS)
def test_bad_input_names_key_value_and_allowed(data, key, shown, allowed):
    with pytest.raises(ScenarioError) as info:
        Scenario.from_dict(data)
    message = str(info.value)
    assert info.value.key == key
    assert key in message
    assert shown in message
    assert allowed in message


def test_scenario_error_attributes_and_pickling():
    with pytest.raises(ScenarioError) as info:
        Network(latency_s="-5 us")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.key, err.value) == ("network.latency_s", "-5 us")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.key, again.value) == (str(err), err.key, err.value)


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ScenarioError, match=r"valid keys: .*network\.latency_s"):
        Scenario.from_dict({"zzzz": 1})


def test_scenario_requires_section_objects():
    with pytest.raises(ScenarioError, match=r"guest: .*expected a Guest.*from_dict"):
        Scenario(guest={"vcpus": 4})  # type: ignore[arg-type]


def test_from_dict_nested_and_dotted():
    nested = Scenario.from_dict({"guest": {"ram_bytes": "1 GiB"}, "seed": 7})
    dotted = Scenario.from_dict({"guest.ram_bytes": "1 GiB", "seed": 7})
    assert nested == dotted
    assert nested.guest.ram_bytes == GiB
    assert nested.seed == 7
    assert nested.network == Network()


# --------------------------------------------------------------------------- traces


def _write_trace(path, rows):
    frame = pd.DataFrame(rows, columns=["vcpu", "page"])
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_load_trace_splits_per_vcpu_in_file_order(tmp_path, suffix):
    path = _write_trace(tmp_path / f"t{suffix}", [(1, 5), (0, 9), (1, 3), (0, 2), (1, 7)])
    per_vcpu = load_trace(path, vcpus=2, ram_pages=10)
    assert len(per_vcpu) == 2
    assert per_vcpu[0].tolist() == [9, 2]
    assert per_vcpu[1].tolist() == [5, 3, 7]
    assert all(a.dtype == np.int64 for a in per_vcpu)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("vcpu,addr\n0,1\n", "lacks column(s) 'page'"),
        ("vcpu,page\n", "has no rows"),
        ("vcpu,page\n0,1.5\n1,2\n", "non-integer values in column 'page'"),
        ("vcpu,page\n0,1\n1,10\n", "page 10 out of range"),
        ("vcpu,page\n0,1\n1,-1\n", "page -1 out of range"),
        ("vcpu,page\n0,1\n0,2\n", "no rows for vcpu 1"),
        ("vcpu,page\n0,1\n1,2\n2,3\n", "vcpu 2 outside 0..1"),
    ],
)
def test_load_trace_rejects_bad_traces(tmp_path, content, problem):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ScenarioError) as info:
        load_trace(path, vcpus=2, ram_pages=10)
    assert info.value.key == "workload.trace_path"
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_trace_is_checked_when_the_scenario_is_built(tmp_path):
    ram_pages = 64 * MiB // TARGET_PAGE_BYTES
    good = _write_trace(tmp_path / "good.csv", [(0, 0), (1, ram_pages - 1)])
    bad = _write_trace(tmp_path / "bad.csv", [(0, 0), (1, ram_pages)])
    base = {"guest": {"ram_bytes": "64 MiB"}, "workload": {"working_set_bytes": "1 MiB"}}
    s = Scenario.from_dict(base).override(
        {"workload.pattern": "trace", "workload.trace_path": str(good)}
    )
    assert s.workload.trace_path == str(good)
    with pytest.raises(ScenarioError, match=f"page {ram_pages} out of range"):
        s.override({"workload.trace_path": str(bad)})
    missing_column = tmp_path / "cols.csv"
    missing_column.write_text("cpu,page\n0,1\n")
    with pytest.raises(ScenarioError, match="lacks column"):
        s.override({"workload.trace_path": str(missing_column)})


# --------------------------------------------------------------------------- TOML


def _custom_scenario() -> Scenario:
    return Scenario.from_dict(
        {
            "seed": 42,
            "guest": {"ram_bytes": "8 GiB", "host_page_bytes": "2 MiB", "vcpus": 8},
            "workload": {
                "pattern": "zipf",
                "working_set_bytes": "3 GiB",
                "working_set_offset_bytes": "12 KiB",
                "zipf_exponent": 1.1,
                "trace_path": '/data/odd "name" \\ ünïcode \x7f\t.csv',  # unused: not a trace run
                "accesses_per_vcpu": 1000,
            },
            "network": {"bandwidth_bytes_per_s": "25 Gbit/s", "latency_s": "37 us"},
            "network.preempt": True,
            "migration": {"locality": "bubbling", "max_postcopy_bandwidth_bytes_per_s": 1 / 3},
            "fault_path": {"place_per_byte_s": 1.2345678901234567e-10, "delivery_s": 0.1},
        }
    )


@pytest.mark.parametrize("scenario", [Scenario(), _custom_scenario()], ids=["default", "custom"])
def test_toml_round_trip(scenario, tmp_path):
    text = scenario.to_toml()
    assert text.startswith("seed = ")
    assert "[network]" in text
    assert Scenario.from_toml_string(text) == scenario
    path = tmp_path / "scenario.toml"
    path.write_text(text, encoding="utf-8")
    assert Scenario.from_toml(path) == scenario


def test_to_dict_is_plain_and_nested():
    d = Scenario().to_dict()
    assert d["seed"] == 1
    assert d["guest"]["ram_bytes"] == 4 * GiB
    assert type(d["guest"]["ram_bytes"]) is int
    assert type(d["network"]["bandwidth_bytes_per_s"]) is float
    assert type(d["migration"]["max_postcopy_bandwidth_bytes_per_s"]) is float
    assert Scenario.from_dict(d) == Scenario()


def test_from_toml_accepts_dotted_keys_and_units(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'seed = 3\nguest.ram_bytes = "1 GiB"\n[network]\nbandwidth_bytes_per_s = "1 Gbps"\n'
    )
    s = Scenario.from_toml(path)
    assert (s.seed, s.guest.ram_bytes, s.network.bandwidth_bytes_per_s) == (3, GiB, 1.25e8)


def test_from_toml_resolves_trace_relative_to_file(tmp_path):
    (tmp_path / "traces").mkdir()
    _write_trace(tmp_path / "traces" / "t.csv", [(0, 1), (1, 2)])
    path = tmp_path / "s.toml"
    path.write_text(
        '[workload]\npattern = "trace"\ntrace_path = "traces/t.csv"\nworking_set_bytes = "4 KiB"\n'
    )
    s = Scenario.from_toml(path)
    assert s.workload.trace_path == str(tmp_path / "traces" / "t.csv")


def test_from_toml_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ScenarioError, match=r"missing\.toml") as info:
        Scenario.from_toml(missing)
    assert info.value.key == "file"
    broken = tmp_path / "broken.toml"
    broken.write_text("[guest\nvcpus = 2\n")
    with pytest.raises(ScenarioError, match=r"broken\.toml.*line 1") as info:
        Scenario.from_toml(broken)
    assert info.value.key == "file"
    with pytest.raises(ScenarioError, match="invalid scenario TOML"):
        Scenario.from_toml_string("seed = = 1")


def test_from_toml_reports_unknown_section(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[netwrk]\nlatency_s = 0.001\n")
    with pytest.raises(ScenarioError, match=r"unknown section 'netwrk'; did you mean 'network'\?"):
        Scenario.from_toml(path)


# --------------------------------------------------------------------------- overrides & hash


def test_override_valid():
    base = Scenario()
    s = base.override({"network.bandwidth_bytes_per_s": "1 Gbit/s", "seed": 9, "guest.vcpus": 4})
    assert s.network.bandwidth_bytes_per_s == 1.25e8
    assert (s.seed, s.guest.vcpus) == (9, 4)
    assert s.network.latency_s == base.network.latency_s
    assert base == Scenario()  # the original is untouched
    assert base.override({}) == base


@pytest.mark.parametrize(
    ("mapping", "key", "match"),
    [
        ({"network.latency": 1}, "network.latency", "did you mean 'network.latency_s'"),
        ({"network.bandwidth_bytes_per_s": -1}, "network.bandwidth_bytes_per_s", "> 0"),
        ({"guest.ram_bytes": "512 MiB"}, "workload.working_set_bytes", "<= guest.ram_bytes"),
        ({"sede": 1}, "sede", "did you mean 'seed'"),
    ],
)
def test_override_invalid(mapping, key, match):
    with pytest.raises(ScenarioError, match=match) as info:
        Scenario().override(mapping)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("network.bandwidth_bytes_per_s=10Gbit/s", ("network.bandwidth_bytes_per_s", "10Gbit/s")),
        ("guest.ram_bytes=1 GiB", ("guest.ram_bytes", "1 GiB")),
        ("seed=3", ("seed", 3)),
        ("network.latency_s=1e-4", ("network.latency_s", 1e-4)),
        ("network.preempt=true", ("network.preempt", True)),
        ('workload.pattern="zipf"', ("workload.pattern", "zipf")),
        ("workload.pattern=zipf", ("workload.pattern", "zipf")),
        ("workload.trace_path=a=b.csv", ("workload.trace_path", "a=b.csv")),
        (" seed = 4 ", ("seed", 4)),
        ("workload.trace_path=", ("workload.trace_path", "")),
        ("seed=1\nx = 2", ("seed", "1\nx = 2")),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["seed", "=3", ""])
def test_parse_override_needs_key_and_equals(text):
    with pytest.raises(ScenarioError, match="KEY=VALUE"):
        parse_override(text)


def test_parse_override_feeds_override():
    pairs = dict(parse_override(t) for t in ["network.preempt=true", "guest.ram_bytes=2 GiB"])
    s = Scenario().override(pairs)
    assert s.network.preempt is True
    assert s.guest.ram_bytes == 2 * GiB


def test_hash_is_stable_and_sensitive():
    a, b = Scenario(), Scenario.from_dict({"network": {"bandwidth_bytes_per_s": "10 Gbit/s"}})
    assert a == b
    assert a.hash() == b.hash()
    assert len(a.hash()) == 16
    int(a.hash(), 16)
    assert a.override({"seed": 2}).hash() != a.hash()
    assert a.override({"network.latency_s": "101 us"}).hash() != a.hash()
    assert _custom_scenario().hash() != a.hash()


def test_hash_is_stable_across_processes():
    code = "from simpostcopy.config import Scenario; print(Scenario().hash())"
    hashes = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert hashes == {Scenario().hash()}
