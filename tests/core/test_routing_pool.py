"""Three nodes on loopback route each other's requests: real zeroconf, share APIs and fake Ollamas."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest

from inferhub_desktop.core import ROUTE_PATH, SWITCHES_PATH, Node
from tests.fakes.ollama import FakeOllama
from tests.support import control, eventually, node_settings

NODE = "X-InferHub-Node"


@dataclass
class Pool:
    """alpha is the machine the tests are on; beta and gamma are its peers."""

    alpha: Node
    beta: Node
    gamma: Node
    fakes: dict[str, FakeOllama]

    def served(self, name: str) -> list[str]:
        """Return the inference paths the named machine's Ollama was asked for."""
        return [r.path for r in self.fakes[name].requests if r.path in ("/api/generate", "/api/chat")]


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[Pool]:
    # llama3 is everywhere, loaded only on beta; qwen3 only beta has; phi3 is loaded on beta and gamma.
    async with (
        FakeOllama(["llama3:latest"], tokens_per_second=200, load_delay_s=1.0) as fake_a,
        FakeOllama(
            ["llama3:latest", "qwen3:8b", "phi3:latest"], loaded=["llama3:latest", "phi3:latest"]
        ) as fake_b,
        FakeOllama(["llama3:latest", "phi3:latest"], loaded=["phi3:latest"], load_delay_s=1.0) as fake_c,
    ):
        nodes = [
            Node(node_settings(tmp_path / name, fake.url, name=name, share=True), environ={})
            for name, fake in (("alpha", fake_a), ("beta", fake_b), ("gamma", fake_c))
        ]
        async with nodes[0] as alpha, nodes[1] as beta, nodes[2] as gamma:
            # Every node knows every other's models before a test begins.
            for node in nodes:
                await eventually(functools.partial(_knows_models, node, 2))
            yield Pool(alpha, beta, gamma, {"alpha": fake_a, "beta": fake_b, "gamma": fake_c})


def _knows_models(node: Node, peers: int) -> bool:
    known = [p for p in node.membership.peers if p.status.backend.installed]
    return len(known) == peers and bool(node.backend_state.installed)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def generate(
    http: aiohttp.ClientSession, node: Node, model: str, **extra: Any
) -> tuple[int, str, dict[str, Any]]:
    """Generate without streaming; return the status, the answering node and the reply."""
    headers = extra.pop("headers", {})
    body = {"model": model, "prompt": "hello", "stream": False, **extra}
    async with http.post(node.api_url + "/api/generate", json=body, headers=headers) as reply:
        return reply.status, reply.headers.get(NODE, ""), await reply.json()


async def test_a_model_only_one_peer_has_is_served_by_that_peer(
    pool: Pool, http: aiohttp.ClientSession
) -> None:
    status, node, reply = await generate(http, pool.alpha, "qwen3:8b")
    assert (status, node, reply["done"]) == (200, "beta", True)
    assert pool.served("beta") == ["/api/generate"]
    assert pool.served("alpha") == pool.served("gamma") == []


async def test_a_loaded_model_is_preferred_to_loading_it_elsewhere(
    pool: Pool, http: aiohttp.ClientSession
) -> None:
    # alpha and gamma would need a second to load llama3; beta has it loaded.
    for _ in range(3):
        status, node, _ = await generate(http, pool.alpha, "llama3")
        assert (status, node) == (200, "beta")
    assert pool.served("alpha") == pool.served("gamma") == []


async def test_a_node_with_equal_prospects_loses_to_this_machine(
    pool: Pool, http: aiohttp.ClientSession
) -> None:
    # gamma asks for phi3, loaded on itself and on beta: the tie goes to gamma's own backend.
    status, node, _ = await generate(http, pool.gamma, "phi3")
    assert (status, node) == (200, "gamma")


async def test_listings_through_any_node_are_the_pools(pool: Pool) -> None:
    for node in (pool.alpha, pool.gamma):
        async with ollama.AsyncClient(host=node.api_url) as client:
            listed = await client.list()
            running = await client.ps()
        assert sorted(m.model or "" for m in listed.models) == ["llama3:latest", "phi3:latest", "qwen3:8b"]
        loaded = sorted(m.model or "" for m in running.models)
        assert loaded == ["llama3:latest", "phi3:latest", "phi3:latest"]
    async with aiohttp.ClientSession() as http:
        async with http.get(pool.alpha.api_url + "/api/tags") as reply:
            tags = {m["model"]: m["inferhub_nodes"] for m in (await reply.json())["models"]}
        assert tags == {
            "llama3:latest": ["alpha", "beta", "gamma"],
            "qwen3:8b": ["beta"],
            "phi3:latest": ["beta", "gamma"],
        }
        async with http.get(pool.alpha.api_url + "/api/ps") as reply:
            ps = sorted((m["model"], m["inferhub_node"]) for m in (await reply.json())["models"])
        assert ps == [("llama3:latest", "beta"), ("phi3:latest", "beta"), ("phi3:latest", "gamma")]
        async with http.get(pool.alpha.api_url + "/v1/models") as reply:
            ids = {m["id"]: m["inferhub_nodes"] for m in (await reply.json())["data"]}
        assert ids["qwen3:8b"] == ["beta"]


async def test_listings_and_requests_work_while_this_machines_ollama_is_down(
    pool: Pool, http: aiohttp.ClientSession
) -> None:
    await pool.fakes["alpha"].close()
    async with http.get(pool.alpha.api_url + "/api/tags") as reply:
        assert reply.status == 200
        tags = {m["model"]: m["inferhub_nodes"] for m in (await reply.json())["models"]}
    assert tags == {
        "llama3:latest": ["beta", "gamma"],
        "qwen3:8b": ["beta"],
        "phi3:latest": ["beta", "gamma"],
    }
    # Requests still reach the pool's nodes.
    status, node, reply_body = await generate(http, pool.alpha, "llama3")
    assert (status, reply_body["done"]) == (200, True)
    assert node in ("beta", "gamma")


async def test_show_goes_to_a_node_that_has_the_model(pool: Pool, http: aiohttp.ClientSession) -> None:
    async with http.post(pool.alpha.api_url + "/api/show", json={"model": "qwen3:8b"}) as reply:
        assert (reply.status, reply.headers[NODE]) == (200, "beta")
        assert "modelfile" in await reply.json()
    async with http.post(pool.fakes["alpha"].url + "/api/show", json={"model": "nowhere"}) as reply:
        ollamas_own = await reply.read()
    async with http.post(pool.alpha.api_url + "/api/show", json={"model": "nowhere"}) as reply:
        # Nobody has it: this machine's Ollama refuses it in its own words.
        assert (reply.status, reply.headers[NODE], await reply.read()) == (404, "alpha", ollamas_own)


async def test_a_failing_peer_is_passed_over_before_the_first_byte(
    pool: Pool, http: aiohttp.ClientSession
) -> None:
    # phi3 is loaded on beta and gamma; the Ollama of the one ranked first is gone, so that node answers
    # 502 and the other answers instead, the client never knowing.
    first, second = [r["node"] for r in (await explain(http, pool.alpha, "phi3"))["ranked"][:2]]
    assert {first, second} == {"beta", "gamma"}
    await pool.fakes[first].close()
    status, node, reply = await generate(http, pool.alpha, "phi3")
    assert (status, node, reply["done"]) == (200, second, True)
    # The failed node is left out now (by its breaker, then by its own report of its backend), so the
    # next request goes straight to the other.
    route = await explain(http, pool.alpha, "phi3")
    assert [r["node"] for r in route["ranked"]] == [second]
    reason = next(x["reason"] for x in route["left_out"] if x["node"] == first)
    assert "circuit breaker" in reason or "backend cannot be used" in reason
    before = len(pool.served(second))
    status, node, _ = await generate(http, pool.alpha, "phi3")
    assert (status, node, len(pool.served(second))) == (200, second, before + 1)


async def test_a_stream_broken_midway_ends_with_an_error_line_and_the_next_request_avoids_the_node(
    pool: Pool, http: aiohttp.ClientSession
) -> None:
    pool.fakes["beta"].drop_after(chunks=3)
    body = {"model": "llama3", "prompt": "hello", "options": {"num_predict": 20}}
    async with http.post(pool.alpha.api_url + "/api/generate", json=body) as reply:
        assert (reply.status, reply.headers[NODE]) == (200, "beta")
        lines = [json.loads(line) for line in (await reply.read()).splitlines()]
    assert [("response" in line, "error" in line) for line in lines[:-1]] == [(True, False)] * 3
    assert lines[-1]["error"].startswith("beta's backend at ")
    assert "broke off its reply" in lines[-1]["error"]
    status, node, _ = await generate(http, pool.alpha, "llama3")
    assert status == 200
    assert node in ("alpha", "gamma")


async def test_a_pinned_request_goes_where_it_is_pinned(pool: Pool, http: aiohttp.ClientSession) -> None:
    status, node, _ = await generate(http, pool.alpha, "llama3", headers={NODE: "Gamma"})
    assert (status, node) == (200, "gamma")
    status, _, reply = await generate(http, pool.alpha, "llama3", headers={NODE: "delta"})
    assert status == 404
    assert reply["error"].startswith("no node of the pool is named 'delta'")


async def test_local_only_keeps_requests_on_this_machine(pool: Pool, http: aiohttp.ClientSession) -> None:
    async with http.post(
        pool.alpha.api_url + SWITCHES_PATH, json={"local_only": True}, headers=control(pool.alpha)
    ) as reply:
        assert (await reply.json())["local_only"] is True
    status, node, _ = await generate(http, pool.alpha, "llama3")
    assert (status, node) == (200, "alpha")
    # qwen3 is only on a peer: refused in Ollama's words, saying why and what to do.
    served = len(pool.served("alpha"))
    status, node, answer = await generate(http, pool.alpha, "qwen3:8b")
    assert (status, node) == (404, "alpha")
    assert answer["error"] == (
        "model 'qwen3:8b' not found on this machine, which is set to use only itself ('Use only this "
        "machine' is on); beta has it: turn that off in the tray or with `inferhub local-only off` to use "
        "the pool"
    )
    assert len(pool.served("alpha")) == served
    # A model nobody has is still this machine's Ollama's to refuse, in its own words.
    status, _, answer = await generate(http, pool.alpha, "nowhere")
    assert (status, answer["error"]) == (404, "model 'nowhere' not found")
    async with http.get(pool.alpha.api_url + "/api/tags") as reply:
        assert [m["model"] for m in (await reply.json())["models"]] == ["llama3:latest"]


async def test_unloading_a_model_unloads_it_on_every_node(pool: Pool, http: aiohttp.ClientSession) -> None:
    status, _, reply = await generate(http, pool.alpha, "phi3", keep_alive=0, prompt="")
    assert (status, reply["done_reason"]) == (200, "unload")
    assert not pool.fakes["beta"]._is_loaded(pool.fakes["beta"].models["phi3:latest"])
    assert not pool.fakes["gamma"]._is_loaded(pool.fakes["gamma"].models["phi3:latest"])
    # llama3 stays loaded on beta: only the named model went.
    assert pool.fakes["beta"]._is_loaded(pool.fakes["beta"].models["llama3:latest"])


async def test_speeds_learnt_by_a_peer_reach_the_router(pool: Pool, http: aiohttp.ClientSession) -> None:
    for _ in range(2):
        assert (await generate(http, pool.alpha, "qwen3:8b", options={"num_predict": 10}))[0] == 200
    # beta measured its own speed; alpha reads it in beta's status within a poll.
    await eventually(lambda: "learnt from" in pool.alpha.explain_route("qwen3:8b")["ranked"][0]["basis"])
    route = await explain(http, pool.alpha, "qwen3:8b")
    assert (route["model"], [r["node"] for r in route["ranked"]]) == ("qwen3:8b", ["beta"])
    assert {x["node"]: x["reason"] for x in route["left_out"]} == {
        "alpha": "does not have qwen3:8b",
        "gamma": "does not have qwen3:8b",
    }


async def explain(http: aiohttp.ClientSession, node: Node, model: str) -> dict[str, Any]:
    async with http.get(node.api_url + ROUTE_PATH, params={"model": model}, headers=control(node)) as reply:
        assert reply.status == 200
        value: dict[str, Any] = await reply.json()
        return value


async def test_concurrent_requests_spread_over_the_nodes_that_have_the_model(
    pool: Pool, http: aiohttp.ClientSession
) -> None:
    # phi3 is loaded on beta and gamma (one slot each); alpha would load it. Two at once: one each.
    body = {"model": "phi3", "prompt": "hello", "options": {"num_predict": 40}, "stream": False}
    pool.fakes["beta"].tokens_per_second = pool.fakes["gamma"].tokens_per_second = 100

    async def one() -> str:
        async with http.post(pool.alpha.api_url + "/api/generate", json=body) as reply:
            assert reply.status == 200
            return reply.headers[NODE]

    first = asyncio.create_task(one())
    await eventually(lambda: pool.fakes["beta"].active + pool.fakes["gamma"].active == 1)
    second = await one()
    assert {await first, second} == {"beta", "gamma"}


async def test_a_peer_paused_for_its_owner_is_passed_over_and_the_route_says_why(
    pool: Pool, http: aiohttp.ClientSession
) -> None:
    # Quiet hours round the clock on beta, which alone has llama3 loaded.
    pool.beta.store.change(quiet_hours=["daily 00:00-12:00", "daily 12:00-24:00"])
    await eventually(lambda: any(p.name == "beta" and p.status.owner.paused for p in pool.alpha.peers()))
    status, node, _ = await generate(http, pool.alpha, "llama3")
    assert (status, node in ("alpha", "gamma")) == (200, True)
    left = {x["node"]: x["reason"] for x in pool.alpha.explain_route("llama3")["left_out"]}
    assert left["beta"].startswith("sharing paused by its owner: quiet hours (daily ")
    # The owner's own requests still run on beta.
    assert (await generate(http, pool.beta, "llama3"))[:2] == (200, "beta")
    assert pool.served("beta") == ["/api/generate"]
