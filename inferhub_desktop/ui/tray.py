"""The tray icon and its menu: what the owner sees of InferHub most of the time."""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QAction, QGuiApplication
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from ..core import SettingsChanged
from .autostart import Autostart, AutostartError
from .bridge import Bridge
from .icons import TrayState, panel_is_dark, tray_icon
from .model import PoolView, Problem, sentence, short_models, vram_bar

# Tray messages are at most this frequent; what happens in between is told together.
NOTIFY_GAP_S = 15.0
_MENU_MODELS = 20
# What a tray message says when a switch is turned on, and off.
_SWITCH_NEWS = {
    "share": ("This machine is shared with the pool", "This machine is not shared any more"),
    "local_only": ("Your requests use only this machine", "Your requests use the whole pool"),
    "pool_pull": ("The pool may pull models onto this machine", "The pool may not pull models here"),
}


# The icon's states that say what this machine does, rather than what is wrong.
_DOING = frozenset({TrayState.NOT_SHARING, TrayState.SHARING, TrayState.SERVING})


def tray_state(view: PoolView | None, problems: list[Problem]) -> TrayState:
    """Say which icon the tray shows: trouble first, then whether this GPU works for the pool."""
    if any(p.severe for p in problems):
        return TrayState.POOL_PROBLEM
    if view is None or not view.me.backend_up:
        return TrayState.NO_BACKEND

    if view.serving:
        return TrayState.SERVING
    return TrayState.SHARING if view.switches.get("share") else TrayState.NOT_SHARING


def headline(view: PoolView, state: TrayState) -> str:
    """Say the icon's state in the state's words: what is wrong, else what this machine does."""
    return view.state[0] if state in _DOING else state.value


def tooltip(view: PoolView | None, state: TrayState) -> str:
    if view is None:
        return "InferHub: starting"
    return " · ".join([f"InferHub: {headline(view, state)}", view.summary(), *view.state[1:]])


class Notifier(QObject):
    """Tell the owner of pool changes with tray messages, one at a time at most every NOTIFY_GAP_S; of
    what changed meanwhile, each subject (a peer, a switch) is told once, as it is at the end."""

    shown = Signal(str, str)  # title, text

    def __init__(self, parent: QObject | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(parent)
        self._clock = clock
        self._pending: dict[str, str] = {}
        self._last = -NOTIFY_GAP_S
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.flush)

    @property
    def waiting(self) -> list[str]:
        """What is to be told at the next message, in order."""
        return list(self._pending.values())

    def tell(self, subject: str, text: str) -> None:
        self._pending.pop(subject, None)  # told in the order of the last changes
        self._pending[subject] = text
        wait_s = self._last + NOTIFY_GAP_S - self._clock()
        if wait_s <= 0:
            self.flush()
        elif not self._timer.isActive():
            self._timer.start(int(wait_s * 1000))

    def flush(self) -> None:
        if not self._pending:
            return
        texts, self._pending = list(self._pending.values()), {}
        self._last = self._clock()
        title = "InferHub" if len(texts) == 1 else f"InferHub: {len(texts)} changes"
        self.shown.emit(title, "\n".join(texts))


class Tray(QObject):
    """The tray icon, its menu and its messages, kept current from the bridge."""

    def __init__(
        self,
        bridge: Bridge,
        *,
        open_dashboard: Callable[[], None],
        open_settings: Callable[[], None],
        quit: Callable[[], None],
        autostart: Autostart,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self._bridge = bridge
        self._autostart = autostart
        self.icon = QSystemTrayIcon(self)
        self.state = TrayState.NO_BACKEND
        self._icon_state: TrayState | None = None
        self.notifier = Notifier(self)
        self.notifier.shown.connect(self._show_message)
        self.menu = QMenu()
        self.status_action = self.menu.addAction("Starting…")
        self.status_action.setEnabled(False)
        self.menu.addSeparator()
        self.share_action = self._switch_action("Share this GPU", "share")
        self.pull_action = self._switch_action("Let the pool pull models here", "pool_pull")
        self.menu.addSeparator()
        self.peers_menu = self.menu.addMenu("Peers")
        self.models_menu = self.menu.addMenu("Models")
        self.peers_menu.aboutToShow.connect(self._fill_peers)
        self.models_menu.aboutToShow.connect(self._fill_models)
        self.copy_action = self.menu.addAction("Copy API address")
        self.copy_action.triggered.connect(self.copy_api_address)
        self.local_action = self._switch_action("Use only this machine", "local_only")
        self.menu.addSeparator()
        self.dashboard_action = self.menu.addAction("Open dashboard")
        self.dashboard_action.triggered.connect(open_dashboard)
        self.settings_action = self.menu.addAction("Settings…")
        self.settings_action.triggered.connect(open_settings)
        self.login_action = self.menu.addAction("Start at login")
        self.login_action.setCheckable(True)
        self.login_action.setEnabled(autostart.supported)
        self.login_action.setToolTip(autostart.description)
        self.login_action.toggled.connect(self._set_start_at_login)
        self.menu.addSeparator()
        self.quit_action = self.menu.addAction("Quit InferHub")
        self.quit_action.triggered.connect(quit)
        # Whether it starts at login is a file (or registry) read: done when the menu opens.
        self.menu.aboutToShow.connect(self._show_start_at_login)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated(open_dashboard))

        bridge.view_changed.connect(self.update)
        bridge.peer_joined.connect(lambda name: self.notifier.tell(f"peer {name}", f"{name} joined the pool"))
        bridge.peer_left.connect(lambda name, why: self.notifier.tell(f"peer {name}", f"{name} {why}"))
        bridge.sharing_paused.connect(
            lambda why: self.notifier.tell("share", f"Sharing paused: {why}" if why else "Sharing again")
        )
        bridge.settings_changed.connect(self._settings_told)
        bridge.refused.connect(self._show_message)
        bridge.copying.connect(self._show_message)
        self.update(bridge.view)
        self._show_start_at_login()

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    def update(self, view: PoolView | None) -> None:
        """Show the pool's state in the icon, its tooltip and the menu's status and checkboxes."""
        self.state = tray_state(view, self._bridge.problems)
        # Some tray hosts redraw, or re-embed, the icon on every change: set it only when it differs.
        if self.state is not self._icon_state:
            self._icon_state = self.state
            self.icon.setIcon(tray_icon(self.state, dark_panel=panel_is_dark()))
        self.icon.setToolTip(tooltip(view, self.state))
        if view is None:
            return
        self.status_action.setText(f"{sentence(headline(view, self.state))} · {view.summary()}")
        self.share_action.setText(view.share_label(on=False))
        for action, key in (
            (self.share_action, "share"),
            (self.pull_action, "pool_pull"),
            (self.local_action, "local_only"),
        ):
            action.blockSignals(True)
            action.setChecked(view.switches.get(key, False))
            action.blockSignals(False)

    def copy_api_address(self) -> None:
        view = self._bridge.view
        address = view.api_url if view else self._bridge.core.api_url
        QGuiApplication.clipboard().setText(address.replace("127.0.0.1", "localhost"))

    def _switch_action(self, text: str, key: str) -> QAction:
        action = self.menu.addAction(text)
        action.setCheckable(True)
        action.toggled.connect(lambda on: self._bridge.set_switch(key, on))
        return action

    def _settings_told(self, event: SettingsChanged) -> None:
        """Say each switch that changed elsewhere (the command line, the settings file), in its own words;
        one the owner turned here shows in the menu and needs no message, and other settings say nothing."""
        for key, (on, off) in _SWITCH_NEWS.items():
            if key in event.changed and not self._bridge.made_here(key, getattr(event.settings, key)):
                self.notifier.tell(key, on if getattr(event.settings, key) else off)

    def _set_start_at_login(self, on: bool) -> None:
        try:
            self._autostart.set_enabled(on)
        except AutostartError as exc:
            self._show_message("InferHub cannot change start at login", str(exc))
        self._show_start_at_login()

    def _show_start_at_login(self) -> None:
        self.login_action.blockSignals(True)
        self.login_action.setChecked(self._autostart.supported and self._autostart.enabled())
        self.login_action.blockSignals(False)

    def _fill_peers(self) -> None:
        # clear() drops the actions but not the submenus made for them.
        for menu in self.peers_menu.findChildren(QMenu):
            menu.setParent(None)
            menu.deleteLater()
        self.peers_menu.clear()
        view = self._bridge.view
        if view is None or not view.peers:
            self.peers_menu.addAction("No peers seen yet").setEnabled(False)
            return
        for peer in view.peers:
            sub = self.peers_menu.addMenu(f"{peer.name}{'' if peer.sharing else ' (not sharing)'}")
            util = f"{peer.utilization_pct}% busy" if peer.utilization_pct is not None else "load unknown"
            for line in (
                f"{peer.gpu} · {util}",
                f"VRAM {vram_bar(peer.vram_used_mib, peer.vram_total_mib)}",
                f"{peer.active} of {peer.slots} slots busy",
                f"Loaded: {short_models(peer.loaded) or 'nothing'}",
                f"At {peer.address}",
            ):
                sub.addAction(line).setEnabled(False)

    def _fill_models(self) -> None:
        self.models_menu.clear()
        view = self._bridge.view
        models = view.models if view else ()
        if not models:
            self.models_menu.addAction("No models in the pool yet").setEnabled(False)
            return
        me = view.me.name if view else ""
        for model in models[:_MENU_MODELS]:
            where = f"loaded on {', '.join(model.loaded_on)}" if model.loaded_on else "not loaded"
            if me in model.installed_on:
                self.models_menu.addAction(f"{model.name}  —  {where}").setEnabled(False)
                continue
            # Not on this machine: it can be copied here from a member that has it.
            sub = self.models_menu.addMenu(f"{model.name}  —  {where}")
            sub.addAction(f"Get this model (from {', '.join(model.installed_on)})").triggered.connect(
                lambda _=False, name=model.name: self._bridge.get_model(name)
            )
        if len(models) > _MENU_MODELS:
            self.models_menu.addAction(f"…and {len(models) - _MENU_MODELS} more in the dashboard").setEnabled(
                False
            )

    def _show_message(self, title: str, text: str) -> None:
        if self.icon.isVisible() and QSystemTrayIcon.supportsMessages():
            self.icon.showMessage(title, text, self.icon.icon(), 5000)

    @staticmethod
    def _activated(open_dashboard: Callable[[], None]) -> Callable[[QSystemTrayIcon.ActivationReason], None]:
        def activated(reason: QSystemTrayIcon.ActivationReason) -> None:
            # A left click opens the dashboard, as tray apps do on Windows and most Linux panels.
            if reason in (
                QSystemTrayIcon.ActivationReason.Trigger,
                QSystemTrayIcon.ActivationReason.DoubleClick,
            ):
                open_dashboard()

        return activated
