"""Start at login: the XDG autostart file, the macOS LaunchAgent and the Windows Run value, on real files."""

from __future__ import annotations

import configparser
import json
import logging
import plistlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inferhub_desktop.ui.autostart import Autostart, AutostartError, login_command

COMMAND = ["/opt/Infer Hub/bin/python3", "-m", "inferhub_desktop"]
# Every character the Exec quoting rules treat specially, and a backslash that the string escapes double.
AWKWARD = ["/opt/my apps/py", 'say "hi"', "$HOME", "100%", "`tick`", "back\\slash", "it's", "", "%f"]


def read_desktop_file(path: Path) -> configparser.ConfigParser:
    """Parse a desktop file as a strict reader would, keys keeping their case."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


def split_exec(value: str) -> list[str]:
    """Split an Exec value into arguments by the Desktop Entry spec, as a launcher does."""
    escapes = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    unescaped = re.sub(r"\\(.)", lambda m: escapes[m[1]], value)

    def field_code(match: re.Match[str]) -> str:
        assert match[1] == "%", f"unexpected field code %{match[1]}"
        return "%"

    line = re.sub(r"%(.)", field_code, unescaped)
    args: list[str] = []
    current: str | None = None
    chars = iter(line)
    for char in chars:
        if char == " ":
            if current is not None:
                args.append(current)
            current = None
        elif char == '"':
            current = current or ""
            for quoted in chars:
                if quoted == '"':
                    break
                if quoted == "\\":
                    quoted = next(chars)
                    assert quoted in '"`$\\', f"backslash before {quoted!r} in a quoted argument"
                current += quoted
            else:
                raise AssertionError("unterminated quote")
        else:
            assert char not in "\\'$`", f"reserved {char!r} outside quotes in {value!r}"
            current = (current or "") + char
    if current is not None:
        args.append(current)
    return args


class MemoryRunKey:
    """An in-memory Run key that behaves like the registry's."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, name: str) -> str:
        try:
            return self.values[name]
        except KeyError:
            raise FileNotFoundError(2, "The system cannot find the file specified") from None

    def set(self, name: str, data: str) -> None:
        self.values[name] = data

    def delete(self, name: str) -> None:
        if self.values.pop(name, None) is None:
            raise FileNotFoundError(2, "The system cannot find the file specified")


class ReadOnlyRunKey(MemoryRunKey):
    """A Run key that policy forbids writing to."""

    def set(self, name: str, data: str) -> None:
        raise PermissionError(5, "Access is denied")


def linux(home: Path, command: list[str] = COMMAND, **environ: str) -> Autostart:
    return Autostart(platform="linux", home=home, environ=environ, command=command)


def test_login_command_runs_the_bundle_or_the_module() -> None:
    assert login_command(executable="/app/InferHub", frozen=True) == ["/app/InferHub"]
    assert login_command(executable="/usr/bin/python3", frozen=False) == [
        "/usr/bin/python3",
        "-m",
        "inferhub_desktop",
    ]
    assert login_command() == [sys.executable, "-m", "inferhub_desktop"]


def test_linux_desktop_file_follows_the_autostart_spec(tmp_path: Path) -> None:
    linux(tmp_path, ["/usr/bin/python3", "-m", "inferhub_desktop"]).set_enabled(True)
    path = tmp_path / ".config" / "autostart" / "inferhub.desktop"
    entry = read_desktop_file(path)
    assert entry.sections() == ["Desktop Entry"]
    assert dict(entry["Desktop Entry"]) == {
        "Type": "Application",
        "Name": "InferHub",
        "Comment": "Share this GPU with the LAN pool",
        "Exec": "/usr/bin/python3 -m inferhub_desktop",
        "Icon": "inferhub",
        "Terminal": "false",
        "X-GNOME-Autostart-enabled": "true",
        "Categories": "Utility;",
    }
    assert not list(path.parent.glob(".*")), "the temporary file was left behind"


def test_linux_exec_line_round_trips_awkward_arguments(tmp_path: Path) -> None:
    linux(tmp_path, AWKWARD).set_enabled(True)
    exec_value = read_desktop_file(tmp_path / ".config/autostart/inferhub.desktop")["Desktop Entry"]["Exec"]
    assert split_exec(exec_value) == AWKWARD
    # A quoted `$` needs a backslash for the Exec rules, and that backslash another for the string escapes.
    assert '"\\\\$HOME"' in exec_value
    assert '"100%%"' not in exec_value
    assert " 100%% " in exec_value


@pytest.mark.skipif(shutil.which("gio") is None, reason="needs GLib's gio to launch desktop files")
def test_linux_exec_line_survives_glibs_launcher(tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    script = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
    args = [*AWKWARD, "tab\there\nnewline", "~;|&()*?#<>"]
    linux(tmp_path, [sys.executable, "-c", script, str(out), *args]).set_enabled(True)
    desktop_file = tmp_path / ".config" / "autostart" / "inferhub.desktop"
    subprocess.run(["gio", "launch", str(desktop_file)], check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(out.read_text()) == args


def test_linux_enable_disable_cycle(tmp_path: Path) -> None:
    autostart = linux(tmp_path)
    path = tmp_path / ".config" / "autostart" / "inferhub.desktop"
    assert autostart.supported
    assert not autostart.enabled()
    autostart.set_enabled(True)
    assert autostart.enabled()
    assert path.is_file()
    autostart.set_enabled(True)
    assert autostart.enabled()
    autostart.set_enabled(False)
    assert not autostart.enabled()
    assert not path.exists()
    autostart.set_enabled(False)
    assert not autostart.enabled()


@pytest.mark.parametrize("switch", ["Hidden=true", "X-GNOME-Autostart-enabled=false"])
def test_linux_entry_switched_off_by_the_desktop_counts_as_disabled(tmp_path: Path, switch: str) -> None:
    autostart = linux(tmp_path)
    autostart.set_enabled(True)
    path = tmp_path / ".config" / "autostart" / "inferhub.desktop"
    text = path.read_text().replace("X-GNOME-Autostart-enabled=true\n", "")
    path.write_text(f"{text}{switch}\n")
    assert not autostart.enabled()
    autostart.set_enabled(True)
    assert autostart.enabled()


def test_linux_switch_in_another_group_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / ".config" / "autostart" / "inferhub.desktop"
    path.parent.mkdir(parents=True)
    path.write_text("[Desktop Entry]\nType=Application\nExec=inferhub\n\n[Desktop Action x]\nHidden=true\n")
    assert linux(tmp_path).enabled()


def test_linux_respects_xdg_config_home(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere"
    autostart = linux(tmp_path / "home", XDG_CONFIG_HOME=str(config))
    autostart.set_enabled(True)
    assert (config / "autostart" / "inferhub.desktop").is_file()
    assert not (tmp_path / "home").exists()
    assert autostart.description == str(config / "autostart" / "inferhub.desktop")


def test_linux_ignores_a_relative_xdg_config_home(tmp_path: Path) -> None:
    autostart = linux(tmp_path, XDG_CONFIG_HOME="relative/config")
    autostart.set_enabled(True)
    assert (tmp_path / ".config" / "autostart" / "inferhub.desktop").is_file()
    assert autostart.description == "~/.config/autostart/inferhub.desktop"


def test_bsd_uses_the_xdg_file(tmp_path: Path) -> None:
    Autostart(platform="freebsd14", home=tmp_path, environ={}, command=COMMAND).set_enabled(True)
    assert (tmp_path / ".config" / "autostart" / "inferhub.desktop").is_file()


def test_a_file_where_the_folder_should_be_is_reported_with_its_path(tmp_path: Path) -> None:
    blocker = tmp_path / ".config" / "autostart"
    blocker.parent.mkdir()
    blocker.write_text("not a folder")
    autostart = linux(tmp_path)
    with pytest.raises(AutostartError) as caught:
        autostart.set_enabled(True)
    message = str(caught.value)
    assert message.startswith(f"Could not write {blocker / 'inferhub.desktop'}: ")
    assert f"({blocker})" in message
    assert not autostart.enabled()


def test_macos_launch_agent(tmp_path: Path) -> None:
    autostart = Autostart(platform="darwin", home=tmp_path, environ={}, command=AWKWARD)
    path = tmp_path / "Library" / "LaunchAgents" / "io.inferhub.desktop.plist"
    assert not autostart.enabled()
    autostart.set_enabled(True)
    assert autostart.enabled()
    with path.open("rb") as file:
        agent = plistlib.load(file)
    assert agent == {
        "Label": "io.inferhub.desktop",
        "ProgramArguments": AWKWARD,
        "RunAtLoad": True,
        "ProcessType": "Interactive",
        "LimitLoadToSessionType": "Aqua",
    }
    assert autostart.description == "the LaunchAgent io.inferhub.desktop"
    autostart.set_enabled(False)
    assert not path.exists()
    assert not autostart.enabled()


def test_macos_agent_not_run_at_load_or_unreadable_is_disabled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    autostart = Autostart(platform="darwin", home=tmp_path, environ={}, command=COMMAND)
    autostart.set_enabled(True)
    path = tmp_path / "Library" / "LaunchAgents" / "io.inferhub.desktop.plist"
    path.write_bytes(plistlib.dumps({"Label": "io.inferhub.desktop", "RunAtLoad": False}))
    assert not autostart.enabled()
    path.write_bytes(b"<?xml version='1.0'?><plist><dict><key>RunAtLoad</key>")
    with caplog.at_level(logging.WARNING):
        assert not autostart.enabled()
    assert str(path) in caplog.text


def test_windows_run_value(tmp_path: Path) -> None:
    registry = MemoryRunKey()
    command = ["C:\\Program Files\\InferHub\\InferHub.exe", "--flag", 'with "quotes"']
    autostart = Autostart(platform="win32", home=tmp_path, environ={}, command=command, registry=registry)
    assert not autostart.enabled()
    autostart.set_enabled(True)
    assert autostart.enabled()
    assert registry.values == {"InferHub": subprocess.list2cmdline(command)}
    assert registry.values["InferHub"].startswith('"C:\\Program Files\\InferHub\\InferHub.exe" --flag ')
    autostart.set_enabled(False)
    assert registry.values == {}
    assert not autostart.enabled()
    autostart.set_enabled(False)
    assert autostart.description == "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\InferHub"
    assert list(tmp_path.iterdir()) == []


def test_windows_registry_refusal_is_an_autostart_error(tmp_path: Path) -> None:
    autostart = Autostart(
        platform="win32", home=tmp_path, environ={}, command=COMMAND, registry=ReadOnlyRunKey()
    )
    with pytest.raises(AutostartError, match=r"Run\\InferHub: Access is denied"):
        autostart.set_enabled(True)


@pytest.mark.skipif(sys.platform == "win32", reason="Windows has a real registry")
def test_windows_without_a_registry_elsewhere_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AutostartError, match="exists only on Windows"):
        Autostart(platform="win32", home=tmp_path, environ={}, command=COMMAND)


def test_unsupported_platform(tmp_path: Path) -> None:
    autostart = Autostart(platform="emscripten", home=tmp_path, environ={}, command=COMMAND)
    assert not autostart.supported
    assert not autostart.enabled()
    assert "not supported on emscripten" in autostart.description
    with pytest.raises(AutostartError, match="not supported on emscripten"):
        autostart.set_enabled(True)
    assert list(tmp_path.iterdir()) == []
