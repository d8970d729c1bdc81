"""The desktop app: Qt and asyncio on one loop (qasync), the node as a task of it, the tray, the dashboard
and the settings dialog around it."""

from __future__ import annotations

import asyncio
import ctypes
import getpass
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping

import qasync
from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon

from ..core import LIVE_SETTINGS, Event, Node, Settings, SettingsChanged, SettingsStore
from .autostart import Autostart
from .bridge import Bridge
from .dashboard import Dashboard
from .icons import app_icon
from .settings_dialog import SettingsDialog
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


# The libraries Qt's X11 platform plugin loads (its ELF dependencies, as of PySide6 6.8), with the
# Debian/Ubuntu and Fedora packages that bring each. A pip install brings Qt but not these.
XCB_LIBRARIES: tuple[tuple[str, str, str], ...] = (
    ("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor"),
    ("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm"),
    ("libxcb-util.so.1", "libxcb-util1", "xcb-util"),
    ("libxcb-image.so.0", "libxcb-image0", "xcb-util-image"),
    ("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms"),
    ("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil"),
    ("libxcb-randr.so.0", "libxcb-randr0", "libxcb"),
    ("libxcb-shm.so.0", "libxcb-shm0", "libxcb"),
    ("libxcb-sync.so.1", "libxcb-sync1", "libxcb"),
    ("libxcb-xfixes.so.0", "libxcb-xfixes0", "libxcb"),
    ("libxcb-render.so.0", "libxcb-render0", "libxcb"),
    ("libxcb-shape.so.0", "libxcb-shape0", "libxcb"),
    ("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb"),
    ("libxcb.so.1", "libxcb1", "libxcb"),
    ("libX11-xcb.so.1", "libx11-xcb1", "libX11-xcb"),
    ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11"),
    ("libxkbcommon.so.0", "libxkbcommon0", "libxkbcommon"),
    ("libEGL.so.1", "libegl1", "libglvnd-egl"),
    ("libfontconfig.so.1", "libfontconfig1", "fontconfig"),
    ("libdbus-1.so.3", "libdbus-1-3", "dbus-libs"),
)


def missing_libraries(
    environ: Mapping[str, str] = os.environ,
    platform: str = sys.platform,
    loads: Callable[[str], bool] | None = None,
) -> str | None:
    """Say which system libraries Qt's X11 plugin needs and cannot load here, and how to install them;
    None when nothing is missing (or Qt will not use X11). Qt itself would abort with a vaguer message."""
    chosen = environ.get("QT_QPA_PLATFORM", "")
    if (
        not platform.startswith("linux")
        or chosen not in ("", "xcb")
        or (not chosen and environ.get("WAYLAND_DISPLAY"))
    ):
        return None
    loads = loads or _loads
    missing = [(debian, fedora) for name, debian, fedora in XCB_LIBRARIES if not loads(name)]
    if not missing:
        return None
    debian = " ".join(dict.fromkeys(d for d, _ in missing))
    fedora = " ".join(dict.fromkeys(f for _, f in missing))
    return (
        f"the tray needs system libraries this machine lacks: install them with `sudo apt install {debian}` "
        f"(Debian, Ubuntu) or `sudo dnf install {fedora}` (Fedora)"
    )


def _loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


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

    def __init__(self, store: SettingsStore, *, environ: Mapping[str, str] = os.environ) -> None:
        super().__init__()
        # A tray app lives on with every window closed; it stops when quit() is called.
        QApplication.setQuitOnLastWindowClosed(False)
        self.store = store
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
        # The restart that applies changed settings, while one runs.
        self.restarting: asyncio.Future[None] | None = None
        self._unsubscribe = store.events.subscribe(self._settings_changed)

    async def run(self) -> None:
        """Start the node, show the tray (or the dashboard), and serve until quit() is called."""
        started = time.monotonic()
        self.node = Node(self.store, self._environ)
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
            self._unsubscribe()
            if self.restarting is not None:
                await self.restarting
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
        dialog = SettingsDialog(self.store, node=self._running_node)
        self.settings_dialog = dialog
        dialog.finished.connect(self._settings_closed)
        dialog.open()

    def _running_node(self) -> Node:
        assert self.node is not None  # the settings open from the tray, shown once the node runs
        return self.node

    def _settings_closed(self) -> None:
        self.settings_dialog = None

    def _settings_changed(self, event: Event) -> None:
        """Restart the node in place for saved settings a running node cannot take at once; the node
        takes the others (switches, the pool, peers) itself."""
        if not isinstance(event, SettingsChanged) or not event.changed - LIVE_SETTINGS:
            return
        if self.node is None or not self.node.running:
            return  # not started yet, or stopping: a start reads the store's settings anyway
        previous = self.restarting
        self.restarting = asyncio.ensure_future(self._restart(event, previous))

    async def _restart(self, event: SettingsChanged, previous: asyncio.Future[None] | None) -> None:
        """Start the node anew from the store's settings; if it cannot listen with them, put the changed
        settings back as they were (in the file too) and say why."""
        if previous is not None:
            await previous  # one restart at a time, in the order the changes came
        assert self.node is not None
        self.bridge.detach()
        await self.node.close()
        self.node = Node(self.store, self._environ)
        try:
            await self.node.start()
        except OSError as exc:
            QMessageBox.warning(
                self.dashboard,
                "InferHub",
                f"The new settings could not be applied: {exc.strerror or exc}. Kept the old ones.",
            )
            self.store.change(**{key: getattr(event.before, key) for key in event.changed - LIVE_SETTINGS})
            self.node = Node(self.store, self._environ)
            await self.node.start()
        self.bridge.attach(self.node)


def run_app(store: SettingsStore) -> int:
    """Run the desktop app until Quit; return the process exit status; raise OSError if the node cannot
    listen."""
    if reason := display_missing() or missing_libraries():
        print(f"inferhub: {reason}; run the node alone with `inferhub serve --headless`", file=sys.stderr)
        return 2
    # The program's name, not `__main__.py`, is what X window classes and desktops show.
    app = QApplication.instance() or QApplication(["inferhub", *sys.argv[1:]])
    assert isinstance(app, QApplication)
    app.setApplicationName("InferHub")
    app.setDesktopFileName("inferhub")
    app.setApplicationDisplayName("InferHub")
    app.setWindowIcon(app_icon())
    instance = SingleInstance(store.settings)
    if not instance.claim():
        print("InferHub is already running; its dashboard is shown", file=sys.stderr)
        return 0
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    desktop = Desktop(store)
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
