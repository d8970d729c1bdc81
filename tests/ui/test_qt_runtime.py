"""The Qt binding the app runs on keeps Python's reference counts: PySide6 6.12.0 drops one reference to
None per Qt call that returns nothing, and Python 3.11 aborts once None's count reaches zero."""

from __future__ import annotations

import sys

from PySide6.QtCore import QPointF


def test_qt_calls_that_return_nothing_keep_nones_reference_count() -> None:
    point = QPointF()
    before = sys.getrefcount(None)
    for _ in range(1000):
        point.setX(1.0)
    # Other threads may touch None meanwhile; a leak of one per call is 1000.
    assert abs(sys.getrefcount(None) - before) < 100
