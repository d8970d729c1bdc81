"""Machines on a namespace LAN, each running a fake Ollama, a node and a watcher of the node's peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lan.netns import Host, Lan
from tests.support import ROOT


@dataclass
class Machine:
    host: Host
    name: str
    node: subprocess.Popen[Any]
    watch_log: Path
    node_log: Path
    config_dir: Path

    def views(self) -> list[dict[str, Any]]:
        """Return every peer list this machine's node has shown, oldest first."""
        lines = self.watch_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def peers(self) -> dict[str, dict[str, Any]]:
        views = self.views()
        return {p["name"]: p for p in views[-1]["peers"]} if views else {}

    def cli(self, *args: str) -> str:
        """Run an `inferhub` command as the machine's owner, whose config directory is the node's."""
        result = self.host.run(
            [sys.executable, "-m", "inferhub_desktop", *args],
            timeout=20,
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "INFERHUB_CONFIG_DIR": str(self.config_dir)},
        )
        assert result.returncode == 0, result.stderr
        return str(result.stdout)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until `condition()` holds; return when it did (time.time()), or fail naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return time.time()
        time.sleep(0.05)
    pytest.fail(f"not within {timeout} s: {what}")


def start_machines(
    lan: Lan,
    tmp_path: Path,
    fakes: list[list[str]],
    extra: Callable[[int], list[str]],
    nofile: int | None = None,
    environ: Callable[[int], dict[str, str]] = lambda i: {},
) -> list[Machine]:
    """Start on each host a fake Ollama (with its arguments from `fakes`), a sharing node named node0,
    node1, ... (each allowed `nofile` open files, where given, and with `environ(i)` added to its
    environment) and a watcher of its peers."""
    machines = []
    for i, host in enumerate(lan.hosts):
        work = tmp_path / f"m{i}"
        work.mkdir()
        with (work / "fake.log").open("w") as out:
            host.popen(
                [
                    sys.executable,
                    "-m",
                    "tests.fakes.ollama",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "11434",
                    *fakes[i],
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        node_log = work / "node.log"
        with node_log.open("w") as out:
            limit = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else []
            node = host.popen(
                [
                    *limit,
                    sys.executable,
                    "-m",
                    "inferhub_desktop",
                    "serve",
                    "--headless",
                    "--share",
                    "--name",
                    f"node{i}",
                    "--config-dir",
                    str(work / "config"),
                    "--interface",
                    host.ip,
                    "--backend",
                    "http://127.0.0.1:11434",
                    *extra(i),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **environ(i)},
            )
        watch_log = work / "watch.log"
        with watch_log.open("w") as out:
            host.popen(
                [
                    sys.executable,
                    "tests/lan/scripts/watch_peers.py",
                    "http://127.0.0.1:11435",
                    str(work / "config"),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        machines.append(Machine(host, f"node{i}", node, watch_log, node_log, work / "config"))
    return machines
