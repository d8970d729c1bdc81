"""The pool panel of the settings, around real nodes: a pool made, a machine invited and joined over the
network, a member removed and the pool left, as the owner does it with the panel's buttons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from inferhub_desktop.core import Node
from inferhub_desktop.ui.pool_panel import PoolPanel
from tests.fakes.ollama import FakeOllama
from tests.support import eventually, node_settings


def shown(panel: PoolPanel) -> list[str]:
    """The buttons the panel shows."""
    buttons = (
        panel.create_button,
        panel.join_button,
        panel.invite_button,
        panel.remove_button,
        panel.leave_button,
    )
    return [b.text() for b in buttons if not b.isHidden()]


def members(panel: PoolPanel) -> list[tuple[str, str]]:
    items = [panel.members.topLevelItem(n) for n in range(panel.members.topLevelItemCount())]
    return [(item.text(0), item.text(2)) for item in items if item is not None]


def test_a_pool_is_made_joined_managed_and_left_from_the_panel(
    run: Any, qtbot: QtBot, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with FakeOllama(["llama3:latest"]) as fake:
            box = Node(node_settings(tmp_path / "box", fake.url, name="box", share=True), environ={})
            desk = Node(node_settings(tmp_path / "desk", fake.url, name="desk", share=True), environ={})
            async with box, desk:
                on_box, on_desk = PoolPanel(lambda: box), PoolPanel(lambda: desk)
                for panel in (on_box, on_desk):
                    qtbot.addWidget(panel)
                    assert "Open LAN pool" in panel.state.text()
                    assert shown(panel) == ["Make a private pool", "Join with an invite…"]

                # Making a pool says first what becomes of the current peers.
                await eventually(lambda: len(box.peers()) == 1)
                assert on_box.peers_drop().startswith(
                    "Your 1 current peer will no longer see or use this machine"
                )
                await on_box._run(on_box.make())
                assert box.pool is not None
                assert f"Private pool {box.pool.pool_id}" in on_box.state.text()
                assert shown(on_box) == ["Invite a machine…", "Remove", "Leave the pool"]
                assert members(on_box) == [("box (authority)", "online")]

                on_box.invite_button.click()
                assert on_box.invite_box is not None
                invite = on_box.invite_box
                code = invite.code.text()
                invite.copy_button.click()
                assert QGuiApplication.clipboard().text() == code
                assert invite.waiting.text() == "Waiting for a machine to join…"
                # A mistyped code is said, and nothing changes.
                typo = ("1" if code[0] != "1" else "2") + code[1:]
                await on_desk._run(on_desk.join(typo, f"127.0.0.1:{box.share_port}"))
                assert "typo" in on_desk.error.text()
                assert desk.pool is None
                await on_desk._run(on_desk.join(code, f"127.0.0.1:{box.share_port}"))
                assert on_desk.error.text() == ""
                assert desk.pool is not None
                assert desk.pool.pool_id == box.pool.pool_id
                assert shown(on_desk) == ["Leave the pool"]
                # The invite sees its machine join.
                invite.check()
                assert invite.waiting.text() == "✓ desk joined the pool"
                invite.close()
                # An invite closed before anyone joined stops looking at the pool.
                on_box.invite_button.click()
                second = on_box.invite_box
                assert second is not None
                assert second is not invite
                assert second._timer.isActive()
                second.close()
                assert not second._timer.isActive()
                await eventually(lambda: {p.announcement.name for p in box.membership.peers} == {"desk"})
                on_box.refresh()
                assert members(on_box) == [("box (authority)", "online"), ("desk", "online")]

                # Remove desk: select it, and the button acts on it; the authority's own row cannot be.
                on_box.members.topLevelItem(0).setSelected(True)
                assert not on_box.remove_button.isEnabled()
                on_box.members.clearSelection()
                on_box.members.topLevelItem(1).setSelected(True)
                assert on_box.remove_button.isEnabled()
                await on_box._run(on_box.remove(desk.settings.node_id))
                assert members(on_box) == [("box (authority)", "online")]
                await eventually(lambda: not box.membership.peers)

                await on_desk._run(on_desk.leave())
                assert desk.pool is None
                assert "Open LAN pool" in on_desk.state.text()

    run(scenario())
