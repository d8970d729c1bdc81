"""The pool part of the settings: the pool this machine is in and its members, and what the owner does
with it, as `inferhub pool` does: make a private pool, join one with an invite, invite a machine, remove
one, leave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import (
    ConfigError,
    Identity,
    PeerState,
    PrivatePool,
    Settings,
    Unauthorized,
    create_pool,
    join_pool,
    leave_pool,
    parse_peer,
)


class PoolNode(Protocol):
    """What the panel reads of the running node and asks of it."""

    identity: Identity | None
    pool: PrivatePool | None

    @property
    def settings(self) -> Settings: ...

    def pool_info(self) -> dict[str, Any]: ...

    def peers(self) -> list[PeerState]: ...

    async def reload_pool(self) -> dict[str, Any]: ...

    def remove_member(self, who: str) -> dict[str, Any]: ...


class PoolPanel(QWidget):
    """Show the pool and act on it; every action ends with the node taking up the pool files."""

    def __init__(self, node: Callable[[], PoolNode], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._node = node
        self.state = QLabel()
        self.state.setWordWrap(True)
        self.members = QTreeWidget()
        self.members.setHeaderLabels(["Machine", "Node id", "Online"])
        self.members.setRootIsDecorated(False)
        self.members.setFixedHeight(110)
        self.members.setColumnWidth(0, 170)
        self.members.setColumnWidth(1, 290)
        self.create_button = QPushButton("Make a private pool")
        self.create_button.setToolTip("Only machines you invite, one at a time, will see and use each other")
        self.join_button = QPushButton("Join with an invite…")
        self.invite_button = QPushButton("Invite a machine…")
        self.invite_button.setToolTip("Make a one-time code, good for a day, for one machine to join with")
        self.remove_button = QPushButton("Remove")
        self.remove_button.setToolTip("Every member refuses the selected machine from now on")
        self.leave_button = QPushButton("Leave the pool")
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #dc2626;")
        self.invite_box: InviteDialog | None = None

        buttons = QHBoxLayout()
        for button in (
            self.create_button,
            self.join_button,
            self.invite_button,
            self.remove_button,
            self.leave_button,
        ):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.state)
        layout.addWidget(self.members)
        layout.addLayout(buttons)
        layout.addWidget(self.error)

        self.create_button.clicked.connect(self._confirm_make)
        self.join_button.clicked.connect(self._ask_to_join)
        self.invite_button.clicked.connect(self._show_invite)
        self.remove_button.clicked.connect(self._remove_selected)
        self.leave_button.clicked.connect(self._confirm_leave)
        self.members.itemSelectionChanged.connect(self._selection_changed)
        self.refresh()

    def refresh(self) -> None:
        """Show the pool as the node has it now."""
        info = self._node().pool_info()
        private = info["pool"] is not None
        authority = bool(info.get("authority"))
        if not private:
            nearby = {n["pool"] for n in info.get("nearby", [])}
            seen = f" {len(nearby)} private pool{'s' * (len(nearby) != 1)} seen on the LAN." if nearby else ""
            self.state.setText(
                "<b>Open LAN pool.</b> While this machine shares, any InferHub on the local network may use "
                f"it, and peers are not authenticated.{seen}"
            )
        else:
            role = "You admit and remove its members." if authority else "Its authority admits members."
            self.state.setText(
                f"<b>Private pool {info['pool']}.</b> Members prove who they are by their keys, and "
                f"speak only TLS to each other. {role}"
            )
        self.members.setVisible(private)
        self.members.blockSignals(True)
        selected = {item.data(0, Qt.ItemDataRole.UserRole) for item in self.members.selectedItems()}
        self.members.clear()
        for member in info.get("members", []):
            name = member["name"] + (" (authority)" if member["authority"] else "")
            online = {True: "online", False: "offline", None: "?"}[member["online"]]
            item = QTreeWidgetItem([name, member["id"], online])
            item.setData(0, Qt.ItemDataRole.UserRole, member["id"])
            self.members.addTopLevelItem(item)
            item.setSelected(member["id"] in selected)
        self.members.blockSignals(False)
        self.create_button.setVisible(not private)
        self.join_button.setVisible(not private)
        self.invite_button.setVisible(private and authority)
        self.remove_button.setVisible(private and authority)
        self.leave_button.setVisible(private)
        self._selection_changed()

    def _selection_changed(self) -> None:
        """Allow removing the machines selected, unless this one is among them."""
        own = self._node().settings.node_id
        chosen = [item.data(0, Qt.ItemDataRole.UserRole) for item in self.members.selectedItems()]
        self.remove_button.setEnabled(bool(chosen) and own not in chosen)

    # -- the owner's actions; each says what went wrong in the panel --------------------------------------

    async def make(self) -> None:
        node = self._node()
        assert node.identity is not None
        create_pool(node.settings.config_dir, node.identity, node.settings.name)
        await node.reload_pool()

    def invite(self) -> str:
        """Make a one-time invite; return its code."""
        pool = self._node().pool
        if pool is None:
            raise ConfigError("this machine is in no private pool")
        return pool.invite()

    async def join(self, code: str, at: str = "") -> None:
        node = self._node()
        assert node.identity is not None
        places = (
            [parse_peer(at)] if at.strip() else [parse_peer(n["address"]) for n in node.pool_info()["nearby"]]
        )
        if not places:
            raise ConfigError("no private pool is seen on the LAN: give its authority's address")
        await join_pool(node.settings.config_dir, node.identity, node.settings.name, code, places)
        await node.reload_pool()

    async def remove(self, who: str) -> None:
        self._node().remove_member(who)

    async def leave(self) -> None:
        node = self._node()
        leave_pool(node.settings.config_dir)
        await node.reload_pool()

    def _run(self, action: Awaitable[None]) -> asyncio.Future[None]:
        async def guarded() -> None:
            self.error.setText("")
            try:
                await action
            except (ConfigError, Unauthorized, OSError) as exc:
                self.error.setText(str(exc))
            self.refresh()

        return asyncio.ensure_future(guarded())

    def peers_drop(self) -> str:
        """Say what becomes of this machine's current peers when it makes or joins a private pool."""
        count = len(self._node().peers())
        if not count:
            return ""
        return (
            f"Your {count} current peer{'s' * (count != 1)} will no longer see or use this machine, nor it "
            "them, unless they are admitted to the same pool."
        )

    def _members(self) -> dict[str, str]:
        """The pool's members now, by node id: their names."""
        return {m["id"]: m["name"] for m in self._node().pool_info().get("members", [])}

    def _confirm_make(self) -> None:
        answer = QMessageBox.question(
            self,
            "Make a private pool",
            " ".join(
                ["Only machines you invite, one at a time, will see and use this machine.", self.peers_drop()]
            ),
        )
        if answer == QMessageBox.StandardButton.Yes:
            self._run(self.make())

    def _ask_to_join(self) -> None:
        dialog = JoinDialog(self.peers_drop(), self)
        dialog.accepted.connect(lambda: self._run(self.join(dialog.code.text(), dialog.at.text())))
        dialog.open()

    def _show_invite(self) -> None:
        try:
            code = self.invite()
        except (ConfigError, OSError) as exc:
            self.error.setText(str(exc))
            return
        if self.invite_box is not None:
            self.invite_box.deleteLater()  # one invite shown at a time; the last one's code stays valid
        self.invite_box = InviteDialog(code, self._members, self)
        self.invite_box.finished.connect(self.refresh)
        self.invite_box.open()

    def _remove_selected(self) -> None:
        for item in self.members.selectedItems():
            self._run(self.remove(item.data(0, Qt.ItemDataRole.UserRole)))

    def _confirm_leave(self) -> None:
        pool = self._node().pool
        warning = (
            " This machine is the pool's authority: once it leaves, no machine can be admitted or removed."
            if pool is not None and pool.authority is not None
            else ""
        )
        answer = QMessageBox.question(
            self, "Leave the pool", f"Leave the private pool for the LAN's open pool?{warning}"
        )
        if answer == QMessageBox.StandardButton.Yes:
            self._run(self.leave())


class InviteDialog(QDialog):
    """Show an invite's code large, to copy or read out, and wait for the machine it admits."""

    def __init__(
        self, code: str, members: Callable[[], dict[str, str]], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Invite a machine")
        self._members = members
        # By node id: a machine that joins again under a known name is still a new member.
        self._before = set(members())
        self.code = QLabel(code)
        self.code.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
        font.setPointSize(22)
        font.setBold(True)
        self.code.setFont(font)
        self.copy_button = QPushButton("Copy")
        self.copy_button.clicked.connect(lambda: QGuiApplication.clipboard().setText(code))
        how = QLabel(
            "On the machine to admit, open InferHub's Settings, choose <b>Join with an invite</b> and type "
            "this code (or run <code>inferhub pool join CODE</code>). It admits one machine, once, within a "
            "day: give it to that machine's owner only."
        )
        how.setWordWrap(True)
        self.waiting = QLabel("Waiting for a machine to join…")
        self.waiting.setStyleSheet("color: palette(placeholder-text);")
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.code, 1)
        row.addWidget(self.copy_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(how)
        layout.addWidget(self.waiting)
        layout.addWidget(close)
        self._timer = QTimer(self)
        self._timer.setInterval(1000)
        self._timer.timeout.connect(self.check)
        self._timer.start()
        self.finished.connect(self._timer.stop)

    def check(self) -> None:
        """Say who joined since the invite was made, once someone has."""
        members = self._members()
        joined = sorted(members[node_id] for node_id in members.keys() - self._before)
        if joined:
            self._timer.stop()
            self.waiting.setText(f"✓ {', '.join(joined)} joined the pool")
            self.waiting.setStyleSheet("color: #15803d; font-weight: 600;")


class JoinDialog(QDialog):
    """Ask for an invite's code and, where mDNS does not reach, the authority's address; say first what
    becomes of the current peers."""

    def __init__(self, peers_drop: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Join a private pool")
        self.setMinimumWidth(480)
        self.code = QLineEdit()
        self.code.setPlaceholderText("7K3M-9QXD-2HWA-PZ4T-9")
        self.at = QLineEdit()
        self.at.setPlaceholderText("found on the LAN, or HOST of the machine that invited you")
        form = QFormLayout()
        form.addRow("Invite code", self.code)
        form.addRow("Address", self.at)
        self.warning = QLabel(peers_drop)
        self.warning.setWordWrap(True)
        self.warning.setVisible(bool(peers_drop))
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.warning)
        layout.addWidget(buttons)
