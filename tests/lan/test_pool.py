"""Three machines on a real LAN: nodes find each other over mDNS, notice crashes, unplugged cables
and share toggles, each within the time a user would expect."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lan.machines import Machine, start_machines, wait_for
from tests.lan.netns import Lan, netns_unavailable

pytestmark = pytest.mark.skipif(bool(netns_unavailable()), reason=str(netns_unavailable()))

MODELS = ["llama3:latest", "qwen3:8b", "mistral:latest"]


@pytest.fixture
def machines(tmp_path: Path) -> Iterator[list[Machine]]:
    with Lan(3) as lan:
        machines = start_machines(lan, tmp_path, [["--model", m] for m in MODELS], lambda i: [])
        try:
            yield machines
        finally:
            for m in machines:
                print(f"--- {m.name} log\n{m.node_log.read_text()}")


def full_view(machine: Machine, others: list[Machine]) -> bool:
    peers = machine.peers()
    return all(
        o.name in peers
        and peers[o.name]["models"] == [MODELS[int(o.name[-1])]]
        and peers[o.name]["gpu"]
        and peers[o.name]["ram_total_mib"]
        for o in others
    ) and len(peers) == len(others)


def test_nodes_on_a_lan_find_each_other_and_notice_changes(machines: list[Machine]) -> None:
    a, b, c = machines
    # The clock starts when every node answers on its local API.
    up = wait_for(lambda: all(m.views() for m in machines), 15, "every node answering")
    up = max(m.views()[0]["t"] for m in machines)
    joined = wait_for(
        lambda: all(full_view(m, [o for o in machines if o is not m]) for m in machines),
        10,
        "every node listing the other two with models and GPU data",
    )
    print(f"join latency {joined - up:.2f} s")
    assert joined - up <= 3.0

    # A share toggle on one machine shows on the others.
    toggled = time.time()
    assert a.cli("share", "off").strip() == "sharing off"
    seen = wait_for(
        lambda: b.peers()["node0"]["share"] is False and c.peers()["node0"]["share"] is False,
        5,
        "the others seeing node0 stop sharing",
    )
    print(f"share toggle latency {seen - toggled:.2f} s")
    assert seen - toggled <= 2.0

    # An unplugged cable drops that machine; plugging it back in brings it back.
    c.host.link_down()
    unplugged = time.time()
    dropped = wait_for(
        lambda: "node2" not in a.peers() and "node2" not in b.peers(),
        10,
        "the others dropping the unplugged node2",
    )
    print(f"unplugged-link eviction {dropped - unplugged:.2f} s")
    assert dropped - unplugged <= 5.0
    c.host.link_up()
    wait_for(lambda: "node2" in a.peers() and "node2" in b.peers(), 15, "node2 coming back after its link")

    # A crashed node disappears from the others.
    b.node.send_signal(signal.SIGKILL)
    killed = time.time()
    gone = wait_for(
        lambda: "node1" not in a.peers() and "node1" not in c.peers(),
        10,
        "the others dropping the killed node1",
    )
    print(f"crash eviction {gone - killed:.2f} s")
    assert gone - killed <= 5.0

    # A node that stops says goodbye, and the others drop it at once rather than waiting it out.
    a.node.send_signal(signal.SIGTERM)
    stopped = time.time()
    left = wait_for(lambda: "node0" not in c.peers(), 5, "node2 dropping node0 after its goodbye")
    print(f"goodbye eviction {left - stopped:.2f} s")
    assert left - stopped <= 1.5
    assert "said goodbye" in c.node_log.read_text()


def test_where_mdns_is_filtered_a_peer_named_on_one_machine_is_enough_for_both(tmp_path: Path) -> None:
    with Lan(2) as lan:
        lan.block_multicast()
        b_ip = lan.hosts[1].ip
        # Only node0 names its peer; node1 learns of node0 from node0 following it.
        named = {0: ["--peer", f"{b_ip}:11436"], 1: []}
        a, b = start_machines(lan, tmp_path, [["--model", m] for m in MODELS[:2]], lambda i: named[i])
        wait_for(
            lambda: full_view(a, [b]) and full_view(b, [a]), 10, "node1 following back the node following it"
        )


def test_static_peers_work_where_multicast_is_filtered(tmp_path: Path) -> None:
    with Lan(3) as lan:
        lan.block_multicast()
        a_ip, b_ip, _ = (host.ip for host in lan.hosts)
        # node0 and node1 know each other's address; node2 knows nobody and can rely only on mDNS.
        static = {0: ["--peer", f"{b_ip}:11436"], 1: ["--peer", f"{a_ip}:11436"], 2: []}
        a, b, c = start_machines(lan, tmp_path, [["--model", m] for m in MODELS], lambda i: static[i])
        joined = wait_for(
            lambda: full_view(a, [b]) and full_view(b, [a]), 10, "each node listing its static peer"
        )
        wait_for(lambda: bool(c.views()), 10, "node2 answering")
        # With mDNS working, node2 would have listed the others about 1.3 s after they started.
        time.sleep(max(0.0, joined + 2.0 - time.time()))
        assert c.peers() == {}
        assert set(a.peers()) == {"node1"}

        b.node.send_signal(signal.SIGKILL)
        killed = time.time()
        gone = wait_for(lambda: "node1" not in a.peers(), 10, "node0 dropping its crashed static peer")
        print(f"static peer crash eviction {gone - killed:.2f} s")
        assert gone - killed <= 5.0
