"""Peers' requests at a sharing node take turns per machine: a flood from one address does not make
another machine's request wait behind it, and batch work waits behind interactive work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferhub_desktop.core import Node
from tests.fakes.ollama import FakeOllama
from tests.support import eventually, node_settings


@pytest.fixture
async def serving(tmp_path: Path) -> AsyncIterator[tuple[Node, FakeOllama]]:
    async with FakeOllama(["llama3:latest"], loaded=["llama3:latest"], tokens_per_second=50.0) as fake:
        store = node_settings(tmp_path, fake.url, share=True, max_remote=1)
        async with Node(store, environ={}) as node:
            yield node, fake


def machine(address: str) -> aiohttp.ClientSession:
    """A peer calling from its own loopback address, which is who the open pool takes it for."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def generate(session: aiohttp.ClientSession, node: Node, prompt: str, **headers: str) -> None:
    body: dict[str, Any] = {"model": "llama3", "prompt": prompt, "options": {"num_predict": 10}}
    async with session.post(
        f"http://127.0.0.1:{node.share_port}/api/generate", json=body, headers=headers
    ) as reply:
        assert reply.status == 200
        await reply.read()


def served(fake: FakeOllama) -> list[str]:
    return [r.json["prompt"] for r in fake.requests if r.path == "/api/generate" and r.json]


async def test_one_machines_flood_does_not_hold_back_anothers_request(
    serving: tuple[Node, FakeOllama],
) -> None:
    node, fake = serving
    admission = node.dispatcher.admission
    async with machine("127.0.0.2") as flooder, machine("127.0.0.3") as colleague:
        flood = [asyncio.create_task(generate(flooder, node, f"flood {n}")) for n in range(4)]
        await eventually(lambda: admission.waiting_remote == 3)
        # Who uses this machine now, its requests running and waiting; callers that are not nodes say
        # no name.
        assert node.usage()["now"] == [{"peer": "a peer", "requests": 4}]
        await generate(colleague, node, "colleague")
        await asyncio.gather(*flood)
    assert served(fake).index("colleague") == 1
    usage = node.usage()
    assert usage["now"] == []
    assert usage["whole_day"]
    assert [(u["peer"], u["requests"], u["tokens"]) for u in usage["today"]] == [
        ("127.0.0.2 (unverified)", 4, 40),
        ("127.0.0.3 (unverified)", 1, 10),
    ]


async def test_batch_work_waits_behind_interactive_work(serving: tuple[Node, FakeOllama]) -> None:
    node, fake = serving
    admission = node.dispatcher.admission
    async with machine("127.0.0.2") as peer:
        running = asyncio.create_task(generate(peer, node, "running"))
        await eventually(lambda: admission.active_remote == 1)
        batch = []
        for n in range(2):
            priority = {"X-InferHub-Priority": "batch"}
            batch.append(asyncio.create_task(generate(peer, node, f"batch {n}", **priority)))
            await eventually(lambda n=n: admission.waiting_batch == n + 1)
        assert node.status().load.waiting_batch == 2
        await generate(peer, node, "interactive")
        await asyncio.gather(running, *batch)
    assert served(fake) == ["running", "interactive", "batch 0", "batch 1"]
