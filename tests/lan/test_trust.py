"""A private pool on a real LAN: members find and use each other; a node of the open pool, a node of another
private pool and a host that spoofs a member's record get nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferhub_desktop.core import PoolKey, join_code, new_secret, read_join_code
from inferhub_desktop.core.discovery import instance_name
from inferhub_desktop.core.identity import load_identity
from tests.lan.machines import Machine, start_machines, wait_for
from tests.lan.netns import Lan, netns_unavailable
from tests.support import ROOT

pytestmark = pytest.mark.skipif(bool(netns_unavailable()), reason=str(netns_unavailable()))

API = "http://127.0.0.1:11435"
CODE = join_code(new_secret())
OTHER_CODE = join_code(new_secret())
# node0 and node1 join the private pool; node2 stays in the open pool; node3 joins another private pool.
# llama3 is on node0 (loaded), node2 and node3; node1 has no model of its own.
FAKES = [
    ["--model", "llama3:latest", "--loaded", "llama3:latest"],
    ["--model", "phi3:latest"],
    ["--model", "llama3:latest"],
    ["--model", "llama3:latest"],
]


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[list[Machine]]:
    with Lan(4) as lan:
        machines = start_machines(lan, tmp_path, FAKES, lambda i: [])
        try:
            wait_for(lambda: all(len(m.peers()) == 3 for m in machines), 20, "the open pool of four forming")
            for machine, code in zip(machines, (CODE, CODE, None, OTHER_CODE), strict=True):
                if code:
                    said = machine.cli("pool", "join", code, "--config-dir", str(config_dir(machine)))
                    assert code in said
            yield machines
        finally:
            for m in machines:
                print(f"--- {m.name} log\n{m.node_log.read_text()[-4000:]}")


def config_dir(machine: Machine) -> Path:
    return machine.node_log.parent / "config"


def node_id(machine: Machine) -> str:
    return load_identity(config_dir(machine)).node_id


def try_share(machine: Machine, target: Machine, mode: str, *code: str) -> list[list[Any]]:
    result = machine.host.run(
        [sys.executable, "tests/lan/scripts/try_share.py", f"http://{target.host.ip}:11436", mode, *code],
        timeout=60,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def error_message(body: str) -> str:
    """Return an error's message, in Ollama's shape or (on /v1) OpenAI's."""
    error = json.loads(body)["error"]
    return str(error["message"] if isinstance(error, dict) else error)


def generate(machine: Machine) -> dict[str, Any]:
    body = {"model": "llama3", "prompt": "hi", "stream": False}
    result = machine.host.run(
        [sys.executable, "tests/lan/scripts/ask.py", API + "/api/generate", json.dumps(body)],
        timeout=60,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.splitlines()[0]))


def test_only_members_see_and_use_a_private_pools_gpus(machines: list[Machine]) -> None:
    member, user, open_node, stranger = machines
    wait_for(
        lambda: set(member.peers()) == {"node1"} and set(user.peers()) == {"node0"},
        20,
        "the members seeing only each other",
    )
    wait_for(lambda: not open_node.peers() and not stranger.peers(), 20, "the others seeing no member")
    time.sleep(3)  # several more polls: nobody comes back
    assert (set(member.peers()), set(user.peers()), open_node.peers(), stranger.peers()) == (
        {"node1"},
        {"node0"},
        {},
        {},
    )
    # node1 has no llama3: the pool's member answers it.
    assert generate(user) == {"status": 200, "node": "node0"}

    # The open pool's node, unsigned, and the other pool's node, signing with its own key: all refused.
    for caller, code in ((open_node, ()), (stranger, (OTHER_CODE,))):
        answers = try_share(caller, member, "use", *code)
        assert [a[2] for a in answers] == [401] * len(answers), answers
        assert {error_message(a[3]) for a in answers} == {"unauthorized"}
    # The owner's log names who was refused.
    refusals = [line for line in member.node_log.read_text().splitlines() if "refused a request" in line]
    assert {line.split(" from ")[1].split(",")[0] for line in refusals} >= {
        open_node.host.ip,
        stranger.host.ip,
    }


def test_a_replayed_request_and_management_calls_are_refused(machines: list[Machine]) -> None:
    member, user, open_node, _ = machines
    wait_for(lambda: set(user.peers()) == {"node0"}, 20, "node1 seeing node0")
    # A member's request captured on the wire works once; sent again it is refused.
    first, again = try_share(open_node, member, "replay", CODE)
    assert (first[2], again[2], again[3]) == (200, 401, '{"error":"unauthorized"}')
    # Even signed by a member, model management is not open to peers.
    answers = try_share(user, member, "manage", CODE)
    assert [a[2] for a in answers] == [403] * len(answers), answers


def test_a_spoofed_record_claiming_a_members_id_is_not_routed_to(machines: list[Machine]) -> None:
    member, user, open_node, _ = machines
    wait_for(lambda: set(user.peers()) == {"node0"}, 20, "node1 seeing node0")
    seen_before = len(user.views())
    spoof = open_node.host.popen(
        [
            sys.executable,
            "tests/lan/scripts/spoof_member.py",
            open_node.host.ip,
            node_id(member),
            PoolKey(read_join_code(CODE)).pool_id,
            "node0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert spoof.stdout is not None
    assert spoof.stdout.readline().strip() == "spoofing"
    time.sleep(4)  # the record is seen and its host polled several times
    for _ in range(5):
        assert generate(user) == {"status": 200, "node": "node0"}
    assert all({p["name"] for p in view["peers"]} <= {"node0"} for view in user.views()[seen_before:])
    assert user.peers()["node0"]["share"]
    spoof.terminate()
    asked, _ = spoof.communicate(timeout=10)
    # The spoof was polled for its status, which it cannot sign, and never sent a request.
    assert "asked GET /_inferhub/v1/status" in asked
    assert "asked POST" not in asked


def test_a_tls_peer_reached_by_address_is_pinned_on_first_contact(tmp_path: Path) -> None:
    with Lan(2) as lan:
        lan.block_multicast()
        server = lan.hosts[0]
        fakes = [["--model", "llama3:latest", "--loaded", "llama3:latest"], ["--model", "phi3:latest"]]
        extra = {0: ["--tls"], 1: ["--peer", f"{server.ip}:11436"]}
        machines = start_machines(lan, tmp_path, fakes, lambda i: extra[i])
        box, desk = machines
        try:
            wait_for(lambda: set(desk.peers()) == {"node0"}, 20, "node1 reaching node0 by address over TLS")
            assert generate(desk) == {"status": 200, "node": "node0"}
            # node0 cannot reach node1 (no multicast, no address), and node1's share API is plain HTTP.
            assert box.peers() == {}
        finally:
            for m in machines:
                print(f"--- {m.name} log\n{m.node_log.read_text()[-3000:]}")


def test_a_goodbye_spoofed_on_mdns_drops_no_member_and_cuts_no_stream(machines: list[Machine]) -> None:
    member, user, open_node, _ = machines
    wait_for(lambda: set(user.peers()) == {"node0"}, 20, "node1 seeing node0")
    seen_before = len(user.views())
    # A long answer streams from node0 to node1's user while the goodbyes arrive.
    asking = user.host.popen(
        [
            sys.executable,
            "tests/lan/scripts/ask.py",
            API + "/api/generate",
            json.dumps({"model": "llama3", "prompt": "count", "options": {"num_predict": 3000}}),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    goodbyes = open_node.host.run(
        [
            sys.executable,
            "tests/lan/scripts/mdns_goodbye.py",
            open_node.host.ip,
            instance_name("node0", node_id(member)),
            "5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "sent 5" in goodbyes.stdout, goodbyes.stderr
    answer, _ = asking.communicate(timeout=60)
    lines = answer.splitlines()
    assert json.loads(lines[0]) == {"status": 200, "node": "node0"}
    assert json.loads(lines[-1])["done"] is True  # the stream ran to its end
    # node1 never dropped node0, and its log tells of no goodbye.
    assert all("node0" in {p["name"] for p in view["peers"]} for view in user.views()[seen_before:])
    assert "said goodbye" not in user.node_log.read_text()
