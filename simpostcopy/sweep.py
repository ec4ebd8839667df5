"""Parameter sweeps: grids and random designs of scenarios x seeds, run locally or on Dask.

A sweep is a base scenario, factors (dotted setting keys with values or ranges), a design
and seeds.  ``run`` simulates every (point, seed) and returns a tidy frame with one row
per run: the factor values, the seed, every summary metric, the package version, the
scenario hash, the wall time and, for a run that failed, the error (the sweep goes on).

Results are written as they come, in parts under ``OUT.parts/`` (each part written to a
temporary file and renamed, so a part is whole or absent); rerunning the same sweep runs
only what no valid part holds.  A run is identified by its scenario's hash (the seed is
part of the scenario), so changing a factor never mixes old and new results.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import tomllib
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simpostcopy import __version__
from simpostcopy.config import (
    Scenario,
    ScenarioError,
    coerce_setting,
    setting_kind,
    setting_value,
)
from simpostcopy.distributions import Dist
from simpostcopy.engine import ENGINES, simulate
from simpostcopy.rng import stream

DESIGNS = ("grid", "random", "latin_hypercube")
NUMERIC_KINDS = ("bytes", "rate", "time", "float", "int")
KEEP = ("faults",)
# Environment of local Dask workers (see _dask); give remote workers the same.
DASK_WORKER_MALLOC = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(1 << 25),
}


class SweepError(ScenarioError):
    """An invalid sweep definition (``key`` names the offending entry)."""


@dataclass(frozen=True)
class Range:
    """A numeric factor's range for random and Latin-hypercube designs."""

    low: float
    high: float
    scale: str = "linear"  # or "log"
    integer: bool = False


@dataclass(frozen=True)
class Point:
    """One scenario of the design (before seeds)."""

    index: int
    values: dict[str, Any]  # factor key -> canonical value
    scenario: Scenario


@dataclass(frozen=True)
class Run:
    """One (point, seed): what a worker simulates."""

    point: int
    seed: int
    values: dict[str, Any]
    scenario: Scenario
    engine: str
    keep_dir: str | None

    @cached_property
    def key(self) -> str:
        """The run's identity: its scenario's hash (computed once)."""
        return self.scenario.hash()


@dataclass(frozen=True)
class Sweep:
    """A sweep definition; ``Sweep.from_toml(path)`` or built directly."""

    base: Scenario = field(default_factory=Scenario)
    factors: dict[str, Sequence[Any] | Range] = field(default_factory=dict)
    design: str = "grid"
    points: int = 0  # random / latin_hypercube
    seeds: tuple[int, ...] = (1,)
    design_seed: int = 0  # draws of random / latin_hypercube designs
    engine: str = "fast"

    def __post_init__(self) -> None:
        fail = _fail
        if self.design not in DESIGNS:
            fail("sweep.design", self.design, f"must be one of {', '.join(map(repr, DESIGNS))}")
        if self.engine not in ENGINES:
            fail("sweep.engine", self.engine, f"must be one of {', '.join(map(repr, ENGINES))}")
        if self.design != "grid" and not (isinstance(self.points, int) and self.points >= 1):
            fail("sweep.points", self.points, f"a {self.design} design needs points >= 1")
        if not self.seeds:
            fail("sweep.seeds", list(self.seeds), "give at least one seed (a list or a count)")
        if len(set(self.seeds)) != len(self.seeds):
            fail("sweep.seeds", list(self.seeds), "seeds must be distinct")
        if not self.factors and self.design != "grid":
            fail("factors", {}, f"a {self.design} design needs at least one factor")
        for key, spec in self.factors.items():
            where = f"factors.{key}"
            if key == "seed":
                fail(where, spec, "the seed is not a factor: use sweep.seeds")
            try:
                kind = setting_kind(key)
            except ScenarioError as exc:
                raise SweepError(f"factors: {exc}", key=where, value=key) from None
            if isinstance(spec, Range):
                if self.design == "grid":
                    fail(where, spec, "a grid needs a list of values, not a range")
                if kind not in NUMERIC_KINDS:
                    fail(where, spec, f"a range needs a numeric setting; {key} is {kind}")
                if not (math.isfinite(spec.low) and math.isfinite(spec.high)):
                    fail(where, spec, "range bounds must be finite")
                if spec.low > spec.high:
                    fail(where, spec, f"min {spec.low!r} is above max {spec.high!r}")
                if spec.scale not in ("linear", "log"):
                    fail(where, spec.scale, "scale must be 'linear' or 'log'")
                if spec.scale == "log" and spec.low <= 0:
                    fail(where, spec, "a log range needs min > 0")
            elif isinstance(spec, Sequence) and not isinstance(spec, str):
                if len(spec) == 0:
                    fail(where, list(spec), "empty: give at least one value")
            else:
                fail(where, spec, "expected a list of values or a range {min, max}")

    # -- definition ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Path | None = None) -> Sweep:
        """From the TOML tables: ``[sweep]``, ``[base]`` (or ``base = "file"``), ``[factors]``."""
        unknown = set(data) - {"sweep", "base", "factors"}
        if unknown:
            key = sorted(unknown)[0]
            _fail(key, data[key], "unknown table: a sweep file has [sweep], [base], [factors]")
        meta = dict(data.get("sweep", {}))
        allowed = {"design", "points", "seeds", "design_seed", "engine", "base"}
        for key in meta:
            if key not in allowed:
                _fail(f"sweep.{key}", meta[key], f"unknown key; use {', '.join(sorted(allowed))}")
        base_spec = data.get("base", meta.pop("base", {}))
        if isinstance(base_spec, str):
            path = Path(base_spec)
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            base = Scenario.from_toml(path)
        elif isinstance(base_spec, Mapping):
            base = Scenario.from_dict(base_spec)
        else:
            _fail("base", base_spec, "a table of settings or a scenario file name")
        seeds = meta.get("seeds", [base.seed])
        if isinstance(seeds, bool) or not isinstance(seeds, int | list):
            _fail("sweep.seeds", seeds, "a list of integers or a count")
        if isinstance(seeds, int):
            if seeds < 1:
                _fail("sweep.seeds", seeds, "a count must be >= 1")
            seeds = list(range(base.seed, base.seed + seeds))
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            _fail("sweep.seeds", seeds, "seeds must be integers >= 0")
        factors: dict[str, Sequence[Any] | Range] = {}
        for key, spec in _flat_factors(data.get("factors", {})).items():
            factors[key] = _range(key, spec) if isinstance(spec, Mapping) else spec
        return cls(
            base=base,
            factors=factors,
            design=meta.get("design", "grid"),
            points=meta.get("points", 0),
            seeds=tuple(seeds),
            design_seed=meta.get("design_seed", 0),
            engine=meta.get("engine", "fast"),
        )

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> Sweep:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SweepError(f"cannot read sweep file '{path}': {exc}", key="file") from None
        return cls.from_dict(data, base_dir=path.parent)

    # -- expansion -------------------------------------------------------------------------
    def expand(self) -> list[Point]:
        """Every point of the design, validated (a bad value fails here, before any run)."""
        keys = list(self.factors)
        if self.design == "grid":
            combos = list(itertools.product(*(self.factors[k] for k in keys)))
        else:
            combos = self._sample(keys)
        points = []
        for i, combo in enumerate(combos):
            raw = dict(zip(keys, combo, strict=True))
            try:
                scenario = self.base.override(raw)
            except ScenarioError as exc:
                raise SweepError(f"point {i} {raw}: {exc}", key=exc.key, value=exc.value) from None
            values = {k: _plain(setting_value(scenario, k)) for k in keys}
            points.append(Point(i, values, scenario))
        # One type per column: a distribution factor that is not constant everywhere is
        # text everywhere.
        for k in keys:
            if any(isinstance(p.values[k], str) for p in points) and setting_kind(k) == "dist":
                for p in points:
                    p.values[k] = (
                        json.dumps(p.values[k]) if isinstance(p.values[k], float) else p.values[k]
                    )
        return points

    def _sample(self, keys: list[str]) -> list[tuple[Any, ...]]:
        rng = stream(self.design_seed, f"sweep.{self.design}")
        n = self.points
        columns = []
        for key in keys:
            spec = self.factors[key]
            if self.design == "random":
                u = rng.random(n)
            else:  # Latin hypercube: one draw in each of n equal strata, strata shuffled
                u = (rng.permutation(n) + rng.random(n)) / n
            if isinstance(spec, Range):
                if spec.scale == "log":
                    v = np.exp(np.log(spec.low) + u * (np.log(spec.high) - np.log(spec.low)))
                else:
                    v = spec.low + u * (spec.high - spec.low)
                column = [round(float(x)) if spec.integer else float(x) for x in v]
            else:
                values = list(spec)
                column = [values[min(int(x * len(values)), len(values) - 1)] for x in u]
            columns.append(column)
        return list(zip(*columns, strict=True))

    def runs(self, keep_dir: str | None = None) -> list[Run]:
        return [
            Run(p.index, seed, p.values, p.scenario.override({"seed": seed}), self.engine, keep_dir)
            for p in self.expand()
            for seed in self.seeds
        ]


def _plain(value: Any) -> Any:
    """A factor value a table column can hold: a distribution as its number (a constant)
    or its JSON text."""
    if isinstance(value, Dist):
        plain = value.to_value()
        return plain if isinstance(plain, float) else json.dumps(plain, sort_keys=True)
    return value


def _fail(key: str, value: Any, problem: str) -> None:
    raise SweepError(f"{key}: invalid value {value!r}: {problem}", key=key, value=value)


def _flat_factors(table: Any) -> dict[str, Any]:
    """Factor keys, dotted, from ``"a.b" = [...]`` or nested ``[factors.a] b = [...]``."""
    if not isinstance(table, Mapping):
        _fail("factors", table, "a table of dotted keys")
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping) and not ({"min", "max"} & set(value)):
            for sub, v in _flat_factors(value).items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def _range(key: str, spec: Mapping[str, Any]) -> Range:
    where = f"factors.{key}"
    extra = set(spec) - {"min", "max", "scale", "integer"}
    if extra or not {"min", "max"} <= set(spec):
        _fail(where, dict(spec), "a range is {min = ..., max = ..., scale = 'linear'|'log'}")
    try:
        low = float(coerce_setting(key, spec["min"]))
        high = float(coerce_setting(key, spec["max"]))
    except ScenarioError as exc:
        raise SweepError(f"{where}: {exc}", key=where, value=dict(spec)) from None
    integer = spec.get("integer", setting_kind(key) in ("int", "bytes"))
    return Range(low, high, spec.get("scale", "linear"), bool(integer))


# -- running ---------------------------------------------------------------------------------
def simulate_run(run: Run) -> dict[str, Any]:
    """Simulate one run; its row (a failure is a row with ``error`` set, never raised)."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {"point": run.point, "seed": run.seed, **run.values}
    try:
        result = simulate(run.scenario, engine=run.engine)
        summary = dict(result.summary)
        summary.pop("seed", None)
        row.update(summary)
        if run.keep_dir:
            part = Path(run.keep_dir) / f"point={run.point}" / f"seed={run.seed}"
            _atomic_parquet(result.faults, part / "faults.parquet")
        row["error"] = None
    except Exception as exc:  # a failed point is recorded, the sweep goes on
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=8)
    row["scenario_hash"] = run.key
    row["version"] = __version__
    row["engine"] = run.engine
    row["wall_time_s"] = time.perf_counter() - t0
    return row


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


class Store:
    """Completed rows as parquet parts under ``OUT.parts/``; a part is whole or absent."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.parts = out.with_name(out.name + ".parts")
        self.parts.mkdir(parents=True, exist_ok=True)

    def load(self) -> pd.DataFrame:
        """Every row of every valid part; unreadable parts (and stray temp files) are removed
        so that their runs are redone."""
        frames = []
        for path in sorted(self.parts.iterdir()):
            if path.name.startswith("."):
                path.unlink()  # a write interrupted before its rename
                continue
            try:
                frames.append(pd.read_parquet(path))
            except Exception:
                path.unlink()  # truncated or corrupt: redo its runs
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            _atomic_parquet(_frame(rows), self.parts / name)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if "error" in frame:
        frame["error"] = frame["error"].astype(object)
    return frame


def _local(runs: list[Run], jobs: int) -> Iterator[dict[str, Any]]:
    if jobs <= 1:
        for run in runs:
            yield simulate_run(run)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: set[Future[dict[str, Any]]] = set()
        queue = iter(runs)
        try:
            # Keep a bounded number in flight: an interrupt leaves little half-done.
            for run in itertools.islice(queue, 2 * jobs):
                pending.add(pool.submit(simulate_run, run))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(simulate_run, nxt))
        finally:
            for future in pending:
                future.cancel()


def _dask(runs: list[Run], scheduler: str | None, workers: int | None) -> Iterator[dict[str, Any]]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SweepError(
            "Dask is not installed: pip install 'simpostcopy[dask]' (the dask extra)",
            key="scheduler",
            value=scheduler,
        ) from None
    import dask

    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
    else:
        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's
        # mmap threshold: every large numpy array is then mmap'ed and faulted in afresh,
        # 4x slower here.  Keep freed memory for reuse instead.
        with dask.config.set(DASK_WORKER_MALLOC):
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
        client = Client(cluster)
    try:
        futures = client.map(simulate_run, runs, pure=False)
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run(
    sweep: Sweep,
    out: str | os.PathLike[str] | None = None,
    *,
    jobs: int | None = None,
    keep: Iterable[str] = (),
    scheduler: str | None = None,
    dask_local: int | None = None,
    progress: bool = False,
    flush_every: int = 16,
    flush_s: float = 10.0,
) -> pd.DataFrame:
    """Run every (point, seed) of ``sweep``; one row per run, sorted by point and seed.

    With ``out`` (a ``.parquet`` path) rows are saved as they come and the whole frame
    is written there at the end; runs already saved are not run again.  ``jobs`` local
    processes (default: every core; 1 = in this process), or Dask: ``scheduler`` (an
    existing cluster's address) or ``dask_local`` (a LocalCluster of that many workers).
    ``keep=("faults",)`` saves each run's fault table under ``OUT.faults/point=P/seed=S/``.
    """
    keep = tuple(keep)
    for item in keep:
        if item not in KEEP:
            raise SweepError(f"keep: invalid value {item!r}: use {', '.join(KEEP)}", key="keep")
    if keep and out is None:
        raise SweepError("keep: saving per-run tables needs an output path", key="keep")
    if scheduler and dask_local:
        raise SweepError("use either scheduler or dask_local, not both", key="scheduler")
    out_path = Path(out) if out is not None else None
    keep_dir = str(out_path.with_name(out_path.name + ".faults")) if keep else None
    runs = sweep.runs(keep_dir)  # validates every point before anything runs
    store = Store(out_path) if out_path is not None else None
    wanted = {r.key for r in runs}
    saved = store.load() if store else pd.DataFrame()
    if len(saved):
        saved = saved[saved["scenario_hash"].isin(wanted)].drop_duplicates("scenario_hash")
        # A saved run may come from an earlier version of the sweep (same scenario, other
        # factors or numbering): take its point, seed and factor values from this one.
        design = pd.DataFrame(
            [{"scenario_hash": r.key, "point": r.point, "seed": r.seed, **r.values} for r in runs]
        )
        stale = [c for c in design.columns if c != "scenario_hash" and c in saved.columns]
        saved = saved.drop(columns=stale).merge(design, on="scenario_hash", how="left")
    done = set(saved["scenario_hash"]) if len(saved) else set()
    todo = [r for r in runs if r.key not in done]

    results: Iterator[dict[str, Any]]
    if not todo:
        results = iter(())
    elif scheduler or dask_local:
        results = _dask(todo, scheduler, dask_local)
    else:
        results = _local(todo, jobs if jobs is not None else (os.cpu_count() or 1))
    bar = _progress(len(runs), len(runs) - len(todo), progress)
    rows: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    failures, last_flush = 0, time.monotonic()
    try:
        for row in results:
            rows.append(row)
            pending.append(row)
            failures += row["error"] is not None
            bar(failures)
            if store and (len(pending) >= flush_every or time.monotonic() - last_flush > flush_s):
                store.write(pending)
                pending, last_flush = [], time.monotonic()
    finally:
        if store:
            store.write(pending)  # on an interrupt too: nothing finished is lost
        bar(None)
    frame = pd.concat([saved, _frame(rows)], ignore_index=True) if len(saved) else _frame(rows)
    frame = frame.sort_values(["point", "seed"], kind="stable", ignore_index=True)
    lead = ["point", "seed", *sweep.factors]
    frame = frame[lead + [c for c in frame.columns if c not in lead]]
    if out_path is not None:
        _atomic_parquet(frame, out_path)
    return frame


def _progress(total: int, initial: int, enabled: bool) -> Callable[[int | None], None]:
    """A progress callback: runs done, failures, ETA (tqdm on stderr); ``None`` closes it."""
    if not enabled:
        return lambda _failures: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, unit="run", desc="sweep", dynamic_ncols=True)

    def update(failures: int | None) -> None:
        if failures is None:
            bar.close()
            return
        bar.set_postfix(failed=failures, refresh=False)
        bar.update(1)

    return update


# -- analysis --------------------------------------------------------------------------------
def _t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution (bisection on its CDF)."""
    if df <= 0:
        return math.nan

    def cdf(t: float) -> float:
        x = df / (df + t * t)
        tail = 0.5 * _betainc(df / 2, 0.5, x)
        return 1 - tail if t > 0 else tail

    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = (
        math.exp(
            math.lgamma(a + b)
            - math.lgamma(a)
            - math.lgamma(b)
            + a * math.log(x)
            + b * math.log1p(-x)
        )
        / a
    )
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0)


def summarize(
    frame: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    by: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Across seeds: per group (default: every factor column, i.e. every dotted-key
    column), the number of successful runs and each metric's mean, standard deviation
    and Student-t confidence interval."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: invalid value {confidence!r}: must be in (0, 1)")
    ok = frame[frame["error"].isna()] if "error" in frame else frame
    by = list(by) if by is not None else [c for c in frame.columns if "." in c]
    if metrics is None:
        skip = {"point", "seed", "wall_time_s", "setup_time_s", *by}
        metrics = [
            c
            for c in ok.columns
            if c not in skip and pd.api.types.is_numeric_dtype(ok[c]) and ok[c].dtype != bool
        ]
    grouped = ok.groupby(by, sort=True, dropna=False) if by else [((), ok)]
    rows = []
    for keys, part in grouped:
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys, strict=True))
        n = len(part)
        row["runs"] = n
        t = _t_quantile(0.5 + confidence / 2, n - 1)
        for m in metrics:
            values = part[m].to_numpy(dtype=float)
            mean = float(values.mean()) if n else math.nan
            sd = float(values.std(ddof=1)) if n > 1 else math.nan
            half = t * sd / math.sqrt(n) if n > 1 else math.nan
            row |= {
                f"{m}_mean": mean,
                f"{m}_sd": sd,
                f"{m}_ci_low": mean - half,
                f"{m}_ci_high": mean + half,
            }
        rows.append(row)
    return pd.DataFrame(rows)
