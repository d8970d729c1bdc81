"""A node's status carries a tag, and a peer that has the status of that tag is answered 304: an idle pool
sends no statuses, and whatever a peer acts on still reaches it at the next poll."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from inferhub_desktop.core import STATUS_PATH, Node, NodeStatus
from inferhub_desktop.core.status import TAG_MAX_AGE_S
from tests.fakes.ollama import FakeOllama
from tests.support import eventually, node_settings

NOW = 1000.0

STATUS: dict[str, Any] = {
    "id": "6c1f6f0e-7d55-4b8e-9b8a-2f8d4a0c9e11",
    "name": "ws-bob",
    "version": "0.1.0",
    "api_url": "http://127.0.0.1:11435",
    "share": True,
    "local_only": False,
    "pool_pull": False,
    "pool": None,
    "share_port": 11436,
    "load": {"active": 0, "remote": 0, "waiting": 0, "slots": 2, "queue_full": False},
    "models_hash": "0123456789ab",
    "backend": {
        "kind": "ollama",
        "url": "http://127.0.0.1:11434",
        "reachable": True,
        "version": "0.12.10",
        "installed": [{"name": "llama3:latest", "size": 4661224676, "digest": "ab" * 32}],
        "loaded": [],
        "error": None,
    },
    "telemetry": {
        "gpus": [
            {
                "index": 0,
                "uuid": "GPU-1",
                "name": "NVIDIA GeForce RTX 4090",
                "total_mib": 24564,
                "used_mib": 8000,
                "free_mib": 16564,
                "utilization_pct": 31,
                "temperature_c": 60,
                "processes": [{"pid": 1234, "name": "ollama", "used_mib": 7800}],
            }
        ],
        "system": {
            "cpu_pct": 4.0,
            "cpu_count": 16,
            "ram_total_mib": 65536,
            "ram_used_mib": 20000,
            "ram_free_mib": 45536,
            "unified_memory": False,
        },
        "nvml_error": None,
        "taken_at": 998.5,
    },
    "speeds": {"models": {"registry.ollama.ai/library/llama3:latest": {"tokens_per_s": [92.4, 3.2]}}},
    "peak_loaded_bytes": 0,
    "tokens_generated": 1200,
}


def tag_with(change: Callable[[dict[str, Any]], None] = lambda status: None, now: float = NOW) -> str:
    status = copy.deepcopy(STATUS)
    change(status)
    return NodeStatus.from_json(status).tag(now)


def gpu(status: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = status["telemetry"]["gpus"][0]
    return found


def test_what_moves_at_every_reading_leaves_the_tag_alone() -> None:
    def noise(status: dict[str, Any]) -> None:
        status["telemetry"]["taken_at"] = 999.5
        status["telemetry"]["system"].update(cpu_pct=37.5, ram_used_mib=21000, ram_free_mib=44536)
        gpu(status).update(temperature_c=66, utilization_pct=38, used_mib=8100, free_mib=16464)
        gpu(status)["processes"][0]["used_mib"] = 7900
        # A learnt speed's weight fades with age; its mean stays.
        status["speeds"]["models"]["registry.ollama.ai/library/llama3:latest"]["tokens_per_s"] = [92.4, 3.1]

    assert tag_with(noise) == tag_with()
    assert tag_with(now=NOW + 1) == tag_with()


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.update(share=False),
        lambda s: s["load"].update(active=1),
        lambda s: s.update(tokens_generated=1201),
        lambda s: s["backend"]["loaded"].append({"name": "llama3:latest", "size": 1, "size_vram": 1}),
        lambda s: s["backend"].update(reachable=False, error="connection refused"),
        lambda s: gpu(s).update(used_mib=8300, free_mib=16264),  # across a 256 MiB step
        lambda s: gpu(s).update(utilization_pct=45),  # across a 10-point step
        lambda s: s["speeds"]["models"]["registry.ollama.ai/library/llama3:latest"].update(
            tokens_per_s=[80.1, 3.5]
        ),
        lambda s: s.update(owner={"paused": "quiet hours (daily 22:00-07:00)"}),
    ],
    ids=["share", "load", "tokens", "loaded", "backend", "vram", "gpu-load", "speed", "paused"],
)
def test_what_a_peer_acts_on_changes_the_tag(change: Callable[[dict[str, Any]], None]) -> None:
    assert tag_with(change) != tag_with()


def test_the_tag_changes_at_least_every_so_often_for_what_moves_slowly() -> None:
    assert tag_with(now=NOW + TAG_MAX_AGE_S) != tag_with()


@pytest.fixture
async def beta(tmp_path: Path) -> AsyncIterator[Node]:
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, name="beta", share=True), environ={}) as node,
    ):
        yield node


async def test_the_share_api_answers_304_to_a_peer_that_has_the_status(beta: Node) -> None:
    url = f"http://127.0.0.1:{beta.share_port}{STATUS_PATH}"
    async with aiohttp.ClientSession() as http:
        # The tag also changes every TAG_MAX_AGE_S: a pair of requests across that moment is made again.
        for _ in range(2):
            async with http.get(url) as reply:
                assert reply.status == 200
                tag = reply.headers["ETag"]
                assert NodeStatus.from_json(await reply.json()).name == "beta"
            async with http.get(url, headers={"If-None-Match": tag}) as reply:
                again = (reply.status, await reply.read(), reply.headers["ETag"])
            if again[2] == tag:
                break
        assert again == (304, b"", tag)
        async with http.get(url, headers={"If-None-Match": '"something else"'}) as reply:
            assert reply.status == 200


class Peer:
    """A peer's share API that answers its status as a node does, whole or 304, counting the 304s."""

    def __init__(self) -> None:
        self.status = copy.deepcopy(STATUS)
        self.not_modified = 0

    async def answer(self, request: web.Request) -> web.Response:
        # One moment's tag throughout: the test is of the node that asks, not of the tag's age.
        tag = f'"{NodeStatus.from_json(self.status).tag(NOW)}"'
        if request.headers.get("If-None-Match") == tag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": tag})
        return web.json_response(self.status, headers={"ETag": tag})


async def test_a_peer_keeps_the_status_it_has_while_it_is_unchanged_and_takes_a_change_at_once(
    tmp_path: Path,
) -> None:
    peer = Peer()
    app = web.Application()
    app.router.add_get(STATUS_PATH, peer.answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    address = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with (
            FakeOllama(["llama3:latest"]) as fake,
            Node(node_settings(tmp_path, fake.url, name="alpha", peers=[address]), environ={}) as alpha,
        ):

            def bob() -> NodeStatus | None:
                return next(
                    (p.status for p in alpha.membership.peers if p.announcement.name == "ws-bob"), None
                )

            await eventually(lambda: bob() is not None)
            first = bob()
            await eventually(lambda: peer.not_modified >= 2)
            # Polled again and again, and the status alpha parsed first is the one it still has.
            assert bob() is first
            peer.status["share"] = False
            await eventually(lambda: (status := bob()) is not None and not status.share)
    finally:
        await runner.cleanup()
