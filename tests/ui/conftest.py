"""Qt tests run offscreen unless a test brings its own display (the tray tests under Xvfb)."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
