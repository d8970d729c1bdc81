"""A live time-series line chart for the dashboard, drawn with QPainter (QtCharts is not in Essentials)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetricsF,
    QLinearGradient,
    QPainter,
    QPainterPath,
    QPaintEvent,
    QPalette,
    QPen,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

_PAD = 14.0
_CORNER_RADIUS = 10.0
_HEADER_GAP = 10.0
_AXIS_GAP = 8.0
_LINE_WIDTH = 2.0
_DOT_RADIUS = 3.5
_FILL_TOP_ALPHA = 70
_NICE_MANTISSAS = (1.0, 2.0, 2.5, 5.0, 10.0)
# Grid labels closer than this many text heights start to read as one block.
_LABEL_SPACING = 1.4

Sample = tuple[float, float | None]


def nice_ceiling(value: float) -> float:
    """Return the smallest 1, 2, 2.5 or 5 × 10^n at or above value, and never below 1."""
    if not math.isfinite(value) or value <= 1.0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))
    # The tolerance keeps float noise (e.g. 3 * 0.1) from bumping a round value up a step.
    return next(m * scale for m in _NICE_MANTISSAS if m * scale >= value * (1 - 1e-9))


def _grid_intervals(top: float) -> int:
    """Return how many bands split 0..top so that every grid label is a round number."""
    for bands in (4, 5, 3):
        step = top / bands
        mantissa = step / 10.0 ** math.floor(math.log10(step))
        if any(math.isclose(mantissa, nice) for nice in _NICE_MANTISSAS):
            return bands
    return 4


def _format_number(value: float) -> str:
    """Format value compactly for a label: 0.25, 7.5, 87, 312, 1.25k."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.3g}k"
    if magnitude >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _format_window(window_s: float) -> str:
    """Format the span of the x axis as a negative offset from now: −5 min, −30 s."""
    if window_s >= 60:
        return f"−{window_s / 60:.3g} min"
    return f"−{window_s:.3g} s"


def _segments(samples: Sequence[Sample]) -> Iterator[list[tuple[float, float]]]:
    """Yield the runs of consecutive readings between None gaps."""
    run: list[tuple[float, float]] = []
    for at, value in samples:
        if value is None:
            if run:
                yield run
            run = []
        else:
            run.append((at, value))
    if run:
        yield run


class LineChart(QWidget):
    """Plot one metric over a sliding time window, with gaps where there was no reading."""

    def __init__(
        self,
        title: str,
        unit: str,
        *,
        window_s: float = 300.0,
        ceiling: float | None = None,
        color: QColor | str = "#3b82f6",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self._title = title
        self._unit = unit
        self._window_s = window_s
        self._ceiling = ceiling
        self._color = QColor(color)
        self._samples: deque[Sample] = deque()
        # What the plot says while it has no reading to draw.
        self.placeholder = "waiting for data"
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    @property
    def samples(self) -> tuple[Sample, ...]:
        """Return the kept (at, value) pairs, oldest first."""
        return tuple(self._samples)

    @property
    def latest(self) -> float | None:
        """Return the newest reading, skipping trailing gaps."""
        return next((value for _, value in reversed(self._samples) if value is not None), None)

    def add(self, at: float, value: float | None) -> None:
        """Append a reading taken at monotonic time `at`; None marks a gap."""
        self._samples.append((at, value))
        while self._samples[0][0] < at - self._window_s:
            self._samples.popleft()
        self.update()

    def set_placeholder(self, text: str) -> None:
        """Say `text` in the plot while it has no reading: why none comes, where that is known."""
        if text != self.placeholder:
            self.placeholder = text
            self.update()

    def minimumSizeHint(self) -> QSize:
        """Return the smallest size at which labels and line stay legible."""
        return QSize(320, 140)

    def sizeHint(self) -> QSize:
        """Return a comfortable dashboard-tile size."""
        return QSize(440, 200)

    def plot_rect(self) -> QRectF:
        """Return the area, in widget coordinates, that the line is drawn in."""
        card = self._card_rect()
        header = self._header_height()
        label_width = max(self._small_metrics().horizontalAdvance(label) for label in self._y_labels())
        left = card.left() + _PAD + label_width + _AXIS_GAP
        top = card.top() + _PAD + header + _HEADER_GAP
        bottom = card.bottom() - _PAD - self._small_metrics().height() - _AXIS_GAP / 2
        return QRectF(QPointF(left, top), QPointF(card.right() - _PAD, bottom))

    def paintEvent(self, event: QPaintEvent) -> None:
        """Draw the card, header, grid, time axis and the series."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        plot = self.plot_rect()
        self._draw_card(painter)
        self._draw_header(painter)
        self._draw_grid(painter, plot)
        if any(value is not None for _, value in self._samples):
            self._draw_time_axis(painter, plot)
            self._draw_series(painter, plot)
        else:
            self._draw_placeholder(painter, plot)
        painter.end()

    # Geometry and scale.

    def _card_rect(self) -> QRectF:
        # Half a pixel in so the 1 px border lands on whole pixels.
        return QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)

    def _y_top(self) -> float:
        if self._ceiling is not None:
            return self._ceiling
        return nice_ceiling(max((v for _, v in self._samples if v is not None), default=0.0))

    def _y_labels(self) -> list[str]:
        top = self._y_top()
        bands = _grid_intervals(top)
        return [_format_number(top * i / bands) for i in range(bands + 1)]

    def _to_point(self, plot: QRectF, top: float, at: float, value: float) -> QPointF:
        newest = self._samples[-1][0]
        x = plot.right() - (newest - at) / self._window_s * plot.width()
        fraction = min(max(value / top, 0.0), 1.0)
        return QPointF(x, plot.bottom() - fraction * plot.height())

    # Palette-derived colours, so light and dark themes both read well.

    def _text_color(self, alpha: int = 255) -> QColor:
        color = self.palette().color(QPalette.ColorRole.Text)
        color.setAlpha(alpha)
        return color

    def _muted(self) -> QColor:
        return self._text_color(150)

    def _small_font(self) -> QFont:
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 0.85)
        return font

    def _small_metrics(self) -> QFontMetricsF:
        return QFontMetricsF(self._small_font())

    def _value_font(self) -> QFont:
        font = QFont(self.font())
        font.setPointSizeF(font.pointSizeF() * 1.35)
        font.setBold(True)
        return font

    def _header_height(self) -> float:
        return max(QFontMetricsF(self.font()).height(), QFontMetricsF(self._value_font()).height())

    # Drawing.

    def _draw_card(self, painter: QPainter) -> None:
        painter.setPen(QPen(self._text_color(36), 1.0))
        painter.setBrush(self.palette().color(QPalette.ColorRole.Base))
        painter.drawRoundedRect(self._card_rect(), _CORNER_RADIUS, _CORNER_RADIUS)

    def _draw_header(self, painter: QPainter) -> None:
        card = self._card_rect()
        header = QRectF(card.left() + _PAD, card.top() + _PAD, card.width() - 2 * _PAD, self._header_height())
        align_left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        align_right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter

        latest = self.latest
        value = "—" if latest is None else _format_number(latest)
        unit = f" {self._unit}" if self._unit and latest is not None else ""
        value_metrics = QFontMetricsF(self._value_font())
        unit_width = value_metrics.horizontalAdvance(unit)
        painter.setFont(self._value_font())
        painter.setPen(self._text_color())
        painter.drawText(header.adjusted(0, 0, -unit_width, 0), align_right, value)
        painter.setPen(self._muted())
        painter.drawText(header, align_right, unit)

        dot = QRectF(0, 0, 8, 8)
        dot.moveCenter(QPointF(header.left() + 4, header.center().y()))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(self._color)
        painter.drawEllipse(dot)
        title_box = header.adjusted(
            dot.width() + 8, 0, -(value_metrics.horizontalAdvance(value) + unit_width + 12), 0
        )
        title = QFontMetricsF(self.font()).elidedText(
            self._title, Qt.TextElideMode.ElideRight, title_box.width()
        )
        painter.setFont(self.font())
        painter.setPen(self._text_color(200))
        painter.drawText(title_box, align_left, title)

    def _draw_grid(self, painter: QPainter, plot: QRectF) -> None:
        labels = self._y_labels()
        bands = len(labels) - 1
        label_height = self._small_metrics().height()
        # On a short chart label every other line, counting from the top so the axis maximum keeps its label.
        stride = math.ceil(_LABEL_SPACING * label_height * bands / max(plot.height(), 1.0))
        painter.setFont(self._small_font())
        for i, label in enumerate(labels):
            # Snap to the pixel centre so the hairlines stay crisp.
            y = round(plot.bottom() - plot.height() * i / bands) + 0.5
            painter.setPen(QPen(self._text_color(60 if i == 0 else 22), 1.0))
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            if (bands - i) % stride == 0:
                painter.setPen(self._muted())
                box = QRectF(0.0, y - label_height / 2, plot.left() - _AXIS_GAP, label_height)
                painter.drawText(box, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)

    def _draw_time_axis(self, painter: QPainter, plot: QRectF) -> None:
        metrics = self._small_metrics()
        box = QRectF(plot.left(), plot.bottom() + _AXIS_GAP / 2, plot.width(), metrics.height())
        painter.setFont(self._small_font())
        painter.setPen(self._muted())
        painter.drawText(
            box, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, _format_window(self._window_s)
        )
        painter.drawText(box, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop, "now")

    def _draw_series(self, painter: QPainter, plot: QRectF) -> None:
        gradient = QLinearGradient(plot.topLeft(), plot.bottomLeft())
        fill_top, fill_bottom = QColor(self._color), QColor(self._color)
        fill_top.setAlpha(_FILL_TOP_ALPHA)
        fill_bottom.setAlpha(0)
        gradient.setColorAt(0.0, fill_top)
        gradient.setColorAt(1.0, fill_bottom)
        line_pen = QPen(self._color, _LINE_WIDTH)
        line_pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        line_pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
        top = self._y_top()

        painter.save()
        # A little slack so the pen's round caps at the edges are not shaved off.
        painter.setClipRect(plot.adjusted(-_DOT_RADIUS, -_DOT_RADIUS, _DOT_RADIUS, 0))
        for run in _segments(self._samples):
            points = [self._to_point(plot, top, at, value) for at, value in run]
            if len(points) == 1:
                # A lone reading between gaps has no line to carry it, so it gets a dot.
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(self._color)
                painter.drawEllipse(points[0], _LINE_WIDTH, _LINE_WIDTH)
                continue
            line = QPainterPath(points[0])
            for point in points[1:]:
                line.lineTo(point)
            area = QPainterPath(line)
            area.lineTo(points[-1].x(), plot.bottom())
            area.lineTo(points[0].x(), plot.bottom())
            area.closeSubpath()
            painter.fillPath(area, gradient)
            painter.strokePath(line, line_pen)
        painter.restore()
        self._draw_latest_marker(painter, plot, top)

    def _draw_latest_marker(self, painter: QPainter, plot: QRectF, top: float) -> None:
        at, value = self._samples[-1]
        if value is None:
            return
        painter.setPen(QPen(self.palette().color(QPalette.ColorRole.Base), 2.0))
        painter.setBrush(self._color)
        painter.drawEllipse(self._to_point(plot, top, at, value), _DOT_RADIUS, _DOT_RADIUS)

    def _draw_placeholder(self, painter: QPainter, plot: QRectF) -> None:
        painter.setFont(self._small_font())
        painter.setPen(self._muted())
        painter.drawText(plot, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
