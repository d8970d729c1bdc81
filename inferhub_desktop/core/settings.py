"""Node settings: defaults, the TOML file in the config directory, the environment and flags."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs
import tomli_w

from .files import write_private
from .identity import load_identity
from .schedule import parse_window
from .wire.errors import ConfigError, SettingsNotSaved

_log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.toml"
DEFAULT_API_PORT = 11435
OLLAMA_PORT = 11434
OLLAMA_BACKEND = f"http://127.0.0.1:{OLLAMA_PORT}"
# No backend named: look for a local model server on the usual ports.
AUTO_BACKEND = "auto"
# llama.cpp's server's port, for an `openai:` backend named without one.
OPENAI_DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_MIB = 100
DEFAULT_SHARE_PORT = 11436


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a node needs to run; one field per command-line flag."""

    config_dir: Path
    node_id: str
    name: str
    api_port: int = DEFAULT_API_PORT
    # `auto`, an Ollama URL, or `openai:URL` for an OpenAI-compatible server (see parse_backend).
    backend: str = AUTO_BACKEND
    max_body_mib: int = DEFAULT_MAX_BODY_MIB
    share: bool = False
    share_port: int = DEFAULT_SHARE_PORT
    # Concurrent requests from peers; 0 means the backend's parallel slots (OLLAMA_NUM_PARALLEL).
    max_remote: int = 0
    # LAN addresses to advertise and browse on; empty means every suitable interface.
    interfaces: tuple[str, ...] = ()
    # Peers reached by address where multicast does not pass (VPNs, other subnets), as HOST:PORT.
    peers: tuple[str, ...] = ()
    # Send this machine's requests to its own backend only, never to the pool.
    local_only: bool = False
    # Let peers pull models onto this machine (the only management call they may make).
    pool_pull: bool = False
    # Serve the share API over TLS, with a self-signed certificate that peers pin.
    tls: bool = False
    # The owner first (owner.py). Pause sharing while another program uses the GPU: one holding at least
    # pause_gpu_mib of its memory, or (pause_gpu_percent, 0 for never) the GPU that busy while the model
    # server is idle; sharing resumes resume_after_s after that ends.
    pause_on_gpu_use: bool = True
    pause_gpu_mib: int = 1024
    pause_gpu_percent: int = 50
    resume_after_s: int = 60
    # VRAM kept free for the owner: a peer's request that would load a model into it is refused as busy.
    reserve_vram_gib: int = 0
    # Share only once the owner has been away (no input, or the screen locked) this many minutes; 0: always.
    share_when_away_min: int = 0
    # Weekly windows when this machine does not share (schedule.py).
    quiet_hours: tuple[str, ...] = ()
    # When the owner comes back, peers' requests under way may finish for this long before they are cut.
    grace_s: int = 30
    # Who may copy this machine's models (lending.py): "off", "members" of its private pool, or the "lan".
    lend_models: str = "members"
    # The most this machine sends of its models a second, in MiB, all copies together; 0: no limit.
    lend_mib_s: int = 0

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mib * 1024 * 1024


# Fields a user may set in the file or with a flag, with their TOML types (lists hold strings).
USER_FIELDS: dict[str, type] = {
    "name": str,
    "api_port": int,
    "backend": str,
    "max_body_mib": int,
    "share": bool,
    "share_port": int,
    "max_remote": int,
    "interfaces": list,
    "peers": list,
    "local_only": bool,
    "pool_pull": bool,
    "tls": bool,
    "pause_on_gpu_use": bool,
    "pause_gpu_mib": int,
    "pause_gpu_percent": int,
    "resume_after_s": int,
    "reserve_vram_gib": int,
    "share_when_away_min": int,
    "quiet_hours": list,
    "grace_s": int,
    "lend_models": str,
    "lend_mib_s": int,
}
# What protects the owner; a running node takes each at once.
OWNER_SETTINGS = (
    "pause_on_gpu_use",
    "pause_gpu_mib",
    "pause_gpu_percent",
    "resume_after_s",
    "reserve_vram_gib",
    "share_when_away_min",
    "quiet_hours",
    "grace_s",
)
# The settings a running node changes when told to, and remembers in its settings file.
SWITCHES = ("share", "local_only", "pool_pull")
# The settings a running node takes at once; a change to any other restarts it.
LIVE_SETTINGS = frozenset({*SWITCHES, "peers", *OWNER_SETTINGS, "lend_models", "lend_mib_s"})
# Who may copy this machine's models.
LEND_CHOICES = ("off", "members", "lan")


def default_config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Return the config directory: INFERHUB_CONFIG_DIR, else the platform's per-user one."""
    if override := environ.get("INFERHUB_CONFIG_DIR"):
        return Path(override)
    return platformdirs.user_config_path("InferHub", appauthor=False)


def parse_host(value: str, default_port: int = OLLAMA_PORT) -> str:
    """Turn an OLLAMA_HOST-style value (`host`, `:port`, `scheme://host:port/path`) into a URL.

    Mirrors the Ollama clients: no scheme means http, no host means 127.0.0.1,
    no port means `default_port` (80/443 when a scheme is given), 0.0.0.0 means loopback.
    """
    raw = value.strip()
    has_scheme = "://" in raw
    parts = urlsplit(raw if has_scheme else f"http://{raw}")
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{value!r} is not an http(s) address; use e.g. http://127.0.0.1:{OLLAMA_PORT}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{value!r} has an invalid port") from exc
    if port is None:
        port = (443 if parts.scheme == "https" else 80) if has_scheme else default_port
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def parse_backend(value: str) -> str:
    """Turn a backend setting into its canonical form: `auto`, an Ollama URL, or `openai:URL`.

    `ollama:` may prefix an Ollama address; an OpenAI address may end in `/v1`, as the servers print it.
    """
    raw = value.strip()
    if raw.lower() == AUTO_BACKEND:
        return AUTO_BACKEND
    kind, colon, rest = raw.partition(":")
    if colon and kind.lower() in ("ollama", "openai") and not rest.startswith("//"):
        if kind.lower() == "ollama":
            return parse_host(rest)
        url = parse_host(rest, OPENAI_DEFAULT_PORT)
        return "openai:" + url.removesuffix("/v1")
    return parse_host(raw)


def backend_kind(spec: str) -> tuple[str, str]:
    """Split a canonical backend setting into its kind (auto, ollama, openai) and URL."""
    if spec == AUTO_BACKEND:
        return AUTO_BACKEND, ""
    if spec.startswith("openai:"):
        return "openai", spec.removeprefix("openai:")
    return "ollama", spec


def read_settings_file(config_dir: Path) -> dict[str, Any]:
    """Return the settings file's table, or an empty one when there is no file yet."""
    path = config_dir / SETTINGS_FILE
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; fix or delete the file") from exc


def write_settings_file(config_dir: Path, table: Mapping[str, Any]) -> None:
    """Replace the settings file with `table`, atomically and readable by its owner only; raise OSError
    if it cannot be written, leaving the old file as it was."""
    write_private(config_dir / SETTINGS_FILE, tomli_w.dumps(dict(table)).encode())


def load_settings(
    config_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Build Settings from defaults, the file, OLLAMA_HOST and `overrides` (flags), later ones winning.

    The node id is this machine's identity's (identity.py), made on first use and kept.
    """
    config_dir = config_dir or default_config_dir(environ)
    table = read_settings_file(config_dir)
    return build_settings(config_dir, load_identity(config_dir).node_id, table, overrides or {}, environ)


def build_settings(
    config_dir: Path,
    node_id: str,
    table: Mapping[str, Any],
    overrides: Mapping[str, Any],
    environ: Mapping[str, str],
) -> Settings:
    """Build Settings from a settings file's table and `overrides` (flags); raise ConfigError saying what
    is wrong with them."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "node_id":
            continue  # written by earlier versions: the identity's key gives it now
        if key == "pool_code":
            # Written by earlier versions, whose pools shared one secret; it stays in the file, unused.
            _log.warning(
                "pool_code in %s is no longer used: this machine is in the LAN's open pool until it makes a "
                "private pool (`inferhub pool create`) or joins one with an invite (`inferhub pool join`)",
                config_dir / SETTINGS_FILE,
            )
            continue
        if key not in USER_FIELDS:
            _log.warning("ignoring unknown setting %r in %s", key, config_dir / SETTINGS_FILE)
            continue
        values[key] = check_type(key, value, f" in {config_dir / SETTINGS_FILE}")
    for key, value in overrides.items():
        if value is not None:
            values[key] = check_type(key, value, " on the command line")

    if not values.get("max_remote"):
        values["max_remote"] = _backend_slots(environ)
    api_port = values.get("api_port", DEFAULT_API_PORT)
    if "backend" in values:
        values["backend"] = parse_backend(values["backend"])
        if _is_own_api(backend_kind(values["backend"])[1], api_port):
            raise ConfigError(
                f"the backend {values['backend']} is this node's own API; point it at the model server "
                f"(Ollama's is {OLLAMA_BACKEND}), or leave it out to find one"
            )
    elif env_host := environ.get("OLLAMA_HOST"):
        backend = parse_host(env_host)
        # Tools are told to set OLLAMA_HOST to this node; following it would loop.
        if _is_own_api(backend, api_port):
            _log.info("OLLAMA_HOST points at this node; looking for a model server on the usual ports")
        else:
            values["backend"] = backend

    settings = Settings(
        config_dir=config_dir, node_id=node_id, name=values.pop("name", None) or _default_name(), **values
    )
    _validate(settings)
    return settings


def not_saved(config_dir: Path, exc: OSError, what: str = "the change") -> SettingsNotSaved:
    """Word a settings file that could not be written: where, why, and what to do."""
    return SettingsNotSaved(
        f"cannot save {what} to {config_dir / SETTINGS_FILE}: {exc.strerror or exc}; nothing was changed. "
        "Make that folder writable (or free space on its disk) and try again"
    )


def check_type(key: str, value: Any, where: str = "") -> Any:
    """Return a setting's value as Settings holds it (lists as tuples); raise ConfigError if it is not of
    the setting's type. `where` says where it came from (" in FILE", " on the command line")."""
    expected = USER_FIELDS[key]
    if isinstance(value, tuple):
        value = list(value)
    # bool is an int in Python but never a valid port or size.
    wrong = not isinstance(value, expected) or (expected is int and isinstance(value, bool))
    if expected is list and not wrong:
        wrong = not all(isinstance(item, str) for item in value)
    if wrong:
        kind = "list of strings" if expected is list else expected.__name__
        raise ConfigError(f"setting {key!r}{where} must be a {kind}, not {value!r}")
    return tuple(value) if expected is list else value


def _validate(settings: Settings) -> None:
    if not 0 <= settings.api_port <= 65535:
        raise ConfigError(f"api_port must be between 0 and 65535, not {settings.api_port}")
    if not 0 <= settings.share_port <= 65535:
        raise ConfigError(f"share_port must be between 0 and 65535, not {settings.share_port}")
    if settings.max_remote < 1:
        raise ConfigError(f"max_remote must be at least 1, not {settings.max_remote}")
    for peer in settings.peers:
        parse_peer(peer)
    if settings.max_body_mib < 1:
        raise ConfigError(f"max_body_mib must be at least 1, not {settings.max_body_mib}")
    if not settings.name.strip() or len(settings.name) > 63 or not settings.name.isprintable():
        raise ConfigError(f"name must be 1 to 63 printable characters, not {settings.name!r}")
    for key, low, high in (
        ("pause_gpu_mib", 1, 1 << 20),
        ("pause_gpu_percent", 0, 100),
        ("resume_after_s", 0, 86400),
        ("reserve_vram_gib", 0, 4096),
        ("share_when_away_min", 0, 1440),
        ("grace_s", 0, 3600),
        ("lend_mib_s", 0, 1 << 20),
    ):
        if not low <= getattr(settings, key) <= high:
            raise ConfigError(f"{key} must be between {low} and {high}, not {getattr(settings, key)}")
    for window in settings.quiet_hours:
        parse_window(window)
    if settings.lend_models not in LEND_CHOICES:
        raise ConfigError(
            f"lend_models must be one of {', '.join(LEND_CHOICES)}, not {settings.lend_models!r}"
        )


def parse_peer(value: str) -> tuple[str, int]:
    """Split a static peer `HOST[:PORT]` (port defaults to the share port) into host and port."""
    parts = urlsplit(f"//{value.strip()}")
    try:
        port = parts.port or DEFAULT_SHARE_PORT
    except ValueError as exc:
        raise ConfigError(f"peer {value!r} has an invalid port; write it as HOST:PORT") from exc
    if not parts.hostname or parts.path or parts.query:
        raise ConfigError(f"peer {value!r} is not HOST:PORT")
    return parts.hostname, port


def _backend_slots(environ: Mapping[str, str]) -> int:
    """Return how many requests Ollama runs at once: OLLAMA_NUM_PARALLEL, which defaults to 1."""
    try:
        return max(1, int(environ.get("OLLAMA_NUM_PARALLEL", "1")))
    except ValueError:
        return 1


def on_this_machine(url: str) -> bool:
    """Tell whether a URL names this machine by a loopback name."""
    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def _is_own_api(url: str, api_port: int) -> bool:
    return urlsplit(url).port == api_port and on_this_machine(url)


def _default_name() -> str:
    return socket.gethostname().split(".")[0][:63] or "inferhub"
