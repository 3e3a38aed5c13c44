"""pipeline/config/units.py: durations and sizes as operators write them."""

from __future__ import annotations

import re

import pytest

from pipeline.config.units import DURATION_PATTERN, SIZE_PATTERN, parse_duration, parse_size


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1.5m", 90.0),
        ("45", 45.0),
        (" 10 s ", 10.0),
        ("0s", 0.0),
        (12, 12.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts_each_unit(text: str | int | float, seconds: float) -> None:
    """Every unit, a bare number, a fraction and surrounding spaces convert to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "", "30S", "5 minutes", "-1s", "1w", "s", "1.s", "30s30s"])
def test_parse_duration_refuses_text_without_a_known_unit(value: str) -> None:
    """Words, unknown or upper-case units and negative text raise ValueError naming the value."""
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        parse_duration(value)


def test_parse_duration_refuses_negative_numbers() -> None:
    """A negative bare number of seconds is refused as negative."""
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-1)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_refuses_booleans(value: bool) -> None:
    """YAML's `yes`/`true` is not taken as 1 or 0 seconds."""
    with pytest.raises(ValueError, match="not a number"):
        parse_duration(value)


@pytest.mark.parametrize(
    "text, size",
    [
        ("256m", 256 * 1024**2),
        ("1g", 1024**3),
        ("512MiB", 512 * 1024**2),
        ("1024k", 1024 * 1024),
        ("2GB", 2 * 1024**3),
        ("1kib", 1024),
        ("100", 100),
        ("100b", 100),
        ("1.5g", int(1.5 * 1024**3)),
        (" 64M ", 64 * 1024**2),
        (4096, 4096),
    ],
)
def test_parse_size_accepts_docker_style_units(text: str | int, size: int) -> None:
    """Units b/k/m/g in either case, with optional i/b suffix, or bare bytes convert to bytes."""
    assert parse_size(text) == size


def test_parse_size_accepts_512mi_as_its_docstring_promises() -> None:
    """`512Mi` (the Kubernetes spelling named in parse_size's docstring) is 512 MiB."""
    assert parse_size("512Mi") == 512 * 1024**2


@pytest.mark.parametrize("value", ["lots", "", "1t", "-1m", "m", "1 gigabyte", "12mbps"])
def test_parse_size_refuses_text_without_a_known_unit(value: str) -> None:
    """Words, terabytes, negatives and stray suffixes raise ValueError naming the value."""
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_refuses_booleans(value: bool) -> None:
    """A boolean is not taken as 1 or 0 bytes."""
    with pytest.raises(ValueError, match="not a number"):
        parse_size(value)


@pytest.mark.parametrize("text", ["30s", "500ms", "1.5m", " 7d ", "45"])
def test_duration_pattern_agrees_with_the_parser(text: str) -> None:
    """The schema's duration pattern accepts what parse_duration accepts."""
    assert re.match(DURATION_PATTERN, text)
    parse_duration(text)


@pytest.mark.parametrize("text", ["256m", "512MiB", "2GB", "100"])
def test_size_pattern_agrees_with_the_parser(text: str) -> None:
    """The schema's size pattern accepts what parse_size accepts."""
    assert re.match(SIZE_PATTERN, text)
    parse_size(text)
