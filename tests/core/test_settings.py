"""Settings: precedence of defaults, file, environment and flags; validation; the node's identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferhub_desktop.core import ConfigError, default_config_dir, load_settings
from inferhub_desktop.core.settings import SETTINGS_FILE, backend_kind, parse_backend, parse_host, parse_peer
from tests.support import write_settings


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("", "http://127.0.0.1:11434"),
        ("example.com", "http://example.com:11434"),
        (":11435", "http://127.0.0.1:11435"),
        ("0.0.0.0:8000", "http://127.0.0.1:8000"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("https://example.com:56789/path/", "https://example.com:56789/path"),
        ("[::1]:1234", "http://[::1]:1234"),
        ("http://[fe80::1]", "http://[fe80::1]:80"),
    ],
)
def test_parse_host_follows_the_ollama_clients(value: str, url: str) -> None:
    assert parse_host(value) == url


@pytest.mark.parametrize("value", ["ftp://example.com", "http://example.com:99999"])
def test_parse_host_rejects_what_is_not_an_http_address(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_host(value)


def test_defaults_and_a_persistent_node_id(tmp_path: Path) -> None:
    first = load_settings(tmp_path, environ={})
    assert (first.api_port, first.backend, first.max_body_mib) == (11435, "auto", 100)
    assert first.name
    assert load_settings(tmp_path, environ={}).node_id == first.node_id


def test_flags_override_the_file_which_overrides_ollama_host(tmp_path: Path) -> None:
    env = {"OLLAMA_HOST": "gpu-box:11434"}
    assert load_settings(tmp_path, environ=env).backend == "http://gpu-box:11434"
    write_settings(tmp_path, backend="http://file-box:11434", name="from-file")
    from_file = load_settings(tmp_path, environ=env)
    assert (from_file.backend, from_file.name) == ("http://file-box:11434", "from-file")
    flagged = load_settings(tmp_path, {"backend": "flag-box", "name": None}, environ=env)
    assert (flagged.backend, flagged.name) == ("http://flag-box:11434", "from-file")


def test_ollama_host_pointing_at_this_node_is_not_followed(tmp_path: Path) -> None:
    settings = load_settings(tmp_path, environ={"OLLAMA_HOST": "127.0.0.1:11435"})
    assert settings.backend == "auto"


@pytest.mark.parametrize("backend", ["localhost:11435", "openai:http://127.0.0.1:11435/v1"])
def test_a_backend_that_is_this_node_is_refused(tmp_path: Path, backend: str) -> None:
    with pytest.raises(ConfigError, match="this node's own API"):
        load_settings(tmp_path, {"backend": backend}, environ={})


@pytest.mark.parametrize(
    ("value", "spec", "kind", "url"),
    [
        (" Auto ", "auto", "auto", ""),
        ("localhost:11434", "http://localhost:11434", "ollama", "http://localhost:11434"),
        ("ollama:gpu-box", "http://gpu-box:11434", "ollama", "http://gpu-box:11434"),
        ("ollama:http://gpu-box:9999/", "http://gpu-box:9999", "ollama", "http://gpu-box:9999"),
        ("openai:localhost", "openai:http://localhost:8080", "openai", "http://localhost:8080"),
        (
            "OpenAI:http://127.0.0.1:1234/v1",
            "openai:http://127.0.0.1:1234",
            "openai",
            "http://127.0.0.1:1234",
        ),
        (
            "openai:https://llm.lan/api/v1/",
            "openai:https://llm.lan:443/api",
            "openai",
            "https://llm.lan:443/api",
        ),
    ],
)
def test_a_backend_is_auto_an_ollama_url_or_an_openai_one(value: str, spec: str, kind: str, url: str) -> None:
    assert parse_backend(value) == spec
    assert backend_kind(spec) == (kind, url)


@pytest.mark.parametrize("value", ["openai:ftp://x", "ollama:http://x:99999", "gopher://x"])
def test_a_backend_that_is_no_http_address_is_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_backend(value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api_port": "11435"}, "must be a int"),
        ({"api_port": True}, "must be a int"),
        ({"api_port": 70000}, "between 0 and 65535"),
        ({"max_body_mib": 0}, "at least 1"),
        ({"name": " "}, "printable"),
        ({"name": "x" * 64}, "printable"),
    ],
)
def test_invalid_values_are_refused_with_the_reason(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path, overrides, environ={})


def test_a_broken_file_is_reported_with_its_path(tmp_path: Path) -> None:
    (tmp_path / SETTINGS_FILE).write_text("api_port = [")
    with pytest.raises(ConfigError, match=str(tmp_path / SETTINGS_FILE)):
        load_settings(tmp_path, environ={})


def test_wrong_types_in_the_file_are_refused_and_unknown_keys_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_settings(tmp_path, colour="blue")
    load_settings(tmp_path, environ={})
    assert "ignoring unknown setting 'colour'" in caplog.text
    write_settings(tmp_path, api_port="high")
    with pytest.raises(ConfigError, match="'api_port' in"):
        load_settings(tmp_path, environ={})


def test_config_dir_comes_from_the_environment(tmp_path: Path) -> None:
    assert default_config_dir({"INFERHUB_CONFIG_DIR": str(tmp_path)}) == tmp_path
    assert default_config_dir({}).name == "InferHub"


def test_pool_settings_from_file_and_flags(tmp_path: Path) -> None:
    write_settings(tmp_path, share=True, peers=["10.0.0.7:11436", "gpu-box"], interfaces=["10.0.0.2"])
    settings = load_settings(tmp_path, {"max_remote": 3}, environ={})
    assert (settings.share, settings.share_port, settings.max_remote) == (True, 11436, 3)
    assert settings.peers == ("10.0.0.7:11436", "gpu-box")
    assert settings.interfaces == ("10.0.0.2",)
    assert parse_peer("gpu-box") == ("gpu-box", 11436)
    assert parse_peer("[fd00::7]:9000") == ("fd00::7", 9000)


def test_remote_slots_default_to_ollamas_parallel_requests(tmp_path: Path) -> None:
    assert load_settings(tmp_path, environ={}).max_remote == 1
    assert load_settings(tmp_path, environ={"OLLAMA_NUM_PARALLEL": "4"}).max_remote == 4
    assert load_settings(tmp_path, environ={"OLLAMA_NUM_PARALLEL": "many"}).max_remote == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"peers": ["gpu-box:notaport"]}, "invalid port"),
        ({"peers": ["http://gpu-box/x"]}, "not HOST:PORT"),
        ({"peers": "gpu-box"}, "list of strings"),
        ({"interfaces": [1]}, "list of strings"),
        ({"share": 1}, "must be a bool"),
        ({"max_remote": -1}, "at least 1"),
    ],
)
def test_invalid_pool_settings_are_refused(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path, overrides, environ={})
