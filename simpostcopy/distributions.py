"""Distributions of fault-path costs: constant, lognormal, gamma or empirical quantiles.

A scenario's ``fault_path`` stages are either plain durations (constants) or tables:

    delivery_s = { dist = "lognormal", median = "10 us", sigma = 0.5 }
    delivery_s = { dist = "gamma", mean = "10 us", cv = 0.5 }
    delivery_s = { dist = "empirical", quantiles = [2e-6, 3e-6, 9e-6] }
    delivery_s = { dist = "empirical", file = "calib.json", stage = "delivery" }

Empirical quantiles are evenly spaced in probability (first = minimum, last = maximum)
and sampled by inverse-CDF interpolation.  Samples are drawn from the scenario's own
named random streams, never from global state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from simpostcopy.units import UnitError, parse_number, parse_time

KINDS = ("constant", "lognormal", "gamma", "empirical")


@dataclass(frozen=True, slots=True)
class Dist:
    """A non-negative duration distribution (seconds)."""

    kind: str
    params: tuple[float, ...]
    source: str = ""  # where an empirical table came from (file and selection)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` independent draws (a constant draws nothing from ``rng``)."""
        if self.kind == "constant":
            return np.full(n, self.params[0])
        if self.kind == "lognormal":
            median, sigma = self.params
            return median * np.exp(sigma * rng.standard_normal(n))
        if self.kind == "gamma":
            mean, cv = self.params
            shape = 1.0 / cv**2
            return rng.gamma(shape, mean / shape, n)
        q = np.asarray(self.params)
        return np.interp(rng.random(n) * (q.size - 1), np.arange(q.size), q)

    @property
    def mean(self) -> float:
        if self.kind == "constant":
            return self.params[0]
        if self.kind == "lognormal":
            median, sigma = self.params
            return median * math.exp(sigma**2 / 2)
        if self.kind == "gamma":
            return self.params[0]
        q = np.asarray(self.params)
        return float(np.trapezoid(q, dx=1.0 / (q.size - 1))) if q.size > 1 else float(q[0])

    def scaled(self, factor: float) -> Dist:
        """The same shape with every draw ``factor`` times larger (mean and median too)."""
        if self.kind in ("lognormal", "gamma"):  # (median, sigma), (mean, cv)
            return Dist(self.kind, (self.params[0] * factor, self.params[1]), self.source)
        return Dist(self.kind, tuple(p * factor for p in self.params), self.source)

    @property
    def is_constant(self) -> bool:
        return self.kind == "constant"

    def to_value(self) -> float | dict[str, Any]:
        """Plain value that parse_dist reads back to an equal Dist (a float for a constant)."""
        if self.kind == "constant":
            return self.params[0]
        if self.kind == "lognormal":
            return {"dist": self.kind, "median": self.params[0], "sigma": self.params[1]}
        if self.kind == "gamma":
            return {"dist": self.kind, "mean": self.params[0], "cv": self.params[1]}
        out: dict[str, Any] = {"dist": self.kind, "quantiles": list(self.params)}
        if self.source:
            out["source"] = self.source
        return out

    def to_toml(self) -> str:
        """The TOML form of to_value(): a float or an inline table."""
        value = self.to_value()
        if not isinstance(value, dict):
            return repr(value)
        return "{ " + ", ".join(f"{k} = {_toml_scalar(v)}" for k, v in value.items()) + " }"


def _toml_scalar(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(repr(float(x)) for x in v) + "]"
    return repr(float(v))


def constant(value: float) -> Dist:
    return Dist("constant", (float(value),))


def empirical(quantiles: Any, source: str = "") -> Dist:
    q = np.asarray(quantiles, dtype=np.float64)
    if q.ndim != 1 or q.size < 1 or not np.isfinite(q).all():
        raise UnitError(
            f"empirical quantiles must be a non-empty list of numbers, got {quantiles!r}"
        )
    if (np.diff(q) < 0).any():
        raise UnitError("empirical quantiles must be in increasing order")
    return Dist("empirical", tuple(float(x) for x in q), source)


# Loader for {dist = "empirical", file = ...}: set by simpostcopy.calibration (avoids a cycle).
CalibrationLoader = Callable[[Mapping[str, Any]], Dist]
_calibration_loader: list[CalibrationLoader] = []


def register_calibration_loader(loader: CalibrationLoader) -> None:
    _calibration_loader[:] = [loader]


_FORMS = (
    "a duration ('10 us', 1e-05) or a table {dist = \"lognormal\", median = ..., sigma = ...},"
    ' {dist = "gamma", mean = ..., cv = ...}, {dist = "empirical", quantiles = [...]} or'
    ' {dist = "empirical", file = "calib.json", stage = "delivery"}'
)


def parse_dist(value: Any) -> Dist:
    """A Dist from a duration (constant) or a distribution table; UnitError if malformed."""
    if isinstance(value, Dist):
        return value
    if not isinstance(value, Mapping):
        try:
            return constant(parse_time(value))
        except UnitError as exc:
            raise UnitError(f"{exc}; or {_FORMS}") from None
    spec = dict(value)
    kind = spec.pop("dist", None)
    if kind not in KINDS:
        raise UnitError(f"invalid distribution {value!r}: 'dist' must be one of {KINDS}; {_FORMS}")

    def take(*names: str) -> list[Any]:
        missing = [n for n in names if n not in spec]
        extra = sorted(set(spec) - set(names))
        if missing or extra:
            raise UnitError(
                f"invalid {kind} distribution {value!r}: expected keys {', '.join(names)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(extra)}" if extra else "")
            )
        return [spec[n] for n in names]

    if kind == "constant":
        return constant(parse_time(*take("value")))
    if kind == "lognormal":
        median, sigma = take("median", "sigma")
        return _checked(Dist(kind, (parse_time(median), parse_number(sigma))), value)
    if kind == "gamma":
        mean, cv = take("mean", "cv")
        return _checked(Dist(kind, (parse_time(mean), parse_number(cv))), value)
    if "file" in spec:
        if not _calibration_loader:
            import simpostcopy.calibration  # noqa: F401  (registers the loader)
        return _calibration_loader[0](spec)
    if "source" in spec:
        quantiles, source = take("quantiles", "source")
        return empirical(quantiles, str(source))
    return empirical(*take("quantiles"))


def _checked(d: Dist, raw: Any) -> Dist:
    if not all(p > 0 for p in d.params):
        raise UnitError(f"invalid {d.kind} distribution {raw!r}: its parameters must be > 0")
    return d


class Draws:
    """Successive draws of one distribution from one random stream, fetched in blocks."""

    BLOCK = 256  # part of the stream's definition: draws never depend on the call pattern

    def __init__(self, dist: Dist, rng: np.random.Generator) -> None:
        self._dist = dist
        self._rng = rng
        self._buf: list[float] = []
        self._constant = dist.params[0] if dist.is_constant else None

    def next(self) -> float:
        if self._constant is not None:
            return self._constant
        if not self._buf:
            self._buf = self._dist.sample(self._rng, self.BLOCK)[::-1].tolist()
        return self._buf.pop()


class IndexedDraws:
    """Draw number ``i`` of one distribution from one random stream, asked in any order:
    the stream is sampled in fixed blocks, in order, as far as the largest ``i`` asked."""

    BLOCK = 4096  # part of the stream's definition, like Draws.BLOCK

    def __init__(self, dist: Dist, rng: np.random.Generator) -> None:
        self._dist = dist
        self._rng = rng
        self._values: list[float] = []
        self.constant = dist.params[0] if dist.is_constant else None
        self.mean = dist.mean

    def total(self, i: int, k: int = 1) -> float:
        """Draws ``i`` to ``i + k - 1`` added up (k of the constant)."""
        if self.constant is not None:
            return self.constant if k == 1 else self.constant * k
        while len(self._values) < i + k:
            self._values.extend(self._dist.sample(self._rng, self.BLOCK).tolist())
        return self._values[i] if k == 1 else float(sum(self._values[i : i + k]))
