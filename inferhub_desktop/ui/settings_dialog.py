"""The settings dialog: the same settings as the command line's flags, checked as they are typed, saved
through the settings store to the same TOML file."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core import (
    LIVE_SETTINGS,
    ConfigError,
    InferhubError,
    Settings,
    SettingsStore,
)
from .pool_panel import PoolNode, PoolPanel

# What the dialog edits; the switches live in the menu.
EDITED = (
    "name",
    "backend",
    "api_port",
    "share_port",
    "max_remote",
    "peers",
    "interfaces",
    "tls",
    "pause_on_gpu_use",
    "resume_after_s",
    "reserve_vram_gib",
    "share_when_away_min",
    "quiet_hours",
    "grace_s",
    "lend_models",
    "lend_mib_s",
)


# Who may copy this machine's models, in the owner's words.
_LEND_WORDS = {
    "members": "Members of my private pool",
    "lan": "Anyone on the LAN",
    "off": "No one",
}


class SettingsDialog(QDialog):
    """Edit this node's settings; Save changes, through the store, only the fields the form changed."""

    def __init__(
        self,
        store: SettingsStore,
        *,
        node: Callable[[], PoolNode] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("InferHub Settings")
        self.setMinimumWidth(520)
        self._store = store
        # What the form started from: a field left as it was is not saved, so a switch or a peer changed
        # elsewhere while the dialog is open stays as it was changed there.
        self._settings = settings = store.settings
        self.name = QLineEdit(settings.name)
        self.backend = QLineEdit(settings.backend)
        self.backend.setPlaceholderText("auto, an Ollama URL, or openai:http://HOST:PORT")
        self.backend.setToolTip(
            "auto finds Ollama (11434), LM Studio (1234), llama.cpp (8080) or vLLM (8000) on this machine; "
            "openai:URL names any OpenAI-compatible server"
        )
        self.api_port = _port(settings.api_port)
        self.share_port = _port(settings.share_port)
        self.max_remote = QSpinBox()
        self.max_remote.setRange(0, 256)
        self.max_remote.setSpecialValueText("as many as the backend runs at once")
        self.max_remote.setValue(settings.max_remote)
        self.peers = QPlainTextEdit("\n".join(settings.peers))
        self.peers.setPlaceholderText("One HOST or HOST:PORT per line, for peers that mDNS does not reach")
        self.peers.setFixedHeight(80)
        self.interfaces = QLineEdit(", ".join(settings.interfaces))
        self.interfaces.setPlaceholderText("every LAN interface")
        self.tls = QCheckBox("Open pool: serve the share API over TLS (a private pool always does)")
        self.tls.setChecked(settings.tls)
        # The owner first: when this machine stops sharing, and what it keeps back.
        self.pause_on_gpu_use = QCheckBox("Pause sharing while another program uses the GPU")
        self.pause_on_gpu_use.setChecked(settings.pause_on_gpu_use)
        self.pause_on_gpu_use.setToolTip(
            f"A program other than the model server holding {settings.pause_gpu_mib} MiB of GPU memory, "
            f"or the GPU {settings.pause_gpu_percent}% busy while the model server is idle"
        )
        self.resume_after_s = _spin(0, 86400, settings.resume_after_s, " s", "at once")
        self.reserve_vram_gib = _spin(0, 4096, settings.reserve_vram_gib, " GiB", "nothing")
        self.share_when_away_min = _spin(0, 1440, settings.share_when_away_min, " min", "always share")
        self.share_when_away_min.setToolTip("A locked screen counts as away")
        self.quiet_hours = QLineEdit("; ".join(settings.quiet_hours))
        self.quiet_hours.setPlaceholderText("none, e.g. mon-fri 09:00-17:30; sat 10:00-14:00")
        self.grace_s = _spin(0, 3600, settings.grace_s, " s", "none: cut at once")
        self.lend_models = QComboBox()
        for choice, words in _LEND_WORDS.items():
            self.lend_models.addItem(words, choice)
        self.lend_models.setCurrentIndex(self.lend_models.findData(settings.lend_models))
        self.lend_models.setToolTip(
            "Colleagues copy the models this machine has instead of downloading them again; each copy is "
            "in the audit log"
        )
        self.lend_mib_s = _spin(0, 1 << 20, settings.lend_mib_s, " MiB/s", "no limit")
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #dc2626;")
        self.note = QLabel("")
        self.note.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Display name", self.name)
        form.addRow("Model server", self.backend)
        form.addRow("API port (for your tools)", self.api_port)
        form.addRow("Share port (for peers)", self.share_port)
        form.addRow("Peers' requests at once", self.max_remote)
        form.addRow("Peers by address", self.peers)
        form.addRow("LAN interfaces (IPv4)", self.interfaces)
        form.addRow("", self.tls)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self._save)
        self.buttons.rejected.connect(self.reject)
        owner = QGroupBox("When you need this machine")
        owner_form = QFormLayout(owner)
        owner_form.addRow("", self.pause_on_gpu_use)
        owner_form.addRow("Share again once it ends, after", self.resume_after_s)
        owner_form.addRow("Keep VRAM for me", self.reserve_vram_gib)
        owner_form.addRow("Share only when I'm away for", self.share_when_away_min)
        owner_form.addRow("Quiet hours (no sharing)", self.quiet_hours)
        owner_form.addRow("Peers' requests may finish for", self.grace_s)
        lending = QGroupBox("Lending your models")
        lending_form = QFormLayout(lending)
        lending_form.addRow("Who may copy them", self.lend_models)
        lending_form.addRow("Upload at most", self.lend_mib_s)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(owner)
        layout.addWidget(lending)
        # The pool changes at once, through its own buttons: Save and Cancel are for the fields above.
        self.pool: PoolPanel | None = None
        if node is not None:
            self.pool = PoolPanel(node)
            group = QGroupBox("Pool")
            QVBoxLayout(group).addWidget(self.pool)
            layout.addWidget(group)
        layout.addWidget(self.error)
        layout.addWidget(self.note)
        layout.addWidget(self.buttons)

        for edit in (self.name, self.backend, self.interfaces, self.quiet_hours):
            edit.textChanged.connect(self.validate)
        for box in (self.tls, self.pause_on_gpu_use):
            box.toggled.connect(self.validate)
        self.peers.textChanged.connect(self.validate)
        for spin in (
            self.api_port,
            self.share_port,
            self.max_remote,
            self.resume_after_s,
            self.reserve_vram_gib,
            self.share_when_away_min,
            self.grace_s,
            self.lend_mib_s,
        ):
            spin.valueChanged.connect(self.validate)
        self.lend_models.currentIndexChanged.connect(self.validate)
        self._checked: Settings | None = settings
        self.validate()

    def values(self) -> dict[str, Any]:
        """Return what the form says, as settings values."""
        return {
            "name": self.name.text().strip(),
            "backend": self.backend.text().strip(),
            "api_port": self.api_port.value(),
            "share_port": self.share_port.value(),
            "max_remote": self.max_remote.value(),
            "peers": [line.strip() for line in self.peers.toPlainText().splitlines() if line.strip()],
            "interfaces": [part.strip() for part in self.interfaces.text().split(",") if part.strip()],
            "tls": self.tls.isChecked(),
            "pause_on_gpu_use": self.pause_on_gpu_use.isChecked(),
            "resume_after_s": self.resume_after_s.value(),
            "reserve_vram_gib": self.reserve_vram_gib.value(),
            "share_when_away_min": self.share_when_away_min.value(),
            "quiet_hours": [part.strip() for part in self.quiet_hours.text().split(";") if part.strip()],
            "grace_s": self.grace_s.value(),
            "lend_models": self.lend_models.currentData(),
            "lend_mib_s": self.lend_mib_s.value(),
        }

    def changes(self) -> dict[str, Any]:
        """Return the settings the form changes, as the checked settings hold them (0 peers' requests at
        once resolved to the backend's slots)."""
        if self._checked is None:
            return {}
        changed = {
            key: getattr(self._checked, key)
            for key in EDITED
            if key != "max_remote" and getattr(self._checked, key) != getattr(self._settings, key)
        }
        if self.max_remote.value() != self._settings.max_remote:
            changed["max_remote"] = self._checked.max_remote
        return changed

    def validate(self) -> bool:
        """Check the form as the node would; say what is wrong and allow saving only when nothing is."""
        values = self.values()
        try:
            if not values["name"]:
                raise ConfigError("the display name must not be empty")
            for address in values["interfaces"]:
                _ipv4(address)
            # A max_remote of 0 takes the backend's slots, in the file as on the command line.
            checked = self._store.check(**values)
        except ConfigError as exc:
            self._checked = None
            self.error.setText(str(exc))
        else:
            self._checked = checked
            self.error.setText("")
        save = self.buttons.button(QDialogButtonBox.StandardButton.Save)
        save.setEnabled(self._checked is not None)
        restart = set(self.changes()) - LIVE_SETTINGS
        self.note.setText(
            "Saving restarts the node in place: requests under way are given a few seconds to finish."
            if restart
            else ""
        )
        return self._checked is not None

    def _save(self) -> None:
        if not self.validate():
            return
        changes = self.changes()
        if "max_remote" in changes:
            # The file keeps 0, "the backend's slots", so a later change of OLLAMA_NUM_PARALLEL counts.
            changes["max_remote"] = self.max_remote.value()
        try:
            self._store.change(**changes)
        except InferhubError as exc:
            # Nothing was saved: the form stays open with what the user typed, and says why.
            self.error.setText(str(exc))
            return
        self.accept()


def _port(value: int) -> QSpinBox:
    return _spin(0, 65535, value, "", "any free port")


def _spin(low: int, high: int, value: int, suffix: str, at_zero: str) -> QSpinBox:
    """A number field whose lowest value says what it means in words."""
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSuffix(suffix)
    spin.setSpecialValueText(at_zero)
    spin.setValue(value)
    return spin


def _ipv4(address: str) -> None:
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise ConfigError(f"interface {address!r} is not an IPv4 address such as 192.168.1.20") from None
