"""mDNS advertisement and browsing with real zeroconf instances on loopback."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from inferhub_desktop.core.discovery import Discovery, instance_name
from inferhub_desktop.core.peers import SERVICE_TYPE, PeerAnnouncement
from tests.support import eventually


def announcement(name: str, port: int, **changes: object) -> PeerAnnouncement:
    values: dict[str, object] = {
        "node_id": str(uuid.uuid4()),
        "name": name,
        "address": "127.0.0.1",
        "port": port,
        "share": True,
        "gpu": "RTX 4090",
        "vram_free_mib": 20000,
        "vram_total_mib": 24564,
        "active": 0,
        "slots": 1,
        "models_hash": "0123456789ab",
        **changes,
    }
    return PeerAnnouncement(**values)  # type: ignore[arg-type]


class Watcher:
    """Collect what a Discovery reports, by node id.

    Other test runs on this machine may advertise on loopback too, so tests look only at the ids
    they made.
    """

    def __init__(self) -> None:
        self.seen: dict[str, PeerAnnouncement] = {}
        self.gone: list[tuple[str, int]] = []

    def on_seen(self, ann: PeerAnnouncement) -> None:
        self.seen[ann.node_id] = ann

    def on_gone(self, endpoint: tuple[str, int]) -> None:
        self.gone.append(endpoint)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Discovery, Watcher, Discovery, Watcher, PeerAnnouncement]]:
    port = random.randrange(20000, 60000)
    a_ann, b_ann = announcement("alpha", port), announcement("beta", port + 1)
    a_watch, b_watch = Watcher(), Watcher()
    a = Discovery(a_ann.node_id, ("127.0.0.1",), a_watch.on_seen, a_watch.on_gone)
    b = Discovery(b_ann.node_id, ("127.0.0.1",), b_watch.on_seen, b_watch.on_gone)
    await a.start(a_ann)
    await b.start(b_ann)
    try:
        yield a, a_watch, b, b_watch, b_ann
    finally:
        await a.close()
        await b.close()


async def test_nodes_find_each_other_but_not_themselves(pair: tuple) -> None:  # type: ignore[type-arg]
    a, a_watch, _, b_watch, b_ann = pair
    await eventually(lambda: b_ann.node_id in a_watch.seen and a.own_id in b_watch.seen)
    assert a_watch.seen[b_ann.node_id] == b_ann
    assert b_watch.seen[a.own_id].endpoint[0] == "127.0.0.1"
    assert a.own_id not in a_watch.seen
    assert b_ann.node_id not in b_watch.seen


async def test_updates_and_goodbyes_reach_the_other_node(pair: tuple) -> None:  # type: ignore[type-arg]
    _, a_watch, b, _, b_ann = pair
    await eventually(lambda: b_ann.node_id in a_watch.seen)
    changed = PeerAnnouncement(**{**b_ann.__dict__, "share": False, "active": 1})
    await b.update(changed)
    await eventually(lambda: not a_watch.seen[b_ann.node_id].share)
    assert a_watch.seen[b_ann.node_id].active == 1
    await b.close()
    await eventually(lambda: b_ann.endpoint in a_watch.gone)


async def test_garbage_records_are_dropped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "inferhub_desktop.core.discovery")
    watch = Watcher()
    alpha = announcement("alpha", 40001)
    node = Discovery(alpha.node_id, ("127.0.0.1",), watch.on_seen, watch.on_gone)
    await node.start(alpha)
    liar = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    records = [
        {"v": "1", "id": "not-a-uuid", "name": "x"},
        {
            "v": "1",
            "id": str(uuid.uuid4()),
            "name": "liar",
            "share": "1",
            "gpu": "",
            "vram": "900/100",
            "load": "0/1",
            "mh": "",
            "pool": "",
            "tls": "",
        },
        {"v": "99", "id": str(uuid.uuid4())},
        {"junk": "\x00" * 40},
    ]
    infos = [
        AsyncServiceInfo(
            SERVICE_TYPE,
            instance_name(f"bad{i}", str(uuid.uuid4())),
            addresses=[socket.inet_aton("127.0.0.1")],
            port=40100 + i,
            properties=props,
        )
        for i, props in enumerate(records)
    ]
    try:
        await asyncio.gather(*[await liar.async_register_service(info) for info in infos])
        await eventually(lambda: caplog.text.count("ignoring the mDNS record") >= len(records))
        gamma = announcement("gamma", 40003)
        good = Discovery(gamma.node_id, ("127.0.0.1",), Watcher().on_seen, Watcher().on_gone)
        await good.start(gamma)
        try:
            await eventually(lambda: gamma.node_id in watch.seen)
        finally:
            await good.close()
    finally:
        await liar.async_close()
        await node.close()
    liar_ids = {props.get("id") for props in records}
    assert not liar_ids & set(watch.seen)
    assert "is more than its total" in caplog.text
    assert "protocol version 99" in caplog.text


def test_instance_names_fit_dns_sd() -> None:
    name = instance_name("a.very.long.name" * 10, str(uuid.uuid4()))
    assert name.endswith(f").{SERVICE_TYPE}")
    assert len(name.removesuffix("." + SERVICE_TYPE).encode()) <= 63
    assert "." not in name.removesuffix("." + SERVICE_TYPE)
