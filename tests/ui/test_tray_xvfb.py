"""The app as a user starts it: a process on an X display with a system tray, its icon docked there."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import process_output, start_fake_ollama_process, start_process, stop_process
from tests.ui.display import app_args, missing_tools, virtual_desktop, windows

pytestmark = pytest.mark.skipif(
    bool(missing_tools()),
    reason=f"the tray test needs {', '.join(missing_tools())} (apt-get install xvfb trayer x11-utils)",
)


@pytest.fixture
def desktop() -> Iterator[dict[str, str]]:
    with virtual_desktop() as env:
        yield env


@pytest.fixture
def backend() -> Iterator[str]:
    proc, url = start_fake_ollama_process()
    yield url
    assert stop_process(proc) == 0


def test_the_app_docks_in_the_tray_is_single_and_quits_cleanly(
    desktop: dict[str, str], backend: str, tmp_path: Path
) -> None:
    app, _ = start_process(app_args(tmp_path, backend), re.compile(r"(tray icon shown)"), env=desktop)
    try:
        output = process_output(app)
        api = re.search(r"serving the Ollama API on (http://\S+),", output)
        assert api, output
        # The tray host's panel holds the app's icon window, embedded over XEMBED.
        tree = windows(desktop)
        panel = tree.split('"panel"', 1)[1].split('("trayer" "Trayer")', 1)[0]
        assert '"InferHub": ("inferhub" "InferHub")' in panel, tree
        with urllib.request.urlopen(api.group(1) + "/api/version", timeout=5) as reply:
            assert reply.status == 200

        second = subprocess.run(
            app_args(tmp_path, backend), env=desktop, capture_output=True, text=True, timeout=30
        )
        assert second.returncode == 0
        assert "already running" in second.stderr
    finally:
        status = stop_process(app)
    assert status == 0
