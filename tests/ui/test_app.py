"""The app around a real node, on one loop: Qt and asyncio joined by qasync, as `inferhub` runs them."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PySide6.QtWidgets import QDialogButtonBox, QMessageBox
from pytestqt.qtbot import QtBot

from inferhub_desktop.core import Node, RequestDone, SettingsStore, read_settings_file
from inferhub_desktop.ui.app import NO_TRAY, Desktop, SingleInstance, display_missing, missing_libraries
from inferhub_desktop.ui.bridge import Bridge
from tests.fakes.ollama import FakeOllama
from tests.support import eventually, node_settings, unwritable


def test_no_display_is_said_before_qt_would_abort() -> None:
    assert display_missing({}, "linux") is not None
    assert display_missing({"DISPLAY": ":0"}, "linux") is None
    assert display_missing({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert display_missing({"QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    assert display_missing({}, "win32") is None


def test_missing_system_libraries_are_named_with_the_command_that_installs_them() -> None:
    lacking = {"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}
    said = missing_libraries({"DISPLAY": ":0"}, "linux", loads=lambda name: name not in lacking)
    assert said == (
        "the tray needs system libraries this machine lacks: install them with `sudo apt install "
        "libxcb-icccm4 libxcb-keysyms1` (Debian, Ubuntu) or `sudo dnf install xcb-util-wm xcb-util-keysyms` "
        "(Fedora)"
    )
    # Where Qt will not use X11, nothing is asked of it.
    for environ, platform in (
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux"),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux"),
        ({}, "darwin"),
        ({}, "win32"),
    ):
        assert missing_libraries(environ, platform, loads=lambda name: False) is None
    # This machine, as it is, has them all (the tray tests under Xvfb run here).
    assert missing_libraries({"DISPLAY": ":0"}, "linux") is None


def test_a_second_instance_asks_the_first_to_show_itself(qtbot: QtBot, tmp_path: Path) -> None:
    settings = node_settings(tmp_path, "http://127.0.0.1:9").settings
    first, second = SingleInstance(settings), SingleInstance(settings)
    other_dir = SingleInstance(node_settings(tmp_path / "other", "http://127.0.0.1:9").settings)
    assert first.claim()
    with qtbot.waitSignal(first.show_requested, timeout=5000):
        assert not second.claim()
    # Another config directory is another node, and another instance.
    assert other_dir.name != first.name
    assert other_dir.claim()
    for instance in (first, second, other_dir):
        instance.close()


def test_the_bridge_turns_a_real_nodes_events_into_signals(run: Any, qtbot: QtBot, tmp_path: Path) -> None:
    heard: list[tuple[str, object]] = []

    async def scenario() -> None:
        async with FakeOllama(["llama3:latest"], tokens_per_second=400) as fake:
            node = Node(node_settings(tmp_path, fake.url, name="alpha"), environ={})
            bridge = Bridge()
            bridge.settings_changed.connect(
                lambda e: heard.append(("settings", (e.changed, e.settings.share)))
            )
            bridge.request_done.connect(lambda r: heard.append(("request", r)))
            bridge.backend_changed.connect(lambda up, error: heard.append(("backend", up)))
            # Watched from before it starts: the backend is found as it starts.
            bridge.attach(node)
            async with node:
                await eventually(lambda: bridge.view is not None and bridge.view.me.backend_up)
                node.switch({"share": True})
                assert bridge.view is not None
                assert bridge.view.switches["share"]
                async with aiohttp.ClientSession() as http:
                    body = {"model": "llama3", "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
                    async with http.post(node.api_url + "/api/generate", json=body) as reply:
                        assert reply.status == 200
                await eventually(lambda: any(kind == "request" for kind, _ in heard))
                bridge.refresh()
                assert bridge.view.me.tokens_generated == 4
                bridge.detach()

    run(scenario())
    assert ("backend", True) in heard
    assert ("settings", (frozenset({"share"}), True)) in heard
    done = next(r for kind, r in heard if kind == "request")
    assert isinstance(done, RequestDone)
    assert (done.model, done.node, done.tokens) == ("llama3", "alpha", 4)


def test_without_a_tray_the_dashboard_is_the_window_and_closing_it_quits(
    run: Any, qtbot: QtBot, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with FakeOllama() as fake:
            desktop = Desktop(node_settings(tmp_path, fake.url, name="alpha"), environ={})
            # The offscreen platform has no system tray, as some desktops have none.
            assert not desktop.has_tray
            running = asyncio.ensure_future(desktop.run())
            await eventually(lambda: desktop.dashboard.isVisible())
            assert desktop.dashboard.banner.text() == NO_TRAY
            await eventually(lambda: desktop.dashboard.title.text().startswith("alpha"))
            desktop.dashboard.close()
            await running
            assert desktop.node is not None
            with pytest.raises(RuntimeError, match="not started"):
                desktop.node.membership  # noqa: B018 - the node has left the pool

    run(scenario())


def test_saved_settings_apply_peers_live_and_the_rest_by_restarting_the_node(
    run: Any, qtbot: QtBot, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with FakeOllama() as fake:
            store = node_settings(tmp_path, fake.url, name="alpha")
            desktop = Desktop(store, environ={})
            running = asyncio.ensure_future(desktop.run())
            await eventually(lambda: desktop.bridge.view is not None)
            node = desktop.node
            store.change(peers=["10.0.0.5:11436"])
            assert desktop.restarting is None  # peers are taken live
            assert desktop.node is node
            assert node is not None
            assert node.settings.peers == ("10.0.0.5:11436",)
            store.change(name="beta")
            assert desktop.restarting is not None
            await desktop.restarting
            assert desktop.node is not node
            await eventually(
                lambda: desktop.bridge.view is not None and desktop.bridge.view.me.name == "beta"
            )
            desktop.quit()
            await running

    run(scenario())
    assert read_settings_file(tmp_path)["peers"] == ["10.0.0.5:11436"]


@pytest.mark.parametrize("share", [True, False])
def test_a_switch_turned_in_the_tray_stays_through_a_settings_save_that_restarts_the_node(
    run: Any, qtbot: QtBot, tmp_path: Path, share: bool
) -> None:
    async def scenario() -> None:
        async with FakeOllama() as fake:
            # Started with the switch one way; the owner turns it the other way from the tray.
            desktop = Desktop(node_settings(tmp_path, fake.url, name="alpha", share=not share), environ={})
            running = asyncio.ensure_future(desktop.run())
            await eventually(lambda: desktop.bridge.view is not None)
            desktop.tray.share_action.trigger()
            assert desktop.tray.share_action.isChecked() is share

            desktop.open_settings()
            dialog = desktop.settings_dialog
            assert dialog is not None
            dialog.name.setText("beta")
            dialog.buttons.button(QDialogButtonBox.StandardButton.Save).click()
            assert desktop.restarting is not None
            await desktop.restarting
            await eventually(
                lambda: desktop.bridge.view is not None and desktop.bridge.view.me.name == "beta"
            )

            assert desktop.node is not None
            assert desktop.node.settings.share is share
            assert desktop.node.status().share is share
            assert desktop.tray.share_action.isChecked() is share
            desktop.quit()
            await running

    run(scenario())
    assert read_settings_file(tmp_path)["share"] is share
    assert SettingsStore(tmp_path, environ={}).settings.share is share


def test_settings_that_cannot_be_saved_keep_the_dialog_open_and_change_nothing(
    run: Any, qtbot: QtBot, tmp_path: Path
) -> None:
    config_dir = tmp_path / "config"

    async def scenario() -> None:
        async with FakeOllama() as fake:
            desktop = Desktop(node_settings(config_dir, fake.url, name="alpha"), environ={})
            running = asyncio.ensure_future(desktop.run())
            await eventually(lambda: desktop.bridge.view is not None)
            node = desktop.node
            messages: list[str] = []
            desktop.bridge.refused.connect(lambda title, text: messages.append(text))
            with unwritable(config_dir, "full"):
                desktop.open_settings()
                dialog = desktop.settings_dialog
                assert dialog is not None
                dialog.name.setText("beta")
                dialog.buttons.button(QDialogButtonBox.StandardButton.Save).click()
                assert "No space left on device" in dialog.error.text()
                assert dialog.isVisible()
                assert dialog.name.text() == "beta"  # what the owner typed is still there

                desktop.tray.share_action.trigger()
                assert not desktop.tray.share_action.isChecked()
                assert "nothing was changed" in messages[0]
            assert desktop.restarting is None
            assert desktop.node is node
            assert (desktop.store.settings.name, desktop.store.settings.share) == ("alpha", False)
            dialog.reject()
            desktop.quit()
            await running

    run(scenario())
    assert "name" not in read_settings_file(config_dir)


def test_a_settings_save_that_needs_no_restart_applies_live_and_keeps_the_switches(
    run: Any, qtbot: QtBot, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with FakeOllama() as fake:
            desktop = Desktop(node_settings(tmp_path, fake.url, name="alpha"), environ={})
            running = asyncio.ensure_future(desktop.run())
            await eventually(lambda: desktop.bridge.view is not None)
            node = desktop.node
            assert node is not None
            desktop.tray.local_action.trigger()
            desktop.open_settings()
            dialog = desktop.settings_dialog
            assert dialog is not None
            dialog.peers.setPlainText("10.0.0.5:11436")
            assert dialog.note.text() == ""  # no restart is announced
            dialog.buttons.button(QDialogButtonBox.StandardButton.Save).click()

            assert desktop.restarting is None
            assert desktop.node is node
            assert node.settings.peers == ("10.0.0.5:11436",)
            assert node.settings.local_only is True
            assert desktop.tray.local_action.isChecked()
            desktop.quit()
            await running

    run(scenario())
    table = read_settings_file(tmp_path)
    assert (table["peers"], table["local_only"]) == (["10.0.0.5:11436"], True)


def test_settings_the_node_cannot_listen_with_are_put_back_and_said(
    run: Any, qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warned: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: warned.append(text))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy_port = taken.getsockname()[1]

    async def scenario() -> None:
        async with FakeOllama() as fake:
            store = node_settings(tmp_path, fake.url, name="alpha")
            desktop = Desktop(store, environ={})
            running = asyncio.ensure_future(desktop.run())
            await eventually(lambda: desktop.bridge.view is not None)
            assert desktop.node is not None
            port = desktop.node.api_port
            store.change(api_port=busy_port)
            assert desktop.restarting is not None
            await desktop.restarting
            assert desktop.node.running
            assert desktop.node.api_port != busy_port
            assert store.settings.api_port == 0  # as the run's flag had it, any free port
            assert port != busy_port
            desktop.quit()
            await running

    try:
        run(scenario())
    finally:
        taken.close()
    assert len(warned) == 1
    assert "could not be applied" in warned[0]
    assert "Kept the old ones" in warned[0]
    assert read_settings_file(tmp_path)["api_port"] == 0
