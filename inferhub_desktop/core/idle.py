"""How long the owner has been away from this machine: seconds since the last keyboard or mouse input, and
whether the screen is locked, asked of the OS the way its own screensaver asks.

Windows: GetLastInputInfo. macOS: the HID system's HIDIdleTime (ioreg). Linux: the X server's
screensaver extension (libXss) in an X11 session, else logind's IdleHint and LockedHint for the session
(GNOME, KDE and others set them, Wayland sessions too, once their own idle delay has passed). Where
none answers, the owner is never taken to be away, and `AwaySource.how` says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import math
import os
import re
import subprocess
import sys
import time
from typing import Protocol

_log = logging.getLogger(__name__)

# An OS tool asked for the idle time answers in milliseconds; one that hangs is not waited for.
_TOOL_TIMEOUT_S = 2.0


@dataclasses.dataclass(frozen=True)
class Away:
    """What the OS said: seconds since the owner's last input (inf while the screen is locked), or None
    where it cannot tell."""

    seconds: float | None


class AwaySource(Protocol):
    """Where the owner's absence is read from."""

    @property
    def how(self) -> str:
        """Say what is watched, or why nothing can be: shown beside the setting."""
        ...

    def away(self) -> Away:
        """Read how long the owner has been away; blocking, but quick; never raises."""
        ...


class _WindowsInput:
    how = "Windows' last input time"

    def away(self) -> Away:
        class LastInputInfo(ctypes.Structure):
            _fields_ = (("cbSize", ctypes.c_uint), ("dwTime", ctypes.c_uint))

        info = LastInputInfo(ctypes.sizeof(LastInputInfo), 0)
        windll = ctypes.windll  # type: ignore[attr-defined]
        if not windll.user32.GetLastInputInfo(ctypes.byref(info)):
            return Away(None)
        # Both in milliseconds since boot; the 32-bit input time wraps every 49.7 days.
        now = windll.kernel32.GetTickCount64() & 0xFFFFFFFF
        return Away(((now - info.dwTime) & 0xFFFFFFFF) / 1000)


class _MacHid:
    how = "macOS's HID idle time"

    def away(self) -> Away:
        output = _run(["ioreg", "-c", "IOHIDSystem", "-d", "4", "-r", "-k", "HIDIdleTime"])
        found = re.search(r'"HIDIdleTime"\s*=\s*(\d+)', output or "")
        return Away(int(found.group(1)) / 1e9 if found else None)


class _X11ScreenSaver:
    how = "the X server's idle time"

    class _Info(ctypes.Structure):
        _fields_ = (
            ("window", ctypes.c_ulong),
            ("state", ctypes.c_int),
            ("kind", ctypes.c_int),
            ("til_or_since", ctypes.c_ulong),
            ("idle", ctypes.c_ulong),
            ("event_mask", ctypes.c_ulong),
        )

    def __init__(self, xlib: ctypes.CDLL, xss: ctypes.CDLL) -> None:
        self._xlib, self._xss = xlib, xss
        xlib.XOpenDisplay.restype = ctypes.c_void_p
        xlib.XCloseDisplay.argtypes = (ctypes.c_void_p,)
        xlib.XDefaultRootWindow.restype = ctypes.c_ulong
        xlib.XDefaultRootWindow.argtypes = (ctypes.c_void_p,)
        xss.XScreenSaverQueryInfo.argtypes = (ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(self._Info))

    @classmethod
    def open(cls) -> _X11ScreenSaver | None:
        """Return the source where an X display (not Xwayland, which sees only X windows' input) and
        the screensaver extension's library are at hand."""
        if not os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
            return None
        if os.environ.get("XDG_SESSION_TYPE", "x11") != "x11":
            return None
        names = ctypes.util.find_library("X11"), ctypes.util.find_library("Xss")
        if not all(names):
            return None
        try:
            return cls(*(ctypes.CDLL(name) for name in names))
        except OSError:
            return None

    def away(self) -> Away:
        # The display is opened for each reading, never held: Xlib ends the process when a display it
        # holds goes away.
        display = self._xlib.XOpenDisplay(None)
        if not display:
            return Away(None)
        try:
            info = self._Info()
            root = self._xlib.XDefaultRootWindow(display)
            if not self._xss.XScreenSaverQueryInfo(display, root, ctypes.byref(info)):
                return Away(None)
            return Away(info.idle / 1000)
        finally:
            self._xlib.XCloseDisplay(display)


class _Logind:
    how = "the session's idle and lock state (logind)"

    def __init__(self, session: str) -> None:
        self._session = session

    @classmethod
    def open(cls) -> _Logind | None:
        session = os.environ.get("XDG_SESSION_ID")
        return cls(session) if session and _run(["loginctl", "--version"]) is not None else None

    def away(self) -> Away:
        output = _run(
            [
                "loginctl",
                "show-session",
                self._session,
                "-p",
                "LockedHint",
                "-p",
                "IdleHint",
                "-p",
                "IdleSinceHintMonotonic",
            ]
        )
        if output is None:
            return Away(None)
        values = dict(line.partition("=")[::2] for line in output.splitlines())
        if values.get("LockedHint") == "yes":
            return Away(math.inf)
        if values.get("IdleHint") != "yes":
            return Away(0.0)
        try:
            since_us = int(values.get("IdleSinceHintMonotonic") or 0)
        except ValueError:
            return Away(None)
        # The desktop sets the hint only after its own idle delay (GNOME: 5 minutes), and counts from then.
        return Away(max(0.0, time.clock_gettime(time.CLOCK_MONOTONIC) - since_us / 1e6) if since_us else None)


class _Unknown:
    how = "nothing: this system tells no idle time, so InferHub never takes you to be away"

    def away(self) -> Away:
        return Away(None)


def system_away_source() -> AwaySource:
    """Return the way this OS tells how long its user has been away."""
    if sys.platform == "win32":
        return _WindowsInput()
    if sys.platform == "darwin":
        return _MacHid()
    return _X11ScreenSaver.open() or _Logind.open() or _Unknown()


def _run(args: list[str]) -> str | None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log.debug("%s: %s", args[0], exc)
        return None
    return done.stdout if done.returncode == 0 else None
