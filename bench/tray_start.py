"""Print how long the desktop app takes from launch to its icon in the tray, and its idle memory.

python -m bench.tray_start [--runs 5] [--idle-seconds 10]    (needs Xvfb, trayer and xwininfo)

Each run starts `inferhub serve` on a virtual X display with a tray host and a fake Ollama, and times
the launch until the icon's window is docked in the tray host's panel; the last run then idles and its
resident memory is read, beside a headless node's for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.support import start_fake_ollama_process, start_node_process, stop_process
from tests.ui.display import app_args, missing_tools, virtual_desktop, windows

_DOCKED = '"InferHub": ("inferhub" "InferHub")'


def launch(config_dir: Path, backend: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    """Start the app; return it and the seconds until its icon is docked in the tray."""
    started = time.monotonic()
    app = subprocess.Popen(app_args(config_dir, backend), env=env, stderr=subprocess.DEVNULL)
    while _DOCKED not in windows(env):
        if app.poll() is not None or time.monotonic() - started > 30:
            raise SystemExit(f"the app did not dock in the tray (exit status {app.poll()})")
        time.sleep(0.01)
    return app, time.monotonic() - started


def stop(app: subprocess.Popen[bytes]) -> None:
    app.terminate()
    app.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    if missing := missing_tools():
        raise SystemExit(f"needs {', '.join(missing)}: apt-get install xvfb trayer x11-utils")
    fake, backend = start_fake_ollama_process()
    try:
        with virtual_desktop() as env, tempfile.TemporaryDirectory() as config_dir:
            times = []
            for _ in range(args.runs):
                app, seconds = launch(Path(config_dir), backend, env)
                times.append(seconds)
                if len(times) < args.runs:
                    stop(app)
            try:
                time.sleep(args.idle_seconds)
                tray_rss = psutil.Process(app.pid).memory_info().rss / 2**20
            finally:
                stop(app)
        with tempfile.TemporaryDirectory() as config_dir:
            node, _ = start_node_process(Path(config_dir), backend)
            try:
                time.sleep(args.idle_seconds)
                headless_rss = psutil.Process(node.pid).memory_info().rss / 2**20
            finally:
                stop_process(node)
    finally:
        stop_process(fake)
    print(
        f"start to tray: median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
        f"max {max(times):.2f} s over {len(times)} launches (Python {sys.version.split()[0]})"
    )
    print(
        f"idle RSS after {args.idle_seconds:.0f} s: app with tray {tray_rss:.1f} MiB, "
        f"headless node {headless_rss:.1f} MiB"
    )


if __name__ == "__main__":
    main()
