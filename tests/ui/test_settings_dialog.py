"""The settings dialog checks the form as the node would, and saves only what changed to settings.toml."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QPushButton
from pytestqt.qtbot import QtBot

from inferhub_desktop.core import (
    SettingsStore,
    load_settings,
    read_settings_file,
)
from inferhub_desktop.ui.settings_dialog import SettingsDialog
from tests.support import node_settings, write_settings

RESTART_NOTE = "Saving restarts the node in place"


@pytest.fixture
def settings(tmp_path: Path) -> SettingsStore:
    # Ports other than node_settings' 0 (any free port), which the dialog's spin boxes cannot show.
    return node_settings(
        tmp_path,
        "http://127.0.0.1:11434",
        api_port=12000,
        share_port=12001,
        max_remote=2,
        peers=["10.0.0.7"],
    )


def open_dialog(qtbot: QtBot, settings: SettingsStore) -> SettingsDialog:
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    return dialog


@pytest.fixture
def dialog(qtbot: QtBot, settings: SettingsStore) -> SettingsDialog:
    return open_dialog(qtbot, settings)


def files(config_dir: Path) -> dict[str, bytes]:
    """Return what a config directory holds, file by file."""
    return {path.name: path.read_bytes() for path in config_dir.iterdir() if path.is_file()}


def save_button(dialog: SettingsDialog) -> QPushButton:
    return dialog.buttons.button(QDialogButtonBox.StandardButton.Save)


def test_the_form_starts_with_the_settings(dialog: SettingsDialog) -> None:
    assert dialog.name.text() == "test-node"
    assert dialog.backend.text() == "http://127.0.0.1:11434"
    assert dialog.api_port.value() == 12000
    assert dialog.share_port.value() == 12001
    assert dialog.max_remote.value() == 2
    assert dialog.peers.toPlainText() == "10.0.0.7"
    assert dialog.interfaces.text() == "127.0.0.1"
    assert dialog.changes() == {}
    assert save_button(dialog).isEnabled()
    assert dialog.error.text() == ""
    assert dialog.note.text() == ""


def test_several_peers_and_interfaces_show_one_a_line_and_comma_separated(
    qtbot: QtBot, tmp_path: Path
) -> None:
    settings = node_settings(
        tmp_path,
        "http://127.0.0.1:11434",
        api_port=12000,
        share_port=12001,
        peers=["10.0.0.7", "10.0.0.8:9000"],
        interfaces=["127.0.0.1", "192.168.1.20"],
    )

    dialog = open_dialog(qtbot, settings)

    assert dialog.peers.toPlainText() == "10.0.0.7\n10.0.0.8:9000"
    assert dialog.interfaces.text() == "127.0.0.1, 192.168.1.20"
    assert dialog.changes() == {}


def set_backend(text: str) -> Callable[[SettingsDialog], None]:
    return lambda dialog: dialog.backend.setText(text)


def own_api_on_another_port(dialog: SettingsDialog) -> None:
    dialog.api_port.setValue(12345)
    dialog.backend.setText("localhost:12345")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param(set_backend("ftp://x"), "'ftp://x' is not an http(s) address", id="ftp backend"),
        pytest.param(
            set_backend("http://127.0.0.1:12000"), "is this node's own API", id="backend is the own API"
        ),
        pytest.param(own_api_on_another_port, "is this node's own API", id="backend follows the API port"),
        pytest.param(
            lambda dialog: dialog.peers.setPlainText("10.0.0.7\na/b"),
            "peer 'a/b' is not HOST:PORT",
            id="bad peer",
        ),
        pytest.param(
            lambda dialog: dialog.interfaces.setText("127.0.0.1, not-an-ip"),
            "interface 'not-an-ip' is not an IPv4 address",
            id="bad interface",
        ),
    ],
)
def test_an_invalid_form_says_why_and_cannot_be_saved(
    dialog: SettingsDialog, change: Callable[[SettingsDialog], None], error: str
) -> None:
    change(dialog)

    assert error in dialog.error.text()
    assert not save_button(dialog).isEnabled()
    assert dialog.changes() == {}


def test_an_empty_name_cannot_be_saved(dialog: SettingsDialog, tmp_path: Path) -> None:
    # The settings file would take an empty name as "the host name"; the dialog says it is empty instead.
    dialog.name.setText("   ")

    assert not save_button(dialog).isEnabled()
    assert dialog.error.text() != ""
    save_button(dialog).click()
    assert "name" not in read_settings_file(tmp_path)


def test_fixing_the_form_allows_saving_again(dialog: SettingsDialog) -> None:
    dialog.backend.setText("ftp://x")
    assert not save_button(dialog).isEnabled()

    dialog.backend.setText("http://127.0.0.1:11500")

    assert save_button(dialog).isEnabled()
    assert dialog.error.text() == ""
    assert dialog.changes() == {"backend": "http://127.0.0.1:11500"}


@pytest.mark.parametrize("spin", ["api_port", "share_port"])
def test_ports_are_between_0_and_65535_where_0_is_any_free_port(dialog: SettingsDialog, spin: str) -> None:
    box = getattr(dialog, spin)

    assert (box.minimum(), box.maximum()) == (0, 65535)
    box.setValue(70000)
    assert box.value() == 65535
    box.setValue(0)
    assert box.text() == "any free port"


def test_settings_on_any_free_port_open_unchanged(qtbot: QtBot, tmp_path: Path) -> None:
    # Port 0 (any free port) must not read as a change to some other port.
    dialog = open_dialog(qtbot, node_settings(tmp_path, "http://127.0.0.1:11434"))

    assert dialog.changes() == {}


def test_changes_hold_only_what_changed_normalised(dialog: SettingsDialog) -> None:
    dialog.backend.setText("localhost:1234")
    dialog.interfaces.setText(" 127.0.0.1 ,192.168.1.20, ")
    dialog.share_port.setValue(12002)

    assert dialog.changes() == {
        "backend": "http://localhost:1234",
        "interfaces": ("127.0.0.1", "192.168.1.20"),
        "share_port": 12002,
    }
    assert save_button(dialog).isEnabled()
    assert RESTART_NOTE in dialog.note.text()


def test_a_change_undone_is_no_change(dialog: SettingsDialog) -> None:
    dialog.name.setText("atlas")
    assert dialog.changes() == {"name": "atlas"}

    dialog.name.setText(" test-node ")

    assert dialog.changes() == {}
    assert dialog.note.text() == ""


def test_changing_only_peers_needs_no_restart(dialog: SettingsDialog) -> None:
    dialog.peers.setPlainText("10.0.0.7\n\n  10.0.0.8:9000  \n")

    assert dialog.changes() == {"peers": ("10.0.0.7", "10.0.0.8:9000")}
    assert dialog.note.text() == ""

    dialog.max_remote.setValue(3)

    assert dialog.changes() == {"peers": ("10.0.0.7", "10.0.0.8:9000"), "max_remote": 3}
    assert RESTART_NOTE in dialog.note.text()


def test_save_writes_the_changes_and_accepts(dialog: SettingsDialog, tmp_path: Path) -> None:
    dialog.name.setText("atlas")
    dialog.backend.setText("localhost:1234")
    dialog.peers.setPlainText("10.0.0.7\n10.0.0.8:9000")

    save_button(dialog).click()

    assert dialog.result() == QDialog.DialogCode.Accepted
    assert read_settings_file(tmp_path) == {
        "name": "atlas",
        "backend": "http://localhost:1234",
        "peers": ["10.0.0.7", "10.0.0.8:9000"],
    }
    # What is saved reads back as the dialog checked it.
    saved = load_settings(tmp_path, environ={})
    changes = dialog.changes()
    assert (saved.name, saved.backend, saved.peers) == (changes["name"], changes["backend"], changes["peers"])


def test_save_without_changes_writes_nothing(dialog: SettingsDialog, tmp_path: Path) -> None:
    before = files(tmp_path)

    save_button(dialog).click()

    assert dialog.result() == QDialog.DialogCode.Accepted
    assert files(tmp_path) == before


def test_cancel_writes_nothing(dialog: SettingsDialog, tmp_path: Path) -> None:
    before = files(tmp_path)
    dialog.name.setText("atlas")
    dialog.api_port.setValue(12100)

    dialog.buttons.button(QDialogButtonBox.StandardButton.Cancel).click()

    assert dialog.result() == QDialog.DialogCode.Rejected
    assert files(tmp_path) == before


def test_an_invalid_form_is_not_saved_even_if_asked(dialog: SettingsDialog, tmp_path: Path) -> None:
    before = files(tmp_path)
    dialog.name.setText("atlas")
    dialog.interfaces.setText("not-an-ip")

    # As Enter in the form would, past the disabled button.
    dialog.buttons.accepted.emit()

    assert dialog.result() != QDialog.DialogCode.Accepted
    assert files(tmp_path) == before


def test_zero_peers_requests_at_once_takes_the_backends_slots(qtbot: QtBot, tmp_path: Path) -> None:
    # 0 means "as many as the backend runs at once": the file keeps 0, so OLLAMA_NUM_PARALLEL decides.
    write_settings(tmp_path, max_remote=4)
    settings = node_settings(tmp_path, "http://127.0.0.1:11434", api_port=12000, share_port=12001)
    assert settings.settings.max_remote == 4
    dialog = open_dialog(qtbot, settings)

    dialog.max_remote.setValue(0)
    save_button(dialog).click()

    assert dialog.result() == QDialog.DialogCode.Accepted
    assert load_settings(tmp_path, environ={"OLLAMA_NUM_PARALLEL": "3"}).max_remote == 3


def test_tls_is_a_change_that_restarts_the_node(dialog: SettingsDialog) -> None:
    dialog.tls.setChecked(True)
    assert dialog.changes() == {"tls": True}
    assert RESTART_NOTE in dialog.note.text()


def test_a_peer_added_from_the_dashboard_shows_when_settings_open_again(
    qtbot: QtBot, settings: SettingsStore
) -> None:
    open_dialog(qtbot, settings).reject()
    settings.change(peers=[*settings.settings.peers, "10.0.0.9:11436"])
    again = open_dialog(qtbot, settings)
    assert again.peers.toPlainText().splitlines() == ["10.0.0.7", "10.0.0.9:11436"]


def test_the_owners_protections_are_checked_and_saved_without_a_restart(
    dialog: SettingsDialog, tmp_path: Path
) -> None:
    assert dialog.pause_on_gpu_use.isChecked()
    assert (dialog.reserve_vram_gib.text(), dialog.share_when_away_min.text()) == ("nothing", "always share")
    dialog.quiet_hours.setText("weekdays 09:00-17:00")
    assert not save_button(dialog).isEnabled()
    assert "name no day as mon, tue … sun or daily" in dialog.error.text()

    dialog.quiet_hours.setText("mon-fri 09:00-17:30; sat 10:00-14:00")
    dialog.reserve_vram_gib.setValue(6)
    dialog.share_when_away_min.setValue(10)
    dialog.pause_on_gpu_use.setChecked(False)
    assert dialog.changes() == {
        "quiet_hours": ("mon-fri 09:00-17:30", "sat 10:00-14:00"),
        "reserve_vram_gib": 6,
        "share_when_away_min": 10,
        "pause_on_gpu_use": False,
    }
    # A running node takes each at once.
    assert dialog.note.text() == ""
    save_button(dialog).click()
    assert dialog.result() == QDialog.DialogCode.Accepted
    saved = read_settings_file(tmp_path)
    assert saved["quiet_hours"] == ["mon-fri 09:00-17:30", "sat 10:00-14:00"]
    assert (saved["reserve_vram_gib"], saved["share_when_away_min"], saved["pause_on_gpu_use"]) == (
        6,
        10,
        False,
    )


def test_who_may_copy_this_machines_models_and_how_fast_are_saved_without_a_restart(
    dialog: SettingsDialog, tmp_path: Path
) -> None:
    assert (dialog.lend_models.currentText(), dialog.lend_mib_s.text()) == (
        "Members of my private pool",
        "no limit",
    )
    dialog.lend_models.setCurrentIndex(dialog.lend_models.findData("lan"))
    dialog.lend_mib_s.setValue(50)
    assert dialog.changes() == {"lend_models": "lan", "lend_mib_s": 50}
    assert dialog.note.text() == ""
    save_button(dialog).click()
    saved = read_settings_file(tmp_path)
    assert (saved["lend_models"], saved["lend_mib_s"]) == ("lan", 50)
