"""The README documents every scenario key and every summary metric."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny

from simpostcopy.config import Scenario
from simpostcopy.engine import simulate

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


def test_every_scenario_key_is_documented():
    missing = [k for k in _keys(Scenario().to_dict()) if f"`{k}`" not in README]
    assert not missing, f"README lacks scenario keys: {missing}"


def test_every_summary_metric_is_documented():
    missing = [k for k in simulate(tiny()).summary if f"`{k}`" not in README]
    assert not missing, f"README lacks summary metrics: {missing}"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = README.split("```python\n")[1:]
    assert blocks
    for block in blocks:
        exec(compile(block.split("```")[0], "README.md", "exec"), {})
    assert (tmp_path / "out" / "faults.parquet").exists()
