"""supervisor.shared.durations: durations as operators write them, and as tables show them."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.shared.durations import format_duration, parse_duration

SHAPE_ERROR = "expected a duration such as 500ms, 30s, 5m, 1h or 1h30m, got "


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("500ms", 0.5),
        ("15s", 15.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172_800.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("2h45m30s500ms", 9930.5),
        ("1.5s", 1.5),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("0", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        (" 15s ", 15.0),
        ("\t5m\n", 300.0),
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_valid_durations(text: str | int | float, seconds: float) -> None:
    result = parse_duration(text)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "text",
    ["5x", "", "   ", "1h 30m", "5S", "5sec", "s", "h1", "1.s", ".5s", "5 s", "1,5s", "five seconds", "30s!"],
)
def test_malformed_durations_are_rejected_naming_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(SHAPE_ERROR + repr(text)) + "$"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["-5", "-0.5", -1, -0.001, "-5s", "-1h30m"])
def test_negative_durations_are_rejected(value: str | float) -> None:
    with pytest.raises(ValueError, match=r"^a duration must be zero or positive, got "):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_durations(value: bool) -> None:
    # bool is an int in Python; `enabled: true` in a config must not become 1 second.
    with pytest.raises(ValueError, match=rf"^expected a duration such as 30s, 5m or 1h, got {value}$"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e999", float("inf"), float("nan"), "nan"])
def test_infinite_and_nan_durations_are_rejected(value: str | float) -> None:
    with pytest.raises(ValueError, match=r"^a duration must be finite, got "):
        parse_duration(value)


@settings(max_examples=200)
@given(
    h=st.integers(0, 1000),
    m=st.integers(0, 59),
    s=st.integers(0, 59),
    ms=st.integers(0, 999),
)
def test_combined_units_add_up(h: int, m: int, s: int, ms: int) -> None:
    assert parse_duration(f"{h}h{m}m{s}s{ms}ms") == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0.0s"),
        (0.44, "0.4s"),
        (9.94, "9.9s"),
        (10, "10s"),
        (12.4, "12s"),
        (59.4, "59s"),
        (60, "1m00s"),
        (185, "3m05s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (7800, "2h10m"),
        (90_061, "25h01m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=200)
@given(st.floats(min_value=0, max_value=10_000_000, allow_nan=False))
def test_a_formatted_duration_parses_back_to_within_its_precision(seconds: float) -> None:
    text = format_duration(seconds)
    back = parse_duration(text)
    if seconds < 10:
        assert math.isclose(back, seconds, abs_tol=0.05 + 1e-9)  # rounded to a tenth
    elif seconds < 60:
        assert math.isclose(back, seconds, abs_tol=0.5 + 1e-9)  # rounded to a second
    elif seconds < 3600:
        assert 0 <= seconds - back < 1  # seconds truncated
    else:
        assert 0 <= seconds - back < 60  # minutes truncated
