"""Durations (`30s`, `500ms`, `5m`, `2h`, `7d`) and sizes (`256m`, `1g`) as operators write them."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmg])?(?:ib|i|b)?\s*$", re.IGNORECASE)
_SIZE_BYTES = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, None: 1}

DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([bkmgBKMG])?([iI][bB]|[iI]|[bB])?\s*$"


def parse_duration(value: str | int | float) -> float:
    """Return seconds for `30s`, `500ms`, `5m`, `2h`, `7d` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"duration {value!r} is not a number with a unit like 30s")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration {value!r} is negative")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"duration {value!r} is not a number with a unit (ms, s, m, h, d)")
    return float(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def parse_size(value: str | int) -> int:
    """Return bytes for `256m`, `1g`, `512Mi`, `1024k` or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"size {value!r} is not a number with a unit like 256m")
    if isinstance(value, int):
        return value
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"size {value!r} is not a number with a unit (b, k, m, g)")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _SIZE_BYTES[unit])


def format_size(size: int) -> str:
    """`size` bytes as an operator writes it: 2g, 512m, 64k, or a bare number."""
    for unit, factor in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
