"""Where the APIs listen: for the share API, a TCP site that holds a bounded number of connections, in all
and from any one address, so no host of the LAN can take the node's file descriptors (desktops often allow
1,024) and with them its local API; for either, what holds a port the node could not listen on."""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from ..peers import url_host
from ..wire.headers import NODE_HEADER

_log = logging.getLogger(__name__)

# Connections one address may hold at once: a peer keeps a few alive and opens one per request it runs.
PER_ADDRESS = 64
# The most connections in all: a quarter of the descriptors the process may open, at most this many.
_MOST = 512
# A TLS handshake that has not finished this soon is a client holding a connection for nothing.
HANDSHAKE_TIMEOUT_S = 10.0


# How long the owner of a taken port is given to say who it is.
_PROBE_S = 1.0


async def who_holds(host: str, port: int) -> str:
    """Say what answers on a port this node could not listen on: another InferHub (by name), a program
    answering as Ollama, another web server, or a program that does not speak plain HTTP there."""
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_PROBE_S)) as http,
            http.get(f"http://{url_host(probe)}:{port}/") as reply,
        ):
            node, server = reply.headers.get(NODE_HEADER), reply.headers.get("Server", "")
            text = (await reply.content.read(200)).decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError, OSError):
        return "another program (one that does not answer plain HTTP there, such as a private pool's node)"
    if node:
        return f"another InferHub node ({unquote(node)!r})"
    if text.startswith("Ollama is running"):
        return "a program answering as Ollama (Ollama itself, or another router such as Ollama Herd)"
    return f"another web server{f' ({server})' if server else ''}"


def connection_budget() -> int:
    """Return how many connections the share API may hold at once, well below the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(_MOST, soft // 4)) if soft != resource.RLIM_INFINITY else _MOST


class ConnectionLimits:
    """Count the connections held, in all and by source address; refuse those over either bound."""

    def __init__(self, total: int, per_address: int = PER_ADDRESS) -> None:
        self.total = total
        self.per_address = per_address
        self.held: Counter[str] = Counter()
        self._refusals_logged: set[str] = set()

    def admit(self, address: str) -> bool:
        if sum(self.held.values()) >= self.total or self.held[address] >= self.per_address:
            if address not in self._refusals_logged:
                self._refusals_logged.add(address)
                _log.warning(
                    "refused connections from %s: over %d from it or %d in all",
                    address,
                    self.per_address,
                    self.total,
                )
            return False
        self.held[address] += 1
        return True

    def release(self, address: str) -> None:
        self.held[address] -= 1
        if self.held[address] <= 0:
            del self.held[address]
            self._refusals_logged.discard(address)


class _Guarded(asyncio.Protocol):
    """A connection admitted within the limits, handed to aiohttp's handler; or closed at once."""

    def __init__(self, handler: Callable[[], asyncio.Protocol], limits: ConnectionLimits) -> None:
        self._make_handler = handler
        self._limits = limits
        self._handler: asyncio.Protocol | None = None
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if peer else ""
        if not self._limits.admit(self._address):
            transport.close()
            return
        self._handler = self._make_handler()
        self._handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handler is not None:
            self._limits.release(self._address)
            self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received() if self._handler is not None else None

    def pause_writing(self) -> None:
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._handler is not None:
            self._handler.resume_writing()


class LimitedSite(web.TCPSite):
    """aiohttp's TCP site, holding connections within `limits` and TLS handshakes within a deadline."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        limits: ConnectionLimits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self.limits = limits

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server: Any = self._runner.server
        assert server is not None
        tls = self._ssl_context
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(server, self.limits),
            self._host,
            self._port,
            ssl=tls,
            backlog=self._backlog,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if tls else None,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
