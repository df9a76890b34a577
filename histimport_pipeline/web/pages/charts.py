"""The pages' charts as SVG drawn on the server: shapes with coordinates, which the
templates write out as ``<rect>`` elements (no script, no inline style: colours come from
classes in ``app.css``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The width of every chart's drawing area, in SVG units (the SVG scales to its box).
WIDTH = 720.0
#: Statuses in the order their bars stack, bottom first.
STACK = (
    "success",
    "partial",
    "duplicate",
    "rejected",
    "failed",
    "rolled_back",
    "running",
    "pending",
)


@dataclass(frozen=True)
class Segment:
    """One rectangle: where it is, its CSS class and its tooltip."""

    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


def phase_bar(phase_seconds: Mapping[str, Any]) -> list[Segment]:
    """An import's phases side by side, each as wide as its share of the time."""
    items = [(name, float(value)) for name, value in phase_seconds.items() if value is not None]
    total = sum(value for _name, value in items)
    if total <= 0:
        return []
    out, x = [], 0.0
    for name, value in items:
        width = WIDTH * value / total
        out.append(
            Segment(
                round(x, 2),
                0.0,
                round(width, 2),
                24.0,
                f"phase phase-{name}",
                f"{name}: {value:.3f} s ({100 * value / total:.0f}%)",
            )
        )
        x += width
    return out


@dataclass(frozen=True)
class DayChart:
    """A chart of one value per day: bars, the largest value and the days at each end."""

    bars: list[Segment]
    peak: int
    first_day: dt.date | None
    last_day: dt.date | None
    height: float


def _scale(peak: int) -> int:
    """A round top for the axis at or above ``peak``: 1, 2, 5, 10, 20, 50, 100..."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= peak:
                return step * magnitude
        magnitude *= 10


def imports_per_day(activity: Sequence[Mapping[str, Any]], height: float = 120.0) -> DayChart:
    """Imports per day, stacked by status (``overview.daily_activity``'s entries)."""
    peak = max((sum(day["by_status"].values()) for day in activity), default=0)
    top = _scale(peak)
    slot = WIDTH / max(len(activity), 1)
    bars = []
    for i, day in enumerate(activity):
        y = height
        counts = day["by_status"]
        ordered = [s for s in STACK if s in counts] + sorted(set(counts) - set(STACK))
        for status in ordered:
            count = counts[status]
            h = height * count / top
            y -= h
            bars.append(
                Segment(
                    round(i * slot + 1, 2),
                    round(y, 2),
                    round(max(slot - 2, 1), 2),
                    round(h, 2),
                    f"bar status-{status}",
                    f"{day['day']}: {count} {status}",
                )
            )
    return DayChart(bars, top, _day(activity, 0), _day(activity, -1), height)


def rows_per_day(activity: Sequence[Mapping[str, Any]], height: float = 120.0) -> DayChart:
    """Rows loaded (created and updated by imports that stand) per day."""
    peak = max((int(day["rows_loaded"]) for day in activity), default=0)
    top = _scale(peak)
    slot = WIDTH / max(len(activity), 1)
    bars = []
    for i, day in enumerate(activity):
        rows = int(day["rows_loaded"])
        if not rows:
            continue
        h = height * rows / top
        bars.append(
            Segment(
                round(i * slot + 1, 2),
                round(height - h, 2),
                round(max(slot - 2, 1), 2),
                round(h, 2),
                "bar rows",
                f"{day['day']}: {rows:,} rows loaded",
            )
        )
    return DayChart(bars, top, _day(activity, 0), _day(activity, -1), height)


def _day(activity: Sequence[Mapping[str, Any]], index: int) -> dt.date | None:
    return activity[index]["day"] if activity else None
