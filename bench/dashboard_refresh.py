"""Print what the dashboard's once-a-second refresh costs the loop it shares with the node, with the
requests list full, against the same dashboard with no request listed, in one run.

    QT_QPA_PLATFORM=offscreen python -m bench.dashboard_refresh [--refreshes 50]

The demonstration pool (tests/ui/demo.py) with RECENT_REQUESTS requests that ended and one running, so
every refresh rebuilds the list, as it does while a request runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PySide6.QtWidgets import QApplication

from inferhub_desktop.core import RequestUnderway
from inferhub_desktop.ui.bridge import RECENT_REQUESTS, Bridge
from inferhub_desktop.ui.dashboard import Dashboard
from tests.ui.demo import DemoCore


def refresh_ms(app: QApplication, requests: int, refreshes: int) -> float:
    """Return the median time, in ms, of a refresh of a shown dashboard listing `requests` requests."""
    with tempfile.TemporaryDirectory() as config:
        core = DemoCore(Path(config))
        bridge = Bridge()
        bridge.attach(core)
        while len(bridge.recent) < requests:
            core.replay_requests()
        dashboard = Dashboard(bridge, open_settings=lambda: None)
        dashboard.resize(1240, 860)
        dashboard.show()
        core.running = [RequestUnderway("bench", time.time() - 3, "local", "llama3.1:8b", "atlas", "")]
        times = []
        for _ in range(refreshes):
            started = time.perf_counter()
            bridge.refresh()
            app.processEvents()
            times.append((time.perf_counter() - started) * 1000)
        dashboard.close()
        bridge.detach()
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=50)
    args = parser.parse_args()
    app = QApplication([])
    empty = refresh_ms(app, 0, args.refreshes)
    full = refresh_ms(app, RECENT_REQUESTS, args.refreshes)
    print(f"refresh, no request listed:        {empty:7.2f} ms (median of {args.refreshes})")
    print(f"refresh, {RECENT_REQUESTS} requests listed:     {full:7.2f} ms  (x{full / empty:.1f})")


if __name__ == "__main__":
    main()
