"""The owner's key to the local API's control paths (switches, pool, peers, status, routes, audit): a
random token in a file of the config directory that only the owner reads. The owner's `inferhub`
commands send it; the desktop app runs the node in-process and needs none. Another OS user of the
machine, or a web page, cannot read the file, and so cannot drive the node."""

from __future__ import annotations

import secrets
from pathlib import Path

from .files import write_private
from .wire.errors import ConfigError

TOKEN_FILE = "control.token"


def control_token(config_dir: Path) -> str:
    """Return the node's control token, made and saved on first use; raise ConfigError if it can be
    neither read nor made."""
    path = config_dir / TOKEN_FILE
    try:
        return path.read_text(encoding="ascii").strip() or _make(path)
    except FileNotFoundError:
        try:
            return _make(path)
        except OSError as exc:
            raise ConfigError(f"cannot make the control token {path}: {exc.strerror or exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the control token {path} ({exc}); only the owner of that folder may control "
            "its node"
        ) from exc


def read_control_token(config_dir: Path) -> str:
    """Return the token a running node of this config directory made, for a command that controls it;
    raise ConfigError saying why it cannot be read."""
    path = config_dir / TOKEN_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"no control token in {path}: no node has run with this config directory yet"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the control token {path} ({exc}); only the owner of that folder may control "
            "its node"
        ) from exc


def _make(path: Path) -> str:
    token = secrets.token_urlsafe(32)
    write_private(path, token.encode("ascii"))
    return token
