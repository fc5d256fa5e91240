"""Calendar periods in UTC: the day and month a limit or budget counts in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def day_start(ts: float) -> float:
    """Midnight UTC of the day holding ``ts``."""
    d = datetime.fromtimestamp(ts, UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def next_day(ts: float) -> float:
    """The next midnight UTC after ``ts``."""
    return (datetime.fromtimestamp(day_start(ts), UTC) + timedelta(days=1)).timestamp()


def month_start(ts: float) -> float:
    """The first of the month (UTC) holding ``ts``."""
    d = datetime.fromtimestamp(ts, UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()


def next_month(ts: float) -> float:
    """The first of the next month (UTC) after ``ts``."""
    d = datetime.fromtimestamp(ts, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def day_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def month_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def parse_month(text: str) -> tuple[float, float]:
    """``"2026-11"`` -> (start, end) of that month in UTC; ValueError if malformed."""
    try:
        start = datetime.strptime(text.strip(), "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"expected a month as YYYY-MM, got {text!r}") from None
    return start.timestamp(), next_month(start.timestamp())


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"2w"`` -> seconds; ValueError if malformed."""
    raw = text.strip().lower()
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number):] or "d"
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value <= 0 or value != value or value == float("inf"):
        raise ValueError(f"expected an age such as 7d, 12h or 30m, got {text!r}")
    return value * _UNITS[unit]
