"""A virtual X display with a system tray (Xvfb and trayer), for the app's real tray path."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# Debian's packages; .ci/run installs them.
NEEDED = ("Xvfb", "trayer", "xwininfo")


def missing_tools() -> list[str]:
    return [tool for tool in NEEDED if shutil.which(tool) is None]


@contextlib.contextmanager
def virtual_desktop() -> Iterator[dict[str, str]]:
    """Run Xvfb and a tray host on a free display; yield the environment a Qt app shows its tray in."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as displayfd:
        display = f":{displayfd.readline().strip()}"
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    env["DISPLAY"] = display
    tray = subprocess.Popen(
        ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--expand", "true"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The tray host owns the _NET_SYSTEM_TRAY selection once its window exists.
        deadline = time.monotonic() + 10
        while "panel" not in windows(env) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield env
    finally:
        for proc in (tray, xvfb):
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def windows(env: dict[str, str]) -> str:
    """Return the display's window tree, as xwininfo prints it."""
    return subprocess.run(
        ["xwininfo", "-root", "-tree"], env=env, capture_output=True, text=True, timeout=10, check=False
    ).stdout


def app_args(
    config_dir: Path, backend: str, command: Sequence[str] = (sys.executable, "-m", "inferhub_desktop")
) -> list[str]:
    """Return the command that starts the app (not headless) with a node on free loopback ports, sharing
    off so nothing goes out on mDNS; `command` is the app: this checkout's by default, or an installed one."""
    return [
        *command,
        "serve",
        "--api-port",
        "0",
        "--share-port",
        "0",
        "--interface",
        "127.0.0.1",
        "--backend",
        backend,
        "--config-dir",
        str(config_dir),
    ]
