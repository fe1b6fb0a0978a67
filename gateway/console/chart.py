"""Stacked bar charts as plain geometry, which the console draws as inline SVG (no script).

    chart = stacked_bars(days, {(day, "allow"): 3, (day, "deny"): 1}, ("allow", "deny"))
    chart.bars       # Bar(day, series, count, x, y, width, height), bottom of each stack first
    chart.ticks      # Tick(value, y): the value axis, 0 to chart.top
    chart.labels     # Label(text, x): one per day, under its bar

Coordinates are SVG's: x grows to the right, y downwards, within WIDTH x HEIGHT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 36, 6, 8, 20  # margins: values on the left, days below
BAR_SHARE = 0.7  # of each day's slot; the rest is the gap between bars
MAX_TICKS = 4


@dataclass(frozen=True)
class Bar:
    day: date
    series: str
    count: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Tick:
    value: int
    y: float


@dataclass(frozen=True)
class Label:
    text: str
    x: float


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[Label]
    top: int  # the value at the top of the axis
    total: int
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: float = LEFT
    plot_right: float = WIDTH - RIGHT
    baseline: float = HEIGHT - BOTTOM


def last_days(today: date, count: int) -> list[date]:
    """The `count` days ending with `today`, oldest first."""
    return [today - timedelta(days=count - 1 - i) for i in range(count)]


def axis_scale(peak: int, ticks: int = MAX_TICKS) -> tuple[int, int]:
    """(top, step) of a value axis reaching `peak`: the step is the smallest 1, 2 or 5 times a
    power of ten that covers it in at most `ticks` steps, the top the first multiple at or
    above it. An empty chart's axis runs to 1."""
    if peak <= 0:
        return 1, 1
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * magnitude
            if step * ticks >= peak:
                return step * math.ceil(peak / step), step
        magnitude *= 10


def _round(value: float) -> float:
    return round(value, 2)


def stacked_bars(
    days: Sequence[date], counts: Mapping[tuple[date, str], int], series: Sequence[str]
) -> Chart:
    """A bar per day, each stacking its counts in `series` order from the bottom up; a count
    that is zero (or absent) draws nothing."""
    totals = [sum(counts.get((day, name), 0) for name in series) for day in days]
    top, step = axis_scale(max(totals, default=0))
    baseline, plot_height = HEIGHT - BOTTOM, HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    width = slot * BAR_SHARE
    bars, labels = [], []
    for index, day in enumerate(days):
        x = LEFT + index * slot + (slot - width) / 2
        labels.append(Label(day.strftime("%m-%d"), _round(x + width / 2)))
        stacked = 0
        for name in series:
            count = counts.get((day, name), 0)
            if count <= 0:
                continue
            y_top = baseline - (stacked + count) / top * plot_height
            y_bottom = baseline - stacked / top * plot_height
            bars.append(
                Bar(
                    day,
                    name,
                    count,
                    _round(x),
                    _round(y_top),
                    _round(width),
                    _round(y_bottom - y_top),
                )
            )
            stacked += count
    ticks = [
        Tick(value, _round(baseline - value / top * plot_height))
        for value in range(0, top + 1, step)
    ]
    return Chart(bars, ticks, labels, top, sum(totals))
