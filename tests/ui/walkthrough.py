"""The desktop app driven as a new user drives it: the real app (node, tray, dashboard, Settings, pairing)
on a real X display with a tray host, its clicks made on its own widgets.

`tests/ui/test_walkthrough.py` runs this inside one host of a namespace LAN, with two headless nodes on
two others. What only the other machines can do, this asks for on stdout (`ASK what args…`) and waits for
`done` on stdin: start this machine's model server, join a peer with an invite, kill a peer, start it
again. Each step passed is one `STEP` line with what was measured; the first that fails ends the run with
`FAILED` and exit status 1. With `--shots DIR`, the README's screenshots are saved on the way.

    python -m tests.ui.walkthrough --config DIR --backend URL --interface IP [--shots DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import qasync
from PySide6.QtCore import QPoint, QRect, Qt
from PySide6.QtGui import QColor, QFont, QLinearGradient, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import QApplication, QDialogButtonBox, QLabel, QPushButton, QStyleFactory, QWidget

from inferhub_desktop.core import SettingsStore
from inferhub_desktop.ui.app import Desktop
from inferhub_desktop.ui.icons import TrayState, tray_icon
from inferhub_desktop.ui.tray import Tray

T = TypeVar("T")
# Each step's own limit; the peers' coming and going has the issue's 5 s.
_STEP_S = 20.0
_LOST_WITHIN_S = 5.0


class Walk:
    """The app under test, and the means to wait on it, ask the LAN for things and take pictures."""

    def __init__(self, desktop: Desktop, shots: Path | None) -> None:
        self.desktop = desktop
        self.shots = shots
        self.messages: list[tuple[str, str]] = []
        desktop.tray.notifier.shown.connect(lambda title, text: self.messages.append((title, text)))
        self._stdin = asyncio.StreamReader()

    async def open_stdin(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self._stdin), sys.stdin)

    async def ask(self, *what: str) -> None:
        """Have the test do something only the LAN can do, and wait until it says it is done."""
        print("ASK", *what, flush=True)
        answer = (await asyncio.wait_for(self._stdin.readline(), 60)).decode().strip()
        if answer != "done":
            raise AssertionError(f"asked {' '.join(what)}, the test answered {answer!r}")

    @staticmethod
    def step(name: str, detail: str = "") -> None:
        print("STEP", name, detail, flush=True)

    async def until(
        self, what: str, check: Callable[[], T | None], within: float = _STEP_S
    ) -> tuple[T, float]:
        """Wait until `check()` gives something; return it and how long that took, or fail naming `what`."""
        started = time.monotonic()
        while not (found := check()):
            if time.monotonic() - started > within:
                raise AssertionError(f"not within {within:.0f} s: {what}")
            await asyncio.sleep(0.05)
        return found, time.monotonic() - started

    async def shoot(self, name: str, widget: QWidget) -> None:
        if self.shots is None:
            return
        # The loop runs Qt's events too: a moment lets the window lay itself out and paint.
        await asyncio.sleep(0.3)
        path = self.shots / f"{name}.png"
        widget.grab().save(str(path))
        print("SHOT", path, flush=True)

    async def shoot_menu(self, name: str) -> None:
        if self.shots is None:
            return
        path = self.shots / f"{name}.png"
        _menu_scene(self.desktop.tray).save(str(path))
        print("SHOT", path, flush=True)

    # What the owner sees.

    @property
    def view_peers(self) -> list[str]:
        view = self.desktop.bridge.view
        return [p.name for p in view.peers] if view else []

    def health(self) -> list[str]:
        """The dashboard's health panel, as its words."""
        layout = self.desktop.dashboard.health_layout
        texts = []
        for index in range(layout.count()):
            widget = layout.itemAt(index).widget()
            label = widget if isinstance(widget, QLabel) else widget.findChild(QLabel)
            texts.append(label.text() if label else "")
        return texts

    def card_button(self, words: str) -> QPushButton:
        for button in self.desktop.dashboard.health.findChildren(QPushButton):
            if button.text() == words and button.isVisible():
                return button
        raise AssertionError(f"no button {words!r} in the health panel: {self.health()}")


async def walk(w: Walk, store: SettingsStore) -> None:
    desktop = w.desktop
    await w.open_stdin()
    await w.until("the node runs", lambda: desktop.node is not None and desktop.node.running)
    tray, dashboard, bridge = desktop.tray, desktop.dashboard, desktop.bridge
    assert tray.icon.isVisible(), "the tray icon is not shown: no tray host?"
    desktop.show_dashboard()
    dashboard.resize(1240, 860)

    # First run, no model server yet: said in words, with the steps to take; the colleagues serve meanwhile.
    await w.until(
        "the no-model-server card", lambda: "No model server on this machine" in " ".join(w.health())
    )
    await w.until("the colleagues seen", lambda: len(w.view_peers) == 2)
    await w.until("the tray says no model server", lambda: tray.state is TrayState.NO_BACKEND)
    assert "no model server on this machine" in tray.icon.toolTip(), tray.icon.toolTip()
    buttons = [b.text() for b in dashboard.health.findChildren(QPushButton) if b.isVisible()]
    assert buttons == ["Download Ollama", "Choose a server in Settings", "Try again"], buttons
    await w.shoot("first-run", dashboard)
    w.step("first run without a model server", f"tray: {tray.icon.toolTip()!r}")
    await w.ask("start-backend")
    w.card_button("Try again").click()
    _, took = await w.until("the model server found", lambda: bridge.view and bridge.view.me.backend_up)
    w.step("model server found after Try again", f"{took:.2f} s")

    # Share on from the tray menu: the menu and the window say so at once, and no message repeats it.
    tray.notifier.flush()  # the colleagues' joining, told
    w.messages.clear()
    tray.share_action.trigger()
    await w.until("sharing on", lambda: store.settings.share and desktop.node and desktop.node.status().share)
    await w.until("the dashboard shows sharing", lambda: dashboard.share_button.isChecked())
    assert tray.share_action.isChecked()
    assert dashboard.subtitle.text().startswith("Sharing this"), dashboard.subtitle.text()

    # A name saved in Settings restarts the node; sharing stays on, and nothing is announced for it.
    desktop.open_settings()
    dialog = desktop.settings_dialog
    assert dialog is not None
    dialog.name.setText("ws-alice")
    dialog.buttons.button(QDialogButtonBox.StandardButton.Save).click()
    before = desktop.node
    await w.until("the node restarted", lambda: desktop.node is not before and desktop.node.running)
    await w.until("the new name shown", lambda: dashboard.title.text().startswith("ws-alice"))
    assert store.settings.share, "sharing flipped off by saving a name"
    assert desktop.node.status().share, "the node stopped sharing when a name was saved"
    assert tray.share_action.isChecked()
    assert dashboard.share_button.isChecked()
    assert dashboard.subtitle.text().startswith("Sharing this"), dashboard.subtitle.text()
    await w.until("the colleagues back", lambda: len(w.view_peers) == 2)
    assert not w.messages, w.messages
    assert not tray.notifier.waiting, tray.notifier.waiting
    w.step("still sharing after saving a name in Settings", "no message")

    # Pairing: make a private pool, invite each peer, see it join.
    desktop.open_settings()
    dialog = desktop.settings_dialog
    assert dialog is not None
    assert dialog.pool is not None
    panel = dialog.pool
    await w.until("the peers seen", lambda: len(w.view_peers) == 2)
    assert panel.peers_drop().startswith("Your 2 current peers will no longer see or use this machine")
    await panel._run(panel.make())
    assert not panel.error.text(), panel.error.text()
    share_at = f"{desktop.node.settings.interfaces[0]}:{desktop.node.share_port}"
    for peer in ("peer1", "peer2"):
        panel.invite_button.click()
        invite = panel.invite_box
        assert invite.copy_button.isVisible()
        assert invite.waiting.text() == "Waiting for a machine to join…"
        if peer == "peer1":
            await w.shoot("pairing", invite)
        started = time.monotonic()
        await w.ask("join", peer, invite.code.text(), share_at)
        joined = f"✓ {peer} joined"
        await w.until(joined, lambda box=invite, said=joined: box.waiting.text().startswith(said))
        invite.close()
        await w.until(f"{peer} a peer again", lambda p=peer: p in w.view_peers)
        members = [panel.members.topLevelItem(i).text(0) for i in range(panel.members.topLevelItemCount())]
        assert any(peer in m for m in members), members
        w.step(
            f"{peer} joined with an invite and is listed",
            f"{time.monotonic() - started:.2f} s after the code",
        )
    dialog.reject()
    assert " · Private pool " in dashboard.subtitle.text(), dashboard.subtitle.text()

    # The pool serving: a request for peer1's model streams while the window shows it.
    async with aiohttp.ClientSession() as http:
        body = {"model": "peeronly", "prompt": "hello", "options": {"num_predict": 240}}
        async with http.post(desktop.node.api_url + "/api/generate", json=body) as reply:
            assert reply.status == 200, await reply.text()
            await reply.content.readline()
            await w.until(
                "the request shown running",
                lambda: (
                    dashboard.requests_table.rowCount() > 0
                    and (dashboard.requests_table.item(0, 5).text() == "running…")
                ),
            )
            await w.shoot("dashboard", dashboard)
            await w.shoot_menu("tray-menu")
            await reply.read()
    w.step("a request shown while it runs", "on peer1")

    # A peer killed: named as lost within 5 s, in the window and in a message.
    w.messages.clear()
    await w.ask("kill", "peer1")
    _, took = await w.until(
        "peer1 said lost", lambda: any("Lost peer1" in text for text in w.health()), within=_LOST_WITHIN_S
    )
    # Told in a message at once, or at the next a tray message may be (one every NOTIFY_GAP_S).
    told = [*(text for _, text in w.messages), *tray.notifier.waiting]
    assert any(text.startswith("peer1 stopped answering") for text in told), told
    await w.shoot("lost-peer", dashboard)
    w.step("a killed peer said lost", f"{took:.2f} s")
    await w.ask("start", "peer1")
    await w.until("peer1 back", lambda: "peer1" in w.view_peers and not any("Lost" in t for t in w.health()))
    w.step("peer1 back after its restart")

    # Local-only: shown where the owner looks, and a request for a peer's model says why it is refused.
    tray.local_action.trigger()
    await w.until(
        "local-only shown", lambda: "Your requests use only this machine" in dashboard.subtitle.text()
    )
    assert "your requests use only this machine" in tray.icon.toolTip(), tray.icon.toolTip()
    async with aiohttp.ClientSession() as http:
        body = {"model": "peeronly", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        async with http.post(desktop.node.api_url + "/api/chat", json=body) as reply:
            error = json.loads(await reply.text())["error"]
            assert reply.status == 404, (reply.status, error)
    assert "set to use only itself" in error, error
    assert "peer1" in error, error
    w.step("local-only shown and a peer's model refused with why", repr(error))
    tray.local_action.trigger()

    # Sharing off: the icon, the menu and the window agree.
    tray.share_action.trigger()
    await w.until("not sharing", lambda: tray.state is TrayState.NOT_SHARING)
    assert dashboard.subtitle.text().startswith("Not sharing")
    assert not dashboard.share_button.isChecked()
    assert not tray.share_action.isChecked()
    assert tray.icon.toolTip().startswith("InferHub: not sharing"), tray.icon.toolTip()
    assert tray.status_action.text().startswith("Not sharing"), tray.status_action.text()
    await w.shoot("not-sharing", dashboard)
    w.step("sharing off agrees everywhere", f"tray: {tray.icon.toolTip()!r}")

    if w.shots is not None:
        tray.share_action.trigger()
        await w.until("sharing again", lambda: dashboard.share_button.isChecked())
        QApplication.setPalette(_dark_palette())
        # Widgets with a style sheet keep the palette they were polished with until polished again.
        for widget in dashboard.findChildren(QWidget):
            if widget.styleSheet():
                widget.setStyleSheet(widget.styleSheet())
        await asyncio.sleep(1.5)
        await w.shoot("dashboard-dark", dashboard)


def _menu_scene(tray: Tray) -> QPixmap:
    """Draw the open menu under a desktop panel with the tray icon in it, with the Peers submenu open."""
    tray.peers_menu.aboutToShow.emit()
    menu, peers = tray.menu.grab(), tray.peers_menu.grab()
    width, height, panel = max(760, menu.width() + peers.width() + 140), menu.height() + 120, 34
    scene = QPixmap(width, height)
    painter = QPainter(scene)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    backdrop = QLinearGradient(0, 0, width, height)
    backdrop.setColorAt(0, QColor("#1e293b"))
    backdrop.setColorAt(1, QColor("#0f766e"))
    painter.fillRect(scene.rect(), backdrop)
    painter.fillRect(QRect(0, 0, width, panel), QColor("#111827"))
    painter.setPen(QColor("#e5e7eb"))
    painter.setFont(QFont(painter.font().family(), 10))
    painter.drawText(
        QRect(0, 0, width - 16, panel), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, "14:02"
    )
    icon_x = width - 90
    painter.drawPixmap(icon_x, 6, tray_icon(tray.state, dark_panel=True).pixmap(22, 22))
    menu_x = icon_x - menu.width() + 30
    painter.drawPixmap(QPoint(menu_x, panel + 2), menu)
    peers_y = panel + 2 + tray.menu.actionGeometry(tray.peers_menu.menuAction()).top()
    painter.drawPixmap(QPoint(menu_x - peers.width() + 4, peers_y), peers)
    painter.end()
    return scene


def _dark_palette() -> QPalette:
    palette = QPalette()
    for role, color in (
        (QPalette.ColorRole.Window, "#1f2024"),
        (QPalette.ColorRole.WindowText, "#e8e8ea"),
        (QPalette.ColorRole.Base, "#17181b"),
        (QPalette.ColorRole.AlternateBase, "#24262b"),
        (QPalette.ColorRole.Text, "#e8e8ea"),
        (QPalette.ColorRole.Button, "#2b2d32"),
        (QPalette.ColorRole.ButtonText, "#e8e8ea"),
        (QPalette.ColorRole.Mid, "#4a4d55"),
        (QPalette.ColorRole.Highlight, "#3b82f6"),
        (QPalette.ColorRole.PlaceholderText, "#9a9ca3"),
    ):
        palette.setColor(role, QColor(color))
    return palette


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--shots", type=Path)
    args = parser.parse_args()
    # The node's log, among the steps, says what happened when a step fails.
    logging.basicConfig(level=logging.INFO, format="LOG %(relativeCreated)6.0f %(name)s: %(message)s")
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    app = QApplication(["inferhub"])
    # One style on every desktop, so the pictures do not depend on the machine that takes them.
    app.setStyle(QStyleFactory.create("Fusion"))
    store = SettingsStore(
        args.config,
        {"backend": args.backend, "interfaces": [args.interface], "name": "ws-new"},
        environ={},
    )
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    desktop = Desktop(store, environ={})
    failed: list[str] = []

    async def drive() -> None:
        try:
            await walk(Walk(desktop, args.shots), store)
        except Exception:
            failed.append(traceback.format_exc())
        finally:
            desktop.quit()

    with loop:
        loop.run_until_complete(asyncio.gather(desktop.run(), drive()))
    if failed:
        print("FAILED", failed[0], flush=True)
        return 1
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
