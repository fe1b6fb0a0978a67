"""The overview's stacked bars: plain geometry, checked without drawing anything."""

from __future__ import annotations

from datetime import date

import pytest

from gateway.console.chart import (
    BOTTOM,
    HEIGHT,
    LEFT,
    RIGHT,
    TOP,
    WIDTH,
    axis_scale,
    last_days,
    stacked_bars,
)

D1, D2, D3 = date(2027, 5, 13), date(2027, 5, 14), date(2027, 5, 15)
BASELINE = HEIGHT - BOTTOM
PLOT_HEIGHT = HEIGHT - BOTTOM - TOP
SERIES = ("allow", "fallback", "deny")


def test_last_days_end_today_oldest_first() -> None:
    days = last_days(D3, 14)
    assert len(days) == 14
    assert days[-1] == D3
    assert days[0] == date(2027, 5, 2)
    assert days == sorted(days)


@pytest.mark.parametrize(
    ("peak", "expected"),
    [
        (0, (1, 1)),
        (1, (1, 1)),
        (3, (3, 1)),
        (4, (4, 1)),
        (5, (6, 2)),
        (7, (8, 2)),
        (9, (10, 5)),
        (40, (40, 10)),
        (41, (60, 20)),
        (100, (100, 50)),
        (101, (150, 50)),
        (12_345, (15_000, 5_000)),
    ],
)
def test_the_axis_ends_at_a_round_step_at_or_above_the_peak(
    peak: int, expected: tuple[int, int]
) -> None:
    top, step = axis_scale(peak)
    assert (top, step) == expected
    assert top >= peak
    assert top % step == 0
    assert top // step <= 4


def test_bars_stack_their_series_from_the_baseline_in_order() -> None:
    chart = stacked_bars([D1, D2], {(D1, "allow"): 3, (D1, "deny"): 1, (D2, "allow"): 2}, SERIES)
    assert chart.top == 4 and chart.total == 6
    first = [bar for bar in chart.bars if bar.day == D1]
    assert [(bar.series, bar.count) for bar in first] == [("allow", 3), ("deny", 1)]
    allow, deny = first
    assert allow.height == pytest.approx(3 / 4 * PLOT_HEIGHT, abs=0.01)
    assert deny.height == pytest.approx(1 / 4 * PLOT_HEIGHT, abs=0.01)
    assert allow.y + allow.height == pytest.approx(BASELINE, abs=0.01)  # on the baseline
    assert deny.y + deny.height == pytest.approx(allow.y, abs=0.01)  # on top of allow
    assert deny.y == pytest.approx(TOP, abs=0.01)  # the tallest stack reaches the top
    (second,) = [bar for bar in chart.bars if bar.day == D2]
    assert second.height == pytest.approx(PLOT_HEIGHT / 2, abs=0.01)
    assert second.x > allow.x + allow.width  # its own slot, right of the first day's


def test_a_zero_or_missing_count_draws_nothing() -> None:
    chart = stacked_bars([D1, D2, D3], {(D1, "fallback"): 0, (D3, "deny"): 2}, SERIES)
    assert [(bar.day, bar.series) for bar in chart.bars] == [(D3, "deny")]
    assert len(chart.labels) == 3


def test_bars_stay_inside_the_plot_and_labels_sit_under_their_bars() -> None:
    days = last_days(D3, 14)
    counts = {(day, "allow"): index + 1 for index, day in enumerate(days)}
    chart = stacked_bars(days, counts, SERIES)
    assert len(chart.bars) == 14
    for bar, label in zip(chart.bars, chart.labels, strict=True):
        assert LEFT <= bar.x and bar.x + bar.width <= WIDTH - RIGHT
        assert TOP <= bar.y and bar.y + bar.height <= BASELINE + 0.01
        assert label.x == pytest.approx(bar.x + bar.width / 2, abs=0.01)
        assert label.text == bar.day.strftime("%m-%d")
    heights = [bar.height for bar in chart.bars]
    assert heights == sorted(heights) and heights[0] < heights[-1]


def test_ticks_run_from_the_baseline_to_the_top() -> None:
    chart = stacked_bars([D1], {(D1, "allow"): 7}, SERIES)
    assert [tick.value for tick in chart.ticks] == [0, 2, 4, 6, 8]
    assert chart.ticks[0].y == BASELINE
    assert chart.ticks[-1].y == TOP
    ys = [tick.y for tick in chart.ticks]
    assert ys == sorted(ys, reverse=True)


def test_an_empty_chart_has_an_axis_and_no_bars() -> None:
    chart = stacked_bars(last_days(D3, 14), {}, SERIES)
    assert chart.bars == [] and chart.total == 0
    assert [tick.value for tick in chart.ticks] == [0, 1]
