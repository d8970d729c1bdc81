"""The desktop app: Qt and asyncio on one loop (qasync), the node as a task of it, the tray, the dashboard
and the settings dialog around it."""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

import qasync
from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon

from ..core import Node, Settings
from .autostart import Autostart
from .bridge import Bridge
from .dashboard import Dashboard
from .icons import app_icon
from .settings_dialog import LIVE, SettingsDialog
from .tray import Tray

_log = logging.getLogger(__name__)
# How long a second launch waits for the first to answer.
_INSTANCE_TIMEOUT_MS = 1000
# Where the desktop has no tray, the dashboard says so.
NO_TRAY = (
    "This desktop has no system tray, so InferHub runs in this window: closing it stops InferHub and "
    "takes this machine out of the pool."
)


def display_missing(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> str | None:
    """Say why no window can open here (a Linux machine with no display), or return None."""
    if not platform.startswith("linux") or environ.get("QT_QPA_PLATFORM"):
        return None
    if environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return None
    return "no display to show the tray on (DISPLAY and WAYLAND_DISPLAY are unset)"


class SingleInstance(QObject):
    """One app per user and config directory: a second launch asks the first to show its dashboard."""

    show_requested = Signal()

    def __init__(self, settings: Settings, parent: QObject | None = None) -> None:
        super().__init__(parent)
        key = f"{getpass.getuser()}:{settings.config_dir.resolve()}"
        self.name = "inferhub-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        self._server = QLocalServer(self)
        self._server.newConnection.connect(self._on_connection)

    def claim(self) -> bool:
        """Become the instance; if another answers, ask it to show itself and return False."""
        probe = QLocalSocket()
        probe.connectToServer(self.name)
        if probe.waitForConnected(_INSTANCE_TIMEOUT_MS):
            probe.write(b"show\n")
            probe.waitForBytesWritten(_INSTANCE_TIMEOUT_MS)
            probe.disconnectFromServer()
            return False
        # Nobody answered: a socket file left by a crash is stale.
        QLocalServer.removeServer(self.name)
        if not self._server.listen(self.name):
            _log.warning("cannot listen as the single instance: %s", self._server.errorString())
        return True

    def close(self) -> None:
        self._server.close()

    def _on_connection(self) -> None:
        while (socket := self._server.nextPendingConnection()) is not None:
            socket.readyRead.connect(lambda s=socket: self._read(s))

    def _read(self, socket: QLocalSocket) -> None:
        if bytes(socket.readAll().data()).strip() == b"show":
            self.show_requested.emit()
        # One message per launch: the connection has done its work.
        socket.readyRead.disconnect()
        socket.deleteLater()


class Desktop(QObject):
    """The app's parts and the node they watch; `run()` serves until Quit."""

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] = os.environ) -> None:
        super().__init__()
        # A tray app lives on with every window closed; it stops when quit() is called.
        QApplication.setQuitOnLastWindowClosed(False)
        self.settings = settings
        self._environ = environ
        self.node: Node | None = None
        self.bridge = Bridge(self)
        self.autostart = Autostart()
        self._stop = asyncio.Event()
        self.has_tray = QSystemTrayIcon.isSystemTrayAvailable()
        self.dashboard = Dashboard(
            self.bridge, open_settings=self.open_settings, standalone_reason="" if self.has_tray else NO_TRAY
        )
        self.tray = Tray(
            self.bridge,
            open_dashboard=self.show_dashboard,
            open_settings=self.open_settings,
            quit=self.quit,
            autostart=self.autostart,
            parent=self,
        )
        self.dashboard.closed.connect(self.quit)
        self.settings_dialog: SettingsDialog | None = None
        self._applying: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """Start the node, show the tray (or the dashboard), and serve until quit() is called."""
        started = time.monotonic()
        self.node = Node(self.settings, self._environ)
        await self.node.start()
        self.bridge.attach(self.node)
        if self.has_tray:
            self.tray.show()
            _log.info("tray icon shown %.2f s after the app started", time.monotonic() - started)
        else:
            _log.warning("no system tray on this desktop: the dashboard is the app's window")
            self.show_dashboard()
        try:
            await self._stop.wait()
        finally:
            self.tray.hide()
            self.dashboard.hide()
            self.bridge.detach()
            # Goodbye on mDNS, then in-flight streams get the node's grace period.
            await self.node.close()
            _log.info("InferHub stopped")

    def quit(self) -> None:
        self._stop.set()

    def show_dashboard(self) -> None:
        self.dashboard.show()
        self.dashboard.raise_()
        self.dashboard.activateWindow()

    def open_settings(self) -> None:
        if self.settings_dialog is not None:
            self.settings_dialog.raise_()
            return
        dialog = SettingsDialog(self.settings, environ=self._environ)
        self.settings_dialog = dialog
        dialog.finished.connect(lambda result: self._settings_closed(dialog, result))
        dialog.open()

    def _settings_closed(self, dialog: SettingsDialog, result: int) -> None:
        self.settings_dialog = None
        changes = dialog.changes() if result == SettingsDialog.DialogCode.Accepted else {}
        if changes:
            self._applying = asyncio.ensure_future(self.apply(changes))

    async def apply(self, changes: Mapping[str, Any]) -> None:
        """Apply saved settings: peers at once, the rest by restarting the node in place."""
        assert self.node is not None
        if "peers" in changes:
            self.node.set_peers(changes["peers"])
        if not set(changes) - LIVE:
            return
        # The changes were checked by the dialog; flags the app was started with stay as they were.
        old, new = self.settings, dataclasses.replace(self.settings, **changes)
        self.bridge.detach()
        await self.node.close()
        try:
            self.node = Node(new, self._environ)
            await self.node.start()
            self.settings = new
        except OSError as exc:
            QMessageBox.warning(
                self.dashboard,
                "InferHub",
                f"The new settings could not be applied: {exc}. Kept the old ones.",
            )
            self.node = Node(old, self._environ)
            await self.node.start()
        self.bridge.attach(self.node)


def run_app(settings: Settings) -> int:
    """Run the desktop app until Quit; return the process exit status; raise OSError if the node cannot
    listen."""
    if reason := display_missing():
        print(f"inferhub: {reason}; run the node alone with `inferhub serve --headless`", file=sys.stderr)
        return 2
    # The program's name, not `__main__.py`, is what X window classes and desktops show.
    app = QApplication.instance() or QApplication(["inferhub", *sys.argv[1:]])
    assert isinstance(app, QApplication)
    app.setApplicationName("InferHub")
    app.setDesktopFileName("inferhub")
    app.setApplicationDisplayName("InferHub")
    app.setWindowIcon(app_icon())
    instance = SingleInstance(settings)
    if not instance.claim():
        print("InferHub is already running; its dashboard is shown", file=sys.stderr)
        return 0
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    desktop = Desktop(settings)
    instance.show_requested.connect(desktop.show_dashboard)
    # A logout or `kill` stops the app as Quit does. Python runs the handler between Qt events; the
    # bridge's timer makes sure there is one within a second.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: desktop.quit())
    # A port the node cannot listen on raises OSError, which the command line words for the user.
    try:
        with loop:
            loop.run_until_complete(desktop.run())
    finally:
        instance.close()
    return 0
