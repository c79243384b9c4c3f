"""Parsing of the string forms users write: quantities ("1Gi"), durations ("5s"), watch times
("1s-30s") and max-in-flight values (2 or "25%").

The regular expressions here are also what the CRDs use as ``pattern``, so the apiserver and the
operator accept exactly the same strings.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

# Kubernetes quantity syntax without a sign or sub-unit suffixes (a byte count is never negative
# and never a milli-byte): binary (Ki..Ei), decimal (k..E) and exponent (1e9) forms.
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[kMGTPE]|[eE]\+?[0-9]+)?$"

# Kubernetes keeps quantities' values in an int64.
MAX_QUANTITY = 2**63 - 1
_MAX_EXPONENT = 19

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}

# Go duration syntax ("1h30m", "500ms", "1.5s", "0"), which is also what CEL's duration() reads.
_DURATION_UNIT = r"[0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h)"
_DURATION = rf"(0|({_DURATION_UNIT})+)"
DURATION_PATTERN = rf"^{_DURATION}$"
# A watch time is one duration or a "low-high" range of two.
WATCH_TIME_PATTERN = rf"^{_DURATION}(-{_DURATION})?$"
# maxInFlight as a string is a percentage of a job's instances, 1% to 100%.
PERCENT_PATTERN = r"^([1-9][0-9]?|100)%$"

# Go (and CEL's duration()) keep durations as int64 nanoseconds: about 2562047 hours.
MAX_DURATION = "2562047h"
MAX_DURATION_SECONDS = 2562047 * 3600

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")


def parse_quantity(value: str | int) -> int:
    """Bytes in a Kubernetes quantity ("1Gi", "1.5G", "100k", "1e9", 512), rounded up."""
    text = str(value)
    if not re.fullmatch(QUANTITY_PATTERN, text):
        raise ValueError(f"{text!r} is not a quantity (examples: 1Gi, 500Mi, 10G, 1048576)")
    match = re.fullmatch(r"([0-9.]+)(.*)", text)
    assert match is not None  # the pattern above guarantees a number prefix
    number, suffix = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation as error:  # pragma: no cover - excluded by the pattern
        raise ValueError(f"{text!r} is not a quantity") from error
    if suffix in _BINARY:
        amount *= Decimal(1024) ** _BINARY[suffix]
    elif suffix in _DECIMAL:
        amount *= Decimal(1000) ** _DECIMAL[suffix]
    elif suffix:
        exponent = int(suffix[1:].lstrip("+"))
        if exponent > _MAX_EXPONENT:
            if amount:
                raise ValueError(f"{text!r} is too large (at most {MAX_QUANTITY} bytes)")
            exponent = 0  # zero times anything
        amount *= Decimal(10) ** exponent
    size = math.ceil(amount)
    if size > MAX_QUANTITY:
        raise ValueError(f"{text!r} is too large (at most {MAX_QUANTITY} bytes)")
    return size


def format_quantity(size: int) -> str:
    """The shortest exact binary form of a byte count ("1Gi", "1536Mi", "100")."""
    if size < 0:
        raise ValueError(f"a size cannot be negative: {size}")
    for suffix, power in sorted(_BINARY.items(), key=lambda item: -item[1]):
        unit = 1024**power
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def parse_duration(value: str) -> float:
    """Seconds in a Go-style duration ("5s", "1m30s", "500ms", "0")."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{value!r} is not a duration (examples: 5s, 1m30s, 500ms)")
    seconds = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(value)
    )
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{value!r} is too long (at most {MAX_DURATION})")
    return seconds


def parse_watch_time(value: str) -> tuple[float, float]:
    """(low, high) seconds of a watch time: "1s-30s" is a range, "5s" means (5, 5)."""
    if not re.fullmatch(WATCH_TIME_PATTERN, value):
        raise ValueError(f"{value!r} is not a watch time (examples: 5s, 1s-30s)")
    low_text, _, high_text = value.partition("-")
    low = parse_duration(low_text)
    high = parse_duration(high_text) if high_text else low
    if low > high:
        raise ValueError(f"{value!r}: the low end of a watch time is above its high end")
    return low, high


def resolve_max_in_flight(value: int | str, instances: int) -> int:
    """How many instances may update at once: an int as given, a percentage of ``instances``
    rounded down; never below 1."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"maxInFlight must be at least 1, got {value}")
        return value
    if not re.fullmatch(PERCENT_PATTERN, value):
        raise ValueError(f"maxInFlight {value!r} is neither an integer nor a percentage 1%-100%")
    return max(1, instances * int(value[:-1]) // 100)
