"""Models travel over the LAN: a pull through the node copies a model a member has into this machine's
Ollama, with Ollama's own downloader and progress; the member lends it only as its owner allows, and
logs each copy; a damaged file is refused and fetched from another member; a member that leaves mid-copy
costs a retry, not the copy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from inferhub_desktop.core import FROM_HEADER, Node
from inferhub_desktop.core.wire.endpoints import MODELS_PREFIX
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.support import eventually, node_settings

MIB = 1 << 20
BIG = FakeModel("big:latest", size=24 * MIB + 5, family="qwen2", parameter_size="135M")


def blobs(root: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (root / "blobs").iterdir()
        if path.is_file()
    }


async def tags(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as http, http.get(url + "/api/tags") as reply:
        return {m["name"]: m["digest"] for m in (await reply.json())["models"]}


async def pull(node: Node, model: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(node.api_url + "/api/pull", json={"model": model}, headers=headers or {}) as reply,
    ):
        assert reply.status == 200, await reply.text()
        return [json.loads(line) async for line in reply.content]


@contextlib.asynccontextmanager
async def member(tmp_path: Path, name: str, models: list[FakeModel], **settings: Any) -> AsyncIterator[Node]:
    """A machine of the pool: its Ollama keeping `models` as files, and its node."""
    root = tmp_path / name / "models"
    async with (
        FakeOllama(models, models_dir=root) as fake,
        Node(
            node_settings(tmp_path / name, fake.url, name=name, **settings),
            environ={"OLLAMA_MODELS": str(root)},
        ) as node,
    ):
        yield node


def has_model(node: Node, peer: str, model: str) -> bool:
    return any(
        p.announcement.name == peer and any(m.name == model for m in p.status.backend.installed)
        for p in node.membership.peers
    )


async def test_a_pull_copies_a_members_model_into_this_machines_ollama_with_its_progress(
    tmp_path: Path,
) -> None:
    async with member(tmp_path, "lender", [BIG], lend_models="lan") as lender:
        peers = [f"127.0.0.1:{lender.share_port}"]
        async with member(tmp_path, "here", [], peers=peers) as here:
            await eventually(lambda: has_model(here, "lender", "big:latest"))
            lines = await pull(here, "big")
            # The same files, listed by the same digest, under the name asked for and no other.
            here_tags = await tags(here.backend.url)
            assert here_tags == {"big:latest": (await tags(lender.backend.url))["big:latest"]}
        statuses = [line["status"] for line in lines]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        weights = [line for line in lines if line.get("total") == BIG.size]
        assert weights[-1]["completed"] == BIG.size
        assert blobs(tmp_path / "here" / "models") == blobs(tmp_path / "lender" / "models")
        # The lender's audit log says who copied what.
        entries = lender.audit_log.entries(10)
        size = sum(path.stat().st_size for path in (tmp_path / "lender/models/blobs").iterdir())
        assert [(e["endpoint"], e["model"], e["bytes"], e["address"]) for e in entries] == [
            ("model copy", "big:latest", size, "127.0.0.1")
        ]


async def test_a_machine_lends_to_the_open_pool_only_where_its_owner_lets_it(tmp_path: Path) -> None:
    async with member(tmp_path, "lender", [BIG]) as lender:  # lend_models: "members" by default
        url = f"http://127.0.0.1:{lender.share_port}{MODELS_PREFIX}manifests/registry.ollama.ai/library/big/latest"
        async with aiohttp.ClientSession() as http, http.get(url) as reply:
            assert reply.status == 403
            assert "only to the members of its private pool" in (await reply.json())["error"]
        peers = [f"127.0.0.1:{lender.share_port}"]
        async with member(tmp_path, "here", [], peers=peers) as here:
            await eventually(lambda: has_model(here, "lender", "big:latest"))
            lines = await pull(here, "big")
        # Refused by the pool, it goes to the registry, which (here) has no such model.
        assert lines[-1] == {"error": "pull model manifest: file does not exist"}
        assert lender.audit_log.entries(10) == []
        lender.store.change(lend_models="lan")
        async with aiohttp.ClientSession() as http, http.get(url) as reply:
            assert reply.status == 200
            assert (
                hashlib.sha256(await reply.read()).hexdigest()
                == (await tags(lender.backend.url))["big:latest"]
            )


async def test_a_damaged_file_is_refused_and_fetched_from_another_member(tmp_path: Path) -> None:
    async with (
        member(tmp_path, "damaged", [BIG], lend_models="lan") as damaged,
        member(tmp_path, "sound", [BIG], lend_models="lan") as sound,
    ):
        manifest = json.loads(
            (tmp_path / "damaged/models/manifests/registry.ollama.ai/library/big/latest").read_bytes()
        )
        weights = tmp_path / "damaged/models/blobs" / manifest["layers"][0]["digest"].replace(":", "-")
        data = bytearray(weights.read_bytes())
        data[MIB] ^= 0xFF
        weights.write_bytes(bytes(data))
        peers = [f"127.0.0.1:{damaged.share_port}", f"127.0.0.1:{sound.share_port}"]
        async with member(tmp_path, "here", [], peers=peers) as here:
            await eventually(
                lambda: has_model(here, "damaged", "big:latest") and has_model(here, "sound", "big:latest")
            )
            lines = await pull(here, "big")
        assert lines[-1] == {"status": "success"}
        assert any("damaged file" in line["status"] for line in lines)
        assert blobs(tmp_path / "here" / "models") == blobs(tmp_path / "sound" / "models")


async def test_a_member_that_leaves_mid_copy_costs_a_retry_not_the_copy(tmp_path: Path) -> None:
    # Slow lenders (4 MiB/s each), so the copy is under way when one stops.
    async with member(tmp_path, "staying", [BIG], lend_models="lan", lend_mib_s=4) as staying:
        leaving_cm = member(tmp_path, "leaving", [BIG], lend_models="lan", lend_mib_s=4)
        leaving = await leaving_cm.__aenter__()
        try:
            peers = [f"127.0.0.1:{leaving.share_port}", f"127.0.0.1:{staying.share_port}"]
            async with member(tmp_path, "here", [], peers=peers) as here:
                await eventually(
                    lambda: (
                        has_model(here, "leaving", "big:latest") and has_model(here, "staying", "big:latest")
                    )
                )
                copy = asyncio.create_task(pull(here, "big"))
                partial = tmp_path / "here/models/blobs"
                await eventually(lambda: any(p.name.endswith("-partial") for p in partial.iterdir()))
                await asyncio.sleep(1.0)
                await leaving_cm.__aexit__(None, None, None)
                leaving_cm = None
                lines = await asyncio.wait_for(copy, 60)
        finally:
            if leaving_cm is not None:
                await leaving_cm.__aexit__(None, None, None)
        assert lines[-1] == {"status": "success"}
        assert blobs(tmp_path / "here" / "models") == blobs(tmp_path / "staying" / "models")


async def test_the_user_may_name_the_member_to_copy_from_or_the_registry(tmp_path: Path) -> None:
    registry_big = FakeModel("big:latest", size=MIB, family="llama")
    async with member(tmp_path, "lender", [BIG], lend_models="lan") as lender:
        peers = [f"127.0.0.1:{lender.share_port}"]
        root = tmp_path / "here" / "models"
        async with (
            FakeOllama([], registry=[registry_big], models_dir=root) as fake,
            Node(
                node_settings(tmp_path / "here", fake.url, name="here", peers=peers),
                environ={"OLLAMA_MODELS": str(root)},
            ) as here,
        ):
            await eventually(lambda: has_model(here, "lender", "big:latest"))
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    here.api_url + "/api/pull", json={"model": "big"}, headers={FROM_HEADER: "nobody"}
                ) as reply,
            ):
                assert reply.status == 404
                assert "no member named 'nobody' has big:latest" in (await reply.json())["error"]
            # The registry's model, not the member's: Ollama's own pull, untouched.
            lines = await pull(here, "big", {FROM_HEADER: "registry"})
            assert lines[-1] == {"status": "success"}
            assert [r.json["model"] for r in fake.requests if r.path == "/api/pull"] == ["big"]
            registry_digest = (await tags(fake.url))["big:latest"]
            assert registry_digest != (await tags(lender.backend.url))["big:latest"]
            lines = await pull(here, "big", {FROM_HEADER: "lender"})
            assert lines[-1] == {"status": "success"}
            assert (await tags(fake.url))["big:latest"] == (await tags(lender.backend.url))["big:latest"]
