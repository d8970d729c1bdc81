"""Qt tests run offscreen unless a test brings its own display (the tray tests under Xvfb)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import qasync
from PySide6.QtWidgets import QApplication

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from tests.ui.demo import DemoCore


@pytest.fixture
def core(tmp_path: Path) -> DemoCore:
    """A demonstration pool of four workstations, as the app sees a node."""
    return DemoCore(tmp_path / "config")


@pytest.fixture
def run(qapp: QApplication) -> Iterator[Any]:
    """Run a coroutine on a qasync loop over the test's QApplication."""
    loop = qasync.QEventLoop(qapp)
    asyncio.set_event_loop(loop)

    def run(coro: Coroutine[Any, Any, None]) -> None:
        loop.run_until_complete(asyncio.wait_for(coro, 30))

    yield run
    loop.close()
    asyncio.set_event_loop(None)
