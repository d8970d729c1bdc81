"""What the app shows is read faithfully from a node's status: the pool, its models and what is wrong."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from inferhub_desktop.core import Node, NodeStatus
from inferhub_desktop.ui.model import (
    NO_PEERS_AFTER_S,
    Action,
    PoolView,
    firewall_hint,
    format_duration,
    format_rate,
    format_when,
    node_view,
    pool_view,
    vram_bar,
)
from tests.support import node_settings
from tests.ui.demo import DemoCore

# The demo's sharing machines hold these; dune, which does not share, alone holds deepseek-r1:32b.
POOL_MODELS = (
    "gemma2:9b",
    "llama3.1:70b",
    "llama3.1:8b",
    "mistral-small:24b",
    "nomic-embed-text:latest",
    "phi4:14b",
    "qwen2.5-coder:14b",
)


def view_of(core: DemoCore) -> PoolView:
    return pool_view(core.status(), core.peers())


def backend_down(status: NodeStatus, error: str) -> NodeStatus:
    """Return a copy of the status whose backend does not answer."""
    down = replace(status.backend, reachable=False, error=error, installed=(), loaded=())
    return replace(status, backend=down)


def test_the_pool_holds_this_machine_first_then_its_peers(core: DemoCore) -> None:
    view = view_of(core)

    assert [n.name for n in view.nodes] == ["atlas", "borealis", "cobalt", "dune"]
    assert view.me.local
    assert view.me.address == "this machine"
    assert not any(p.local for p in view.peers)
    assert [p.address for p in view.peers] == [
        "192.168.1.21:11436",
        "192.168.1.22:11436",
        "192.168.1.23:11436",
    ]
    assert [n.sharing for n in view.nodes] == [True, True, True, False]
    assert view.api_url == "http://127.0.0.1:11435"
    assert view.switches == {"share": True, "local_only": False, "pool_pull": False}
    # Peers' requests running on this machine's backend.
    assert view.serving == 1


def test_every_gpu_counts_sharing_or_not(core: DemoCore) -> None:
    view = view_of(core)

    assert [n.gpu_count for n in view.nodes] == [1, 2, 1, 1]
    assert view.gpu_count == 5


def test_a_node_reads_its_gpus_load_and_speed(core: DemoCore) -> None:
    borealis = view_of(core).peers[0]

    assert borealis.gpu == "2x RTX 3090"
    assert (borealis.vram_used_mib, borealis.vram_total_mib) == (21980 + 20110, 2 * 24576)
    # The mean of its two GPUs, 88% and 83%.
    assert borealis.utilization_pct == 86
    assert (borealis.active, borealis.slots) == (2, 2)
    assert borealis.tokens_per_s == pytest.approx(21.5)
    assert borealis.loaded == ("llama3.1:70b",)
    assert borealis.installed == ("llama3.1:70b", "llama3.1:8b", "mistral-small:24b")
    assert borealis.healthy
    # dune has loaded nothing, so it has learnt no speed.
    assert view_of(core).peers[2].tokens_per_s is None


def test_the_models_are_this_machines_and_the_sharing_peers(core: DemoCore) -> None:
    view = view_of(core)
    models = {m.name: m for m in view.models}

    assert tuple(models) == POOL_MODELS
    assert "deepseek-r1:32b" not in models
    assert models["llama3.1:8b"].installed_on == ("atlas", "borealis", "cobalt")
    # dune has it too, but does not share.
    assert "dune" not in models["llama3.1:8b"].installed_on
    assert models["llama3.1:8b"].loaded_on == ("cobalt",)
    assert models["llama3.1:70b"].loaded_on == ("borealis",)
    assert models["qwen2.5-coder:14b"].loaded_on == ("atlas",)
    assert models["gemma2:9b"].loaded_on == ()


def test_a_peer_that_starts_sharing_adds_its_models(core: DemoCore) -> None:
    peers = core.peers()
    peers[2] = replace(peers[2], status=replace(peers[2].status, share=True))

    view = pool_view(core.status(), peers)

    assert "deepseek-r1:32b" in {m.name for m in view.models}
    assert len(view.models) == len(POOL_MODELS) + 1


def test_the_summary_counts_peers_gpus_and_models(core: DemoCore) -> None:
    assert view_of(core).summary() == "3 peers · 5 GPUs · 7 models"


def test_the_summary_speaks_of_one_in_the_singular(core: DemoCore) -> None:
    # Alone, atlas has one GPU and three models.
    assert pool_view(core.status(), []).summary() == "no peers · 1 GPU · 3 models"
    status = core.status()
    status = replace(status, backend=replace(status.backend, installed=status.backend.installed[:1]))
    assert pool_view(status, core.peers()[:1]).summary() == "1 peer · 3 GPUs · 3 models"


def test_tokens_generated_sum_over_the_pool(core: DemoCore) -> None:
    assert view_of(core).tokens_generated == 0

    core.advance(10.0)
    view = view_of(core)

    # atlas generates 96 tok/s on one busy slot, borealis 21.5 tok/s on two; cobalt and dune are idle.
    assert [n.tokens_generated for n in view.nodes] == [960, 430, 0, 0]
    assert view.tokens_generated == 1390


def test_a_healthy_pool_has_no_problems(core: DemoCore) -> None:
    assert view_of(core).problems(alone_for_s=3600.0) == []


def test_no_backend_is_the_first_problem_and_severe_only_when_no_peer_can_serve(core: DemoCore) -> None:
    status = backend_down(core.status(), "connection refused at http://127.0.0.1:11434")
    peers = core.peers()
    peers[0] = replace(peers[0], breaker="open after 3 failure(s): timed out")

    problems = pool_view(status, peers).problems(alone_for_s=0.0)

    assert len(problems) == 2
    first = problems[0]
    assert first.title == "No model server on this machine"
    assert first.technical == "connection refused at http://127.0.0.1:11434"
    assert "Install Ollama, or start LM Studio, llama.cpp or vLLM" in first.detail
    # Words in the window, steps as buttons: no URLs, flags or commands to copy.
    assert not any(mark in first.detail for mark in ("http", "`", "--"))
    assert first.actions == (Action.INSTALL_OLLAMA, Action.OPEN_SETTINGS, Action.RETRY)
    # The other sharing peers still serve this machine's requests: a warning, not a failure.
    assert not first.severe
    assert not problems[1].severe
    # With no peer to turn to, nothing serves this machine's requests.
    (alone,) = pool_view(status, []).problems(alone_for_s=0.0)
    assert alone.severe


def test_a_peer_lost_without_a_goodbye_is_said_until_it_is_back(core: DemoCore) -> None:
    view = pool_view(core.status(), [])
    problems = view.problems(alone_for_s=0.0, lost={"borealis": "stopped answering"})
    assert [(p.title, p.severe) for p in problems] == [("Lost borealis", False)]
    assert problems[0].detail.startswith("borealis stopped answering.")


def test_a_private_pool_with_no_member_online_says_so_not_the_firewall(core: DemoCore) -> None:
    view = pool_view(core.status(), [])
    assert view.pool is not None
    (problem,) = view.problems(alone_for_s=NO_PEERS_AFTER_S)
    assert problem.title == "No other member of the private pool is online"
    assert "Invite a machine" in problem.detail


def test_a_sharing_peer_with_an_open_breaker_is_a_problem(core: DemoCore) -> None:
    peers = core.peers()
    peers[0] = replace(peers[0], breaker="open after 1 failure(s): x")

    view = pool_view(core.status(), peers)
    problems = view.problems(alone_for_s=0.0)

    assert not view.peers[0].healthy
    assert len(problems) == 1
    assert not problems[0].severe
    assert problems[0].title == "borealis cannot serve right now"
    # In words; the breaker's own for whoever looks closer.
    assert problems[0].detail.startswith("Its last requests failed.")
    assert problems[0].technical == "open after 1 failure(s): x"


def test_a_sharing_peer_whose_backend_is_down_is_a_problem(core: DemoCore) -> None:
    peers = core.peers()
    peers[1] = replace(peers[1], status=backend_down(peers[1].status, "Ollama stopped"))

    problems = pool_view(core.status(), peers).problems(alone_for_s=0.0)

    assert [p.title for p in problems] == ["cobalt cannot serve right now"]
    assert problems[0].detail.startswith("Its model server does not answer.")
    assert problems[0].technical == "Ollama stopped"


def test_a_peer_that_does_not_share_is_no_problem(core: DemoCore) -> None:
    peers = core.peers()
    peers[2] = replace(peers[2], breaker="open after 1 failure(s): x")

    assert pool_view(core.status(), peers).problems(alone_for_s=0.0) == []


def test_alone_for_long_suggests_the_firewall(core: DemoCore) -> None:
    status = replace(core.status(), share_port=12345, pool=None)
    view = pool_view(status, [])

    assert view.problems(alone_for_s=NO_PEERS_AFTER_S - 0.1) == []
    problems = view.problems(alone_for_s=NO_PEERS_AFTER_S)

    assert len(problems) == 1
    assert problems[0].title == "No other InferHub seen on this network"
    assert not problems[0].severe
    # The firewall's commands are a button away, not pasted into the window.
    assert problems[0].actions == (Action.FIREWALL_HELP,)
    assert "sudo" not in problems[0].detail


def test_each_os_has_its_own_firewall_hint() -> None:
    hints = {platform: firewall_hint(platform, 12345) for platform in ("linux", "win32", "darwin")}

    assert len(set(hints.values())) == 3
    assert "12345" in hints["linux"]
    assert "ufw" in hints["linux"]
    assert "Windows Defender Firewall" in hints["win32"]
    assert "Local Network" in hints["darwin"]


def test_vram_bar_draws_the_share_in_use() -> None:
    assert vram_bar(7680, 24576) == "▰▰▰▱▱▱▱▱▱▱ 7.5/24 GiB"
    assert vram_bar(0, 8192) == "▱▱▱▱▱▱▱▱▱▱ 0.0/8 GiB"
    assert vram_bar(8192, 8192, width=4) == "▰▰▰▰ 8.0/8 GiB"
    assert vram_bar(512, 0) == "no VRAM reading"


def test_a_node_without_telemetry_has_no_gpu_readings(core: DemoCore) -> None:
    status = replace(core.status(), telemetry=None)

    node = node_view(status, local=True)

    assert node.gpu == "no GPU readings"
    assert node.gpu_count == 0
    assert (node.vram_used_mib, node.vram_total_mib) == (0, 0)
    assert node.utilization_pct is None
    # The rest of its status still reads.
    assert node.name == "atlas"
    assert node.loaded == ("qwen2.5-coder:14b", "nomic-embed-text:latest")


def test_an_unstarted_node_reads_as_one_without_gpu_or_backend(tmp_path: Path) -> None:
    node = Node(node_settings(tmp_path, "http://127.0.0.1:9"), environ={})

    view = node_view(node.status(), local=True)

    assert view.name == "test-node"
    assert view.gpu == "no GPU readings"
    assert view.utilization_pct is None
    assert not view.backend_up
    assert view.backend_error == "not asked yet"
    assert view.slots == 1


def test_the_demo_status_has_the_shape_of_a_real_nodes(tmp_path: Path, core: DemoCore) -> None:
    real = Node(node_settings(tmp_path / "node", "http://127.0.0.1:9"), environ={}).status().to_json()
    # The demonstration's statuses are parsed as a peer's are; their JSON is shaped as a real node's.
    for status in (core.status(), *(peer.status for peer in core.peers())):
        demo = status.to_json()
        assert set(demo) == set(real)
        assert set(demo["load"]) == set(real["load"])
        assert set(demo["backend"]) == set(real["backend"])
        assert set(demo["speeds"]) == set(real["speeds"])


def test_the_summary_says_none_in_words(core: DemoCore) -> None:
    status = replace(core.status(), telemetry=None, backend=replace(core.status().backend, installed=()))
    assert pool_view(status, []).summary() == "no peers · no GPUs · no models"


def test_times_speeds_and_durations_are_said_one_way_for_people() -> None:
    now = time.mktime((2026, 12, 4, 15, 0, 0, 0, 0, -1))
    assert format_when(now - 60, now) == "14:59:00"
    assert format_when(now - 86_400, now) == "Dec 3, 15:00"
    assert format_rate(None) == "—"
    assert format_rate(7.25) == "7.2 tok/s"
    assert format_rate(1234.4) == "1,234 tok/s"
    # A server reporting odd durations gives figures no GPU reaches: not shown as a speed.
    assert format_rate(10_000_000) == "—"
    assert [format_duration(s) for s in (0.05, 2.1, 125.0, None)] == ["50 ms", "2.1 s", "2 min 05 s", "—"]


def test_the_share_switch_is_named_for_what_this_machine_has(core: DemoCore) -> None:
    status = core.status()
    assert pool_view(status, []).share_label(on=False) == "Share this GPU"
    assert pool_view(status, []).share_label(on=True) == "Sharing this GPU"
    cpu_only = replace(status, telemetry=None)
    assert pool_view(cpu_only, []).share_label(on=False) == "Share this machine"
    down = backend_down(status, "connection refused")
    assert pool_view(down, []).share_label(on=True) == "Sharing this GPU (no model server yet)"


def test_nodes_of_another_pool_are_named_one_or_many(core: DemoCore) -> None:
    status = replace(core.status(), pool=None)
    assert pool_view(status, []).hint() == ""
    one = pool_view(status, [], elsewhere=["10.0.0.5:11436"]).hint()
    assert one.startswith(
        "The machine at 10.0.0.5:11436 is in a private pool, so this machine does not use it."
    )
    many = pool_view(status, [], elsewhere=[f"10.0.0.{n}:11436" for n in range(5, 10)]).hint()
    assert many.startswith("5 machines nearby (10.0.0.5:11436, 10.0.0.6:11436, 10.0.0.7:11436, …) are")
