"""`inferhub audit`, run as a real process: from the running node, or from the log when none runs."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferhub_desktop.core import CONTROL_HEADER, TOKEN_FILE, RequestDone, read_control_token
from inferhub_desktop.core.audit import AuditLog
from inferhub_desktop.core.wire.headers import VIA_HEADER
from tests.support import start_fake_ollama_process, start_node_process, stop_process
from tests.test_cli import run_cli

HEADER = ["when", "peer", "model", "tokens", "duration", "outcome"]
PEER_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture
def fake_ollama() -> Iterator[str]:
    proc, url = start_fake_ollama_process()
    yield url
    assert stop_process(proc) == 0


def served(at: float, model: str, tokens: int | None, error: str | None = None) -> RequestDone:
    return RequestDone(
        at=at,
        api="share",
        endpoint="/api/chat",
        model=model,
        node="desk",
        client=PEER_ID,
        attempts=1,
        status=502 if error else 200,
        duration_s=2.5,
        first_byte_s=0.1,
        tokens=tokens,
        tokens_per_s=None,
        error=error,
    )


def test_without_a_node_the_log_is_read_from_the_config_dir(tmp_path: Path, unused_tcp_port: int) -> None:
    log = AuditLog(tmp_path)
    at = datetime.datetime(2025, 3, 4, 5, 6, 7, tzinfo=datetime.UTC).timestamp()
    log.record(served(at, "llama3:latest", 42), "cobalt")
    log.record(served(at + 60, "qwen2.5:7b", None, "connection reset"), None)
    no_node = ("--api-port", str(unused_tcp_port))

    table = run_cli("audit", "--config-dir", str(tmp_path), *no_node)
    # INFERHUB_CONFIG_DIR names the directory as --config-dir does.
    env = {**os.environ, "INFERHUB_CONFIG_DIR": str(tmp_path)}
    raw = run_cli("audit", "--json", "--limit", "1", *no_node, env=env)

    assert (table.returncode, table.stderr) == (0, "")
    lines = table.stdout.splitlines()
    assert lines[0].split() == HEADER
    local = datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")
    # The LAN's open pool does not prove who sent a request: the log says so.
    assert lines[1].startswith(local + "  cobalt (unverified)  ")
    assert lines[1].split()[4:] == ["llama3:latest", "42", "2.50", "s", "ok"]
    assert lines[2].split()[2:9] == ["id", PEER_ID[:8], "(unverified)", "qwen2.5:7b", "—", "2.50", "s"]
    assert lines[2].endswith("  error: HTTP 502: connection reset")
    assert len(lines) == 3
    assert raw.returncode == 0
    assert [e["model"] for e in json.loads(raw.stdout)] == ["qwen2.5:7b"]


def test_with_nothing_logged_it_says_so(tmp_path: Path, unused_tcp_port: int) -> None:
    result = run_cli("audit", "--config-dir", str(tmp_path / "new"), "--api-port", str(unused_tcp_port))
    assert (result.returncode, result.stdout.strip()) == (0, "no peer has used this machine yet")
    as_json = run_cli(
        "audit", "--json", "--config-dir", str(tmp_path / "new"), "--api-port", str(unused_tcp_port)
    )
    assert json.loads(as_json.stdout) == []


def test_a_limit_below_one_is_refused(tmp_path: Path) -> None:
    result = run_cli("audit", "--limit", "0", "--config-dir", str(tmp_path))
    assert result.returncode == 2
    assert "must be at least 1" in result.stderr


def test_the_running_node_answers_what_peers_used(tmp_path: Path, fake_ollama: str) -> None:
    node, url = start_node_process(
        tmp_path / "node", fake_ollama, "--share", "--interface", "127.0.0.1", "--share-port", "0"
    )
    port = url.rsplit(":", 1)[1]
    try:
        token = read_control_token(tmp_path / "node")
        status = urllib.request.Request(url + "/_inferhub/v1/status", headers={CONTROL_HEADER: token})
        with urllib.request.urlopen(status) as reply:
            share_port = json.load(reply)["share_port"]
        body = json.dumps({"model": "llama3", "prompt": "hi", "stream": False}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{share_port}/api/generate", data=body, headers={VIA_HEADER: PEER_ID}
        )
        with urllib.request.urlopen(request) as reply:
            assert json.load(reply)["done"] is True
        # Another directory, with no log but the node's control token: what is printed can only come from
        # the node.
        (tmp_path / "elsewhere").mkdir()
        shutil.copy(tmp_path / "node" / TOKEN_FILE, tmp_path / "elsewhere" / TOKEN_FILE)
        elsewhere = ("--api-port", port, "--config-dir", str(tmp_path / "elsewhere"))
        table = run_cli("audit", *elsewhere)
        raw = run_cli("audit", "--json", *elsewhere)
    finally:
        assert stop_process(node) == 0

    lines = table.stdout.splitlines()
    assert lines[0].split() == HEADER
    assert lines[1].split()[2:7] == ["id", PEER_ID[:8], "(unverified)", "llama3", "8"]
    assert lines[1].endswith(" s  ok")
    [entry] = json.loads(raw.stdout)
    assert (entry["peer_id"], entry["model"], entry["outcome"]) == (PEER_ID, "llama3", "ok")
    # Who the request said it was from is kept with where it came from, and that nothing proved it.
    assert (entry["address"], entry["verified"]) == ("127.0.0.1", False)
    assert not (tmp_path / "elsewhere" / "audit.jsonl").exists()
