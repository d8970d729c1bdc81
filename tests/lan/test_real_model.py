"""A real model shared on a LAN: SmolLM2 served by llama.cpp's OpenAI-compatible server on one machine,
used with the official ollama client on another, through the first machine's share API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lan.machines import wait_for
from tests.lan.netns import Host, Lan, netns_unavailable
from tests.support import ROOT, SMOLLM2, llama_server_args

pytestmark = pytest.mark.skipif(bool(netns_unavailable()), reason=str(netns_unavailable()))

API = "http://127.0.0.1:11435"


def start(host: Host, args: list[str], log: Path) -> None:
    with log.open("w") as out:
        host.popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def node_args(name: str, host: Host, config: Path, backend: str, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "inferhub_desktop", "serve", "--headless", "--name", name),
        *("--config-dir", str(config), "--interface", host.ip, "--backend", backend, *extra),
    ]


def run(host: Host, *args: str) -> str:
    result = host.run([sys.executable, *args], timeout=120, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


def sees_smollm2_at(host: Host, config_dir: Path, peer: str) -> bool:
    listed = host.run(
        [sys.executable, "-m", "inferhub_desktop", "peers", "--json", "--config-dir", str(config_dir)],
        timeout=20,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        return False  # the node is not listening yet
    return any(
        p["name"] == peer
        and p["share"]
        and "smollm2:latest" in [m["name"] for m in p["status"]["backend"]["installed"]]
        for p in json.loads(listed.stdout)
    )


def client_calls(host: Host) -> list[dict[str, Any]]:
    """Chat and generate, whole and streamed, with the official client on `host`; one report per call."""
    output = run(host, "tests/lan/scripts/ollama_client.py", API, SMOLLM2)
    return [json.loads(line) for line in output.splitlines()]


def test_a_peer_chats_with_the_real_model_through_the_share_api(tmp_path: Path) -> None:
    with Lan(2) as lan:
        server, user = lan.hosts
        start(server, llama_server_args(8080), tmp_path / "llama.log")
        start(
            server,
            node_args("node0", server, tmp_path / "c0", "openai:http://127.0.0.1:8080", "--share"),
            tmp_path / "node0.log",
        )
        # The user's machine has no model server of its own: every answer comes from node0.
        start(
            user, node_args("node1", user, tmp_path / "c1", "http://127.0.0.1:11434"), tmp_path / "node1.log"
        )
        try:
            wait_for(
                lambda: sees_smollm2_at(user, tmp_path / "c1", "node0"),
                60,
                "node1 seeing node0 share smollm2",
            )

            here = client_calls(server)
            there = client_calls(user)

            assert [c["call"] for c in there] == ["chat", "chat stream", "generate", "generate stream"]
            # Greedy decoding: the peer's answers are the words the model gives on its own machine.
            assert [c["text"] for c in there] == [c["text"] for c in here]
            for call in there:
                assert call["text"].strip(), call
                assert call["done"], call
                assert 0 < call["eval_count"] <= 24, call
            whole = [c for c in there if "stream" not in c["call"]]
            assert all(c["prompt_eval_count"] > 5 for c in whole), whole
            assert all(c["chunks"] > 3 for c in there if "stream" in c["call"]), there

            # Claude Code's API and OpenAI's Responses, which llama.cpp's server lacks, from the peer too.
            output = run(user, "tests/lan/scripts/sdk_client.py", API, SMOLLM2)
            sdks = [json.loads(line) for line in output.splitlines()]
            texts = {c["call"]: c["text"] for c in sdks}
            assert list(texts) == [
                "messages",
                "messages stream",
                "messages tool",
                "responses",
                "responses stream",
                "responses tool",
            ]
            chat = next(c["text"] for c in here if c["call"] == "chat")
            said = [texts[k] for k in ("messages", "messages stream", "responses", "responses stream")]
            assert said == [chat] * 4
            called = {"get_weather": {"city": "Paris"}}
            assert [json.loads(texts[k]) for k in ("messages tool", "responses tool")] == [called, called]

            body = {"model": SMOLLM2, "prompt": "Hi", "stream": False, "options": {"num_predict": 4}}
            head = run(
                user, "tests/lan/scripts/ask.py", API + "/api/generate", json.dumps(body)
            ).splitlines()[0]
            assert json.loads(head) == {"status": 200, "node": "node0"}
        finally:
            for log in ("node0.log", "node1.log", "llama.log"):
                print(f"--- {log}\n{(tmp_path / log).read_text()[-3000:]}")
