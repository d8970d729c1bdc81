"""How long the owner has been away, read as the OS tells it: logind through its real command-line tool
(a stand-in on PATH that answers as loginctl does), and a clear "cannot tell" where nothing answers."""

from __future__ import annotations

import math
import os
import stat
import time
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
