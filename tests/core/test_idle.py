"""How long the owner has been away, read as the OS tells it: logind through its real command-line tool
(a stand-in on PATH that answers as loginctl does), and a clear "cannot tell" where nothing answers."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferhub_desktop.core.idle import Away, system_away_source


def loginctl(directory: Path, answer: str, *, status: int = 0) -> None:
    """Put a loginctl on PATH that prints `answer` for `show-session`, as systemd's does."""
    tool = directory / "loginctl"
    tool.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "systemd 252 (252.33-1~deb12u1)"; exit 0; fi\n'
        f"printf '%s' '{answer}'\nexit {status}\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("XDG_SESSION_ID", "3")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_a_session_idle_for_a_while_is_away_that_long(session: Path) -> None:
    since_us = int((time.clock_gettime(time.CLOCK_MONOTONIC) - 300) * 1e6)
    loginctl(session, f"LockedHint=no\nIdleHint=yes\nIdleSinceHintMonotonic={since_us}\n")
    source = system_away_source()
    assert source.how == "the session's idle and lock state (logind)"
    away = source.away()
    assert away.seconds is not None
    assert 299 <= away.seconds < 330


def test_a_locked_screen_counts_as_away_and_an_active_session_as_here(session: Path) -> None:
    loginctl(session, "LockedHint=yes\nIdleHint=no\nIdleSinceHintMonotonic=0\n")
    assert system_away_source().away() == Away(math.inf)
    loginctl(session, "LockedHint=no\nIdleHint=no\nIdleSinceHintMonotonic=0\n")
    assert system_away_source().away() == Away(0.0)


def test_a_failing_loginctl_tells_nothing_rather_than_here(session: Path) -> None:
    loginctl(session, "", status=1)
    assert system_away_source().away() == Away(None)


def test_with_no_session_to_ask_the_source_says_it_cannot_tell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("XDG_SESSION_ID", raising=False)
    source = system_away_source()
    assert source.away() == Away(None)
    assert source.how.startswith("nothing: this system tells no idle time")


@pytest.fixture
def x_display(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real X server (Xvfb) for the session, as an X11 desktop has."""
    if shutil.which("Xvfb") is None or not all(map(ctypes.util.find_library, ("X11", "Xss", "Xtst"))):
        pytest.skip("needs Xvfb and the X11, Xss and Xtst libraries (apt-get install xvfb libxss1 libxtst6)")
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-nolisten", "tcp"], pass_fds=(write,), stderr=subprocess.DEVNULL
    )
    os.close(write)
    with os.fdopen(read) as displayfd:
        display = f":{displayfd.readline().strip()}"
    monkeypatch.setenv("DISPLAY", display)
    monkeypatch.setenv("XDG_SESSION_TYPE", "x11")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    yield display
    xvfb.terminate()
    xvfb.wait(timeout=10)


def move_the_mouse(display: str) -> None:
    """Input as a user's: a pointer motion through the XTEST extension."""
    xlib, xtst = ctypes.CDLL(ctypes.util.find_library("X11")), ctypes.CDLL(ctypes.util.find_library("Xtst"))
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XFlush.argtypes = xlib.XCloseDisplay.argtypes = (ctypes.c_void_p,)
    xtst.XTestFakeRelativeMotionEvent.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_ulong)
    handle = xlib.XOpenDisplay(display.encode())
    assert handle
    xtst.XTestFakeRelativeMotionEvent(handle, 5, 5, 0)
    xlib.XFlush(handle)
    xlib.XCloseDisplay(handle)


def test_an_x11_session_tells_the_time_since_the_last_input(x_display: str) -> None:
    source = system_away_source()
    assert source.how == "the X server's idle time"
    time.sleep(1.5)
    before = source.away().seconds
    assert before is not None
    assert before >= 1.0
    move_the_mouse(x_display)
    moved = time.monotonic()
    # A display busy with other clients may refuse one connection: the node reads again at its next
    # look, and so does this test, for a moment.
    after = source.away().seconds
    while after is None and time.monotonic() - moved < 2.0:
        time.sleep(0.05)
        after = source.away().seconds
    assert after is not None
    assert after < before
    assert after < 0.5 + (time.monotonic() - moved)


def test_an_x_display_in_a_wayland_session_is_not_asked(
    x_display: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Xwayland's idle time sees only input to X windows: the session's own state is asked instead.
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.delenv("XDG_SESSION_ID", raising=False)
    assert system_away_source().how.startswith("nothing")
