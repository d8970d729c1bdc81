"""The tray menu drives the node's switches and tells the pool's state; its messages are throttled."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtGui import QAction, QGuiApplication
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon
from pytestqt.qtbot import QtBot

from inferhub_desktop.cli import format_status
from inferhub_desktop.core import PeerJoined, PeerLeft, SharingPaused
from inferhub_desktop.core.status import OwnerState
from inferhub_desktop.ui import tray as tray_module
from inferhub_desktop.ui.autostart import Autostart
from inferhub_desktop.ui.bridge import Bridge
from inferhub_desktop.ui.dashboard import Dashboard
from inferhub_desktop.ui.icons import TrayState
from inferhub_desktop.ui.model import Problem
from inferhub_desktop.ui.tray import Notifier, Tray, tooltip, tray_state
from tests.ui.demo import DemoCore

# Short enough to wait for, long enough that two calls in a row fall within it.
QUICK_GAP_S = 0.2


class Calls:
    """Count the calls of the tray's callbacks."""

    def __init__(self) -> None:
        self.dashboard = self.settings = self.quit = 0

    def open_dashboard(self) -> None:
        self.dashboard += 1

    def open_settings(self) -> None:
        self.settings += 1

    def quit_app(self) -> None:
        self.quit += 1


@pytest.fixture
def bridge(qapp: QApplication, core: DemoCore) -> Iterator[Bridge]:
    bridge = Bridge()
    bridge.attach(core)
    yield bridge
    bridge.detach()


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def autostart_file(tmp_path: Path) -> Path:
    return tmp_path / "home" / ".config" / "autostart" / "inferhub.desktop"


@pytest.fixture
def tray(bridge: Bridge, calls: Calls, tmp_path: Path) -> Iterator[Tray]:
    tray = Tray(
        bridge,
        open_dashboard=calls.open_dashboard,
        open_settings=calls.open_settings,
        quit=calls.quit_app,
        autostart=Autostart(platform="linux", home=tmp_path / "home", environ={}),
    )
    yield tray
    tray.hide()
    tray.menu.deleteLater()


def texts(menu: QMenu) -> list[str]:
    return [action.text() for action in menu.actions() if not action.isSeparator()]


def submenu(menu: QMenu, text: str) -> QMenu:
    (action,) = [a for a in menu.actions() if a.text() == text]
    sub = action.menu()
    assert isinstance(sub, QMenu)
    return sub


@pytest.mark.parametrize(
    ("action_name", "key"),
    [("share_action", "share"), ("pull_action", "pool_pull"), ("local_action", "local_only")],
)
def test_a_switch_in_the_menu_turns_the_nodes_switch(
    tray: Tray, core: DemoCore, action_name: str, key: str
) -> None:
    action: QAction = getattr(tray, action_name)
    before = getattr(core.status(), key)
    assert action.isChecked() == before

    action.trigger()

    assert getattr(core.status(), key) is (not before)
    assert action.isChecked() is (not before)

    action.trigger()

    assert getattr(core.status(), key) is before
    assert action.isChecked() is before


def test_the_switch_names(tray: Tray) -> None:
    assert tray.share_action.text() == "Share this GPU"
    assert tray.pull_action.text() == "Let the pool pull models here"
    assert tray.local_action.text() == "Use only this machine"


def test_a_checkbox_follows_the_node_not_the_click(
    tray: Tray, core: DemoCore, bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node that keeps its switches as they are: the click alone must not decide the checkbox.
    monkeypatch.setattr(core.store, "change", lambda **values: core.store.settings)
    tray.share_action.trigger()
    assert core.status().share is True
    assert not tray.share_action.isChecked()

    bridge.refresh()

    assert tray.share_action.isChecked()


def test_a_switch_turned_elsewhere_shows_in_the_menu(tray: Tray, core: DemoCore) -> None:
    core.store.change(local_only=True, share=False)

    assert tray.local_action.isChecked()
    assert not tray.share_action.isChecked()


def test_copy_api_address_copies_the_localhost_url(tray: Tray) -> None:
    QGuiApplication.clipboard().clear()

    tray.copy_action.trigger()

    assert QGuiApplication.clipboard().text() == "http://localhost:11435"


def test_start_at_login_writes_and_removes_the_autostart_file(tray: Tray, autostart_file: Path) -> None:
    assert tray.login_action.isEnabled()
    assert not tray.login_action.isChecked()
    assert not autostart_file.exists()

    tray.login_action.trigger()

    assert autostart_file.is_file()
    assert "Exec=" in autostart_file.read_text(encoding="utf-8")
    assert tray.login_action.isChecked()

    tray.login_action.trigger()

    assert not autostart_file.exists()
    assert not tray.login_action.isChecked()


def test_start_at_login_shows_an_entry_made_before(
    bridge: Bridge, calls: Calls, tmp_path: Path, autostart_file: Path
) -> None:
    autostart = Autostart(platform="linux", home=tmp_path / "home", environ={})
    autostart.set_enabled(True)

    tray = Tray(
        bridge,
        open_dashboard=calls.open_dashboard,
        open_settings=calls.open_settings,
        quit=calls.quit_app,
        autostart=autostart,
    )

    assert tray.login_action.isChecked()
    assert tray.login_action.toolTip() == "~/.config/autostart/inferhub.desktop"
    tray.menu.deleteLater()


def test_open_dashboard_settings_and_quit_call_back(tray: Tray, calls: Calls) -> None:
    tray.dashboard_action.trigger()
    assert (calls.dashboard, calls.settings, calls.quit) == (1, 0, 0)
    tray.settings_action.trigger()
    assert (calls.dashboard, calls.settings, calls.quit) == (1, 1, 0)
    tray.quit_action.trigger()
    assert (calls.dashboard, calls.settings, calls.quit) == (1, 1, 1)


def test_a_click_on_the_icon_opens_the_dashboard(tray: Tray, calls: Calls) -> None:
    tray.icon.activated.emit(QSystemTrayIcon.ActivationReason.Context)
    assert calls.dashboard == 0

    tray.icon.activated.emit(QSystemTrayIcon.ActivationReason.Trigger)
    assert calls.dashboard == 1


def test_the_status_line_says_the_state_and_sums_up_the_pool(tray: Tray) -> None:
    line = "Sharing this GPU, serving a request for colleagues · 3 peers · 5 GPUs · 7 models"
    assert tray.status_action.text() == line
    assert not tray.status_action.isEnabled()
    assert texts(tray.menu)[0] == line


def test_the_peers_menu_lists_each_peer_with_its_gpu_and_vram(tray: Tray) -> None:
    tray.peers_menu.aboutToShow.emit()

    assert texts(tray.peers_menu) == ["borealis", "cobalt", "dune (not sharing)"]
    borealis = texts(submenu(tray.peers_menu, "borealis"))
    assert borealis[0] == "2x RTX 3090 · 86% busy"
    assert borealis[1].startswith("VRAM ")
    assert borealis[1].endswith("41.1/48 GiB")
    assert "2 of 2 slots busy" in borealis
    assert "Loaded: llama3.1:70b" in borealis
    assert "At 192.168.1.21:11436" in borealis
    cobalt = texts(submenu(tray.peers_menu, "cobalt"))
    assert cobalt[0] == "RTX 4080 SUPER · 34% busy"
    assert cobalt[1].endswith("5.9/16 GiB")
    dune = texts(submenu(tray.peers_menu, "dune (not sharing)"))
    assert dune[0] == "RTX A6000 · 0% busy"
    assert dune[1].startswith("VRAM ")
    assert "Loaded: nothing" in dune


def test_the_peers_menu_says_when_there_are_none(
    tray: Tray, bridge: Bridge, core: DemoCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "peers", list)
    bridge.refresh()

    tray.peers_menu.aboutToShow.emit()

    assert texts(tray.peers_menu) == ["No peers seen yet"]


def test_the_peers_menu_is_rebuilt_not_added_to(tray: Tray) -> None:
    tray.peers_menu.aboutToShow.emit()
    tray.peers_menu.aboutToShow.emit()

    assert texts(tray.peers_menu) == ["borealis", "cobalt", "dune (not sharing)"]


def test_reopening_the_peers_menu_does_not_pile_up_submenus(tray: Tray, qapp: QApplication) -> None:
    # QMenu.clear() removes the actions but not the submenus addMenu() made children of the menu.
    for _ in range(5):
        tray.peers_menu.aboutToShow.emit()
        qapp.processEvents()

    assert len(tray.peers_menu.findChildren(QMenu)) == 3


def test_the_models_menu_lists_the_pools_models_and_where_they_run(tray: Tray) -> None:
    tray.models_menu.aboutToShow.emit()

    assert texts(tray.models_menu) == [
        "gemma2:9b  —  not loaded",
        "llama3.1:70b  —  loaded on borealis",
        "llama3.1:8b  —  loaded on cobalt",
        "mistral-small:24b  —  not loaded",
        "nomic-embed-text:latest  —  loaded on atlas",
        "phi4:14b  —  not loaded",
        "qwen2.5-coder:14b  —  loaded on atlas",
    ]
    # Those on this machine are told; those only peers have can be copied here.
    elsewhere = {a.text() for a in tray.models_menu.actions() if a.menu() is not None}
    here = {a.text() for a in tray.models_menu.actions() if a.menu() is None}
    assert not any(a.isEnabled() for a in tray.models_menu.actions() if a.text() in here)
    assert "nomic-embed-text:latest  —  loaded on atlas" in here
    assert "llama3.1:70b  —  loaded on borealis" in elsewhere
    assert texts(submenu(tray.models_menu, "llama3.1:70b  —  loaded on borealis")) == [
        "Get this model (from borealis)"
    ]


async def test_get_this_model_copies_it_here_and_says_how_it_went(
    tray: Tray, bridge: Bridge, core: DemoCore, qtbot: QtBot
) -> None:
    said: list[tuple[str, str]] = []
    bridge.copying.connect(lambda title, text: said.append((title, text)))
    tray.models_menu.aboutToShow.emit()
    (get,) = submenu(tray.models_menu, "llama3.1:70b  —  loaded on borealis").actions()
    get.trigger()
    await asyncio.sleep(0.05)
    assert core.copied == ["llama3.1:70b"]
    assert [title for title, _ in said] == ["Copying llama3.1:70b", "llama3.1:70b is on this machine"]
    bridge.get_model("broken:latest")
    await asyncio.sleep(0.05)
    assert said[-1] == (
        "Could not copy broken:latest",
        "copying broken:latest from the pool failed: max retries exceeded",
    )


def test_tray_state_tells_trouble_first_then_work(bridge: Bridge) -> None:
    view = bridge.view
    assert view is not None
    assert view.serving == 1
    problem = Problem("cobalt cannot serve right now", "why", severe=False)
    unserved = Problem("No model server found on this machine", "and no peer", severe=True)
    down = dataclasses.replace(view, me=dataclasses.replace(view.me, backend_up=False))
    idle = dataclasses.replace(view, serving=0)
    not_sharing = dataclasses.replace(idle, switches={**view.switches, "share": False})

    assert tray_state(None, []) is TrayState.NO_BACKEND
    assert tray_state(down, [problem]) is TrayState.NO_BACKEND
    # Red is for what leaves this machine's requests unserved; a peer's trouble or being alone is not.
    assert tray_state(down, [unserved]) is TrayState.POOL_PROBLEM
    assert tray_state(view, [problem]) is TrayState.SERVING
    assert tray_state(view, []) is TrayState.SERVING
    assert tray_state(idle, []) is TrayState.SHARING
    assert tray_state(not_sharing, []) is TrayState.NOT_SHARING
    # Serving peers' requests shows even while sharing is being turned off.
    assert tray_state(dataclasses.replace(not_sharing, serving=2), []) is TrayState.SERVING


def test_the_tooltip_says_the_state_and_the_pool(
    tray: Tray, core: DemoCore, bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tray.state is TrayState.SERVING
    assert tray.icon.toolTip() == (
        "InferHub: sharing this GPU, serving a request for colleagues · 3 peers · 5 GPUs · 7 models · "
        "private pool 5e1f0c2a"
    )
    assert tooltip(None, TrayState.NO_BACKEND) == "InferHub: starting"
    status = core.status()
    down = dataclasses.replace(status.backend, reachable=False, error="refused", installed=())
    status = dataclasses.replace(status, backend=down)
    monkeypatch.setattr(core, "status", lambda: status)

    bridge.refresh()

    assert tray.state is TrayState.NO_BACKEND
    assert bridge.view is not None
    assert tray.icon.toolTip() == (
        f"InferHub: no model server on this machine · {bridge.view.summary()} · private pool 5e1f0c2a"
    )
    # atlas alone held nomic-embed-text and qwen2.5-coder.
    assert bridge.view.summary() == "3 peers · 5 GPUs · 5 models"


def test_the_first_message_is_shown_at_once_the_next_ones_together(
    qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tray_module, "NOTIFY_GAP_S", QUICK_GAP_S)
    now = [100.0]
    notifier = Notifier(clock=lambda: now[0])
    shown: list[tuple[str, str]] = []
    notifier.shown.connect(lambda title, text: shown.append((title, text)))

    notifier.tell("peer borealis", "borealis joined the pool")
    assert shown == [("InferHub", "borealis joined the pool")]

    now[0] += QUICK_GAP_S / 4
    with qtbot.waitSignal(notifier.shown, timeout=5000) as blocker:
        notifier.tell("peer cobalt", "cobalt joined the pool")
        notifier.tell("peer dune", "dune joined the pool")
        # Of a subject told twice in the wait, only how it ended is said, never a contradiction.
        notifier.tell("peer cobalt", "cobalt stopped answering")
        assert len(shown) == 1

    assert blocker.args == ["InferHub: 2 changes", "dune joined the pool\ncobalt stopped answering"]
    assert len(shown) == 2


def test_a_message_after_the_gap_takes_those_waiting_along(qapp: QApplication) -> None:
    now = [0.0]
    notifier = Notifier(clock=lambda: now[0])
    shown: list[tuple[str, str]] = []
    notifier.shown.connect(lambda title, text: shown.append((title, text)))
    notifier.tell("a", "one")

    now[0] = tray_module.NOTIFY_GAP_S / 2
    notifier.tell("b", "two")
    assert shown == [("InferHub", "one")]

    now[0] = tray_module.NOTIFY_GAP_S + 1.0
    notifier.tell("c", "three")

    assert shown == [("InferHub", "one"), ("InferHub: 2 changes", "two\nthree")]
    # Nothing is left for the timer to tell again.
    notifier.flush()
    assert len(shown) == 2


def test_peers_joining_and_leaving_reach_the_notifier(
    qtbot: QtBot, core: DemoCore, tray: Tray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tray_module, "NOTIFY_GAP_S", QUICK_GAP_S)

    with qtbot.waitSignal(tray.notifier.shown, timeout=5000) as joined:
        core.events.emit(PeerJoined(node_id="e0", name="eos", address="192.168.1.30"))
    assert joined.args == ["InferHub", "eos joined the pool"]

    with qtbot.waitSignal(tray.notifier.shown, timeout=5000) as left:
        core.events.emit(PeerLeft(node_id="e0", name="eos", reason="peer 'eos' stopped answering"))
    assert left.args == ["InferHub", "eos stopped answering"]


def test_a_switch_turned_here_is_not_told_one_turned_elsewhere_is_named_at_once(
    qtbot: QtBot, tray: Tray, core: DemoCore
) -> None:
    told: list[list[str]] = []
    tray.notifier.shown.connect(lambda title, text: told.append([title, text]))
    tray.share_action.trigger()  # the owner sees the checkbox: no message
    tray.local_action.trigger()
    assert told == []
    # Turned from the command line (the same store): said at once, naming that switch only.
    core.store.change(local_only=False)
    assert told == [["InferHub", "Your requests use the whole pool"]]


def test_peers_back_after_a_restart_are_not_news(
    qtbot: QtBot, tray: Tray, bridge: Bridge, core: DemoCore
) -> None:
    told: list[str] = []
    tray.notifier.shown.connect(lambda title, text: told.append(text))
    bridge.attach(core)  # the node restarted with new settings
    core.events.emit(PeerJoined(node_id="b0", name="borealis", address="192.168.1.11"))
    assert told == []
    core.events.emit(PeerJoined(node_id="e0", name="eos", address="192.168.1.30"))
    assert told == ["eos joined the pool"]


def test_the_tooltip_says_when_this_machine_uses_only_itself(
    tray: Tray, core: DemoCore, bridge: Bridge
) -> None:
    core.store.change(local_only=True)
    bridge.refresh()
    assert tray.icon.toolTip().endswith(" · your requests use only this machine")


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"share": False},
        {"share": True, "local_only": True, "pool_pull": True},
        {"telemetry": None, "pool": None},
    ],
    ids=["sharing", "not-sharing", "modes", "no-gpu-open-pool"],
)
def test_tray_menu_dashboard_and_inferhub_status_say_the_same_state(
    qtbot: QtBot,
    tray: Tray,
    core: DemoCore,
    bridge: Bridge,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
) -> None:
    status = dataclasses.replace(core.status(), **changes)
    monkeypatch.setattr(core, "status", lambda: status)
    dashboard = Dashboard(bridge, open_settings=lambda: None)
    qtbot.addWidget(dashboard)
    bridge.refresh()

    words = status.state_words()
    said = {
        "tooltip": tray.icon.toolTip(),
        "menu": tray.status_action.text(),
        "dashboard": dashboard.subtitle.text(),
        "inferhub status": format_status(status),
    }
    for where, text in said.items():
        assert words[0].lower() in text.lower(), (where, text)
    # The pool and the modes wherever there is room for them.
    for where in ("tooltip", "dashboard", "inferhub status"):
        for mode in words[1:]:
            assert mode.lower() in said[where].lower(), (where, said[where])


def test_a_pause_for_the_owner_is_told_and_the_tooltip_says_why(
    qtbot: QtBot,
    core: DemoCore,
    tray: Tray,
    bridge: Bridge,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tray_module, "NOTIFY_GAP_S", QUICK_GAP_S)
    why = "blender is using the GPU (2.0 GiB)"
    with qtbot.waitSignal(tray.notifier.shown, timeout=5000) as told:
        core.events.emit(SharingPaused(why))
    assert told.args == ["InferHub", f"Sharing paused: {why}"]

    status = dataclasses.replace(core.status(), owner=OwnerState(paused=why))
    monkeypatch.setattr(core, "status", lambda: status)
    bridge.refresh()
    assert tray.icon.toolTip().startswith(
        f"InferHub: sharing paused: {why}, serving a request for colleagues"
    )
    # The switch stays on, as the owner put it, and says it is paused.
    assert (tray.share_action.isChecked(), tray.share_action.text()) == (True, "Share this GPU (paused)")

    with qtbot.waitSignal(tray.notifier.shown, timeout=5000) as told:
        core.events.emit(SharingPaused(None))
    assert told.args == ["InferHub", "Sharing again"]
