"""Parse and format quantities (sizes, rates, durations) given as plain numbers or unit strings.

Plain numbers are taken in base units (bytes, bytes/s, seconds). Strings are converted exactly
(via fractions) so that a value written by the ``format_*`` helpers parses back to the same number.
"""

import math
import numbers
import operator
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any


class UnitError(ValueError):
    """A quantity could not be parsed; the message names the value and the accepted forms."""


_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_QUANTITY = re.compile(rf"\s*({_NUMBER})\s*(.*?)\s*")
# A size unit: optional SI (k, M, G, T) or binary (Ki, Mi, Gi, Ti) prefix, then byte or bit.
# The prefix is case-insensitive; "B" (byte) versus "b"/"bit" (bit) is not.
_SIZE_UNIT = re.compile(r"(?:([kKmMgGtT])([iI])?)?(B|bits?|b)")
_RATE_UNIT = re.compile(rf"({_SIZE_UNIT.pattern})(?:/s|ps)")
_PREFIX_POWER = {"k": 1, "m": 2, "g": 3, "t": 4}
_SECONDS = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),  # U+00B5 micro sign
    "μs": Fraction(1, 10**6),  # U+03BC Greek mu
    "ms": Fraction(1, 10**3),
    "s": Fraction(1),
    "min": Fraction(60),
}
_BINARY_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))

_BYTES_FORMS = (
    "a whole number of bytes, as a number or a string such as '4 KiB', '16 GiB', '4 kB', '512 B'"
    " (units B; kB/KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024;"
    " a lowercase b means bits, which are not a size)"
)
_RATE_FORMS = (
    "bytes per second, as a number or a string such as '10 Gbit/s', '10 Gbps', '1.25 GB/s',"
    " '100 MiB/s' (B = byte, b/bit = bit; k, M, G, T = powers of 1000; Ki, Mi, Gi, Ti ="
    " powers of 1024; per second written '/s' or 'ps')"
)
_TIME_FORMS = (
    "seconds, as a number or a string such as '100 ns', '250 us', '250 µs', '1.5 ms', '2 s',"
    " '1 min'"
)
_NUMBER_FORMS = "a plain number such as 0.5, 1000000 or '1e6' (no unit)"


def _size_factor(unit: str, *, bits_allowed: bool) -> Fraction | None:
    """Bytes per ``unit`` (a size unit such as 'GiB' or 'Gbit'), or None if it is not one."""
    match = _SIZE_UNIT.fullmatch(unit)
    if match is None:
        return None
    prefix, binary, base = match.groups()
    is_bits = base != "B"
    if is_bits and not bits_allowed:
        return None
    power = _PREFIX_POWER[prefix.lower()] if prefix else 0
    factor = Fraction((1024 if binary else 1000) ** power)
    return factor / 8 if is_bits else factor


def _byte_unit(unit: str) -> Fraction | None:
    """Bytes per size unit; bit units are refused because sizes are whole bytes."""
    return _size_factor(unit, bits_allowed=False)


def _rate_unit(unit: str) -> Fraction | None:
    """Bytes per second per rate unit such as 'Gbit/s', 'Gbps' or 'MiB/s'."""
    match = _RATE_UNIT.fullmatch(unit)
    return _size_factor(match.group(1), bits_allowed=True) if match else None


def _time_unit(unit: str) -> Fraction | None:
    """Seconds per time unit (case-insensitive: 'ns', 'us'/'µs'/'μs', 'ms', 's', 'min')."""
    return _SECONDS.get(unit.lower())


def _parse(
    value: Any, what: str, forms: str, unit_factor: Callable[[str], Fraction | None] | None
) -> Fraction:
    """Exact value of ``value`` in base units; ``unit_factor`` maps a unit suffix to its factor."""
    error = UnitError(f"invalid {what} {value!r}: expected {forms}")
    if isinstance(value, bool):
        raise error
    if isinstance(value, numbers.Integral):
        return Fraction(int(value))
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise error
        return Fraction(float(value))
    if not isinstance(value, str) or (match := _QUANTITY.fullmatch(value)) is None:
        raise error
    number, unit = match.groups()
    factor = Fraction(1) if not unit else unit_factor(unit) if unit_factor else None
    if factor is None:
        raise error
    return Fraction(number) * factor


def parse_bytes(value: Any) -> int:
    """Size in bytes from a number or a string such as '16 GiB', '4 kB' or '1e9'."""
    result = _parse(value, "size", _BYTES_FORMS, _byte_unit)
    if result.denominator != 1:
        raise UnitError(
            f"invalid size {value!r}: not a whole number of bytes; expected {_BYTES_FORMS}"
        )
    return int(result)


def _parse_float(
    value: Any, what: str, forms: str, unit_factor: Callable[[str], Fraction | None] | None
) -> float:
    """``_parse`` rounded to the nearest float; values beyond float range are errors."""
    try:
        return float(_parse(value, what, forms, unit_factor))
    except OverflowError:
        raise UnitError(f"invalid {what} {value!r}: too large; expected {forms}") from None


def parse_rate(value: Any) -> float:
    """Rate in bytes per second from a number or a string such as '10 Gbit/s' or '100 MiB/s'."""
    return _parse_float(value, "rate", _RATE_FORMS, _rate_unit)


def parse_time(value: Any) -> float:
    """Duration in seconds from a number or a string such as '250 us', '1.5 ms' or '1 min'."""
    return _parse_float(value, "time", _TIME_FORMS, _time_unit)


def parse_number(value: Any) -> float:
    """A unitless number given as int, float or numeric string such as '1e6'."""
    return _parse_float(value, "number", _NUMBER_FORMS, None)


def format_bytes(n: int) -> str:
    """Shortest exact binary spelling of ``n`` bytes ('4 GiB', '12345 B'); round-trips."""
    n = operator.index(n)
    for unit, size in _BINARY_UNITS:
        if n and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def format_rate(x: float) -> str:
    """Bytes per second as an exact float literal (parse_rate inverts it)."""
    return repr(float(x))


def format_time(x: float) -> str:
    """Seconds as an exact float literal (parse_time inverts it)."""
    return repr(float(x))
