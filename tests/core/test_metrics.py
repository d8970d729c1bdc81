"""Prometheus metrics at /metrics: requests counted as they end, the node's state read when scraped."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inferhub_desktop.core import Node
from inferhub_desktop.core import metrics as metrics_module
from inferhub_desktop.core import node as node_module
from inferhub_desktop.core.telemetry import TelemetrySampler
from tests.fakes.nvml import MIB, FakeNvml
from tests.fakes.ollama import FakeOllama
from tests.support import eventually, node_settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """Nodes read their GPUs through a substitute NVML library: an RTX 4090 and an RTX 3090."""
    fake = FakeNvml()
    monkeypatch.setattr(
        node_module, "TelemetrySampler", functools.partial(TelemetrySampler, nvml=fake.module)
    )
    return fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url + "/metrics") as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        text = await reply.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for sample_name, labels in samples if sample_name == name]


async def generate(
    http: aiohttp.ClientSession, url: str, model: str, **extra: object
) -> tuple[int, list[str]]:
    body = {"model": model, "prompt": "hello", **extra}
    async with http.post(url + "/api/generate", json=body) as reply:
        return reply.status, [line.decode() async for line in reply.content]


async def test_requests_are_counted_by_model_node_endpoint_and_outcome(
    tmp_path: Path, http: aiohttp.ClientSession, nvml: FakeNvml
) -> None:
    async with (
        FakeOllama(["llama3:latest"], default_num_predict=6) as fake,
        Node(node_settings(tmp_path, fake.url, name="desk"), environ={}) as desk,
    ):
        assert (await generate(http, desk.api_url, "llama3", stream=False))[0] == 200
        status, lines = await generate(http, desk.api_url, "llama3")
        assert (status, len(lines)) == (200, 7)
        assert (await generate(http, desk.api_url, "nope"))[0] == 404
        await eventually(lambda: desk.dispatcher.tokens_generated == 12)
        samples = await scrape(http, desk.api_url)

    where = {"api": "local", "endpoint": "/api/generate", "node": "desk"}
    assert value(samples, "inferhub_requests_total", **where, model="llama3", outcome="ok") == 2
    assert value(samples, "inferhub_requests_total", **where, model="nope", outcome="error") == 1
    assert value(samples, "inferhub_tokens_generated_total", **where, model="llama3") == 12
    # Both answers reached the client, so both have a time to first token; the refusal's is its error.
    assert value(samples, "inferhub_time_to_first_token_seconds_count", **where, model="llama3") == 2
    assert value(samples, "inferhub_request_duration_seconds_count", **where, model="llama3") == 2
    total = value(samples, "inferhub_request_duration_seconds_sum", **where, model="llama3")
    first = value(samples, "inferhub_time_to_first_token_seconds_sum", **where, model="llama3")
    assert 0 < (first or 0) <= (total or 0)
    assert series(samples, "inferhub_failovers_total") == []


async def test_a_client_that_leaves_mid_stream_is_counted_as_cancelled(
    tmp_path: Path, http: aiohttp.ClientSession, nvml: FakeNvml
) -> None:
    async with (
        FakeOllama(["llama3:latest"], tokens_per_second=20, default_num_predict=100) as fake,
        Node(node_settings(tmp_path, fake.url, name="desk"), environ={}) as desk,
    ):
        body = {"model": "llama3", "prompt": "hello"}
        async with http.post(desk.api_url + "/api/generate", json=body) as reply:
            await reply.content.readline()
            during = await scrape(http, desk.api_url)
            reply.close()
        await eventually(lambda: fake.cancelled == 1)
        await asyncio.sleep(0.1)
        after = await scrape(http, desk.api_url)

    assert value(during, "inferhub_active_streams", api="local") == 1
    assert value(after, "inferhub_active_streams", api="local") == 0
    where = {"api": "local", "endpoint": "/api/generate", "node": "desk", "model": "llama3"}
    assert value(after, "inferhub_requests_total", **where, outcome="cancelled") == 1


async def test_the_gpus_backend_and_switches_are_read_when_scraped(
    tmp_path: Path, http: aiohttp.ClientSession, nvml: FakeNvml
) -> None:
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, name="desk"), environ={}) as desk,
    ):
        await eventually(lambda: desk.telemetry is not None and desk.backend_state.reachable)
        samples = await scrape(http, desk.api_url)
        desk.switch({"share": True})
        shared = await scrape(http, desk.api_url)
        await fake.close()
        # A request that finds the backend gone has the node look at it again at once.
        async with http.post(
            desk.api_url + "/api/generate", json={"model": "llama3", "prompt": "hi"}
        ) as reply:
            assert reply.status == 502
        await eventually(lambda: not desk.backend_state.reachable)
        down = await scrape(http, desk.api_url)

    rtx4090 = {
        "gpu": "0",
        "name": "NVIDIA GeForce RTX 4090",
        "uuid": "GPU-6a3b2f1e-8c4d-4e5f-9a0b-1c2d3e4f5a6b",
    }
    rtx3090 = {
        "gpu": "1",
        "name": "NVIDIA GeForce RTX 3090",
        "uuid": "GPU-0f9e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f",
    }
    assert value(samples, "inferhub_gpu_memory_total_bytes", **rtx4090) == 24564 * MIB
    assert value(samples, "inferhub_gpu_memory_used_bytes", **rtx4090) == 9210 * MIB
    assert value(samples, "inferhub_gpu_utilization_ratio", **rtx4090) == 0.37
    assert value(samples, "inferhub_gpu_temperature_celsius", **rtx3090) == 48
    # The 3090 reports no utilisation: no sample rather than a made-up 0.
    assert value(samples, "inferhub_gpu_utilization_ratio", **rtx3090) is None
    assert (value(samples, "inferhub_memory_total_bytes") or 0) > 0
    assert value(samples, "inferhub_backend_up", kind="ollama", url=fake.url) == 1
    assert value(down, "inferhub_backend_up", kind="ollama", url=fake.url) == 0
    assert (value(samples, "inferhub_sharing"), value(shared, "inferhub_sharing")) == (0, 1)
    assert value(samples, "inferhub_peers_up") == 0


async def test_failovers_peers_and_breakers_across_two_nodes(
    tmp_path: Path, http: aiohttp.ClientSession, nvml: FakeNvml
) -> None:
    # llama3 is loaded only on the peer, so the peer is tried first.
    async with (
        FakeOllama(["llama3:latest"]) as mine,
        FakeOllama(["llama3:latest"], loaded=["llama3:latest"]) as theirs,
        Node(node_settings(tmp_path / "desk", mine.url, name="desk"), environ={}) as desk,
        Node(node_settings(tmp_path / "peer", theirs.url, name="peer", share=True), environ={}) as peer,
    ):
        await eventually(lambda: any(p.status.backend.installed for p in desk.membership.peers))
        theirs.fail_next(503, "server busy, please try again.  maximum pending requests exceeded")
        status, _ = await generate(http, desk.api_url, "llama3", stream=False)
        assert status == 200
        samples = await scrape(http, desk.api_url)
        served = await scrape(http, f"http://127.0.0.1:{peer.share_port}")

    assert (
        value(samples, "inferhub_failovers_total", api="local", endpoint="/api/generate", model="llama3") == 1
    )
    where = {"api": "local", "endpoint": "/api/generate", "model": "llama3", "node": "desk", "outcome": "ok"}
    assert value(samples, "inferhub_requests_total", **where) == 1
    assert value(samples, "inferhub_peers_up") == 1
    ids = {"peer": "peer", "peer_id": peer.settings.node_id}
    assert value(samples, "inferhub_peer_sharing", **ids) == 1
    states = {
        s: value(samples, "inferhub_peer_circuit_breaker", **ids, state=s)
        for s in ("closed", "open", "half-open")
    }
    assert states == {"closed": 1, "open": 0, "half-open": 0}
    # The share API serves the peer's own metrics to the LAN; its refusal was an answer to a peer.
    refused = {
        "api": "share",
        "endpoint": "/api/generate",
        "model": "llama3",
        "node": "peer",
        "outcome": "error",
    }
    assert value(served, "inferhub_requests_total", **refused) == 1


async def test_made_up_model_names_cannot_grow_the_metrics_without_end(
    tmp_path: Path, http: aiohttp.ClientSession, nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "MAX_MODEL_LABELS", 5)
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, name="desk"), environ={}) as desk,
    ):
        for number in range(12):
            assert (await generate(http, desk.api_url, f"made-up-{number}", stream=False))[0] == 404
        samples = await scrape(http, desk.api_url)
        async with http.post(desk.api_url + "/metrics") as reply:
            assert reply.status == 405

    models = sorted(labels["model"] for labels in series(samples, "inferhub_requests_total"))
    assert models == [*(f"made-up-{n}" for n in range(5)), "other"]
    assert (
        value(
            samples,
            "inferhub_requests_total",
            api="local",
            endpoint="/api/generate",
            node="desk",
            model="other",
            outcome="error",
        )
        == 7
    )
