"""The `inferhub` command, run as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferhub_desktop import __version__
from inferhub_desktop.cli import format_usage
from tests.support import (
    ROOT,
    process_output,
    start_fake_ollama_process,
    start_node_process,
    start_process,
    stop_process,
    unwritable,
    write_settings,
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferhub_desktop", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def run_cli_until(needle: str, *args: str) -> str:
    """Run the CLI until its output shows `needle`, as a node needs a moment to learn things; return it."""
    deadline = time.monotonic() + 10
    while needle not in (text := run_cli(*args).stdout):
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
    return text


@pytest.fixture
def fake_ollama() -> Iterator[str]:
    proc, url = start_fake_ollama_process("--version", "0.12.10")
    yield url
    assert stop_process(proc) == 0


def test_version() -> None:
    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"inferhub {__version__}")


def test_no_command_starts_the_app_and_without_a_display_says_to_run_headless(tmp_path: Path) -> None:
    hidden = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    env = {k: v for k, v in os.environ.items() if k not in hidden} | {"INFERHUB_CONFIG_DIR": str(tmp_path)}
    result = run_cli(env=env)
    assert result.returncode == 2
    assert "no display" in result.stderr
    assert "inferhub serve --headless" in result.stderr


def test_invalid_flags_exit_2_with_the_reason(tmp_path: Path) -> None:
    result = run_cli("serve", "--headless", "--api-port", "70000", "--config-dir", str(tmp_path))
    assert result.returncode == 2
    assert "api_port must be between 0 and 65535" in result.stderr


def test_serve_relays_and_stops_cleanly_on_sigterm(tmp_path: Path, fake_ollama: str) -> None:
    proc, url = start_node_process(tmp_path, fake_ollama, "--name", "cli-node")
    try:
        with urllib.request.urlopen(url + "/") as reply:
            assert reply.read() == b"Ollama is running"
            assert reply.headers["X-InferHub-Node"] == "cli-node"
        with urllib.request.urlopen(url + "/api/version") as reply:
            assert reply.read() == b'{"version":"0.12.10"}'
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "node stopped" in process_output(proc)
        stop_process(proc)
    # The machine's identity was made and kept for the next start.
    assert (tmp_path / "identity.key").exists()


def test_status_shows_the_running_node(tmp_path: Path, fake_ollama: str) -> None:
    proc, url = start_node_process(tmp_path, fake_ollama, "--name", "desk-7")
    port = url.rsplit(":", 1)[1]
    try:
        mine = ("--api-port", port, "--config-dir", str(tmp_path))
        text = run_cli_until("backend  ollama 0.12.10", "status", *mine)
        as_json = json.loads(run_cli("status", *mine, "--json").stdout)
    finally:
        assert stop_process(proc) == 0
    assert text.startswith("desk-7  InferHub")
    assert "state    not sharing · open LAN pool\n" in text
    assert f"backend  ollama 0.12.10 at {fake_ollama}: up" in text
    assert "models   llama3:latest" in text
    assert "loaded" not in text  # the fake starts with nothing in memory
    assert as_json["name"] == "desk-7"
    assert as_json["backend"]["installed"][0]["name"] == "llama3:latest"


def test_status_says_why_sharing_is_paused_and_who_used_this_machine(
    tmp_path: Path, fake_ollama: str
) -> None:
    # Quiet hours round the clock: the node shares, and is paused for them.
    quiet = ("--quiet-hours", "daily 00:00-12:00", "--quiet-hours", "daily 12:00-24:00")
    proc, url = start_node_process(tmp_path, fake_ollama, "--name", "desk-8", "--share", *quiet)
    port = url.rsplit(":", 1)[1]
    try:
        mine = ("--api-port", port, "--config-dir", str(tmp_path))
        text = run_cli_until("sharing paused: quiet hours (daily ", "status", *mine)
    finally:
        assert stop_process(proc) == 0
    assert re.search(
        r"^state    sharing paused: quiet hours \(daily \d\d:00-\d\d:00\) · open LAN pool$", text, re.M
    )
    assert "using    no peer right now\ntoday    no peer has used this machine" in text
    # No NVIDIA GPU here: the status says what cannot be watched.
    assert "owner    watches nothing on the GPU: with no GPU readings here" in text


def test_peers_and_share_on_a_loopback_pool(tmp_path: Path, fake_ollama: str) -> None:
    loopback = ("--interface", "127.0.0.1", "--share-port", "0")
    # Nothing listens on port 9 (discard) here: a peer named by address that cannot be reached.
    a, a_url = start_node_process(
        tmp_path / "a", fake_ollama, "--name", "desk-a", "--peer", "127.0.0.1:9", *loopback
    )
    b, _ = start_node_process(tmp_path / "b", fake_ollama, "--name", "desk-b", "--share", *loopback)
    port = a_url.rsplit(":", 1)[1]
    try:
        mine = ("--api-port", port, "--config-dir", str(tmp_path / "a"))
        run_cli_until("desk-b", "peers", *mine)
        text = run_cli_until("127.0.0.1:9  unreachable", "peers", *mine)
        listed = json.loads(run_cli("peers", *mine, "--json").stdout)
        shared = run_cli("share", "on", *mine)
    finally:
        assert stop_process(a) == 0
        assert stop_process(b) == 0
    assert "desk-b  127.0.0.1:" in text
    assert "  sharing" in text
    assert "models   llama3:latest" in text
    assert [p["name"] for p in listed] == ["desk-b"]
    assert text.rstrip().endswith(
        "by address\n  127.0.0.1:9  unreachable: nothing listens there (connection refused): is InferHub "
        "running there, on that port?"
    )
    assert shared.stdout.strip() == "sharing on"
    assert "share = true" in (tmp_path / "a" / "settings.toml").read_text()
    # --share on the command line is remembered too.
    assert "share = true" in (tmp_path / "b" / "settings.toml").read_text()


def test_route_explains_the_ranking_and_switches_are_remembered(tmp_path: Path, fake_ollama: str) -> None:
    loopback = ("--interface", "127.0.0.1", "--share-port", "0")
    a, a_url = start_node_process(tmp_path / "a", fake_ollama, "--name", "desk-a", "--pool-pull", *loopback)
    b, _ = start_node_process(tmp_path / "b", fake_ollama, "--name", "desk-b", "--share", *loopback)
    port = a_url.rsplit(":", 1)[1]
    try:
        # Both nodes relay to the same Ollama: both have llama3 and neither has it loaded.
        mine = ("--api-port", port, "--config-dir", str(tmp_path / "a"))
        text = run_cli_until("desk-b", "route", "llama3", *mine)
        decision = json.loads(run_cli("route", "llama3", *mine, "--json").stdout)
        local_only = run_cli("local-only", "on", *mine)
        status = run_cli("status", *mine).stdout
        alone = run_cli("route", "llama3", *mine).stdout
        nowhere = run_cli("route", "mistral", *mine).stdout
    finally:
        assert stop_process(a) == 0
        assert stop_process(b) == 0
    lines = text.splitlines()
    assert lines[0].startswith("llama3:latest: desk-a: ")
    assert re.match(r"\s+node\s+total\s+queue\s+load\s+evict\s+rtt\s+run$", lines[1])
    assert re.match(r"1\s+desk-a \(this machine\)\s+[\d.]+s", lines[2])
    assert "not loaded: loads in ~" in lines[2]
    assert re.match(r"2\s+desk-b\s+[\d.]+s", lines[3])
    assert [r["node"] for r in decision["ranked"]] == ["desk-a", "desk-b"]
    assert set(decision["ranked"][0]) >= {
        "total_s",
        "queue_s",
        "load_s",
        "evict_s",
        "rtt_s",
        "run_s",
        "basis",
    }
    assert local_only.stdout.strip() == "local only on"
    modes = "your requests use only this machine · the pool may pull models here"
    assert f"state    not sharing · open LAN pool · {modes}\n" in status
    assert "left out: desk-b: this machine is set to use only itself" in alone
    assert nowhere.splitlines()[0] == "mistral:latest: no node can serve it"
    assert [line.split(":")[0] for line in nowhere.splitlines()[1:]] == ["left out"] * 2
    settings = (tmp_path / "a" / "settings.toml").read_text()
    assert "local_only = true" in settings
    assert "pool_pull = true" in settings


def test_status_without_a_node_says_how_to_start_one(unused_tcp_port: int) -> None:
    result = run_cli("status", "--api-port", str(unused_tcp_port))
    assert result.returncode == 1
    assert f"no InferHub node answers on 127.0.0.1:{unused_tcp_port}" in result.stderr
    assert "inferhub serve --headless" in result.stderr


_FAILING_SERVER = """
import http.server, sys
class Failing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b'{"error":"boom"}')
server = http.server.HTTPServer(("127.0.0.1", 0), Failing)
print("LISTENING http://127.0.0.1:%d" % server.server_port, flush=True)
server.serve_forever()
"""


def test_status_from_a_node_that_answers_with_an_error_says_so() -> None:
    proc, url = start_process([sys.executable, "-c", _FAILING_SERVER], re.compile(r"LISTENING (\S+)"))
    try:
        result = run_cli("status", "--api-port", url.rsplit(":", 1)[1])
    finally:
        stop_process(proc)
    assert result.returncode == 1
    assert "answered HTTP 500" in result.stderr
    assert "boom" in result.stderr


def test_a_port_in_use_is_said_with_what_holds_it_and_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve",
            "--headless",
            "--api-port",
            str(port),
            "--backend",
            "http://127.0.0.1:9",
            "--config-dir",
            str(tmp_path),
        )
    assert result.returncode == 1
    # It accepts connections and says nothing: no HTTP server.
    assert (
        f"cannot listen for the local API on 127.0.0.1:{port}: another program (one that does not answer "
        "plain HTTP there"
    ) in result.stderr
    assert f"choose another port with --api-port (api_port in {tmp_path / 'settings.toml'})" in result.stderr


def test_a_switch_turned_off_holds_through_a_restart_of_the_node(tmp_path: Path, fake_ollama: str) -> None:
    # Started with --share, turned off with `inferhub share off`, started again without the flag.
    node, url = start_node_process(tmp_path, fake_ollama, "--share", "--share-port", "0")
    port = url.rsplit(":", 1)[1]
    try:
        off = run_cli("share", "off", "--api-port", port, "--config-dir", str(tmp_path))
    finally:
        assert stop_process(node) == 0
    assert off.stdout.strip() == "sharing off"
    node, url = start_node_process(tmp_path, fake_ollama, "--share-port", "0")
    try:
        status = json.loads(
            run_cli(
                "status", "--json", "--api-port", url.rsplit(":", 1)[1], "--config-dir", str(tmp_path)
            ).stdout
        )
    finally:
        assert stop_process(node) == 0
    assert status["share"] is False


def test_a_switch_with_no_node_running_is_saved_for_its_start(tmp_path: Path, unused_tcp_port: int) -> None:
    port = str(unused_tcp_port)
    on = run_cli("pool-pull", "on", "--api-port", port, "--config-dir", str(tmp_path))
    assert (on.returncode, on.stdout.strip()) == (0, "pool pull on (no node is running here; it starts so)")
    assert "pool_pull = true" in (tmp_path / "settings.toml").read_text()


def test_a_switch_that_cannot_be_saved_says_why(tmp_path: Path, unused_tcp_port: int) -> None:
    port = str(unused_tcp_port)
    assert run_cli("share", "on", "--api-port", port, "--config-dir", str(tmp_path)).returncode == 0
    with unwritable(tmp_path, "read-only"):
        refused = run_cli("share", "off", "--api-port", port, "--config-dir", str(tmp_path))
    assert refused.returncode == 2
    assert f"cannot save the change to {tmp_path / 'settings.toml'}" in refused.stderr
    assert "share = true" in (tmp_path / "settings.toml").read_text()


def test_a_private_pool_is_made_joined_and_managed_from_the_command_line(
    tmp_path: Path, fake_ollama: str, unused_tcp_port: int
) -> None:
    box, desk = tmp_path / "box", tmp_path / "desk"
    idle = ("--api-port", str(unused_tcp_port))  # no node answers there
    write_settings(box, name="box")
    write_settings(desk, name="desk")

    made = run_cli("pool", "create", *idle, "--config-dir", str(box))
    assert made.returncode == 0, made.stderr
    assert "this machine is its authority" in made.stdout
    assert "No node is running here" in made.stdout
    refused = run_cli("pool", "invite", *idle, "--config-dir", str(desk))
    assert (refused.returncode, refused.stderr) == (
        2,
        "inferhub: error: this machine is in no private pool; `inferhub pool create` makes one\n",
    )
    node, url = start_node_process(box, fake_ollama, "--share-port", "0")
    try:
        api = ("--api-port", url.rsplit(":", 1)[1])
        status = json.loads(run_cli("status", "--json", *api, "--config-dir", str(box)).stdout)
        invite = run_cli("pool", "invite", *api, "--config-dir", str(box))
        code = invite.stdout.split("\n\n")[1].strip()
        at = f"127.0.0.1:{status['share_port']}"
        joined = run_cli("pool", "join", code, "--at", at, *idle, "--config-dir", str(desk))
        assert (joined.returncode, joined.stdout.splitlines()[0]) == (
            0,
            f"Joined the private pool {status['pool']}.",
        )
        again = run_cli("pool", "join", code, "--at", at, *idle, "--config-dir", str(tmp_path / "third"))
        assert again.returncode == 2
        assert "did not admit this one" in again.stderr
        members = run_cli("pool", "members", *api, "--config-dir", str(box)).stdout
        assert "this machine is its authority" in members
        assert [line.split()[0] for line in members.splitlines()[2:4]] == ["box", "desk"]
        removed = run_cli("pool", "remove", "desk", *api, "--config-dir", str(box))
        assert removed.returncode == 0, removed.stderr
        assert "removed: " in removed.stdout
    finally:
        assert stop_process(node) == 0
    left = run_cli("pool", "leave", *idle, "--config-dir", str(desk))
    assert left.stdout.startswith("Left the private pool")
    shown = run_cli("pool", "members", *idle, "--config-dir", str(desk)).stdout
    assert shown.startswith("This machine is in the LAN's open pool")


def test_usage_is_said_one_peer_a_line_with_who_is_using_this_machine_now() -> None:
    usage = {
        "now": [{"peer": "ws-bob", "requests": 2}],
        "today": [
            {"peer": "ws-bob", "requests": 14, "tokens": 3210, "seconds": 52.4},
            {"peer": "10.0.0.9 (unverified)", "requests": 1, "tokens": 80, "seconds": 1.0},
        ],
        "whole_day": False,
    }
    assert format_usage(usage) == [
        "using    ws-bob (2 under way)",
        "today    ws-bob: 14 requests, 3210 tokens, 52 s",
        "         10.0.0.9 (unverified): 1 request, 80 tokens, 1 s",
        "         (at least: the audit log's last entries do not reach back to midnight)",
    ]
