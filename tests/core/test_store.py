"""The settings store: each change is validated, saved atomically, applied and told once, or refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from inferhub_desktop.core import (
    ConfigError,
    Event,
    SettingsChanged,
    SettingsNotSaved,
    SettingsStore,
    read_settings_file,
)
from inferhub_desktop.core.settings import SETTINGS_FILE
from tests.support import unwritable, write_settings


def store_of(config_dir: Path, **flags: object) -> tuple[SettingsStore, list[Event]]:
    store = SettingsStore(config_dir, flags, environ={})
    heard: list[Event] = []
    store.events.subscribe(heard.append)
    return store, heard


def test_a_change_is_saved_applied_and_told_once(tmp_path: Path) -> None:
    store, heard = store_of(tmp_path)
    before = store.settings

    after = store.change(share=True, peers=["10.0.0.7"], max_remote=3)

    assert store.settings is after
    assert (after.share, after.peers, after.max_remote) == (True, ("10.0.0.7",), 3)
    table = read_settings_file(tmp_path)
    assert (table["share"], table["peers"], table["max_remote"]) == (True, ["10.0.0.7"], 3)
    assert heard == [SettingsChanged(after, before, frozenset({"share", "peers", "max_remote"}))]
    # Only its owner reads the file (it may hold a pool's secret), and no temporary file is left behind.
    assert stat.S_IMODE((tmp_path / SETTINGS_FILE).stat().st_mode) == 0o600
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_change_to_what_already_holds_tells_nothing(tmp_path: Path) -> None:
    store, heard = store_of(tmp_path)
    store.change(share=False, name=store.settings.name)
    assert heard == []


def test_a_change_keeps_the_other_keys_of_the_file(tmp_path: Path) -> None:
    write_settings(tmp_path, name="desk", colour="blue")
    store, _ = store_of(tmp_path)

    store.change(local_only=True)

    table = read_settings_file(tmp_path)
    assert (table["name"], table["colour"], table["local_only"]) == ("desk", "blue", True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api_port": 70000}, "between 0 and 65535"),
        ({"share": "yes"}, "'share' must be a bool"),
        ({"peers": ["http://x/y"]}, "not HOST:PORT"),
        ({"colour": "blue"}, "'colour' is not a setting"),
        ({"backend": "127.0.0.1:11435"}, "this node's own API"),
    ],
)
def test_an_invalid_change_is_refused_whole(tmp_path: Path, values: dict[str, object], message: str) -> None:
    store, heard = store_of(tmp_path)
    store.change(share=False)
    before, saved = store.settings, (tmp_path / SETTINGS_FILE).read_bytes()

    with pytest.raises(ConfigError, match=message):
        store.change(**{"local_only": True, **values})

    assert store.settings is before
    assert (tmp_path / SETTINGS_FILE).read_bytes() == saved
    assert heard == []


def test_check_says_what_a_change_would_give_and_saves_nothing(tmp_path: Path) -> None:
    store, heard = store_of(tmp_path)
    store.change(share=False)
    saved = (tmp_path / SETTINGS_FILE).read_bytes()
    assert store.check(name="atlas", max_remote=0).name == "atlas"
    with pytest.raises(ConfigError, match="printable"):
        store.check(name=" ")
    assert store.settings.name != "atlas"
    assert heard == []
    assert (tmp_path / SETTINGS_FILE).read_bytes() == saved


def test_an_earlier_versions_pool_code_is_said_unused_and_kept_in_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_settings(tmp_path, pool_code="7K3M-9QXD-2HWA-PZ4T-9", name="desk")
    store, _ = store_of(tmp_path)
    assert "pool_code" in caplog.text
    assert "inferhub pool create" in caplog.text
    store.change(share=True)
    assert read_settings_file(tmp_path)["pool_code"] == "7K3M-9QXD-2HWA-PZ4T-9"


def test_a_flag_holds_for_the_run_until_the_user_changes_that_setting(tmp_path: Path) -> None:
    write_settings(tmp_path, share=False, name="from-file")
    store, _ = store_of(tmp_path, share=True, name="from-flag")
    assert (store.settings.share, store.settings.name) == (True, "from-flag")
    # A flag is this run's: it is not written to the file.
    assert read_settings_file(tmp_path)["share"] is False

    store.change(share=False)
    store.change(name="renamed")
    # Another change keeps the user's last word on each.
    store.change(local_only=True)

    assert (store.settings.share, store.settings.name) == (False, "renamed")
    assert SettingsStore(tmp_path, environ={}).settings.share is False


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_a_change_that_cannot_be_saved_is_refused_and_changes_nothing(tmp_path: Path, how: str) -> None:
    config_dir = tmp_path / "config"
    store, heard = store_of(config_dir)
    store.change(share=True)
    before = store.settings
    heard.clear()

    with unwritable(config_dir, how):
        saved = (config_dir / SETTINGS_FILE).read_bytes()
        with pytest.raises(SettingsNotSaved) as refused:
            store.change(share=False)
        assert (config_dir / SETTINGS_FILE).read_bytes() == saved
        assert not [p for p in config_dir.iterdir() if p.name.startswith(".")]

    message = str(refused.value)
    assert str(config_dir / SETTINGS_FILE) in message
    why = {"full": "No space left on device", "read-only": "Read-only file system"}[how]
    assert (why if os.geteuid() == 0 else "Permission denied") in message
    assert "nothing was changed" in message
    assert store.settings is before
    assert store.settings.share is True
    assert heard == []
    # The next start reads the switch where the user last managed to put it.
    assert SettingsStore(config_dir, environ={}).settings.share is True
