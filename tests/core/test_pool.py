"""Two nodes on loopback form a pool: real zeroconf, real share APIs, real status polling."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from inferhub_desktop.core import PEERS_PATH, SWITCHES_PATH, Node, NodeStatus, read_settings_file
from inferhub_desktop.core.discovery import Discovery
from inferhub_desktop.core.membership import announcement_from_status
from inferhub_desktop.core.peers import PeerAnnouncement
from inferhub_desktop.core.wire.errors import MalformedRecord
from tests.fakes.ollama import FakeOllama
from tests.support import control, eventually, node_settings


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, FakeOllama]]:
    async with (
        FakeOllama(["llama3:latest"]) as fake_a,
        FakeOllama(["qwen3:8b", "mistral:latest"], loaded=["qwen3:8b"]) as fake_b,
    ):
        a = Node(node_settings(tmp_path / "a", fake_a.url, name="alpha", share=True), environ={})
        b = Node(node_settings(tmp_path / "b", fake_b.url, name="beta", share=True), environ={})
        async with a, b:
            yield a, b, fake_b


def names(node: Node) -> set[str]:
    return {peer.announcement.name for peer in node.membership.peers}


async def test_nodes_find_each_other_with_their_models(pair: tuple[Node, Node, FakeOllama]) -> None:
    a, b, _ = pair
    await eventually(lambda: "beta" in names(a) and "alpha" in names(b))
    await eventually(lambda: bool(a.membership.table.get(b.settings.node_id).status.backend.installed))  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http, http.get(a.api_url + PEERS_PATH, headers=control(a)) as reply:
        peers = {p["name"]: p for p in await reply.json()}
    beta = peers["beta"]
    assert (beta["address"], beta["port"], beta["share"]) == ("127.0.0.1", b.share_port, True)
    installed = {m["name"] for m in beta["status"]["backend"]["installed"]}
    assert installed == {"qwen3:8b", "mistral:latest"}
    assert beta["status"]["telemetry"]["system"]["ram_total_mib"] > 0
    assert "alpha" not in names(a)


async def test_a_share_toggle_reaches_the_peer_and_is_remembered(pair: tuple[Node, Node, FakeOllama]) -> None:
    a, b, _ = pair
    await eventually(lambda: "beta" in names(a))
    async with aiohttp.ClientSession() as http:
        async with http.post(b.api_url + SWITCHES_PATH, json={"share": False}, headers=control(b)) as reply:
            assert await reply.json() == {"share": False, "local_only": False, "pool_pull": False}
        for wrong in ({"share": "no"}, {"sharing": True}, {}):
            async with http.post(b.api_url + SWITCHES_PATH, json=wrong, headers=control(b)) as reply:
                assert reply.status == 400
                assert "share, local_only, pool_pull" in (await reply.json())["error"]
        async with http.put(b.api_url + SWITCHES_PATH, headers=control(b)) as reply:
            assert reply.status == 405
    await eventually(lambda: a.membership.table.get(b.settings.node_id).announcement.share is False)  # type: ignore[union-attr]
    assert read_settings_file(b.settings.config_dir)["share"] is False
    # The share API refuses inference while not sharing, but still answers status.
    async with aiohttp.ClientSession() as http:
        share_url = f"http://127.0.0.1:{b.share_port}"
        async with http.post(
            share_url + "/api/generate", json={"model": "qwen3:8b", "prompt": "hi"}
        ) as reply:
            assert reply.status == 503
            assert "beta is not sharing" in (await reply.json())["error"]


async def test_a_peer_that_stops_is_dropped_at_once(pair: tuple[Node, Node, FakeOllama]) -> None:
    a, b, _ = pair
    await eventually(lambda: "beta" in names(a))
    await b.close()
    # The goodbye arrives well before the liveness timeout would drop it.
    await eventually(lambda: "beta" not in names(a))


async def test_models_changing_on_a_peer_show_up(pair: tuple[Node, Node, FakeOllama]) -> None:
    a, b, fake_b = pair
    await eventually(lambda: "beta" in names(a))
    async with aiohttp.ClientSession() as http:
        body = {"model": "terse", "from": "mistral", "stream": False}
        async with http.post(b.api_url + "/api/create", json=body) as reply:
            assert reply.status == 200

    def installed() -> set[str]:
        peer = a.membership.table.get(b.settings.node_id)
        return {m.name for m in peer.status.backend.installed} if peer else set()

    await eventually(lambda: "terse:latest" in installed())
    assert "terse:latest" in fake_b.models


GPU = {
    "index": 0,
    "uuid": "GPU-0",
    "name": "NVIDIA GeForce RTX 4090",
    "total_mib": 24564,
    "used_mib": 4000,
    "free_mib": 20564,
    "utilization_pct": 10,
    "temperature_c": 50,
    "processes": [],
}
SYSTEM = {
    "cpu_pct": 1.0,
    "cpu_count": 8,
    "ram_total_mib": 32768,
    "ram_used_mib": 8192,
    "ram_free_mib": 24576,
    "unified_memory": False,
}


def test_a_status_reads_into_what_the_peer_announces(tmp_path: Path) -> None:
    status = Node(node_settings(tmp_path, "http://127.0.0.1:9", name="desk", share=True), environ={}).status()
    wire = {**status.to_json(), "telemetry": {"gpus": [GPU], "system": SYSTEM, "nvml_error": None}}
    announcement = announcement_from_status(NodeStatus.from_json(wire), "192.0.2.7", 11436)
    assert (announcement.node_id, announcement.name, announcement.share) == (status.node_id, "desk", True)
    assert (announcement.address, announcement.port, announcement.gpu) == ("192.0.2.7", 11436, "RTX 4090")
    assert (announcement.vram_free_mib, announcement.vram_total_mib) == (20564, 24564)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"name": ""}, "status.name"),
        ({"load": {"active": 0, "slots": 0}}, "status.load.slots is 0"),
        ({"load": "busy"}, "status.load is a string"),
        (
            {"telemetry": {"gpus": [{**GPU, "free_mib": 30000}], "system": SYSTEM}},
            "more free or used memory than total",
        ),
        (
            {"telemetry": {"gpus": [], "system": {**SYSTEM, "ram_free_mib": 40000}}},
            "more free or used memory than total",
        ),
    ],
)
def test_a_status_that_does_not_add_up_is_refused(
    tmp_path: Path, change: dict[str, object], why: str
) -> None:
    status = Node(node_settings(tmp_path, "http://127.0.0.1:9"), environ={}).status().to_json()
    with pytest.raises(MalformedRecord, match=why):
        NodeStatus.from_json({**status, **change})


async def test_a_share_toggle_is_published_on_mdns(pair: tuple[Node, Node, FakeOllama]) -> None:
    _, b, _ = pair
    records: dict[str, PeerAnnouncement] = {}
    listener = Discovery(str(uuid.uuid4()), ("127.0.0.1",), lambda a: records.update({a.node_id: a}), print)
    await listener.start(dataclasses.replace(b.announcement(), node_id=listener.own_id, name="listener"))
    try:
        await eventually(lambda: b.settings.node_id in records)
        assert records[b.settings.node_id].share is True
        b.switch({"share": False})
        await eventually(lambda: records[b.settings.node_id].share is False)
    finally:
        await listener.close()


async def test_copying_or_deleting_a_peers_model_says_where_it_is(
    pair: tuple[Node, Node, FakeOllama],
) -> None:
    a, b, fake_b = pair
    await eventually(lambda: "beta" in names(a))
    await eventually(lambda: bool(a.membership.table.get(b.settings.node_id).status.backend.installed))  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as http:
        async with http.delete(a.api_url + "/api/delete", json={"model": "mistral"}) as reply:
            deleted = (reply.status, (await reply.json())["error"])
        async with http.post(
            a.api_url + "/api/copy", json={"source": "mistral", "destination": "m2"}
        ) as reply:
            copied = (reply.status, (await reply.json())["error"])
        # A model nobody has is this machine's backend's to refuse, in its words.
        async with http.delete(a.api_url + "/api/delete", json={"model": "nowhere"}) as reply:
            nowhere = (reply.status, (await reply.json())["error"])
        # This machine's own model is deleted as ever.
        async with http.delete(a.api_url + "/api/delete", json={"model": "llama3"}) as reply:
            assert reply.status == 200
    assert deleted == (
        404,
        "model 'mistral' is not on this machine: the pool lists it from beta. Delete it there "
        "(`ollama rm mistral` on beta); InferHub lets no machine manage another's models",
    )
    assert copied[0] == 404
    assert copied[1].startswith(
        "model 'mistral' is not on this machine: the pool lists it from beta. Copy it"
    )
    assert nowhere == (404, "model 'nowhere' not found")
    assert "mistral:latest" in fake_b.models


async def test_with_this_machines_backend_down_the_pool_answers_for_its_health_and_version(
    tmp_path: Path,
) -> None:
    async with FakeOllama(["qwen3:8b"], version="0.13.2") as fake_b:
        a = Node(node_settings(tmp_path / "a", "http://127.0.0.1:9", name="alpha"), environ={})
        b = Node(node_settings(tmp_path / "b", fake_b.url, name="beta", share=True), environ={})
        async with a, b, aiohttp.ClientSession() as http:
            await eventually(lambda: a.health().status == "degraded")
            async with http.get(a.api_url + "/health") as reply:
                health = (reply.status, await reply.json())
            async with http.get(a.api_url + "/api/version") as reply:
                version = (reply.status, await reply.json())
            async with http.head(a.api_url + "/api/version") as reply:
                assert (reply.status, reply.headers["Content-Length"]) == (
                    200,
                    str(len(b'{"version":"0.13.2"}')),
                )
            async with http.get(a.api_url + "/") as reply:
                assert (reply.status, await reply.text()) == (200, "Ollama is running")
            async with http.get(f"http://127.0.0.1:{b.share_port}/health") as reply:
                assert (reply.status, (await reply.json())["status"]) == (200, "ok")

            # Nothing serves once beta stops sharing: said by every one of them.
            b.switch({"share": False})
            await eventually(lambda: a.health().status == "unhealthy")
            async with http.get(a.api_url + "/health") as reply:
                unhealthy = (reply.status, await reply.json())
            async with http.get(a.api_url + "/") as reply:
                root = (reply.status, await reply.text())
            async with http.get(a.api_url + "/api/version") as reply:
                assert reply.status == 502
            async with http.get(f"http://127.0.0.1:{b.share_port}/health") as reply:
                assert (reply.status, (await reply.json())["reasons"]) == (
                    503,
                    ["beta is not sharing right now"],
                )
    status, said = health
    assert (status, said["status"], said["node"], said["serving"]) == (200, "degraded", "alpha", ["beta"])
    assert said["reasons"][0].startswith("this machine's model server does not answer: ")
    assert said["reasons"][-1] == "beta answers meanwhile"
    assert version == (200, {"version": "0.13.2"})
    assert unhealthy[0] == 503
    assert unhealthy[1]["status"] == "unhealthy"
    assert (
        unhealthy[1]["reasons"][-1]
        == "nothing answers this machine's requests: no peer shares a model server"
    )
    assert root[0] == 503
    assert root[1].startswith("InferHub is running, but this machine's model server does not answer")


async def test_a_request_is_followed_through_the_pool_by_its_id(pair: tuple[Node, Node, FakeOllama]) -> None:
    a, b, fake_b = pair
    await eventually(lambda: "beta" in names(a))
    await eventually(lambda: bool(a.membership.table.get(b.settings.node_id).status.backend.installed))  # type: ignore[union-attr]
    body = {"model": "qwen3:8b", "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    ids = []
    async with aiohttp.ClientSession() as http:
        for given in ("client-7f3a", "", "two words"):
            headers = {"X-Request-Id": given} if given else {}
            async with http.post(a.api_url + "/api/generate", json=body, headers=headers) as reply:
                assert reply.status == 200
                assert reply.headers["X-InferHub-Node"] == "beta"
                ids.append(reply.headers["X-Request-Id"])
            # The serving node's backend had it under the same id.
            generated = [r for r in fake_b.requests if r.path == "/api/generate"]
            sent = {name.lower(): value for name, value in generated[-1].headers.items()}
            assert sent["x-request-id"] == ids[-1]
    # A client's id is kept; none, or one that is no id, is made.
    assert ids[0] == "client-7f3a"
    assert all(len(made) == 32 and int(made, 16) >= 0 for made in ids[1:])
    # The node that served logged each in its audit log.
    await eventually(lambda: len(b.audit()) == 3)
    assert [entry["request_id"] for entry in b.audit()] == ids
