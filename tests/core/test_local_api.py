"""What the node adds to, and guards on, Ollama's API: relaying, limits, errors and the browser rules."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from inferhub_desktop.core import Node, PortTaken
from inferhub_desktop.core.api.guard import OriginPolicy
from inferhub_desktop.core.api.local import LocalApi
from inferhub_desktop.core.api.relay import Forwarder, Plan, Query
from tests.fakes.ollama import FakeOllama
from tests.support import Alone, OneWay, eventually, node_settings


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama(["llama3:latest"], loaded=["llama3:latest"], tokens_per_second=200.0) as server:
        yield server


@pytest.fixture
async def node(fake: FakeOllama, tmp_path: Path) -> AsyncIterator[Node]:
    async with Node(node_settings(tmp_path, fake.url), environ={}) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def lines_with_times(response: aiohttp.ClientResponse) -> list[tuple[float, bytes]]:
    """Read an NDJSON body line by line, noting when each line arrived."""
    return [(time.monotonic(), line) async for line in response.content]


GENERATE = {"model": "llama3", "prompt": "hello there", "options": {"num_predict": 20}}


async def test_every_response_names_the_node(node: Node, http: aiohttp.ClientSession) -> None:
    for method, path in [("GET", "/"), ("GET", "/api/tags"), ("GET", "/nowhere"), ("PUT", "/api/tags")]:
        async with http.request(method, node.api_url + path) as reply:
            assert reply.headers["X-InferHub-Node"] == "test-node", path


async def test_the_clients_host_and_origin_are_not_sent_upstream(
    node: Node, fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    headers = {
        "Host": "localhost:11435",
        "Origin": "http://localhost:3000",
        "Authorization": "Bearer ollama",
        "User-Agent": "ollama-python/0.6.3 (x86_64 linux) Python/3.11.7",
        "X-OpenWebUI-User-Name": "ada",
    }
    async with http.get(node.api_url + "/api/tags", headers=headers) as reply:
        assert reply.status == 200
        assert reply.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    seen = fake.requests[-1].headers
    assert seen["Host"] == f"127.0.0.1:{fake.port}"
    assert "Origin" not in seen
    assert seen["Authorization"] == "Bearer ollama"
    assert seen["User-Agent"] == headers["User-Agent"]
    assert seen["X-OpenWebUI-User-Name"] == "ada"


async def test_stream_lines_are_forwarded_one_for_one_as_they_are_made(
    node: Node, fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    fake.tokens_per_second = 40.0  # 20 tokens take about half a second
    async with http.post(node.api_url + "/api/generate", json=GENERATE) as reply:
        assert reply.headers["Content-Type"] == "application/x-ndjson"
        received = await lines_with_times(reply)
    async with http.post(fake.url + "/api/generate", json=GENERATE) as reply:
        direct = [line async for line in reply.content]
    assert len(received) == len(direct) == 21
    assert all(line.endswith(b"\n") and json.loads(line) for _, line in received)
    # Lines arrive spread over the generation, not in one burst at its end.
    assert received[-1][0] - received[0][0] > 0.3


async def test_a_backend_that_breaks_mid_stream_ends_the_stream_with_an_error_line(
    node: Node, fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    fake.drop_after(3)
    async with http.post(node.api_url + "/api/generate", json=GENERATE) as reply:
        assert reply.status == 200
        lines = [json.loads(line) async for line in reply.content]
    assert len(lines) == 4
    assert not any(line.get("done") for line in lines)
    assert "broke off its reply" in lines[-1]["error"]
    assert fake.url in lines[-1]["error"]
    async with http.get(node.api_url + "/api/tags") as reply:
        assert reply.status == 200  # the node carries on


async def test_an_openai_stream_that_breaks_ends_with_an_sse_error_event(
    node: Node, fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    fake.drop_after(2)
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with http.post(node.api_url + "/v1/chat/completions", json=body) as reply:
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        text = (await reply.read()).decode()
    events = [e for e in text.split("\n\n") if e]
    assert len(events) == 3
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["type"] == "api_error"
    assert "broke off its reply" in last["error"]["message"]


async def test_a_client_that_leaves_cancels_the_upstream_request(
    node: Node, fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    fake.tokens_per_second = 10.0
    async with http.post(node.api_url + "/api/generate", json=GENERATE) as reply:
        await reply.content.readline()
    await eventually(lambda: fake.cancelled == 1 and fake.active == 0)


async def test_an_unreachable_backend_is_a_502_that_says_what_to_do(
    tmp_path: Path, http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    backend = f"http://127.0.0.1:{unused_tcp_port}"
    async with Node(node_settings(tmp_path, backend), environ={}) as node:
        async with http.post(node.api_url + "/api/chat", json={"model": "llama3", "messages": []}) as reply:
            assert reply.status == 502
            message = (await reply.json())["error"]
        async with http.get(node.api_url + "/v1/models") as reply:
            assert reply.status == 502
            assert (await reply.json())["error"]["type"] == "api_error"
    assert backend in message
    assert "connection refused" in message
    assert "--backend" in message


async def test_bodies_over_the_limit_get_413_and_blobs_stream_past_it(
    fake: FakeOllama, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    big = json.dumps({"model": "llama3", "prompt": "x" * (1024 * 1024)}).encode()

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    async with Node(node_settings(tmp_path, fake.url, max_body_mib=1), environ={}) as node:
        # Refused by its declared length before it is read, and by counting when it is chunked.
        declared = {"Content-Length": str(len(big))}
        async with http.post(node.api_url + "/api/generate", data=body(), headers=declared) as reply:
            assert reply.status == 413
            assert "1 MiB limit" in (await reply.json())["error"]
        async with http.post(node.api_url + "/v1/chat/completions", data=body()) as reply:
            assert reply.status == 413
            assert "1 MiB limit" in (await reply.json())["error"]["message"]

        blob = bytes(range(256)) * 12 * 1024  # 3 MiB
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()

        async def blob_body() -> AsyncIterator[bytes]:
            for start in range(0, len(blob), 65536):
                yield blob[start : start + 65536]

        async with http.post(f"{node.api_url}/api/blobs/{digest}", data=blob_body()) as reply:
            assert reply.status == 201
        async with http.head(f"{node.api_url}/api/blobs/{digest}") as reply:
            assert reply.status == 200
    assert sum(1 for r in fake.requests if r.path == "/api/generate") == 0


async def test_large_bodies_within_the_limit_are_relayed_whole(
    node: Node, fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    image = "A" * (3 * 1024 * 1024)  # a base64 image bigger than aiohttp's 1 MiB default

    async def body() -> AsyncIterator[bytes]:
        yield json.dumps({**GENERATE, "images": [image], "stream": False}).encode()

    async with http.post(node.api_url + "/api/generate", data=body()) as reply:
        assert reply.status == 200
        assert (await reply.json())["done"] is True
    assert json.loads(fake.requests[-1].body)["images"] == [image]


async def test_paths_and_methods_are_answered_as_ollama_answers_them(
    node: Node, fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    async with http.get(node.api_url + "/favicon.ico") as reply:
        assert (reply.status, await reply.text()) == (404, "404 page not found")
    async with http.delete(node.api_url + "/api/generate") as reply:
        assert (reply.status, await reply.text()) == (405, "405 method not allowed")
    # Paths under /api/ this version does not know reach the backend, which answers them.
    async with http.get(node.api_url + "/api/some-future-endpoint?x=1") as reply:
        assert reply.status == 404
    assert (fake.requests[-1].path, fake.requests[-1].query_string) == ("/api/some-future-endpoint", "x=1")


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:11435", 200),
        ("127.0.0.1", 200),
        ("10.1.2.3:80", 200),
        ("box.local", 200),
        ("evil.example", 403),
        ("8.8.8.8", 403),
    ],
)
async def test_host_check(node: Node, http: aiohttp.ClientSession, host: str, status: int) -> None:
    async with http.get(node.api_url + "/", headers={"Host": host}) as reply:
        assert reply.status == status


async def test_cors_preflight_and_ollama_origins(
    fake: FakeOllama, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    environ = {"OLLAMA_ORIGINS": "https://app.example,https://*.corp.example"}
    async with Node(node_settings(tmp_path, fake.url), environ=environ) as node:
        preflight = {"Origin": "https://chat.corp.example", "Access-Control-Request-Method": "POST"}
        async with http.options(node.api_url + "/api/chat", headers=preflight) as reply:
            assert reply.status == 204
            assert reply.headers["Access-Control-Allow-Origin"] == "https://chat.corp.example"
            assert "POST" in reply.headers["Access-Control-Allow-Methods"]
            assert "X-Stainless-Os" in reply.headers["Access-Control-Allow-Headers"]
            assert reply.headers["Access-Control-Max-Age"] == "43200"
        for origin, status in [
            ("https://app.example", 200),
            ("vscode-webview://abc", 200),
            ("https://app.example.evil", 403),
            ("null", 403),
        ]:
            async with http.get(node.api_url + "/api/version", headers={"Origin": origin}) as reply:
                assert reply.status == status, origin
        # A same-origin request carries an Origin too, and is no CORS request.
        same = {"Origin": f"http://127.0.0.1:{node.api_port}"}
        async with http.get(node.api_url + "/api/version", headers=same) as reply:
            assert reply.status == 200


async def test_a_request_that_loops_back_to_this_node_is_stopped(
    node: Node, http: aiohttp.ClientSession
) -> None:
    headers = {"X-InferHub-Via": f"some-other-node,{node.settings.node_id}"}
    async with http.post(node.api_url + "/api/generate", json=GENERATE, headers=headers) as reply:
        assert reply.status == 508
        assert "request loop" in (await reply.json())["error"]


async def test_bad_bodies_are_400_in_each_apis_shape(node: Node, http: aiohttp.ClientSession) -> None:
    async with http.post(node.api_url + "/api/chat", data=b"") as reply:
        assert (reply.status, await reply.json()) == (400, {"error": "missing request body"})
    async with http.post(node.api_url + "/api/generate", json={"model": 3}) as reply:
        assert reply.status == 400
        assert "GenerateRequest.model of type string" in (await reply.json())["error"]
    async with http.post(node.api_url + "/v1/embeddings", data=b"[]") as reply:
        error = (await reply.json())["error"]
    assert error == {
        "message": "json: cannot unmarshal array into Go value of type openai.EmbedRequest",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_an_internal_fault_is_a_500_without_a_traceback(
    fake: FakeOllama, tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_planner(query: Query) -> Plan:
        raise RuntimeError("secret detail")

    settings = node_settings(tmp_path, fake.url).settings
    forwarder = Forwarder(
        settings,
        OneWay(broken_planner),
        "local",
        status=Node(node_settings(tmp_path, fake.url)).status,
        metrics=lambda: (b"", "text/plain"),
    )
    api = LocalApi(forwarder, OriginPolicy({}), Alone(), Alone(), "token")
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with http.post(f"http://127.0.0.1:{port}/api/generate", json=GENERATE) as reply:
            assert reply.status == 500
            body = await reply.text()
    finally:
        await runner.cleanup()
    assert json.loads(body) == {"error": "internal error in the InferHub node; see its log"}
    assert "secret detail" in caplog.text


async def test_close_lets_a_running_stream_finish(
    node: Node, fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    fake.tokens_per_second = 40.0
    async with http.post(node.api_url + "/api/generate", json=GENERATE) as reply:
        first = await reply.content.readline()
        closing = asyncio.create_task(node.close())
        rest = [line async for line in reply.content]
    await closing
    assert json.loads(first)["done"] is False
    assert json.loads(rest[-1])["done"] is True


async def test_a_client_expecting_100_continue_is_answered_by_the_node(
    node: Node, fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    body = json.dumps({**GENERATE, "stream": False}).encode()
    async with http.post(node.api_url + "/api/generate", data=body, expect100=True) as reply:
        assert reply.status == 200
        assert (await reply.json())["done"] is True
    assert "Expect" not in fake.requests[-1].headers


async def test_a_web_page_may_pin_a_node_and_read_which_answered(
    node: Node, http: aiohttp.ClientSession
) -> None:
    page = "http://localhost:3000"
    preflight = {"Origin": page, "Access-Control-Request-Method": "POST"}
    async with http.options(node.api_url + "/api/chat", headers=preflight) as reply:
        allowed = {h.strip().lower() for h in reply.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"x-inferhub-node", "x-inferhub-priority", "x-request-id", "traceparent"} <= allowed
    async with http.get(node.api_url + "/api/version", headers={"Origin": page}) as reply:
        assert reply.status == 200
        exposed = {h.strip().lower() for h in reply.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-inferhub-node", "x-request-id"} <= exposed


async def test_head_says_the_length_a_get_would_send(node: Node, http: aiohttp.ClientSession) -> None:
    async with http.get(node.api_url + "/api/version") as reply:
        body = await reply.read()
    async with http.head(node.api_url + "/api/version") as reply:
        assert reply.status == 200
        assert reply.headers["Content-Length"] == str(len(body))
        assert await reply.read() == b""


async def test_a_body_over_the_limit_is_refused_before_it_is_sent(fake: FakeOllama, tmp_path: Path) -> None:
    async with Node(node_settings(tmp_path, fake.url, max_body_mib=1), environ={}) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.api_port)
        writer.write(
            b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 5000000\r\n\r\n"
        )
        await writer.drain()
        # The answer comes without a byte of the body sent: no "100 Continue" first.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 413 "), head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = json.loads(await reader.readexactly(length))
        assert "larger than the 1 MiB limit" in body["error"]
        writer.close()
        # Within the limit, the client is told to go on.
        reader, writer = await asyncio.open_connection("127.0.0.1", node.api_port)
        writer.write(
            b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n"
        )
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.close()
        # Blob uploads, which `curl -T` sends expecting 100 Continue, have no limit.
        reader, writer = await asyncio.open_connection("127.0.0.1", node.api_port)
        writer.write(
            b"POST /api/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\nHost: localhost\r\n"
            b"Expect: 100-continue\r\nContent-Length: 5000000\r\n\r\n"
        )
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.close()


async def test_a_taken_port_is_named_with_what_holds_it_and_the_setting_to_change(
    fake: FakeOllama, tmp_path: Path
) -> None:
    async with Node(node_settings(tmp_path / "first", fake.url, name="first"), environ={}) as first:
        second = Node(node_settings(tmp_path / "second", fake.url, share_port=first.share_port), environ={})
        with pytest.raises(PortTaken) as taken:
            await second.start()
        said = str(taken.value)
        assert said.startswith(
            f"cannot listen for the share API on 127.0.0.1:{first.share_port}: another InferHub node "
            "('first') holds that port. Stop it, or choose another port with --share-port (share_port in "
        ), said
        # A port another Ollama (here, a fake) holds, for the local API.
        async with FakeOllama() as other:
            taken_port = int(other.url.rsplit(":", 1)[1])
            third = Node(node_settings(tmp_path / "third", fake.url, api_port=taken_port), environ={})
            with pytest.raises(
                PortTaken, match=r"local API on 127\.0\.0\.1:\d+: a program answering as Ollama"
            ):
                await third.start()


async def test_health_is_ok_while_this_machines_backend_answers(
    node: Node, http: aiohttp.ClientSession
) -> None:
    async with http.get(node.api_url + "/health") as reply:
        assert reply.status == 200
        assert await reply.json() == {"status": "ok", "node": "test-node", "reasons": [], "serving": []}
    async with http.head(node.api_url + "/health") as reply:
        assert reply.status == 200
