"""The dashboard shows the pool's nodes, requests, health and throughput, and adds peers by address."""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PySide6.QtGui import QColor, QDesktopServices
from PySide6.QtWidgets import QApplication, QLabel, QPushButton, QTableWidget, QWidget
from pytestqt.qtbot import QtBot

from inferhub_desktop.core import ConfigError, PeerJoined, PeerLeft, RequestDone, RequestUnderway, parse_peer
from inferhub_desktop.core.status import OwnerState
from inferhub_desktop.ui.bridge import Bridge
from inferhub_desktop.ui.dashboard import (
    _FRACTION_ROLE,
    AUDIT_COLUMNS,
    PEER_COLUMNS,
    REQUEST_COLUMNS,
    Dashboard,
)
from inferhub_desktop.ui.model import NO_PEERS_AFTER_S, firewall_hint, format_when
from tests.ui.demo import DemoCore

NODE = PEER_COLUMNS.index("Node")
VRAM = PEER_COLUMNS.index("VRAM")
OUTCOME = REQUEST_COLUMNS.index("Outcome")
# The demo's requests, the last to arrive first (the 70b one took long: it arrived before the 8b one
# served for cobalt, and ended after it).
REPLAYED_MODELS = [
    "qwen2.5-coder:14b",
    "llama3.1:8b",
    "llama3.1:70b",
    "llama3.1:8b",
    "nomic-embed-text",
    "mistral-small:24b",
]


@pytest.fixture
def now() -> list[float]:
    return [1000.0]


@pytest.fixture
def bridge(qapp: QApplication, core: DemoCore, now: list[float]) -> Iterator[Bridge]:
    bridge = Bridge(clock=lambda: now[0])
    bridge.attach(core)
    yield bridge
    bridge.detach()


@pytest.fixture
def settings_opened() -> list[int]:
    return []


@pytest.fixture
def dashboard(qtbot: QtBot, bridge: Bridge, settings_opened: list[int]) -> Dashboard:
    dashboard = Dashboard(bridge, open_settings=lambda: settings_opened.append(1))
    qtbot.addWidget(dashboard)
    return dashboard


def column(table: QTableWidget, index: int) -> list[str]:
    return [table.item(row, index).text() for row in range(table.rowCount())]


def cells(table: QTableWidget, columns: tuple[str, ...], name: str) -> list[str]:
    return column(table, columns.index(name))


def health_widgets(dashboard: Dashboard) -> list[QWidget]:
    layout = dashboard.health_layout
    return [layout.itemAt(i).widget() for i in range(layout.count())]


def health_texts(dashboard: Dashboard) -> list[str]:
    """The health panel's words: a line, or each problem card's text."""
    texts = []
    for widget in health_widgets(dashboard):
        label = widget if isinstance(widget, QLabel) else widget.findChild(QLabel)
        assert isinstance(label, QLabel)
        texts.append(label.text())
    return texts


def card_buttons(dashboard: Dashboard, index: int) -> list[QPushButton]:
    return health_widgets(dashboard)[index].findChildren(QPushButton)


def request(**changes: Any) -> RequestDone:
    done = RequestDone(
        at=time.time(),
        api="local",
        endpoint="/api/chat",
        model="llama3.1:8b",
        node="cobalt",
        client="",
        attempts=1,
        status=200,
        duration_s=1.5,
        first_byte_s=0.1,
        tokens=150,
        tokens_per_s=100.0,
    )
    return dataclasses.replace(done, **changes)


def test_the_nodes_table_lists_this_machine_first(dashboard: Dashboard) -> None:
    table = dashboard.peers_table

    assert table.rowCount() == 4
    assert column(table, NODE) == ["atlas  (this machine)", "borealis", "cobalt", "dune"]
    assert cells(table, PEER_COLUMNS, "Address") == [
        "this machine",
        "192.168.1.21:11436",
        "192.168.1.22:11436",
        "192.168.1.23:11436",
    ]
    assert cells(table, PEER_COLUMNS, "GPU") == ["RTX 4090", "2x RTX 3090", "RTX 4080 SUPER", "RTX A6000"]
    assert cells(table, PEER_COLUMNS, "Sharing") == ["yes", "yes", "yes", "no"]


def test_vram_cells_carry_the_share_in_use_for_the_bar(dashboard: Dashboard, bridge: Bridge) -> None:
    table = dashboard.peers_table
    assert bridge.view is not None

    assert column(table, VRAM) == ["16.8 / 24 GiB", "41.1 / 48 GiB", "5.9 / 16 GiB", "1.0 / 48 GiB"]
    for row, node in enumerate(bridge.view.nodes):
        fraction = table.item(row, VRAM).data(_FRACTION_ROLE)
        assert fraction == pytest.approx(node.vram_used_mib / node.vram_total_mib)
    assert table.item(0, VRAM).data(_FRACTION_ROLE) == pytest.approx(17210 / 24564)
    assert table.itemDelegateForColumn(VRAM) is not None


def test_a_node_without_a_vram_reading_has_no_bar(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = dataclasses.replace(core.status(), telemetry=None)
    monkeypatch.setattr(core, "status", lambda: status)

    bridge.refresh()

    assert dashboard.peers_table.item(0, VRAM).text() == "—"
    assert dashboard.peers_table.item(0, VRAM).data(_FRACTION_ROLE) is None
    assert dashboard.peers_table.item(0, PEER_COLUMNS.index("GPU use")).text() == "—"


def test_the_nodes_table_shows_gpu_use_load_and_speed(dashboard: Dashboard) -> None:
    table = dashboard.peers_table

    assert cells(table, PEER_COLUMNS, "GPU use") == ["71%", "86%", "34%", "0%"]
    assert cells(table, PEER_COLUMNS, "Busy") == ["1 / 2", "2 / 2", "0 / 1", "0 / 2"]
    assert cells(table, PEER_COLUMNS, "Speed") == ["96 tok/s", "22 tok/s", "118 tok/s", "—"]
    assert cells(table, PEER_COLUMNS, "Loaded models") == [
        "qwen2.5-coder:14b, nomic-embed-text:latest",
        "llama3.1:70b",
        "llama3.1:8b",
        "—",
    ]


def test_the_header_says_who_and_what(dashboard: Dashboard) -> None:
    assert dashboard.title.text() == "atlas · 3 peers · 5 GPUs · 7 models"
    assert dashboard.subtitle.text() == (
        "Sharing this GPU, serving a request for colleagues · "
        "Private pool 5e1f0c2a: every peer proven by its key"
    )
    assert dashboard.api_label.text() == "API  http://localhost:11435"


def test_the_requests_table_shows_the_newest_first(dashboard: Dashboard, core: DemoCore) -> None:
    assert dashboard.requests_table.rowCount() == 0

    core.replay_requests()

    table = dashboard.requests_table
    assert table.rowCount() == 6
    assert cells(table, REQUEST_COLUMNS, "Model") == REPLAYED_MODELS
    assert cells(table, REQUEST_COLUMNS, "Node") == [
        "atlas",
        "atlas (for cobalt)",
        "borealis",
        "cobalt",
        "atlas",
        "borealis",
    ]
    assert cells(table, REQUEST_COLUMNS, "Speed")[0] == f"{212 / 2.1:.0f} tok/s"
    assert cells(table, REQUEST_COLUMNS, "Duration")[0] == "2.1 s"
    assert column(table, OUTCOME)[:5] == ["ok"] * 5


def test_a_failed_request_says_why_in_red(dashboard: Dashboard, core: DemoCore) -> None:
    core.replay_requests()

    failed = dashboard.requests_table.item(5, OUTCOME)

    assert failed.text() == "HTTP 500: model requires more system memory"
    assert failed.toolTip() == "model requires more system memory"
    assert failed.foreground().color() == QColor("#dc2626")
    assert dashboard.requests_table.item(5, REQUEST_COLUMNS.index("Speed")).text() == "—"


def test_a_cancelled_request_says_so(dashboard: Dashboard, core: DemoCore) -> None:
    core.replay_requests()

    core.events.emit(request(cancelled=True, tokens=None, tokens_per_s=None))

    assert dashboard.requests_table.rowCount() == 7
    assert dashboard.requests_table.item(0, OUTCOME).text() == "cancelled by the client"


def test_a_retried_request_says_how_many_attempts(dashboard: Dashboard, core: DemoCore) -> None:
    core.events.emit(request(attempts=3))

    assert dashboard.requests_table.item(0, OUTCOME).text() == "ok after 3 attempts"


def test_the_share_button_turns_sharing(dashboard: Dashboard, core: DemoCore) -> None:
    assert dashboard.share_button.isChecked()
    assert dashboard.share_button.text() == "Sharing this GPU"

    dashboard.share_button.click()

    assert core.status().share is False
    assert not dashboard.share_button.isChecked()
    assert dashboard.share_button.text() == "Share this GPU"
    assert dashboard.subtitle.text().startswith("Not sharing")

    dashboard.share_button.click()

    assert core.status().share is True
    assert dashboard.share_button.isChecked()


def test_the_health_panel_says_the_pool_is_healthy(dashboard: Dashboard) -> None:
    assert health_texts(dashboard) == ["✓  The pool is healthy"]


def test_with_every_peer_gone_the_pool_is_not_called_healthy(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "peers", lambda: [])
    core.events.emit(PeerLeft(node_id="b0", name="borealis", reason="peer 'borealis' stopped answering"))
    bridge.refresh()
    (card,) = health_texts(dashboard)
    assert card.startswith("<b>Lost borealis</b><br>borealis stopped answering.")
    # Back: the loss is no longer said, and with no peer at all nothing claims the pool healthy.
    core.events.emit(PeerJoined(node_id="b0", name="borealis", address="192.168.1.11"))
    bridge.refresh()
    assert health_texts(dashboard) == ["Looking for other InferHub machines…"]


def test_the_health_panel_shows_a_problem(
    dashboard: Dashboard,
    bridge: Bridge,
    core: DemoCore,
    monkeypatch: pytest.MonkeyPatch,
    settings_opened: list[int],
) -> None:
    status = core.status()
    down = dataclasses.replace(status.backend, reachable=False, error="connection refused")
    status = dataclasses.replace(status, backend=down)
    monkeypatch.setattr(core, "status", lambda: status)

    bridge.refresh()

    (card,) = health_texts(dashboard)
    assert card.startswith("<b>No model server on this machine</b><br>InferHub shares the model server")
    assert dashboard.subtitle.text().startswith("Sharing is on, but there is no model server to share")
    # The steps are buttons: Download Ollama opens its page, Settings opens, Try again asks the node.
    buttons = card_buttons(dashboard, 0)
    assert [b.text() for b in buttons] == ["Download Ollama", "Choose a server in Settings", "Try again"]
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()))
    buttons[0].click()
    assert opened == ["https://ollama.com/download"]
    buttons[1].click()
    assert settings_opened == [1]
    buttons[2].click()
    assert core.probes == 1
    name = dashboard.peers_table.item(0, NODE)
    assert name.foreground().color() == QColor("#dc2626")
    assert name.toolTip() == "connection refused"

    monkeypatch.undo()
    bridge.refresh()

    assert health_texts(dashboard) == ["✓  The pool is healthy"]


@pytest.mark.parametrize("address", ["host:99999", "a/b"])
def test_adding_a_bad_peer_address_says_why(dashboard: Dashboard, core: DemoCore, address: str) -> None:
    with pytest.raises(ConfigError) as expected:
        parse_peer(address)
    dashboard.peer_address.setText(address)

    dashboard.add_peer_button.click()

    assert dashboard.add_peer_error.text() == str(expected.value)
    assert dashboard.peer_address.text() == address
    assert core.store.settings.peers == ()


def test_adding_a_peer_by_address_tells_the_node(dashboard: Dashboard, core: DemoCore) -> None:
    dashboard.peer_address.setText("a/b")
    dashboard.add_peer_button.click()
    assert dashboard.add_peer_error.text()

    dashboard.peer_address.setText("  10.0.0.5:11436 ")
    dashboard.add_peer_button.click()

    assert core.store.settings.peers == ("10.0.0.5:11436",)
    assert dashboard.peer_address.text() == ""
    assert dashboard.add_peer_error.text() == ""

    dashboard.peer_address.setText("10.0.0.5:11436")
    dashboard.add_peer_button.click()

    assert core.store.settings.peers == ("10.0.0.5:11436",)


def test_the_charts_take_a_sample_each_refresh(
    dashboard: Dashboard, bridge: Bridge, now: list[float]
) -> None:
    before = len(dashboard.throughput_chart.samples)

    now[0] += 1.0
    bridge.refresh()

    assert len(dashboard.throughput_chart.samples) == before + 1
    assert dashboard.throughput_chart.samples[-1][0] == now[0]
    assert dashboard.gpu_chart.samples[-1] == (now[0], 71)


def test_throughput_is_the_tokens_generated_over_the_time(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, now: list[float]
) -> None:
    assert bridge.view is not None
    tokens_before = bridge.view.tokens_generated

    now[0] += 4.0
    core.advance(4.0)
    bridge.refresh()

    assert bridge.view.tokens_generated > tokens_before
    expected = (bridge.view.tokens_generated - tokens_before) / 4.0
    assert dashboard.throughput_chart.latest == pytest.approx(expected)
    # atlas at 96 tok/s and borealis at 2 x 21.5 tok/s.
    assert expected == pytest.approx(139.0)


def test_settings_button_opens_the_settings(dashboard: Dashboard, settings_opened: list[int]) -> None:
    (button,) = [b for b in dashboard.findChildren(QPushButton) if b.text() == "Settings…"]

    button.click()

    assert settings_opened == [1]


def test_closing_the_dashboard_only_hides_it(qtbot: QtBot, dashboard: Dashboard) -> None:
    dashboard.show()
    qtbot.waitExposed(dashboard)

    with qtbot.assertNotEmitted(dashboard.closed):
        dashboard.close()

    assert not dashboard.isVisible()


def test_closing_the_only_window_closes_it_for_good(qtbot: QtBot, bridge: Bridge) -> None:
    dashboard = Dashboard(bridge, open_settings=lambda: None, standalone_reason="no tray")
    qtbot.addWidget(dashboard)
    assert dashboard.banner.text() == "no tray"
    dashboard.show()
    qtbot.waitExposed(dashboard)

    with qtbot.waitSignal(dashboard.closed, timeout=1000):
        dashboard.close()

    assert not dashboard.isVisible()


def test_the_populated_dashboard_renders(dashboard: Dashboard, core: DemoCore) -> None:
    core.replay_requests()
    dashboard.resize(1240, 820)

    image = dashboard.grab().toImage()

    assert not image.isNull()
    assert image.width() >= 1240
    assert image.height() >= 820


def test_used_by_peers_lists_the_audit_log_newest_first(dashboard: Dashboard, core: DemoCore) -> None:
    table = dashboard.audit_table

    assert (table.isHidden(), dashboard.audit_note.isHidden()) == (False, True)
    assert cells(table, AUDIT_COLUMNS, "Peer") == ["cobalt", "dune", "borealis", "cobalt"]
    assert cells(table, AUDIT_COLUMNS, "Model") == [
        "nomic-embed-text",
        "qwen2.5-coder:14b",
        "llama3.1:8b",
        "qwen2.5-coder:14b",
    ]
    assert cells(table, AUDIT_COLUMNS, "Tokens") == ["—", "—", "95", "388"]
    assert cells(table, AUDIT_COLUMNS, "Duration") == ["50 ms", "31.0 s", "900 ms", "4.2 s"]
    # The same time format as the requests table's.
    entries = list(reversed(core.audit(10)))
    # When each arrived: the entry is written as it ends.
    assert cells(table, AUDIT_COLUMNS, "Time") == [
        format_when(datetime.datetime.fromisoformat(e["at"]).timestamp() - e["duration_s"]) for e in entries
    ]
    failed = table.item(1, AUDIT_COLUMNS.index("Outcome"))
    assert failed.text() == "error: HTTP 500: model runner has unexpectedly stopped"
    assert failed.toolTip() == "model runner has unexpectedly stopped"
    assert failed.foreground().color() == QColor("#dc2626")
    assert table.item(0, AUDIT_COLUMNS.index("Outcome")).text() == "ok"
    assert table.item(0, AUDIT_COLUMNS.index("Peer")).toolTip() == f"node id {core.peers()[1].node_id}"


def test_the_audit_is_read_again_only_after_a_peers_request(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    read = core.audit

    def counted(limit: int) -> list[dict[str, Any]]:
        reads.append(limit)
        return read(limit)

    monkeypatch.setattr(core, "audit", counted)

    bridge.refresh()
    core.events.emit(request())  # this machine's own request: nothing for the audit
    bridge.refresh()
    assert reads == []

    core.replay_requests()  # one of them was served here for cobalt
    assert dashboard.audit_table.rowCount() == 4  # shown at the next refresh
    bridge.refresh()
    bridge.refresh()

    assert len(reads) == 1
    assert dashboard.audit_table.rowCount() == 5
    assert cells(dashboard.audit_table, AUDIT_COLUMNS, "Peer")[0] == "cobalt"
    assert cells(dashboard.audit_table, AUDIT_COLUMNS, "Tokens")[0] == "140"


def test_with_no_peer_served_yet_used_by_peers_says_so(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "audit", lambda limit: [])

    bridge.attach(core)

    assert dashboard.audit_table.isHidden()
    assert not dashboard.audit_note.isHidden()
    assert dashboard.audit_note.text() == "No peer has used this machine yet."


def address_rows(dashboard: Dashboard) -> list[tuple[QLabel, QPushButton]]:
    rows = []
    layout = dashboard.addresses_layout
    for index in range(layout.count()):
        row = layout.itemAt(index).layout()
        label, button = row.itemAt(0).widget(), row.itemAt(1).widget()
        assert isinstance(label, QLabel)
        assert isinstance(button, QPushButton)
        rows.append((label, button))
    return rows


def test_a_peer_added_by_address_stays_listed_with_how_reaching_it_goes(
    dashboard: Dashboard, core: DemoCore
) -> None:
    assert address_rows(dashboard) == []
    dashboard.peer_address.setText("10.0.0.9:11436")
    dashboard.add_peer_button.click()

    ((label, remove),) = address_rows(dashboard)
    assert "<b>10.0.0.9:11436</b>" in label.text()
    assert "unreachable: cannot connect: Connection refused" in label.text()
    assert dashboard.peer_address.text() == ""
    # It stays, with its state, until the owner removes it.
    remove.click()
    assert address_rows(dashboard) == []
    assert core.store.settings.peers == ()


def test_modes_the_owner_turned_on_show_in_the_header(
    dashboard: Dashboard, core: DemoCore, bridge: Bridge
) -> None:
    assert "only this machine" not in dashboard.subtitle.text()
    core.store.change(local_only=True, pool_pull=True)
    bridge.refresh()
    assert dashboard.subtitle.text().endswith(
        " · Your requests use only this machine · The pool may pull models here"
    )


def test_alone_in_the_open_pool_the_firewall_help_is_a_button_away(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = dataclasses.replace(core.status(), pool=None, share_port=12345)
    monkeypatch.setattr(core, "status", lambda: status)
    monkeypatch.setattr(core, "peers", lambda: [])
    bridge._alone_since -= NO_PEERS_AFTER_S
    bridge.refresh()
    (card,) = health_texts(dashboard)
    assert card.startswith("<b>No other InferHub seen on this network</b>")
    (help_button,) = card_buttons(dashboard, 0)
    help_button.click()
    assert dashboard.help_box is not None
    assert "TCP port 12345" in dashboard.help_box.text()
    assert firewall_hint(sys.platform, 12345) in dashboard.help_box.text()
    dashboard.help_box.close()


def test_an_answer_cut_off_by_its_node_is_said_so_not_as_http_200(
    dashboard: Dashboard, core: DemoCore
) -> None:
    core.events.emit(request(error="cobalt at http://x closed the connection", tokens_per_s=9e6))
    table = dashboard.requests_table
    assert cells(table, REQUEST_COLUMNS, "Outcome") == [
        "stopped mid-answer: cobalt at http://x closed the connection"
    ]
    assert cells(table, REQUEST_COLUMNS, "Speed") == ["—"]


def test_a_request_is_shown_while_it_runs_and_stays_when_it_ends(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore
) -> None:
    started = time.time() - 12
    core.running = [
        RequestUnderway("r1", started, "local", "llama3.1:70b", "borealis", ""),
        RequestUnderway("r2", time.time() - 1, "share", "llama3.1:8b", "atlas", "cobalt"),
        RequestUnderway("r3", time.time(), "local", "qwen2.5-coder:14b", "", ""),
    ]
    bridge.refresh()
    table = dashboard.requests_table
    # The newest first, above the requests that ended.
    assert cells(table, REQUEST_COLUMNS, "Node") == ["choosing a node…", "atlas (for cobalt)", "borealis"]
    assert cells(table, REQUEST_COLUMNS, "Outcome") == ["running…"] * 3
    assert cells(table, REQUEST_COLUMNS, "Time")[2] == format_when(started)
    assert cells(table, REQUEST_COLUMNS, "Duration")[2] in ("12.0 s", "12.1 s")

    # It ends: shown once, as it ended, at once (the node lists it no more from now on).
    core.running = core.running[1:]
    ended = request(at=time.time(), duration_s=13.0, model="llama3.1:70b", node="borealis", request_id="r1")
    core.events.emit(ended)
    assert cells(table, REQUEST_COLUMNS, "Outcome") == ["running…", "running…", "ok"]
    # Its time is still when it arrived.
    assert cells(table, REQUEST_COLUMNS, "Time")[2] == format_when(time.time() - 13.0)


@pytest.mark.parametrize("private", [False, True], ids=["open", "private"])
def test_nodes_of_another_pool_nearby_are_named_with_why_they_are_not_used(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch, private: bool
) -> None:
    assert dashboard.hint.isHidden()
    status = core.status()
    monkeypatch.setattr(
        core, "status", lambda: dataclasses.replace(status, pool="4f1c" * 8 if private else None)
    )
    core.nearby = ["192.168.1.77:11436", "192.168.1.78:11436"]
    bridge.refresh()
    assert not dashboard.hint.isHidden()
    text = dashboard.hint.text()
    assert text.startswith("2 machines nearby (192.168.1.77:11436, 192.168.1.78:11436) are")
    if private:
        assert "open LAN pool or another private pool" in text
        assert "Invite" in text
    else:
        assert "in a private pool" in text
        assert "invite" in text


def test_every_column_heading_says_what_it_holds(dashboard: Dashboard) -> None:
    for table in (dashboard.peers_table, dashboard.requests_table, dashboard.audit_table):
        for index in range(table.columnCount()):
            assert table.horizontalHeaderItem(index).toolTip(), table.horizontalHeaderItem(index).text()


def visible_rows(table: QTableWidget) -> float:
    return table.viewport().height() / table.verticalHeader().defaultSectionSize()


def test_the_smallest_window_shows_rows_of_every_table_and_whole_headings(
    qtbot: QtBot, dashboard: Dashboard, core: DemoCore
) -> None:
    core.replay_requests()
    dashboard.resize(1, 1)
    dashboard.show()
    qtbot.waitExposed(dashboard)
    # The smallest the window goes: what its layout needs.
    assert dashboard.size() == dashboard.minimumSize()
    for table, rows in (
        (dashboard.peers_table, 3),
        (dashboard.requests_table, 2),
        (dashboard.audit_table, 2),
    ):
        assert visible_rows(table) >= rows
        # Every column whole, none scrolled out of sight.
        assert table.horizontalScrollBar().maximum() == 0
        header = table.horizontalHeader()
        for index in range(table.columnCount()):
            heading = table.horizontalHeaderItem(index).text()
            assert header.sectionSize(index) >= header.fontMetrics().horizontalAdvance(heading), heading
    # The header's words are not squeezed out of their lines.
    for label in (dashboard.title, dashboard.subtitle):
        assert label.height() >= label.heightForWidth(label.width()), label.text()


def test_a_larger_window_gives_the_room_to_every_table(qtbot: QtBot, dashboard: Dashboard) -> None:
    dashboard.resize(1, 1)
    dashboard.show()
    qtbot.waitExposed(dashboard)
    small = [visible_rows(t) for t in (dashboard.peers_table, dashboard.requests_table)]
    dashboard.resize(1600, 1300)
    qtbot.waitUntil(lambda: dashboard.height() == 1300)
    large = [visible_rows(t) for t in (dashboard.peers_table, dashboard.requests_table)]
    assert all(after > before + 3 for before, after in zip(small, large, strict=True)), (small, large)


def test_a_machine_without_gpu_figures_says_so_instead_of_waiting(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert dashboard.gpu_chart.placeholder == "waiting for data"
    status = core.status()
    monkeypatch.setattr(core, "status", lambda: dataclasses.replace(status, telemetry=None))
    bridge.refresh()
    assert dashboard.gpu_chart.placeholder.startswith("no GPU figures: this machine reports none")


def test_many_problems_scroll_and_the_smallest_window_fits_a_laptop_screen(
    qtbot: QtBot, dashboard: Dashboard, bridge: Bridge
) -> None:
    bridge.lost.update({f"peer{n}": "stopped answering" for n in range(5)})
    bridge.refresh()
    dashboard.resize(1, 1)
    dashboard.show()
    qtbot.waitExposed(dashboard)
    # A 1366 x 768 screen, less a panel and a title bar.
    assert dashboard.height() <= 720
    notes = dashboard.notes
    assert notes.verticalScrollBar().maximum() > 0
    # With room, every problem shows whole.
    dashboard.resize(1240, 1500)
    qtbot.waitUntil(lambda: notes.verticalScrollBar().maximum() == 0)
    assert len(health_texts(dashboard)) == 5


def test_used_by_peers_sums_up_what_each_peer_had_this_machine_serve_today(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    noon = datetime.datetime.combine(datetime.date.today(), datetime.time(12)).astimezone()
    yesterday = noon - datetime.timedelta(days=1)
    today = [
        {"at": when.isoformat(), "peer": peer, "verified": True, "tokens": tokens, "duration_s": seconds}
        for when, peer, tokens, seconds in [
            (yesterday, "dune", 500, 60.0),
            (noon, "cobalt", 100, 2.0),
            (noon, "borealis", 300, 9.5),
            (noon, "cobalt", 50, 1.0),
        ]
    ]
    monkeypatch.setattr(core, "audit", lambda limit: today[-limit:])
    monkeypatch.setattr(core, "_audit", today)

    bridge.attach(core)

    assert not dashboard.usage_note.isHidden()
    assert dashboard.usage_note.text() == (
        "Today: borealis: 1 request, 300 tokens, 10 s · cobalt: 2 requests, 150 tokens, 3 s"
    )


def test_a_peer_paused_for_its_owner_shows_as_paused_saying_why(
    dashboard: Dashboard, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers = core.peers()
    why = "quiet hours (mon-fri 09:00-17:30)"
    paused = dataclasses.replace(peers[0].status, owner=OwnerState(paused=why))
    peers[0] = dataclasses.replace(peers[0], status=paused)
    monkeypatch.setattr(core, "peers", lambda: peers)

    bridge.refresh()

    table = dashboard.peers_table
    row = cells(table, PEER_COLUMNS, "Node").index(peers[0].name)
    sharing = table.item(row, PEER_COLUMNS.index("Sharing"))
    assert (sharing.text(), sharing.toolTip()) == ("paused", why)
    assert bridge.view is not None
    assert peers[0].name not in {p.name for p in bridge.view.peers if p.sharing}
