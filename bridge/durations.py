"""Short human durations, one style each: ``compact`` for tables (``12m``), ``spoken``
for chat replies (``12 min``)."""

from __future__ import annotations


def compact(seconds: float) -> str:
    """``45s``, ``12m``, ``3h``, ``2d`` (whole units, rounded down)."""
    s = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def spoken(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h``, ``2 days``: seconds up to 90, minutes up to 90,
    hours up to two days (rounded down)."""
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} days"
