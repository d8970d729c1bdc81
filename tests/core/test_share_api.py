"""The share API: what peers on the LAN may ask of this machine's backend, and when."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from inferhub_desktop.core import Node, NodeStatus, Settings
from inferhub_desktop.core.api import share as share_module
from inferhub_desktop.core.api.admission import Admission
from inferhub_desktop.core.api.guard import OriginPolicy
from inferhub_desktop.core.api.local import LocalApi
from inferhub_desktop.core.api.relay import Forwarder, Plan, Query, Target
from inferhub_desktop.core.api.share import ShareApi, is_lan_address
from inferhub_desktop.core.backends.base import Backend
from inferhub_desktop.core.backends.ollama import OllamaBackend
from inferhub_desktop.core.wire.endpoints import STATUS_PATH, Endpoint, Kind
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.support import Alone, OneWay, eventually, node_settings

NOT_SHARING = "test-node is not sharing its GPU right now; its owner can turn sharing on"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
GENERATE = {"model": "llama3", "prompt": "hello there", "options": {"num_predict": 20}}
CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}

# Requests peers may make while the owner shares: (method, path, JSON body or None).
OPEN = [
    ("POST", "/api/generate", {**GENERATE, "stream": False}),
    ("POST", "/api/chat", CHAT),
    ("POST", "/api/embed", {"model": "nomic-embed-text", "input": "hi"}),
    ("POST", "/api/embeddings", {"model": "nomic-embed-text", "prompt": "hi"}),
    ("GET", "/api/tags", None),
    ("HEAD", "/api/tags", None),
    ("POST", "/api/show", {"model": "llama3"}),
    ("GET", "/api/ps", None),
    ("GET", "/api/version", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", CHAT),
]
# Requests that stay with the owner, sharing or not.
CLOSED = [
    ("POST", "/api/push", {"model": "llama3"}),
    ("POST", "/api/create", {"model": "mine", "from": "llama3"}),
    ("POST", "/api/copy", {"source": "llama3", "destination": "copy"}),
    ("DELETE", "/api/delete", {"model": "llama3"}),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/api/blobs/sha256:" + "0" * 64, {"not": "a blob"}),
    ("POST", "/api/me", None),
    ("POST", "/api/signout", None),
    ("GET", "/api/x", None),
    ("POST", "/v1/unknown", {"model": "llama3"}),
]


@dataclasses.dataclass
class Rig:
    """A fake Ollama, and share and local APIs in front of it, each on its own loopback port."""

    fake: FakeOllama
    settings: Settings
    backend: Backend
    stack: contextlib.AsyncExitStack
    # What a node of these settings says of itself, as it was made.
    made: NodeStatus
    sharing: bool = True
    relayed: list[str] = dataclasses.field(default_factory=list)

    def status(self) -> NodeStatus:
        return dataclasses.replace(self.made, share=self.sharing)

    def _forwarder(
        self, admission: Admission, *, remote: bool, backend: Callable[[], Backend] | None = None
    ) -> Forwarder:
        """Send every request to one backend, peers' inference held by `admission` as the node does."""

        def admit(endpoint: Endpoint) -> contextlib.AbstractAsyncContextManager[None]:
            if endpoint.kind is not Kind.INFERENCE:
                return contextlib.nullcontext()
            return admission.remote() if remote else admission.local()

        def plan(query: Query) -> Plan:
            chosen = backend() if backend else self.backend
            return Plan([Target(self.settings.name, chosen, admit, lambda outcome: None)])

        dispatch = OneWay(plan, self.relayed)
        return Forwarder(
            self.settings, dispatch, "share", status=self.status, metrics=lambda: (b"", "text/plain")
        )

    async def share(
        self, admission: Admission | None = None, backend: Callable[[], Backend] | None = None
    ) -> str:
        admission = admission or Admission(slots=1, max_remote=1)
        forwarder = self._forwarder(admission, remote=True, backend=backend)
        api = ShareApi(
            forwarder,
            self.settings.name,
            refusal=lambda: None if self.sharing else NOT_SHARING,
            pool_pull=lambda: False,
        )
        return await self._serve(api.app())

    async def local(self, admission: Admission) -> str:
        api = LocalApi(self._forwarder(admission, remote=False), OriginPolicy({}), Alone(), Alone(), "token")
        return await self._serve(api.app())

    async def _serve(self, app: web.Application) -> str:
        # As the node runs it: a client that leaves cancels its handler.
        runner = web.AppRunner(app, handler_cancellation=True)
        await runner.setup()
        self.stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    models = ["llama3:latest", FakeModel("nomic-embed-text", capabilities=("embedding",))]
    async with (
        FakeOllama(models, loaded=["llama3:latest"], tokens_per_second=200.0) as fake,
        contextlib.AsyncExitStack() as stack,
    ):
        store = node_settings(tmp_path, fake.url)
        backend = OllamaBackend(fake.url, connect_timeout_s=5.0)
        stack.callback(backend.close)
        yield Rig(fake, store.settings, backend, stack, Node(store, environ={}).status())


@pytest.fixture
async def share(rig: Rig) -> str:
    return await rig.share()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


def error_message(path: str, body: bytes) -> str:
    """Read an error body in the shape the path's API uses."""
    error = json.loads(body)["error"]
    if path.startswith("/v1/"):
        assert error["type"] == "api_error"
        return str(error["message"])
    assert isinstance(error, str)
    return error


async def test_status_is_served_whether_or_not_sharing(
    rig: Rig, share: str, http: aiohttp.ClientSession
) -> None:
    for sharing in (True, False):
        rig.sharing = sharing
        async with http.get(share + STATUS_PATH) as reply:
            assert reply.status == 200
            assert reply.headers["X-InferHub-Node"] == "test-node"
            status = NodeStatus.from_json(await reply.json())
            assert (status.node_id, status.name, status.share) == (rig.settings.node_id, "test-node", sharing)
        async with http.head(share + STATUS_PATH) as reply:
            assert reply.status == 200
    async with http.post(share + STATUS_PATH) as reply:
        assert (reply.status, await reply.text()) == (405, "405 method not allowed")
    assert rig.fake.requests == []


@pytest.mark.parametrize(("method", "path", "body"), OPEN, ids=[f"{m} {p}" for m, p, _ in OPEN])
async def test_inference_and_reads_are_relayed_while_sharing(
    rig: Rig, share: str, http: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None
) -> None:
    async with http.request(method, share + path, json=body) as reply:
        assert reply.status == 200, await reply.text()
        assert reply.headers["X-InferHub-Node"] == "test-node"
    [seen] = rig.fake.requests
    assert (seen.method, seen.path) == (method, path)
    assert seen.headers["X-InferHub-Via"] == rig.settings.node_id
    assert rig.relayed == [path]


@pytest.mark.parametrize(("method", "path", "body"), OPEN, ids=[f"{m} {p}" for m, p, _ in OPEN])
async def test_nothing_is_relayed_while_not_sharing(
    rig: Rig, share: str, http: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None
) -> None:
    rig.sharing = False
    async with http.request(method, share + path, json=body) as reply:
        assert reply.status == 503
        assert reply.headers["X-InferHub-Node"] == "test-node"
        if method != "HEAD":
            assert error_message(path, await reply.read()) == NOT_SHARING
    assert rig.fake.requests == []
    assert rig.relayed == []


@pytest.mark.parametrize(("method", "path", "body"), CLOSED, ids=[f"{m} {p}" for m, p, _ in CLOSED])
async def test_model_management_is_never_open_to_peers(
    rig: Rig, share: str, http: aiohttp.ClientSession, method: str, path: str, body: dict[str, Any] | None
) -> None:
    async with http.request(method, share + path, json=body) as reply:
        assert reply.status == 403
        if method != "HEAD":
            message = error_message(path, await reply.read())
            assert message == f"{path} is not open to peers: model management stays with this machine's owner"
    assert rig.fake.requests == []


async def test_peers_pull_models_here_only_where_the_owner_allows_it(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    rig.fake.registry["mistral:latest"] = FakeModel("mistral:latest")
    allowed = False
    forwarder = rig._forwarder(Admission(slots=1, max_remote=1), remote=True)
    api = ShareApi(forwarder, rig.settings.name, refusal=lambda: None, pool_pull=lambda: allowed)
    share = await rig._serve(api.app())
    pull = {"model": "mistral", "stream": False}
    async with http.post(share + "/api/pull", json=pull) as reply:
        assert reply.status == 403
        assert (await reply.json())["error"] == (
            "test-node does not let the pool pull models onto it; its owner can allow that"
        )
    assert rig.fake.requests == []
    allowed = True
    async with http.post(share + "/api/pull", json=pull) as reply:
        assert (reply.status, await reply.json()) == (200, {"status": "success"})
    assert "mistral:latest" in rig.fake.models


async def test_paths_and_methods_are_answered_as_ollama_answers_them(
    rig: Rig, share: str, http: aiohttp.ClientSession
) -> None:
    rig.sharing = False
    async with http.get(share + "/") as reply:
        assert (reply.status, await reply.text()) == (200, "Ollama is running")
    async with http.get(share + "/favicon.ico") as reply:
        assert (reply.status, await reply.text()) == (404, "404 page not found")
    async with http.delete(share + "/api/generate") as reply:
        assert (reply.status, await reply.text()) == (405, "405 method not allowed")
    async with http.get(share + "/api/pull") as reply:
        assert (reply.status, await reply.text()) == (405, "405 method not allowed")
    assert rig.fake.requests == []


async def test_streams_are_relayed_line_for_line(rig: Rig, share: str, http: aiohttp.ClientSession) -> None:
    async with http.post(share + "/api/generate", json=GENERATE) as reply:
        assert reply.headers["Content-Type"] == "application/x-ndjson"
        relayed = [line async for line in reply.content]
    async with http.post(rig.fake.url + "/api/generate", json=GENERATE) as reply:
        direct = [line async for line in reply.content]
    assert len(relayed) == len(direct) == 21
    assert json.loads(relayed[-1])["done"] is True


async def lines_at(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[float]:
    """Generate, noting when each streamed line arrived."""
    async with http.post(url + "/api/generate", json=body) as reply:
        assert reply.status == 200
        return [time.monotonic() async for _ in reply.content]


async def test_peers_take_turns_and_never_delay_the_owner(rig: Rig, http: aiohttp.ClientSession) -> None:
    rig.fake.tokens_per_second = 40.0  # a peer's 20 tokens take half a second
    admission = Admission(slots=1, max_remote=1)
    share, local = await rig.share(admission), await rig.local(admission)

    first = asyncio.create_task(lines_at(http, share, GENERATE))
    await eventually(lambda: rig.fake.active == 1)
    second = asyncio.create_task(lines_at(http, share, GENERATE))
    await eventually(lambda: admission.waiting_remote == 1)
    # Reads are not counted: they pass while the peers' slot is taken.
    async with http.get(share + "/api/tags") as reply:
        assert reply.status == 200
    # The owner's request runs beside the peer's, although every slot is taken.
    await lines_at(http, local, {**GENERATE, "options": {"num_predict": 2}})
    owner_done = time.monotonic()
    assert (admission.active_remote, admission.waiting_remote) == (1, 1)
    first_lines, second_lines = await first, await second

    assert owner_done < first_lines[-1]
    # The second peer's request reached the backend only once the first had ended.
    assert second_lines[0] > first_lines[-1]
    assert [r.path for r in rig.fake.requests].count("/api/generate") == 3
    assert (admission.active_local, admission.active_remote, admission.waiting_remote) == (0, 0, 0)


async def test_a_peer_past_the_queue_gets_ollamas_busy_error(rig: Rig, http: aiohttp.ClientSession) -> None:
    rig.fake.tokens_per_second = 40.0
    share = await rig.share(Admission(slots=1, max_remote=1, max_waiting=0))
    running = asyncio.create_task(lines_at(http, share, GENERATE))
    await eventually(lambda: rig.fake.active == 1)
    async with http.post(share + "/api/chat", json=CHAT) as reply:
        assert (reply.status, await reply.json()) == (503, {"error": BUSY})
    async with http.post(share + "/v1/chat/completions", json=CHAT) as reply:
        assert reply.status == 503
        assert error_message("/v1/chat/completions", await reply.read()) == BUSY
    await running
    assert [r.path for r in rig.fake.requests] == ["/api/generate"]


async def test_a_peer_that_leaves_while_waiting_leaves_the_queue(
    rig: Rig, http: aiohttp.ClientSession
) -> None:
    rig.fake.tokens_per_second = 40.0
    admission = Admission(slots=1, max_remote=1)
    share = await rig.share(admission)
    running = asyncio.create_task(lines_at(http, share, GENERATE))
    await eventually(lambda: admission.active_remote == 1)
    leaving = asyncio.create_task(lines_at(http, share, GENERATE))
    await eventually(lambda: admission.waiting_remote == 1)
    leaving.cancel()
    await eventually(lambda: admission.waiting_remote == 0)
    await running
    assert (admission.active_remote, admission.waiting_remote) == (0, 0)
    assert [r.path for r in rig.fake.requests] == ["/api/generate"]


@pytest.mark.parametrize(
    ("address", "lan"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.254", True),
        ("192.168.1.20", True),
        ("169.254.10.20", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("fc00::1", True),
        ("fd12:3456:789a::1", True),
        ("fe80::1", True),
        ("fe80::1%eth0", True),
        ("::1", True),
        ("::ffff:192.168.1.2", True),
        ("::ffff:127.0.0.1", True),
        ("8.8.8.8", False),
        ("172.32.0.1", False),
        ("192.169.0.1", False),
        ("100.64.0.1", True),
        ("100.128.0.1", False),
        ("198.18.0.11", True),
        ("198.20.0.1", False),
        ("2001:4860:4860::8888", False),
        ("::ffff:8.8.8.8", False),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        (None, False),
        ("not an address", False),
    ],
)
def test_only_lan_addresses_are_served(address: str | None, lan: bool) -> None:
    assert is_lan_address(address) is lan


async def test_a_source_outside_the_lan_is_refused(
    rig: Rig, share: str, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str | None] = []

    def nowhere_near(address: str | None) -> bool:
        seen.append(address)
        return False

    monkeypatch.setattr(share_module, "is_lan_address", nowhere_near)
    message = "InferHub shares only with machines on the local network"
    async with http.get(share + STATUS_PATH) as reply:
        assert (reply.status, await reply.json()) == (403, {"error": message})
    async with http.post(share + "/v1/chat/completions", json=CHAT) as reply:
        assert reply.status == 403
        assert error_message("/v1/chat/completions", await reply.read()) == message
    assert seen == ["127.0.0.1", "127.0.0.1"]
    assert rig.fake.requests == []


async def test_a_request_that_loops_back_to_this_node_is_stopped(
    rig: Rig, share: str, http: aiohttp.ClientSession
) -> None:
    headers = {"X-InferHub-Via": f"a-peer,{rig.settings.node_id}"}
    async with http.post(share + "/api/generate", json=GENERATE, headers=headers) as reply:
        assert reply.status == 508
        assert "request loop" in (await reply.json())["error"]
    assert rig.fake.requests == []


async def test_bodies_over_the_limit_get_413(rig: Rig, http: aiohttp.ClientSession) -> None:
    rig.settings = dataclasses.replace(rig.settings, max_body_mib=1)
    share = await rig.share()
    big = json.dumps({"model": "llama3", "prompt": "x" * (1024 * 1024)}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    async with http.post(share + "/api/generate", data=chunks()) as reply:
        assert reply.status == 413
        assert "1 MiB limit" in (await reply.json())["error"]
    assert rig.fake.requests == []


async def test_an_unreachable_backend_is_a_502(
    rig: Rig, http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    gone = OllamaBackend(f"http://127.0.0.1:{unused_tcp_port}", connect_timeout_s=5.0)
    share = await rig.share(backend=lambda: gone)
    async with http.post(share + "/api/chat", json=CHAT) as reply:
        assert reply.status == 502
        assert "connection refused" in (await reply.json())["error"]


async def test_an_internal_fault_is_a_500_without_a_traceback(
    rig: Rig, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Backend:
        raise RuntimeError("secret detail")

    share = await rig.share(backend=broken)
    async with http.post(share + "/api/generate", json=GENERATE) as reply:
        assert reply.status == 500
        body = await reply.text()
    assert json.loads(body) == {"error": "internal error in the InferHub node; see its log"}
    assert "secret detail" in caplog.text
