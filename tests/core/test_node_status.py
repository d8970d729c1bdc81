"""The node keeps track of its backend and reports its state on the local API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from inferhub_desktop import __version__
from inferhub_desktop.core import Node
from inferhub_desktop.core.api.local import STATUS_PATH
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.support import control, eventually, node_settings


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    models = [FakeModel("llama3:latest"), FakeModel("qwen3:8b", family="qwen3", parameter_size="8.2B")]
    async with FakeOllama(models, loaded=["llama3:latest"], version="0.12.10") as server:
        yield server


async def test_status_reports_identity_and_what_the_backend_has(fake: FakeOllama, tmp_path: Path) -> None:
    async with Node(node_settings(tmp_path, fake.url), environ={}) as node:
        await eventually(lambda: node.backend_state.reachable and node.telemetry is not None)
        async with (
            aiohttp.ClientSession() as http,
            http.get(node.api_url + STATUS_PATH, headers=control(node)) as reply,
        ):
            assert reply.status == 200
            status = await reply.json()
        async with (
            aiohttp.ClientSession() as http,
            http.post(node.api_url + STATUS_PATH, headers=control(node)) as reply,
        ):
            assert reply.status == 405
    assert (status["id"], status["name"], status["version"]) == (
        node.settings.node_id,
        "test-node",
        __version__,
    )
    backend = status["backend"]
    assert (backend["kind"], backend["url"], backend["version"]) == ("ollama", fake.url, "0.12.10")
    installed = {m["name"]: m for m in backend["installed"]}
    assert sorted(installed) == ["llama3:latest", "qwen3:8b"]
    assert installed["qwen3:8b"]["parameter_size"] == "8.2B"
    assert [m["name"] for m in backend["loaded"]] == ["llama3:latest"]
    assert backend["loaded"][0]["size_vram"] == backend["loaded"][0]["size"] > 0
    system = status["telemetry"]["system"]
    assert system["ram_total_mib"] >= system["ram_free_mib"] > 0
    assert system["cpu_count"] >= 1


async def test_a_backend_that_goes_and_comes_back_is_noticed_both_ways(
    fake: FakeOllama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inferhub_desktop.core.node._PROBE_INTERVAL_S", 0.05)
    async with Node(node_settings(tmp_path, fake.url), environ={}) as node:
        await eventually(lambda: node.backend_state.reachable)
        port = fake.port
        await fake.close()
        await eventually(lambda: not node.backend_state.reachable)
        assert "connection refused" in (node.backend_state.error or "")
        async with FakeOllama(["mistral:latest"], port=port):
            await eventually(lambda: node.backend_state.reachable)
            assert [m.name for m in node.backend_state.installed] == ["mistral:latest"]


async def test_models_changed_through_the_node_show_at_once(fake: FakeOllama, tmp_path: Path) -> None:
    # The probe interval stays at its real length: only the request itself can explain a quick update.
    async with Node(node_settings(tmp_path, fake.url), environ={}) as node:
        await eventually(lambda: node.backend_state.reachable)
        async with aiohttp.ClientSession() as http:
            body = {"model": "terse", "from": "llama3", "stream": False}
            async with http.post(node.api_url + "/api/create", json=body) as reply:
                assert reply.status == 200
            await eventually(lambda: "terse:latest" in {m.name for m in node.backend_state.installed})
            body = {"model": "qwen3:8b", "prompt": "hi", "stream": False}
            async with http.post(node.api_url + "/api/generate", json=body) as reply:
                assert reply.status == 200
            await eventually(lambda: "qwen3:8b" in {m.name for m in node.backend_state.loaded})


async def test_a_backend_that_is_not_ollama_is_reported_as_such(tmp_path: Path) -> None:
    async def not_ollama(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response([1, 2, 3])

    app = aiohttp.web.Application()
    app.router.add_get("/{tail:.*}", not_ollama)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with Node(node_settings(tmp_path, url), environ={}) as node:
            await eventually(lambda: node.backend_state.error != "not asked yet")
            assert not node.backend_state.reachable
            assert "does not answer like Ollama" in (node.backend_state.error or "")
    finally:
        await runner.cleanup()
