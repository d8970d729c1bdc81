"""The dashboard: the pool live, who is in it, what each GPU does, where requests went, what is wrong."""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QCloseEvent, QColor, QDesktopServices, QPainter, QPalette, QResizeEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import (
    DEFAULT_SHARE_PORT,
    AddressState,
    InferhubError,
    PeerUsage,
    RequestDone,
    RequestUnderway,
    audit_row,
    short_name,
)
from .bridge import Bridge
from .chart import LineChart
from .model import (
    Action,
    NodeView,
    PoolView,
    Problem,
    firewall_hint,
    format_duration,
    format_rate,
    format_when,
    sentence,
    short_models,
)

# The column of free length comes last: it takes the room left, and narrower windows scroll.
PEER_COLUMNS = ("Node", "Address", "GPU", "VRAM", "GPU use", "Busy", "Speed", "Sharing", "Loaded models")
REQUEST_COLUMNS = ("Time", "Model", "Node", "Duration", "Speed", "Outcome")
AUDIT_COLUMNS = ("Time", "Peer", "Model", "Tokens", "Duration", "Outcome")
# What each column says, for whoever hovers over its heading.
_COLUMN_TIPS = {
    "Node": "The machine's name; this machine is marked",
    "Address": "Where the machine answers on the network",
    "GPU": "Its graphics cards",
    "VRAM": "Graphics memory in use, of the total",
    "GPU use": "How busy its GPUs are now (— where the machine reports no GPU figures)",
    "Busy": "Requests running on it now, of those it runs at once",
    "Speed": "Tokens a second it generates, on average over its models",
    "Sharing": "Whether it lends its GPU to the pool",
    "Loaded models": "Models in its memory now, ready to answer at once; hover for every model installed",
    "Time": "When the request arrived",
    "Model": "The model asked for",
    "Peer": "The colleague's machine that sent the request",
    "Tokens": "Tokens generated for it",
    "Duration": "How long it took, or has taken so far",
    "Outcome": "How it ended; hover for the whole error",
}
_ROW_HEIGHT = 30
_RUNNING = "#2563eb"
_MINIMUM_WIDTH = 960
_VRAM_WIDTH = 150
# The least height of the problems and peers by address; more of them scroll.
_NOTES_MINIMUM_HEIGHT = 90
_NOTES_FIRST = 1000
_SHARE_BUTTON_STYLE = """
QPushButton {
    padding: 5px 12px; border: 1px solid palette(mid); border-radius: 5px; background: palette(button);
}
QPushButton:hover { border-color: #15803d; }
QPushButton:checked { background: #15803d; color: white; border-color: #166534; }
"""
_VRAM_COLUMN = PEER_COLUMNS.index("VRAM")
# The share of VRAM in use, for the bar the delegate draws.
_FRACTION_ROLE = Qt.ItemDataRole.UserRole + 1
OLLAMA_DOWNLOAD = "https://ollama.com/download"
_SEVERE = "#dc2626"
_WARNING = "#d97706"


class VramBarDelegate(QStyledItemDelegate):
    """Draw a VRAM cell as a bar filled to the share in use, with the figures on it."""

    def paint(
        self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        fraction = index.data(_FRACTION_ROLE)
        if fraction is None:
            super().paint(painter, option, index)
            return
        cell: QRect = option.rect
        palette: QPalette = option.palette
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        # The figures on top, a thin bar under them, so neither hides the other.
        text = cell.adjusted(6, 2, -6, -9)
        bar = QRect(cell.left() + 6, cell.bottom() - 8, cell.width() - 12, 5)
        painter.setPen(palette.color(QPalette.ColorRole.Text))
        painter.drawText(text, Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, str(index.data()))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(palette.color(QPalette.ColorRole.Mid).lighter(140))
        painter.drawRoundedRect(bar, 2, 2)
        filled = QRect(bar)
        filled.setWidth(round(bar.width() * min(1.0, float(fraction))))
        painter.setBrush(QColor(_SEVERE if fraction > 0.9 else "#3b82f6"))
        painter.drawRoundedRect(filled, 2, 2)
        painter.restore()


class Dashboard(QMainWindow):
    """The pool's window; closing it hides it, unless it is the app's only window (no tray)."""

    # Closed for good: it was the app's only window.
    closed = Signal()

    def __init__(
        self, bridge: Bridge, *, open_settings: Callable[[], None], standalone_reason: str = ""
    ) -> None:
        super().__init__()
        self._bridge = bridge
        # Without a tray this is the app's main window, and closing it quits.
        self.standalone_reason = standalone_reason
        self.setWindowTitle("InferHub")
        self.resize(1180, 760)

        self.title = QLabel("InferHub")
        self.title.setStyleSheet("font-size: 20px; font-weight: 600;")
        self.subtitle = QLabel("")
        self.subtitle.setWordWrap(True)
        self.subtitle.setStyleSheet("color: #6b7280;")
        self.share_button = QPushButton("Share this GPU")
        self.share_button.setCheckable(True)
        # On and off must differ at a glance, not by a shade of grey.
        self.share_button.setStyleSheet(_SHARE_BUTTON_STYLE)
        self.share_button.toggled.connect(lambda on: bridge.set_switch("share", on))
        self.api_label = QLabel("")
        self.api_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        settings_button = QPushButton("Settings…")
        settings_button.clicked.connect(open_settings)
        self._open_settings = open_settings
        self.help_box: QMessageBox | None = None
        header = QHBoxLayout()
        titles = QVBoxLayout()
        titles.addWidget(self.title)
        titles.addWidget(self.subtitle)
        header.addLayout(titles, 1)
        header.addWidget(self.api_label)
        header.addWidget(self.share_button)
        header.addWidget(settings_button)

        self.banner = QLabel(standalone_reason)
        self.banner.setWordWrap(True)
        self.banner.setVisible(bool(standalone_reason))
        self.banner.setStyleSheet("background: #eff6ff; color: #1e3a8a; padding: 8px; border-radius: 6px;")

        self.health = QFrame()
        self.health_layout = QVBoxLayout(self.health)
        self.health_layout.setContentsMargins(0, 0, 0, 0)
        self._problems_shown: tuple[list[Problem], bool] | None = None
        self.peer_address = QLineEdit()
        self.peer_address.setPlaceholderText("HOST or HOST:PORT of another InferHub")
        self.add_peer_button = QPushButton("Add peer")
        self.add_peer_button.clicked.connect(self._add_peer)
        self.peer_address.returnPressed.connect(self._add_peer)
        self.add_peer_error = QLabel("")
        self.add_peer_error.setStyleSheet(f"color: {_SEVERE};")
        add_row = QHBoxLayout()
        add_row.addWidget(QLabel("Add a peer by address:"))
        add_row.addWidget(self.peer_address, 1)
        add_row.addWidget(self.add_peer_button)
        add_row.addWidget(self.add_peer_error)
        # The peers named by address, each with how reaching it goes, until the owner removes it.
        self.addresses = QFrame()
        self.addresses_layout = QVBoxLayout(self.addresses)
        self.addresses_layout.setContentsMargins(0, 0, 0, 0)
        self.addresses_layout.setSpacing(2)
        self._addresses_shown: tuple[AddressState, ...] | None = None

        self.throughput_chart = LineChart("Pool throughput", "tok/s", color="#3b82f6")
        self.gpu_chart = LineChart("This machine's GPU", "%", ceiling=100.0, color="#10b981")
        charts = QHBoxLayout()
        charts.addWidget(self.throughput_chart)
        charts.addWidget(self.gpu_chart)

        self.peers_table = _table(PEER_COLUMNS)
        self.peers_table.setItemDelegateForColumn(_VRAM_COLUMN, VramBarDelegate(self.peers_table))
        self.peers_table.setColumnWidth(_VRAM_COLUMN, _VRAM_WIDTH)
        self.requests_table = _table(REQUEST_COLUMNS, rows=2)
        self._requests_shown: tuple[object, ...] | None = None
        self.audit_table = _table(AUDIT_COLUMNS, rows=2)
        self.audit_note = QLabel("No peer has used this machine yet.")
        self.audit_note.setStyleSheet("color: #6b7280;")
        self.usage_note = QLabel("")
        self.usage_note.setWordWrap(True)
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: palette(placeholder-text);")
        self.hint.setVisible(False)

        # What is wrong and the peers by address: as tall as they need where there is room, else they
        # scroll, so a laptop's screen holds the window whatever the number of problems.
        notes = self._notes_contents = QWidget()
        top = self._notes_layout = QVBoxLayout(notes)
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.banner)
        top.addWidget(self.health)
        top.addWidget(self.hint)
        top.addLayout(add_row)
        top.addWidget(self.addresses)
        self.notes = QScrollArea()
        self.notes.setWidget(notes)
        self.notes.setWidgetResizable(True)
        self.notes.setFrameShape(QFrame.Shape.NoFrame)
        self.notes.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # The charts and the tables share the height left, in proportions the owner can drag.
        charts_pane = QWidget()
        charts_pane.setLayout(charts)
        charts.setContentsMargins(0, 0, 0, 0)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)
        for pane, stretch in (
            (charts_pane, 2),
            (_pane("Nodes", self.peers_table), 3),
            (_pane("Requests", self.requests_table), 3),
            (_pane("Used by peers", self.audit_note, self.usage_note, self.audit_table), 2),
        ):
            self.splitter.addWidget(pane)
            self.splitter.setStretchFactor(self.splitter.count() - 1, stretch)
        body = self._body = QVBoxLayout()
        body.addLayout(header)
        # The notes fill first, up to their height (see _fit_notes); the splitter has the rest.
        body.addWidget(self.notes, _NOTES_FIRST)
        body.addWidget(self.splitter, 1)
        central = self._central = QWidget()
        central.setLayout(body)
        self.setCentralWidget(central)
        # Wide enough for the nodes' columns; the height is what the layout needs, problems included.
        self.setMinimumWidth(_MINIMUM_WIDTH)

        bridge.view_changed.connect(self.show_view)
        bridge.sampled.connect(self._sampled)
        bridge.request_done.connect(lambda _: self.show_requests())
        self.show_view(bridge.view)
        bridge.audit_changed.connect(self.show_audit)
        self.show_audit(bridge.audit)

    def show_view(self, view: PoolView | None) -> None:
        """Show the pool's state: the header, the health panel and the nodes table."""
        if view is None:
            return
        self.title.setText(f"{view.me.name} · {view.summary()}")
        # The state's words, the pool's with whom its peers are proven to be.
        sharing, _, *modes = view.state
        self.subtitle.setText(" · ".join(sentence(words) for words in [sharing, view.trust(), *modes]))
        # Without GPU readings (no NVIDIA driver), waiting would be for ever: say so.
        self.gpu_chart.set_placeholder(
            "waiting for data"
            if view.me.gpu_count
            else "no GPU figures: this machine reports none (they come from NVIDIA's driver)"
        )
        self.api_label.setText(f"API  {view.api_url.replace('127.0.0.1', 'localhost')}")
        self.share_button.blockSignals(True)
        self.share_button.setChecked(bool(view.switches.get("share")))
        self.share_button.setText(view.share_label(on=bool(view.switches.get("share"))))
        self.share_button.blockSignals(False)
        self._show_problems(self._bridge.problems, alone=not view.peers)
        self.hint.setText(view.hint())
        self.hint.setVisible(bool(view.elsewhere))
        self._show_addresses(view.addresses)
        self._fit_notes_soon()
        _fill(self.peers_table, [_node_cells(node) for node in view.nodes])
        self.peers_table.setColumnWidth(_VRAM_COLUMN, _VRAM_WIDTH)
        self.show_requests()

    def _fit_notes(self) -> None:
        """Let the notes take their whole height where the window has room, and scroll where not."""
        contents, layout = self._notes_contents, self._notes_layout
        # Wrapped words are as tall as the width they wrap at, and no card is shorter than its least.
        wrapped = layout.heightForWidth(self.notes.viewport().width())
        height = max(wrapped, contents.minimumSizeHint().height())
        # The charts and tables keep their least height; the notes have what is left, down to theirs.
        margins = self._body.contentsMargins()
        header = self.title.sizeHint().height() + self.subtitle.sizeHint().height() + 2 * self._body.spacing()
        taken = header + margins.top() + margins.bottom() + self.splitter.minimumSizeHint().height()
        spare = self._central.height() - taken
        self.notes.setMinimumHeight(min(height, _NOTES_MINIMUM_HEIGHT))
        self.notes.setMaximumHeight(min(height, max(spare, _NOTES_MINIMUM_HEIGHT)))

    def show_requests(self) -> None:
        """Show the requests being answered now and those that ended, the last to arrive first."""
        underway = self._bridge.view.underway if self._bridge.view else ()
        recent = self._bridge.recent
        shown = (tuple(r.request_id for r in underway), len(recent), recent[0] if recent else None)
        # Rows change when a request starts or ends; while one runs, its duration changes too.
        if shown == self._requests_shown and not underway:
            return
        self._requests_shown = shown
        now = time.time()
        arrived = [(running.at, _underway_cells(running, now)) for running in underway]
        arrived += [(done.at - done.duration_s, _request_cells(done)) for done in recent]
        _fill(
            self.requests_table,
            [cells for _, cells in sorted(arrived, key=lambda pair: pair[0], reverse=True)],
        )

    def show_audit(self, entries: list[dict[str, Any]]) -> None:
        """Show what peers had this machine serve, newest first, from the audit log's entries."""
        self.audit_note.setVisible(not entries)
        self.audit_table.setVisible(bool(entries))
        _fill(self.audit_table, [_audit_cells(entry) for entry in reversed(entries)])
        usage = self._bridge.usage
        today = [PeerUsage(**u).words() for u in usage.get("today", ())]
        self.usage_note.setText(
            ("Today: " if usage.get("whole_day", True) else "Today, at least: ") + " · ".join(today)
        )
        self.usage_note.setVisible(bool(today))

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self._fit_notes_soon()

    def _fit_notes_soon(self) -> None:
        # Once the notes' cards have laid themselves out: their least heights are known only then.
        QTimer.singleShot(0, self, self._fit_notes)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.standalone_reason:
            event.accept()
            self.closed.emit()  # the app quits with its only window
            return
        event.ignore()
        self.hide()

    def _sampled(self, at: float, tokens_per_s: float, gpu_pct: int | None) -> None:
        self.throughput_chart.add(at, tokens_per_s)
        self.gpu_chart.add(at, gpu_pct)

    def _show_problems(self, problems: list[Problem], *, alone: bool) -> None:
        if (problems, alone) == self._problems_shown:
            return
        self._problems_shown = (problems, alone)
        while (item := self.health_layout.takeAt(0)) is not None:
            if widget := item.widget():
                widget.deleteLater()
        if not problems and alone:
            # Nothing is wrong yet, and nothing proves the pool healthy: no peer has been seen.
            looking = QLabel("Looking for other InferHub machines…")
            looking.setStyleSheet("color: palette(placeholder-text); padding: 4px 0;")
            self.health_layout.addWidget(looking)
        elif not problems:
            ok = QLabel("✓  The pool is healthy")
            ok.setStyleSheet("color: #15803d; font-weight: 600; padding: 4px 0;")
            self.health_layout.addWidget(ok)
        for problem in problems:
            self.health_layout.addWidget(self._problem_card(problem))

    def _problem_card(self, problem: Problem) -> QFrame:
        """A problem in plain words, with a button for each step the owner can take."""
        card = QFrame()
        card.setObjectName("problem")
        color = _SEVERE if problem.severe else _WARNING
        card.setStyleSheet(
            f"QFrame#problem {{ border-left: 4px solid {color}; background: palette(alternate-base); }}"
        )
        text = QLabel(f"<b>{problem.title}</b><br>{problem.detail}")
        text.setWordWrap(True)
        text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        text.setToolTip(problem.technical)
        # Wrapped text in a nested layout is given the height of its wrapped lines only so.
        text.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.MinimumExpanding)
        layout = QVBoxLayout(card)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.addWidget(text)
        if problem.actions:
            buttons = QHBoxLayout()
            for action in problem.actions:
                button = QPushButton(action.value)
                button.clicked.connect(lambda _=False, chosen=action: self.act(chosen))
                buttons.addWidget(button)
            buttons.addStretch(1)
            layout.addLayout(buttons)
        return card

    def act(self, action: Action) -> None:
        """Take a step the owner chose on a problem."""
        if action is Action.INSTALL_OLLAMA:
            QDesktopServices.openUrl(QUrl(OLLAMA_DOWNLOAD))
        elif action in (Action.OPEN_SETTINGS, Action.INVITE):
            self._open_settings()
        elif action is Action.RETRY:
            self._bridge.retry()
        elif action is Action.FIREWALL_HELP:
            port = self._bridge.view.share_port if self._bridge.view else DEFAULT_SHARE_PORT
            self.help_box = QMessageBox(
                QMessageBox.Icon.Information,
                "Let InferHub through the firewall",
                "Machines running InferHub find each other with mDNS (UDP port 5353) and talk on TCP port "
                f"{port}. {firewall_hint(sys.platform, port)}",
                parent=self,
            )
            self.help_box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.help_box.open()

    def _show_addresses(self, addresses: tuple[AddressState, ...]) -> None:
        if addresses == self._addresses_shown:
            return
        self._addresses_shown = addresses
        while (item := self.addresses_layout.takeAt(0)) is not None:
            if (row := item.layout()) is not None:
                while (inner := row.takeAt(0)) is not None:
                    if widget := inner.widget():
                        widget.deleteLater()
                row.deleteLater()
        for entry in addresses:
            said, color = _ADDRESS_STATES[entry.state]
            label = QLabel(
                f"<b>{entry.address}</b> · <span style='color: {color}'>{said(entry.detail)}</span>"
            )
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setToolTip(entry.detail)
            remove = QPushButton("Remove")
            remove.setToolTip(f"Stop reaching {entry.address}")
            remove.clicked.connect(lambda _=False, address=entry.address: self._remove_peer(address))
            row = QHBoxLayout()
            row.addWidget(label, 1)
            row.addWidget(remove)
            self.addresses_layout.addLayout(row)

    def _remove_peer(self, address: str) -> None:
        try:
            self._bridge.remove_peer(address)
        except InferhubError as exc:
            self.add_peer_error.setText(str(exc))

    def _add_peer(self) -> None:
        address = self.peer_address.text().strip()
        if not address:
            return
        try:
            self._bridge.add_peer(address)
        except InferhubError as exc:
            self.add_peer_error.setText(str(exc))
            return
        self.add_peer_error.setText("")
        self.peer_address.clear()


# How each state of a peer named by address is said, and in which colour.
_ADDRESS_STATES: dict[str, tuple[Callable[[str], str], str]] = {
    "reaching": (lambda detail: "reaching…", "#6b7280"),
    "reached": (lambda detail: f"✓ reached {detail}", "#15803d"),
    "unreachable": (lambda detail: f"unreachable: {detail}", _SEVERE),
    "refused": (lambda detail: f"answers, but is not a peer: {detail}", _WARNING),
}


def _table(columns: tuple[str, ...], *, rows: int = 3) -> QTableWidget:
    """A read-only table whose columns fit their contents, the last taking the room left; a window too
    narrow for them scrolls rather than cutting a heading. At its smallest it shows `rows` rows."""
    table = QTableWidget(0, len(columns))
    for column, heading in enumerate(columns):
        item = QTableWidgetItem(heading)
        item.setToolTip(_COLUMN_TIPS[heading])
        table.setHorizontalHeaderItem(column, item)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setAlternatingRowColors(True)
    table.setShowGrid(False)
    table.setWordWrap(False)
    table.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
    table.verticalHeader().setDefaultSectionSize(_ROW_HEIGHT)
    header = table.horizontalHeader()
    # Sized to their contents once per fill (see _fill): resizing to contents as each cell is set costs
    # a pass over every row per cell, seconds for a full table on the loop the node shares.
    header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    header.setStretchLastSection(True)
    header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    # A narrow window adds a scroll bar under the rows.
    chrome = (
        header.sizeHint().height() + table.horizontalScrollBar().sizeHint().height() + 2 * table.frameWidth()
    )
    table.setMinimumHeight(chrome + rows * _ROW_HEIGHT)
    return table


def _fill(table: QTableWidget, rows: list[list[QTableWidgetItem]]) -> None:
    """Put `rows` in `table`, then fit its columns to them once."""
    table.setRowCount(len(rows))
    for row, cells in enumerate(rows):
        for column, item in enumerate(cells):
            table.setItem(row, column, item)
    # The last column stretches over the room left; the others fit what they hold.
    for column in range(table.columnCount() - 1):
        table.resizeColumnToContents(column)


def _pane(title: str, *widgets: QWidget) -> QWidget:
    """A titled part of the splitter."""
    label = QLabel(title)
    label.setStyleSheet("font-weight: 600; margin-top: 6px;")
    pane = QWidget()
    layout = QVBoxLayout(pane)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(label)
    for widget in widgets:
        layout.addWidget(widget, 1)
    return pane


def _item(text: str, tooltip: str = "") -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if tooltip:
        item.setToolTip(tooltip)
    return item


def _node_cells(node: NodeView) -> list[QTableWidgetItem]:
    vram = _item(
        f"{node.vram_used_mib / 1024:.1f} / {node.vram_total_mib / 1024:.0f} GiB"
        if node.vram_total_mib
        else "—"
    )
    if node.vram_total_mib:
        vram.setData(_FRACTION_ROLE, node.vram_used_mib / node.vram_total_mib)
    name = _item(node.name + ("  (this machine)" if node.local else ""))
    if not node.healthy:
        name.setForeground(QColor(_SEVERE))
        name.setToolTip(node.backend_error or node.breaker)
    return [
        name,
        _item(node.address),
        _item(node.gpu),
        vram,
        _item(f"{node.utilization_pct}%" if node.utilization_pct is not None else "—"),
        _item(f"{node.active} / {node.slots}"),
        _item(format_rate(node.tokens_per_s)),
        _item("paused", node.paused) if node.paused else _item("yes" if node.sharing else "no"),
        _item(short_models(node.loaded) or "—", "\n".join(node.installed)),
    ]


def _request_cells(done: RequestDone) -> list[QTableWidgetItem]:
    if done.cancelled:
        outcome = "cancelled by the client"
    elif done.error and done.status == 200:
        # The answer had begun when its node went: the status line cannot say so.
        outcome = f"stopped mid-answer: {done.error}"
    elif done.error:
        outcome = f"HTTP {done.status}: {done.error}" if done.status else done.error
    else:
        outcome = "ok" if done.attempts <= 1 else f"ok after {done.attempts} attempts"
    node = done.node or "—"
    if done.api == "share":
        node = f"{node} (for {done.client or 'a peer'})"
    outcome_item = _item(outcome, done.error or "")
    if not done.ok:
        outcome_item.setForeground(QColor(_SEVERE if done.error else _WARNING))
    return [
        _item(format_when(done.at - done.duration_s)),
        _item(short_name(done.model) if done.model else "—"),
        _item(node),
        _item(format_duration(done.duration_s)),
        _item(format_rate(done.tokens_per_s)),
        outcome_item,
    ]


def _underway_cells(running: RequestUnderway, now: float) -> list[QTableWidgetItem]:
    node = running.node or "choosing a node…"
    if running.node and running.api == "share":
        node = f"{node} (for {running.client or 'a peer'})"
    outcome = _item("running…", "The answer is still coming; the row stays when it ends")
    outcome.setForeground(QColor(_RUNNING))
    return [
        _item(format_when(running.at)),
        _item(short_name(running.model) if running.model else "—"),
        _item(node),
        _item(format_duration(max(0.0, now - running.at))),
        _item("—"),
        outcome,
    ]


def _audit_cells(entry: dict[str, Any]) -> list[QTableWidgetItem]:
    _, peer, model, tokens, _, outcome = audit_row(entry)
    seconds = entry.get("duration_s")
    seconds = seconds if isinstance(seconds, int | float) else None
    when = format_when(datetime.datetime.fromisoformat(entry["at"]).timestamp() - (seconds or 0.0))
    duration = format_duration(seconds)
    outcome_item = _item(outcome, entry.get("error") or "")
    if entry.get("outcome") != "ok":
        outcome_item.setForeground(QColor(_SEVERE if entry.get("outcome") == "error" else _WARNING))
    return [
        _item(when),
        _item(peer, f"node id {entry['peer_id']}" if entry.get("peer_id") else "the request named no node"),
        _item(model),
        _item(tokens),
        _item(duration),
        outcome_item,
    ]
