"""Print the frozen app's size and how fast it starts serving, beside the same node run from Python.

python -m bench.package [--runs 5] [--dist dist]    (after `python packaging/build.py`)

Sizes: the bundle folder, the .deb and the .rpm in dist/. Start time: from launching
`inferhub serve --headless` to its local API answering `GET /api/version`, the median of several launches,
for the frozen app and for `python -m inferhub_desktop` in this environment. Targets: .deb at most 80 MB,
start to serving at most 2 s.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from inferhub_desktop import __version__
from tests.support import ROOT, start_fake_ollama_process, stop_process

_DEB_TARGET_MB = 80
_START_TARGET_S = 2.0
_START_LIMIT_S = 30.0
_POLL_S = 0.005
_MB = 1_000_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_to_serving(command: list[str], backend: str, config_dir: Path) -> float:
    """Launch a headless node; return the seconds until its local API answers `GET /api/version`."""
    port = free_port()
    args = [
        *command,
        *("serve", "--headless", "--api-port", str(port), "--share-port", "0", "--interface", "127.0.0.1"),
        *("--backend", backend, "--config-dir", str(config_dir)),
    ]
    started = time.monotonic()
    node = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=1) as reply:
                    if reply.status == 200:
                        return time.monotonic() - started
            except OSError:
                if node.poll() is not None:
                    raise SystemExit(f"{args[0]} exited {node.returncode} before serving") from None
                if time.monotonic() - started > _START_LIMIT_S:
                    raise SystemExit(f"{args[0]} did not serve within {_START_LIMIT_S:.0f} s") from None
            time.sleep(_POLL_S)
    finally:
        node.terminate()
        node.wait(timeout=15)


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    args = parser.parse_args()
    frozen = args.dist / "inferhub" / "inferhub"
    if not frozen.exists():
        raise SystemExit(f"no frozen app at {frozen}: run `python packaging/build.py` first")

    sizes = [("bundle folder", folder_size(frozen.parent))]
    for pattern in (f"inferhub_{__version__}_*.deb", f"inferhub-{__version__}-1.*.rpm"):
        sizes += [(path.name, path.stat().st_size) for path in args.dist.glob(pattern)]
    for name, size in sizes:
        target = f" (target ≤ {_DEB_TARGET_MB} MB)" if name.endswith(".deb") else ""
        print(f"size: {name} {size / _MB:.1f} MB{target}")

    fake, backend = start_fake_ollama_process()
    try:
        for label, command in (
            ("frozen app", [str(frozen)]),
            (
                f"python -m inferhub_desktop (Python {sys.version.split()[0]})",
                [sys.executable, "-m", "inferhub_desktop"],
            ),
        ):
            with tempfile.TemporaryDirectory() as config_dir:
                times = [start_to_serving(command, backend, Path(config_dir)) for _ in range(args.runs)]
            print(
                f"start to serving, {label}: median {statistics.median(times):.2f} s, "
                f"min {min(times):.2f} s, max {max(times):.2f} s over {len(times)} launches "
                f"(target ≤ {_START_TARGET_S:.0f} s)"
            )
    finally:
        stop_process(fake)


if __name__ == "__main__":
    main()
