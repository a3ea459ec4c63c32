"""Times since programming: the one parser and the one formatter of the package.

The chip is read at a time after programming (``t_inference``, seconds).
Tables, plot legends and the command line all show and accept such times in
the same units: ``s``, ``min``, ``h``, ``d`` and ``y`` (a year is 3.15e7 s,
aihwkit's convention).
"""

from __future__ import annotations

import math
import re

__all__ = ["TIME_UNITS", "format_time", "parse_time"]

#: Time units (seconds per unit), as :func:`parse_time` accepts and :func:`format_time` writes.
TIME_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "y": 3.15e7}

_TIME_RE = re.compile(
    r"\s*(?P<value>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[a-z]*)\s*"
)


def parse_time(text: str) -> float:
    """Parse a time since programming: a number with an optional unit.

    Args:
        text: For example ``"1s"``, ``"30min"``, ``"1 h"``, ``"2.5y"`` or
            ``"3600"`` (seconds when no unit is given).

    Returns:
        The time in seconds.

    Raises:
        ValueError: for text that is not a finite, non-negative number with
            a known unit.

    Example:
        >>> from fusion_jax.units import parse_time
        >>> parse_time("1h"), parse_time("1 y"), parse_time("90")
        (3600.0, 31500000.0, 90.0)
    """
    match = _TIME_RE.fullmatch(text)
    if match is None or match["unit"] not in ("", *TIME_UNITS):
        raise ValueError(
            f"invalid time {text!r}: use a number of seconds with an optional unit "
            f"({', '.join(TIME_UNITS)}), e.g. 1s, 30min, 1h, 1d, 1y."
        )
    seconds = float(match["value"]) * TIME_UNITS[match["unit"] or "s"]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid time {text!r}: it must be a finite, non-negative time.")
    return seconds


def format_time(seconds: float) -> str:
    """A time in seconds in the largest unit it reaches, as :func:`parse_time` reads it.

    Args:
        seconds: A non-negative time.

    Returns:
        For example ``"1 s"``, ``"1.5 min"``, ``"1 d"`` or ``"1 y"``.

    Example:
        >>> from fusion_jax.units import format_time, parse_time
        >>> [format_time(t) for t in (0.5, 90.0, 3600.0, 86400.0, 3.15e7)]
        ['0.5 s', '1.5 min', '1 h', '1 d', '1 y']
        >>> parse_time(format_time(5400.0))
        5400.0
    """
    for unit in ("y", "d", "h", "min"):
        if seconds >= TIME_UNITS[unit]:
            return f"{seconds / TIME_UNITS[unit]:g} {unit}"
    return f"{seconds:g} s"
