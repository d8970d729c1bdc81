"""This machine's identity: a key pair made once and kept by its owner only, the node id derived from it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from inferhub_desktop.core import ConfigError, SettingsStore
from inferhub_desktop.core.identity import CERT_FILE, KEY_FILE, fingerprint, load_identity, node_id_of
from tests.support import unwritable, write_settings


def test_an_identity_is_made_once_and_kept_by_its_owner_only(tmp_path: Path) -> None:
    first = load_identity(tmp_path)
    again = load_identity(tmp_path)
    assert again == first
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate((tmp_path / CERT_FILE).read_bytes())
    assert fingerprint(certificate.public_bytes(serialization.Encoding.DER)) == first.fingerprint
    # The id is the key's: it cannot be had without the key.
    assert node_id_of(certificate.public_key()) == first.node_id
    assert load_identity(tmp_path / "other").node_id != first.node_id


def test_the_node_id_is_the_identitys_and_survives_a_restart(tmp_path: Path) -> None:
    # An id an earlier version wrote into the settings file is the key's now.
    write_settings(tmp_path, node_id="00000000-0000-4000-8000-000000000001")
    node_id = SettingsStore(tmp_path, environ={}).settings.node_id
    assert node_id == load_identity(tmp_path).node_id
    assert SettingsStore(tmp_path, environ={}).settings.node_id == node_id


def test_a_lost_certificate_is_made_again_for_the_same_key(tmp_path: Path) -> None:
    first = load_identity(tmp_path)
    (tmp_path / CERT_FILE).unlink()
    assert load_identity(tmp_path).node_id == first.node_id


def test_a_damaged_key_is_said_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not a key")
    with pytest.raises(ConfigError, match=r"is not an identity key .*move it away"):
        load_identity(tmp_path)


def test_an_identity_that_cannot_be_made_is_said_with_its_folder(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    with unwritable(config_dir, "read-only"), pytest.raises(ConfigError, match=f"in {config_dir}: "):
        load_identity(config_dir)
