"""Qt tests run offscreen unless a test brings its own display (the tray tests under Xvfb)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from inferhub_desktop.ui.screenshots import DemoCore


@pytest.fixture
def core(tmp_path: Path) -> DemoCore:
    """A demonstration pool of four workstations, as the app sees a node."""
    return DemoCore(tmp_path / "config")
