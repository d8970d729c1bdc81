"""LineChart keeps a sliding window of samples and draws them where the axes say they belong."""

from __future__ import annotations

import math

import pytest
from PySide6.QtGui import QColor
from pytestqt.qtbot import QtBot

from inferhub_desktop.ui.chart import LineChart, nice_ceiling

LINE = QColor("#3b82f6")
# Antialiasing softens the line's edges, so match its core colour with some slack.
_TOLERANCE = 24


def make_chart(qtbot: QtBot, *, window_s: float = 300.0) -> LineChart:
    chart = LineChart("Throughput", "tok/s", window_s=window_s, color=LINE)
    qtbot.addWidget(chart)
    chart.resize(480, 240)
    return chart


def line_pixels(chart: LineChart) -> set[tuple[int, int]]:
    """Return the widget-coordinate pixels inside the plot area that have the line's colour."""
    image = chart.grab().toImage()
    ratio = image.devicePixelRatio()
    plot = chart.plot_rect()
    found = set()
    for y in range(math.floor(plot.top() * ratio), math.ceil(plot.bottom() * ratio) + 1):
        for x in range(math.floor(plot.left() * ratio), math.ceil(plot.right() * ratio) + 1):
            pixel = QColor.fromRgb(image.pixel(x, y))
            if (
                abs(pixel.red() - LINE.red()) <= _TOLERANCE
                and abs(pixel.green() - LINE.green()) <= _TOLERANCE
                and abs(pixel.blue() - LINE.blue()) <= _TOLERANCE
            ):
                found.add((round(x / ratio), round(y / ratio)))
    return found


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, 1.0),
        (-3.0, 1.0),
        (math.nan, 1.0),
        (0.3, 1.0),
        (0.7, 1.0),
        (1.0, 1.0),
        (1.2, 2.0),
        (2.2, 2.5),
        (3.0, 5.0),
        (7.0, 10.0),
        (10.0, 10.0),
        (12.0, 20.0),
        (230.0, 250.0),
        (250.0, 250.0),
        (251.0, 500.0),
        # Float noise just above a round value must not bump the axis a whole step.
        ((0.1 + 0.2) / 0.3 * 250, 250.0),
        (4321.0, 5000.0),
    ],
)
def test_nice_ceiling_rounds_up_to_1_2_2_5_or_5_times_a_power_of_ten(value: float, expected: float) -> None:
    assert nice_ceiling(value) == pytest.approx(expected)


def test_samples_older_than_the_window_are_dropped(qtbot: QtBot) -> None:
    chart = make_chart(qtbot, window_s=10.0)
    for at in range(21):
        chart.add(float(at), float(at))

    assert [at for at, _ in chart.samples] == [float(at) for at in range(10, 21)]


def test_latest_skips_gaps(qtbot: QtBot) -> None:
    chart = make_chart(qtbot)
    assert chart.latest is None

    chart.add(1.0, 42.0)
    chart.add(2.0, None)

    assert chart.latest == 42.0
    assert chart.samples == ((1.0, 42.0), (2.0, None))


def test_window_must_be_positive(qtbot: QtBot) -> None:
    with pytest.raises(ValueError, match="window_s"):
        make_chart(qtbot, window_s=0.0)


def test_series_covering_the_right_half_is_drawn_only_there_and_rises(qtbot: QtBot) -> None:
    chart = make_chart(qtbot, window_s=100.0)
    for at in range(50, 101):
        chart.add(float(at), float(at - 50) * 2)

    pixels = line_pixels(chart)
    plot = chart.plot_rect()

    assert not {(x, y) for x, y in pixels if x < plot.left() + plot.width() * 0.45}
    rightmost = {(x, y) for x, y in pixels if x > plot.right() - plot.width() * 0.05}
    assert rightmost
    assert all(y < plot.top() + plot.height() * 0.2 for _, y in rightmost)
    middle = {(x, y) for x, y in pixels if abs(x - plot.center().x() - plot.width() * 0.05) < 3}
    assert middle
    assert all(y > plot.top() + plot.height() * 0.7 for _, y in middle)


def test_empty_chart_draws_no_line(qtbot: QtBot) -> None:
    chart = make_chart(qtbot)

    assert not line_pixels(chart)


def test_gap_leaves_a_column_without_line_between_two_segments(qtbot: QtBot) -> None:
    chart = make_chart(qtbot, window_s=100.0)
    for at in range(101):
        chart.add(float(at), None if 40 < at < 60 else 50.0)

    pixels = line_pixels(chart)
    plot = chart.plot_rect()

    def column(at: float) -> set[tuple[int, int]]:
        x = plot.left() + plot.width() * at / 100
        return {(px, py) for px, py in pixels if abs(px - x) <= 1}

    assert column(20)
    assert not column(50)
    assert column(80)


@pytest.mark.parametrize(
    ("ceiling", "value", "height_fraction"),
    [
        (100.0, 50.0, 0.5),
        # Without a ceiling the axis top is nice_ceiling(150) = 200, and never below 1.
        (None, 150.0, 0.75),
        (None, 0.5, 0.5),
    ],
)
def test_value_lands_at_its_fraction_of_the_axis_top(
    qtbot: QtBot, ceiling: float | None, value: float, height_fraction: float
) -> None:
    chart = LineChart("GPU", "%", ceiling=ceiling, color=LINE)
    qtbot.addWidget(chart)
    chart.resize(480, 240)
    for at in range(0, 301, 10):
        chart.add(float(at), value)

    plot = chart.plot_rect()
    # The dot marking the newest sample is wider than the line, so look left of it.
    ys = {y for x, y in line_pixels(chart) if x < plot.right() - 10}
    expected_y = plot.bottom() - plot.height() * height_fraction

    assert ys
    assert all(abs(y - expected_y) <= 1.5 for y in ys)


def test_minimum_size_leaves_room_for_a_plot(qtbot: QtBot) -> None:
    chart = make_chart(qtbot)
    chart.resize(chart.minimumSizeHint())

    plot = chart.plot_rect()

    assert chart.minimumSizeHint().width() >= 320
    assert chart.minimumSizeHint().height() >= 140
    assert plot.width() > 200
    assert plot.height() > 40
