"""Requests routed across three machines on a real LAN, with peers crashing under them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lan.machines import Machine, start_machines, wait_for
from tests.lan.netns import Lan, netns_unavailable
from tests.support import ROOT

pytestmark = pytest.mark.skipif(bool(netns_unavailable()), reason=str(netns_unavailable()))

API = "http://127.0.0.1:11435"
# node0 is the user's machine: llama3 installed, not loaded. node1 has llama3 loaded and alone has
# qwen3; phi3 is on node1 and node2, loaded on neither; node2 has llama3 loaded too. Loads take seconds,
# so a crash can land while a request waits for its first byte.
FAKES = [
    ["--model", "llama3:latest", "--load-delay", "2", "--tps", "50"],
    [
        *("--model", "llama3:latest", "--model", "qwen3:8b", "--model", "phi3:latest"),
        *("--loaded", "llama3:latest", "--load-delay", "3", "--tps", "50"),
    ],
    [
        *("--model", "llama3:latest", "--model", "phi3:latest"),
        *("--loaded", "llama3:latest", "--load-delay", "3", "--tps", "50"),
    ],
]


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[list[Machine]]:
    with Lan(3) as lan:
        # A short grace, for an owner who takes the GPU back mid-stream.
        machines = start_machines(lan, tmp_path, FAKES, lambda i: ["--grace", "2"])
        try:
            wait_for(
                lambda: all(
                    len(m.peers()) == 2 and all(p["models"] for p in m.peers().values()) for m in machines
                ),
                20,
                "every node listing the other two with their models",
            )
            yield machines
        finally:
            for m in machines:
                print(f"--- {m.name} log\n{m.node_log.read_text()}")


def ask(machine: Machine, path: str, body: dict[str, Any], *headers: str) -> tuple[dict[str, Any], list[Any]]:
    """Send a request to the machine's local API; return the head and the body's JSON lines."""
    result = machine.host.run(
        [sys.executable, "tests/lan/scripts/ask.py", API + path, json.dumps(body), *headers],
        timeout=60,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    head, *lines = result.stdout.splitlines()
    return json.loads(head), [json.loads(line) for line in lines if line]


def python(machine: Machine, code: str) -> Any:
    """Run Python code on the machine and return what it printed, as JSON."""
    result = machine.host.run(
        [sys.executable, "-c", code], timeout=20, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def loaded_on(machine: Machine) -> list[str]:
    """Return the models the machine's own Ollama has loaded."""
    code = (
        "import json, ollama; "
        "print(json.dumps([m.model for m in ollama.Client('127.0.0.1:11434').ps().models]))"
    )
    loaded: list[str] = python(machine, code)
    return loaded


def listed_by(machine: Machine) -> list[str]:
    """Return what `ollama list` shows on the machine, through its node."""
    code = (
        "import json, ollama; "
        "print(json.dumps(sorted(m.model for m in ollama.Client('127.0.0.1:11435').list().models)))"
    )
    listed: list[str] = python(machine, code)
    return listed


def peers_requests_on(machine: Machine) -> int:
    """Return how many peers' requests the machine's node is running now."""
    status = json.loads(machine.cli("status", "--json", "--config-dir", str(machine.config_dir)))
    remote: int = status["load"]["remote"]
    return remote


def test_requests_go_to_the_node_with_the_model_and_listings_are_the_pools(machines: list[Machine]) -> None:
    user, b, _ = machines
    # qwen3 is only on node1: node1 answers, and its Ollama now has qwen3 loaded.
    head, lines = ask(user, "/api/generate", {"model": "qwen3:8b", "prompt": "hi", "stream": False})
    assert (head, lines[0]["done"]) == ({"status": 200, "node": "node1"}, True)
    assert "qwen3:8b" in loaded_on(b)
    # llama3 is loaded on node1 and node2 and only installed here: a peer with it loaded answers.
    head, _ = ask(user, "/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]})
    assert head["status"] == 200
    assert head["node"] in ("node1", "node2")
    assert "llama3:latest" not in loaded_on(user)
    # `ollama list` on any machine shows the pool's models.
    for machine in machines:
        assert listed_by(machine) == ["llama3:latest", "phi3:latest", "qwen3:8b"]


def test_a_peer_killed_before_the_first_byte_is_replaced_without_the_client_noticing(
    machines: list[Machine],
) -> None:
    user, b, c = machines
    body = {"model": "phi3", "prompt": "hi", "stream": False}
    # phi3 loads for 3 s on node1 or node2; the one that took the request dies during the load.
    client = user.host.popen(
        [sys.executable, "tests/lan/scripts/ask.py", API + "/api/generate", json.dumps(body)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    dying = wait_for_taker([b, c], 10)
    other = c if dying is b else b
    dying.node.send_signal(signal.SIGKILL)
    out, _ = client.communicate(timeout=30)
    head, *lines = out.splitlines()
    assert json.loads(head) == {"status": 200, "node": other.name}
    assert json.loads(lines[0])["done"] is True


def wait_for_taker(machines: list[Machine], timeout: float) -> Machine:
    """Return the machine whose node takes a peer's request, once one does."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for machine in machines:
            if peers_requests_on(machine):
                return machine
        time.sleep(0.05)
    pytest.fail(f"none of {[m.name for m in machines]} took the request within {timeout} s")


# A generation that streams for some seconds.
LONG = {"model": "llama3", "prompt": "hi", "options": {"num_predict": 400}}


def long_stream_from_a_peer(machines: list[Machine]) -> tuple[subprocess.Popen[str], Machine]:
    """Start a long stream on the user's machine that a peer answers; return the client, five lines
    into the stream, and the peer answering it."""
    user, b, c = machines
    client = user.host.popen(
        [sys.executable, "tests/lan/scripts/ask.py", API + "/api/generate", json.dumps(LONG)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    head = json.loads(client.stdout.readline())
    assert (head["status"], head["node"] in ("node1", "node2")) == (200, True)
    for _ in range(5):
        assert "response" in json.loads(client.stdout.readline())
    return client, b if head["node"] == "node1" else c


def test_a_peer_killed_mid_stream_ends_the_stream_cleanly_and_is_avoided_next(
    machines: list[Machine],
) -> None:
    user = machines[0]
    client, serving = long_stream_from_a_peer(machines)
    serving.node.send_signal(signal.SIGKILL)
    assert client.stdout is not None
    rest = [json.loads(line) for line in client.stdout]
    client.wait(timeout=10)
    # Never spliced: the stream ends with one error line that names the node that failed.
    assert [("error" in line) for line in rest] == [False] * (len(rest) - 1) + [True]
    assert rest[-1]["error"].startswith(f"peer '{serving.name}' at ")
    assert len(rest) < 400
    head, lines = ask(user, "/api/generate", {**LONG, "stream": False, "options": {"num_predict": 5}})
    assert head["status"] == 200
    assert head["node"] != serving.name
    assert lines[0]["done"] is True


def test_a_peers_stream_ends_saying_why_when_the_owner_takes_the_gpu_back_and_the_next_goes_elsewhere(
    machines: list[Machine],
) -> None:
    user = machines[0]
    client, serving = long_stream_from_a_peer(machines)
    serving.cli("share", "off")
    stopped = time.monotonic()
    assert client.stdout is not None
    rest = [json.loads(line) for line in client.stdout]
    client.wait(timeout=10)
    # The reply went on through the grace period, then ended with one line that says why.
    assert time.monotonic() - stopped >= 1.0
    assert [("error" in line) for line in rest] == [False] * (len(rest) - 1) + [True]
    assert rest[-1]["error"] == (
        f"{serving.name}'s owner needs the GPU back (sharing was turned off); this reply was cut after the "
        "2 s grace period. Ask again: another node of the pool will answer"
    )
    assert len(rest) < 400
    head, lines = ask(user, "/api/generate", {**LONG, "stream": False, "options": {"num_predict": 5}})
    assert (head["status"], lines[0]["done"]) == (200, True)
    assert head["node"] != serving.name
