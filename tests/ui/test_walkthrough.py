"""A new user's first hour, on three machines: the app on one host of a namespace LAN, under a real X
display with a tray host, driven by `tests/ui/walkthrough.py`; two headless colleagues on the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lan.netns import Host, Lan, netns_unavailable
from tests.support import ROOT
from tests.ui.display import missing_tools, virtual_desktop

pytestmark = [
    pytest.mark.skipif(
        bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} (xvfb trayer x11-utils)"
    ),
    pytest.mark.skipif(
        netns_unavailable() is not None, reason=f"no network namespaces: {netns_unavailable()}"
    ),
]

STEPS = [
    "first run without a model server",
    "model server found after Try again",
    "still sharing after saving a name in Settings",
    "peer1 joined with an invite and is listed",
    "peer2 joined with an invite and is listed",
    "a request shown while it runs",
    "a killed peer said lost",
    "peer1 back after its restart",
    "local-only shown and a peer's model refused with why",
    "sharing off agrees everywhere",
]
_PYTHON = sys.executable


class Colleague:
    """A headless machine of the LAN: a fake Ollama and a sharing node, which can be killed and started."""

    def __init__(self, host: Host, name: str, work: Path, models: list[str]) -> None:
        self.host, self.name, self.config, self._log = host, name, work / "config", work / "node.log"
        work.mkdir()
        start_fake(host, models, "--tps", "60")
        self.node = self.start()

    def start(self) -> subprocess.Popen[Any]:
        with self._log.open("a") as log:
            self.node = self.host.popen(
                [
                    *(
                        _PYTHON,
                        "-m",
                        "inferhub_desktop",
                        "serve",
                        "--headless",
                        "--share",
                        "--name",
                        self.name,
                    ),
                    *("--config-dir", str(self.config), "--interface", self.host.ip),
                    *("--backend", "http://127.0.0.1:11434"),
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.node

    def kill(self) -> None:
        self.node.send_signal(signal.SIGKILL)
        self.node.wait(timeout=10)

    def join(self, code: str, at: str) -> None:
        result = self.host.run(
            [
                _PYTHON,
                "-m",
                "inferhub_desktop",
                "pool",
                "join",
                code,
                "--at",
                at,
                "--config-dir",
                str(self.config),
            ],
            timeout=30,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr


def start_fake(host: Host, models: list[str], *extra: str) -> None:
    """Start a fake Ollama on the host's 127.0.0.1:11434 and wait until it listens."""
    models_args = [arg for model in models for arg in ("--model", model)]
    fake = host.popen(
        [_PYTHON, "-m", "tests.fakes.ollama", "--port", "11434", *models_args, *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert fake.stdout is not None
    assert fake.stdout.readline().startswith("LISTENING"), "the fake Ollama did not start"


@pytest.fixture
def desktop() -> Iterator[dict[str, str]]:
    with virtual_desktop() as env:
        yield env


def walk(lan: Lan, env: dict[str, str], work: Path, shots: Path | None = None) -> list[str]:
    """Run the walkthrough on the LAN's first host, doing what it asks of the others; return its output."""
    me, *others = lan.hosts
    colleagues = {
        name: Colleague(host, name, work / name, models)
        for (name, models), host in zip(
            [("peer1", ["peeronly:latest", "llama3:latest"]), ("peer2", ["llama3:latest"])],
            others,
            strict=True,
        )
    }
    command = [_PYTHON, "-m", "tests.ui.walkthrough", "--config", str(work / "me"), "--interface", me.ip]
    command += ["--backend", "http://127.0.0.1:11434", *(["--shots", str(shots)] if shots else [])]
    app = me.popen(
        command,
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert app.stdin is not None
    assert app.stdout is not None
    output = []
    with (work / "app.log").open("w") as log:
        for line in app.stdout:
            output.append(line.rstrip("\n"))
            log.write(line)
            if not line.startswith("ASK "):
                continue
            what, *args = line.split()[1:]
            if what == "start-backend":
                start_fake(me, ["llama3:latest"])
            elif what == "join":
                colleagues[args[0]].join(args[1], args[2])
            elif what == "kill":
                colleagues[args[0]].kill()
            elif what == "start":
                colleagues[args[0]].start()
            app.stdin.write("done\n")
            app.stdin.flush()
    assert app.wait(timeout=30) == 0, "\n".join(output)
    return output


@pytest.mark.timeout(300)
def test_a_new_user_shares_pairs_loses_a_peer_and_keeps_to_this_machine(
    desktop: dict[str, str], tmp_path: Path
) -> None:
    # INFERHUB_SHOTS=DIR saves the README's screenshots there on the way.
    shots = Path(os.environ["INFERHUB_SHOTS"]).resolve() if os.environ.get("INFERHUB_SHOTS") else None
    with Lan(3) as lan:
        output = walk(lan, desktop, tmp_path, shots)
    steps = [line.split(" ", 1)[1] for line in output if line.startswith("STEP ")]
    assert [s for s in STEPS if not any(line.startswith(s) for line in steps)] == [], "\n".join(output)
    assert output[-1] == "DONE"
    lost = next(line for line in steps if line.startswith("a killed peer said lost"))
    assert float(lost.rsplit(" ", 2)[1]) <= 5.0
