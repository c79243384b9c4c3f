"""The string forms users write: sizes, durations, watch times, max-in-flight."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.api.quantities import (
    QUANTITY_PATTERN,
    format_quantity,
    parse_duration,
    parse_quantity,
    parse_watch_time,
    resolve_max_in_flight,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1Gi", 1024**3),
        ("512Mi", 512 * 1024**2),
        ("100Ki", 102400),
        ("2Ti", 2 * 1024**4),
        ("1k", 1000),
        ("10M", 10_000_000),
        ("1G", 10**9),
        ("1048576", 1048576),
        (4096, 4096),
        ("1.5Gi", 1536 * 1024**2),
        ("0.5Ki", 512),
        (".5M", 500_000),
        ("1e9", 10**9),
        ("1E3", 1000),
        ("1.5", 2),  # a fraction of a byte rounds up, as Kubernetes' Value() does
        ("0", 0),
        ("0e99999999", 0),
    ],
)
def test_parse_quantity(text: str | int, size: int) -> None:
    assert parse_quantity(text) == size


@pytest.mark.parametrize("text", ["", "1GB", "1gi", "-1Gi", "1 Gi", "Gi", "1m", "1..5", "1Gi "])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity(text)


@pytest.mark.parametrize("text", ["1e99999999", "8Ei", "10000000000000000000", "1e19"])
def test_parse_quantity_refuses_more_than_int64(text: str) -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_quantity(text)
    assert parse_quantity("7Ei") == 7 * 2**60


@given(st.integers(min_value=0, max_value=2**62))
def test_format_quantity_round_trips(size: int) -> None:
    text = format_quantity(size)
    assert re.fullmatch(QUANTITY_PATTERN, text)
    assert parse_quantity(text) == size


def test_format_quantity_picks_largest_exact_unit() -> None:
    assert format_quantity(1024**3) == "1Gi"
    assert format_quantity(1536 * 1024**2) == "1536Mi"
    assert format_quantity(1000) == "1000"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("2h45m", 9900.0),
        ("10us", 1e-5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_refuses_more_than_go_holds() -> None:
    assert parse_duration("2562047h") == 2562047 * 3600
    with pytest.raises(ValueError, match="too long"):
        parse_duration("2562048h")
    with pytest.raises(ValueError, match="too long"):
        parse_watch_time("1s-99999999999h")


@pytest.mark.parametrize("text", ["", "5", "s", "5 s", "-5s", "1d", "5S", "1s-2s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_parse_watch_time() -> None:
    assert parse_watch_time("1s-30s") == (1.0, 30.0)
    assert parse_watch_time("5s") == (5.0, 5.0)
    assert parse_watch_time("500ms-1m") == (0.5, 60.0)
    with pytest.raises(ValueError, match="low end"):
        parse_watch_time("30s-1s")
    with pytest.raises(ValueError, match="not a watch time"):
        parse_watch_time("1s-")


@pytest.mark.parametrize(
    ("value", "instances", "expected"),
    [
        (1, 10, 1),
        (3, 10, 3),
        ("25%", 10, 2),  # rounded down
        ("50%", 4, 2),
        ("100%", 7, 7),
        ("10%", 3, 1),  # never below 1
        ("1%", 0, 1),
    ],
)
def test_resolve_max_in_flight(value: int | str, instances: int, expected: int) -> None:
    assert resolve_max_in_flight(value, instances) == expected


@pytest.mark.parametrize("value", [0, -1, "0%", "101%", "25", "abc", "25 %"])
def test_resolve_max_in_flight_rejects(value: int | str) -> None:
    with pytest.raises(ValueError, match="maxInFlight"):
        resolve_max_in_flight(value, 10)
