"""The relay's HTTP/1.1 client against a raw server that answers in the byte-exact forms HTTP allows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import StreamReader, web
from aiohttp.test_utils import TestClient, TestServer

from inferhub_desktop.core.backends.http1 import Http1Client, HttpError

# What the server sends for each request on a connection, in order; a connection ends after its list.
Script = list[bytes]


@dataclass
class RawServer:
    """A TCP server that records each request's head and body and answers with scripted bytes."""

    scripts: list[Script]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script = self.scripts[min(self.connections, len(self.scripts) - 1)]
        self.connections += 1
        try:
            for reply in script:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                if b"transfer-encoding: chunked" in head.lower():
                    body = await reader.readuntil(b"0\r\n\r\n")
                self.requests.append(head + body)
                writer.write(reply)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future[RawServer]]]:
    servers: list[asyncio.Server] = []

    async def start(*scripts: Script) -> RawServer:
        raw = RawServer(list(scripts))
        raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        servers.append(raw.server)
        return raw

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()
        await server.wait_closed()


async def fetch(
    client: Http1Client, method: str = "GET", body: bytes | StreamReader | None = None
) -> tuple[int, bytes]:
    connection, response = await client.request(method, "/api/x?q=1", {"User-Agent": "t"}, body)
    try:
        return response.status, await response.read()
    finally:
        client.release(connection, response)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


async def test_replies_of_every_framing_and_connection_reuse(
    serve: Callable[..., asyncio.Future[RawServer]],
) -> None:
    raw = await serve(
        [OK, CHUNKED, b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"HTTP/1.1 204 No Content\r\n\r\n", OK]
    )
    client = Http1Client(raw.url, connect_timeout_s=5)
    assert await fetch(client) == (200, b"hello")
    assert await fetch(client) == (200, b"abcde")
    assert await fetch(client, "POST", b'{"model":"m"}') == (200, b"hello")
    assert await fetch(client, "DELETE") == (204, b"")
    assert await fetch(client, "HEAD") == (200, b"")
    client.close()
    assert raw.connections == 1  # all five on one kept-alive connection
    first, _, third, _, fifth = raw.requests
    assert first.startswith(b"GET /api/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"User-Agent: t\r\n" in first
    assert third.endswith(b'Content-Length: 13\r\n\r\n{"model":"m"}')
    assert fifth.startswith(b"HEAD ")


async def test_a_reply_without_length_runs_to_the_end_and_is_not_reused(
    serve: Callable[..., asyncio.Future[RawServer]],
) -> None:
    raw = await serve([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"], [OK])
    client = Http1Client(raw.url, connect_timeout_s=5)
    assert await fetch(client) == (200, b"all of it")
    assert await fetch(client) == (200, b"hello")
    client.close()
    assert raw.connections == 2


async def test_a_kept_alive_connection_the_server_dropped_is_replaced(
    serve: Callable[..., asyncio.Future[RawServer]],
) -> None:
    # The first connection answers once and is then closed by the server, as a restarting backend does.
    raw = await serve([OK], [OK])
    client = Http1Client(raw.url, connect_timeout_s=5)
    assert await fetch(client) == (200, b"hello")
    await asyncio.sleep(0.05)
    assert await fetch(client, "POST", b"{}") == (200, b"hello")
    client.close()
    assert raw.connections == 2


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"SMTP ready\r\n\r\n", "did not answer in HTTP/1.1"),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", "short of its length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid literal"),
    ],
)
async def test_what_is_not_http_is_an_error(
    serve: Callable[..., asyncio.Future[RawServer]], reply: bytes, message: str
) -> None:
    raw = await serve([reply])
    client = Http1Client(raw.url, connect_timeout_s=5)
    with pytest.raises(HttpError, match=message):
        await fetch(client)
    client.close()


async def test_nothing_listening_is_connection_refused(unused_tcp_port: int) -> None:
    client = Http1Client(f"http://127.0.0.1:{unused_tcp_port}", connect_timeout_s=5)
    with pytest.raises(HttpError, match="connection refused"):
        await fetch(client)


@pytest.mark.parametrize("declared", [True, False])
async def test_a_streamed_body_arrives_whole(declared: bool) -> None:
    """A blob upload is forwarded as it is read, with its length when the client gave one, else chunked."""
    received: list[bytes] = []

    async def upstream(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=201)

    async def relay(request: web.Request) -> web.Response:
        headers = {"Content-Length": str(request.content_length)} if declared else {}
        connection, response = await client.request("POST", "/blob", headers, request.content)
        await response.read()
        http1.release(connection, response)
        return web.Response(status=response.status)

    backend = web.Application()
    backend.router.add_post("/blob", upstream)
    async with TestServer(backend, host="127.0.0.1") as backend_server:
        http1 = client = Http1Client(str(backend_server.make_url("")), connect_timeout_s=5)
        front = web.Application()
        front.router.add_post("/blob", relay)
        async with TestClient(TestServer(front, host="127.0.0.1")) as front_client:
            data = bytes(range(256)) * 4096

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(data), 65536):
                    yield data[start : start + 65536]

            reply = await front_client.post(
                "/blob", data=chunks(), headers={"Content-Length": str(len(data))} if declared else {}
            )
            assert reply.status == 201
        client.close()
    assert received == [data]
