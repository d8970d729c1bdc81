"""Start the tray app at login: an XDG autostart entry, a macOS LaunchAgent or the Windows Run key."""

from __future__ import annotations

import contextlib
import logging
import os
import plistlib
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol
from xml.parsers.expat import ExpatError

from ..core import InferhubError

_log = logging.getLogger(__name__)

_DESKTOP_FILE = "inferhub.desktop"
_AGENT_LABEL = "io.inferhub.desktop"
_RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
_RUN_VALUE = "InferHub"

_XDG_PLATFORMS = ("linux", "freebsd", "openbsd", "netbsd", "dragonfly")
# The Desktop Entry spec's reserved characters: an Exec argument holding any of them must be quoted.
_EXEC_RESERVED = frozenset(" \t\n\"'\\><~|&;$*?#()`")
_EXEC_ESCAPED = frozenset('"`$\\')
# Exec is also a string value, whose escapes are undone before its quoting is read.
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"})


class AutostartError(InferhubError):
    """Start at login could not be turned on or off; the message says why."""


class RunKey(Protocol):
    """The current user's HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run values."""

    def get(self, name: str) -> str:
        """Return the value's data; raise FileNotFoundError when it is absent."""
        ...

    def set(self, name: str, data: str) -> None:
        """Create or replace the value as a REG_SZ."""
        ...

    def delete(self, name: str) -> None:
        """Remove the value; raise FileNotFoundError when it is absent."""
        ...


if sys.platform == "win32":
    import winreg

    class _WinregRunKey:
        """The real Run key, through the standard library's winreg."""

        def get(self, name: str) -> str:
            """Return the value's data; raise FileNotFoundError when it is absent."""
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, _RUN_KEY, 0, winreg.KEY_READ) as key:
                data, _kind = winreg.QueryValueEx(key, name)
            return str(data)

        def set(self, name: str, data: str) -> None:
            """Create or replace the value as a REG_SZ."""
            with winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, _RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
                winreg.SetValueEx(key, name, 0, winreg.REG_SZ, data)

        def delete(self, name: str) -> None:
            """Remove the value; raise FileNotFoundError when it is absent."""
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, _RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
                winreg.DeleteValue(key, name)


def _windows_run_key() -> RunKey:
    """Return the real Run key; only Windows has one."""
    if sys.platform == "win32":
        return _WinregRunKey()
    raise AutostartError(
        "The Windows registry exists only on Windows; pass Autostart a registry to use elsewhere."
    )


def login_command(
    *, executable: str = sys.executable, frozen: bool = bool(getattr(sys, "frozen", False))
) -> list[str]:
    """Return the command that starts the tray app, for a PyInstaller bundle or an installed package."""
    # A bundle's executable is the app itself; otherwise the module runs the tray when given no arguments.
    return [executable] if frozen else [executable, "-m", "inferhub_desktop"]


class Autostart:
    """Turn starting the tray app at login on or off, where this desktop looks for it."""

    def __init__(
        self,
        *,
        platform: str = sys.platform,
        home: Path | None = None,
        environ: Mapping[str, str] = os.environ,
        command: Sequence[str] | None = None,
        registry: RunKey | None = None,
    ) -> None:
        self._platform = platform
        self._home = home if home is not None else Path.home()
        self._command = list(command) if command is not None else login_command()
        self._kind: Literal["xdg", "launchd", "windows"] | None = None
        if platform.startswith(_XDG_PLATFORMS):
            self._kind = "xdg"
            config_home = Path(environ.get("XDG_CONFIG_HOME", ""))
            # The spec says to ignore a relative (or empty) XDG_CONFIG_HOME.
            if not config_home.is_absolute():
                config_home = self._home / ".config"
            self._path = config_home / "autostart" / _DESKTOP_FILE
        elif platform == "darwin":
            self._kind = "launchd"
            self._path = self._home / "Library" / "LaunchAgents" / f"{_AGENT_LABEL}.plist"
        elif platform == "win32":
            self._kind = "windows"
            self._registry = registry if registry is not None else _windows_run_key()

    @property
    def supported(self) -> bool:
        """Say whether this platform can start the app at login."""
        return self._kind is not None

    @property
    def description(self) -> str:
        """Say where the login entry lives, for a tooltip."""
        if self._kind == "xdg":
            with contextlib.suppress(ValueError):
                return f"~/{self._path.relative_to(self._home).as_posix()}"
            return str(self._path)
        if self._kind == "launchd":
            return f"the LaunchAgent {_AGENT_LABEL}"
        if self._kind == "windows":
            return f"HKCU\\{_RUN_KEY}\\{_RUN_VALUE}"
        return f"start at login is not supported on {self._platform}"

    def enabled(self) -> bool:
        """Say whether the app starts at login now."""
        if self._kind == "xdg":
            return self._desktop_entry_enabled()
        if self._kind == "launchd":
            return self._launch_agent_enabled()
        if self._kind == "windows":
            try:
                self._registry.get(_RUN_VALUE)
            except FileNotFoundError:
                return False
            except OSError as exc:
                _log.warning("cannot read the Run value %s: %s", _RUN_VALUE, exc)
                return False
            return True
        return False

    def set_enabled(self, on: bool) -> None:
        """Start the app at login from now on, or stop doing so; raise AutostartError on failure."""
        if self._kind == "xdg":
            if on:
                _write_atomically(self._path, _desktop_entry(self._command).encode())
            else:
                _remove(self._path)
        elif self._kind == "launchd":
            if on:
                _write_atomically(self._path, plistlib.dumps(_launch_agent(self._command)))
            else:
                _remove(self._path)
        elif self._kind == "windows":
            self._set_run_value(on)
        else:
            raise AutostartError(f"Start at login is not supported on {self._platform}.")

    def _desktop_entry_enabled(self) -> bool:
        """Say whether the autostart file exists and no desktop has switched it off."""
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False
        except (OSError, UnicodeDecodeError) as exc:
            _log.warning("cannot read %s: %s", self._path, exc)
            return False
        entry = _desktop_entry_keys(text)
        # Desktops switch an entry off by writing one of these rather than deleting the file.
        return (
            entry.get("Hidden", "").lower() != "true"
            and entry.get("X-GNOME-Autostart-enabled", "").lower() != "false"
        )

    def _launch_agent_enabled(self) -> bool:
        """Say whether the LaunchAgent exists and runs at login."""
        try:
            with self._path.open("rb") as file:
                agent = plistlib.load(file)
        except FileNotFoundError:
            return False
        except (OSError, ValueError, ExpatError) as exc:
            _log.warning("cannot read %s: %s", self._path, exc)
            return False
        return isinstance(agent, dict) and agent.get("RunAtLoad") is True

    def _set_run_value(self, on: bool) -> None:
        """Write or remove the Run value."""
        try:
            if on:
                self._registry.set(_RUN_VALUE, subprocess.list2cmdline(self._command))
            else:
                with contextlib.suppress(FileNotFoundError):
                    self._registry.delete(_RUN_VALUE)
        except OSError as exc:
            action = "set" if on else "delete"
            raise AutostartError(
                f"Could not {action} HKCU\\{_RUN_KEY}\\{_RUN_VALUE}: {exc.strerror or exc}"
            ) from exc


def _quote_exec(command: Sequence[str]) -> str:
    """Return the command as the value of a desktop entry's Exec key."""
    return " ".join(_quote_exec_arg(arg) for arg in command).translate(_STRING_ESCAPES)


def _quote_exec_arg(arg: str) -> str:
    """Quote one Exec argument by the Desktop Entry spec's rules."""
    arg = arg.replace("%", "%%")
    if arg and not _EXEC_RESERVED.intersection(arg):
        return arg
    return '"' + "".join(f"\\{char}" if char in _EXEC_ESCAPED else char for char in arg) + '"'


def _desktop_entry(command: Sequence[str]) -> str:
    """Return the autostart file for the command, by the XDG Autostart spec."""
    return (
        "[Desktop Entry]\n"
        "Type=Application\n"
        "Name=InferHub\n"
        "Comment=Share this GPU with the LAN pool\n"
        f"Exec={_quote_exec(command)}\n"
        "Icon=inferhub\n"
        "Terminal=false\n"
        "X-GNOME-Autostart-enabled=true\n"
        "Categories=Utility;\n"
    )


def _desktop_entry_keys(text: str) -> dict[str, str]:
    """Return the keys of a desktop file's [Desktop Entry] group with their values as written."""
    keys: dict[str, str] = {}
    group = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1]
        elif group == "Desktop Entry" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


def _launch_agent(command: Sequence[str]) -> dict[str, object]:
    """Return the LaunchAgent property list that runs the command in the user's GUI session."""
    return {
        "Label": _AGENT_LABEL,
        "ProgramArguments": list(command),
        "RunAtLoad": True,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",
    }


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace the file with the data in one step, creating its folders; raise AutostartError on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                # Without this a crash soon after the rename can leave an empty file behind.
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise _file_error("write", path, exc) from exc


def _remove(path: Path) -> None:
    """Delete the file if it exists; raise AutostartError on failure."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise _file_error("delete", path, exc) from exc


def _file_error(action: str, path: Path, exc: OSError) -> AutostartError:
    """Describe a failed file operation for the user, naming the file it failed on."""
    reason = exc.strerror or str(exc)
    if exc.filename and Path(exc.filename) != path:
        reason += f" ({exc.filename})"
    return AutostartError(f"Could not {action} {path}: {reason}")
