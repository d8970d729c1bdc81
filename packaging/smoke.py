"""Check an installed InferHub: `--version`, and a headless node answering `/`, `/api/version`, `/metrics`.

    python packaging/smoke.py COMMAND      (in the repository, with its dependencies installed)

COMMAND is the installed app: /usr/bin/inferhub, inferhub-cli.exe on Windows (the windowed executable
has no stdout), InferHub.app/Contents/MacOS/inferhub on macOS. The node relays to the repository's fake
Ollama, on free loopback ports with sharing off, so nothing is announced on the network.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
# The repository's helpers for running processes and its fake Ollama.
sys.path.insert(0, str(ROOT))
from inferhub_desktop import __version__  # noqa: E402
from tests.support import process_output, start_fake_ollama_process, start_process, stop_process  # noqa: E402
from tests.ui.display import app_args  # noqa: E402

_NODE_READY = re.compile(r"serving the Ollama API on (http://\S+),")
_HTTP_TIMEOUT_S = 5.0


def fail(message: str) -> NoReturn:
    raise SystemExit(f"check failed: {message}")


def check_version(command: Path) -> None:
    result = subprocess.run([str(command), "--version"], capture_output=True, text=True, check=False)
    if (result.returncode, result.stdout.strip()) != (0, f"inferhub {__version__}"):
        fail(f"`{command} --version` exited {result.returncode}: {result.stdout!r} {result.stderr!r}")
    print(result.stdout.strip())


def get(url: str) -> tuple[int, str, str | None]:
    """GET a URL; return the status, the body and the node that answered."""
    with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as reply:
        return reply.status, reply.read().decode(), reply.headers.get("X-InferHub-Node")


def check_headless(command: Path, config_dir: Path, backend: str) -> None:
    """Start a headless node; check it answers as Ollama does, then stops cleanly."""
    node, url = start_process([*app_args(config_dir, backend, [str(command)]), "--headless"], _NODE_READY)
    try:
        status, body, _ = get(url + "/")
        if (status, body) != (200, "Ollama is running"):
            fail(f"GET / answered {status} {body!r}")
        status, body, node_name = get(url + "/api/version")
        if status != 200 or "version" not in json.loads(body) or not node_name:
            fail(f"GET /api/version answered {status} {body!r} (X-InferHub-Node {node_name!r})")
        # The metrics need prometheus_client in the bundle.
        status, body, _ = get(url + "/metrics")
        if status != 200 or "inferhub_backend_up" not in body:
            fail(f"GET /metrics answered {status} {body[:200]!r}")
        print(f"GET /, /api/version and /metrics answered by node {node_name} at {url}")
    finally:
        output = process_output(node)
        status = stop_process(node)
    # Windows has no SIGTERM: the node is ended outright there, so only POSIX can show a clean stop.
    if status != 0 and os.name == "posix":
        fail(f"the headless node exited {status}:\n{output}")


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    command = Path(sys.argv[1]).absolute()
    check_version(command)
    fake, backend = start_fake_ollama_process()
    try:
        with tempfile.TemporaryDirectory() as config_dir:
            check_headless(command, Path(config_dir), backend)
    finally:
        stop_process(fake)
    print("smoke check passed")


if __name__ == "__main__":
    main()
