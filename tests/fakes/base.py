"""What every fake server shares: a real aiohttp server on a free port and its lifecycle, the requests it
received, the faults a test injects and their consumption, a pacer for token streams, and a writer that
sends a streamed reply chunk by chunk and fires a fault before the chunk it names."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

Json = dict[str, Any]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as a fake received it; `json` is its parsed body, None when that is not JSON (blob
    uploads are recorded with an empty body)."""

    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    json: Any = None


@dataclass
class Fault:
    """An injected fault and how many more requests it applies to."""

    remaining: int
    # The paths (or route patterns, such as `/v1/models/{model}`) it applies to; None for any.
    paths: frozenset[str] | None
    status: int = 500
    message: str = ""
    # For a fault in a stream: how many of its units (frames, tokens) go out first.
    after: int = 0
    # Cut the TCP connection instead of answering an error.
    drop: bool = False

    def matches(self, request: web.Request) -> bool:
        return self.paths is None or request.path in self.paths or _route(request) in self.paths


class Faults:
    """Faults waiting for the requests they apply to, the first that applies used first."""

    def __init__(self) -> None:
        self._waiting: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self._waiting.append(fault)

    def take(self, request: web.Request) -> Fault | None:
        """Consume one use of the first fault that applies to the request."""
        fault = next((fault for fault in self._waiting if fault.matches(request)), None)
        if fault is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._waiting.remove(fault)
        return fault


def paths_of(paths: Iterable[str] | None, default: Iterable[str] | None = None) -> frozenset[str] | None:
    """Freeze a fault's path filter: the paths given, else the default (None: any path)."""
    chosen = paths if paths is not None else default
    return None if chosen is None else frozenset(chosen)


class Pacer:
    """Release events on a fixed schedule: event i (from 1) at start + i / rate."""

    def __init__(self, rate: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._start = self._loop.time()
        self._ticks = 0

    async def wait(self) -> None:
        """Sleep until the next event is due."""
        self._ticks += 1
        await asyncio.sleep(max(0.0, self._start + self._ticks * self._interval - self._loop.time()))


class StreamWriter:
    """Write one streamed reply, each piece as its own chunk; `due` says when the injected fault fires."""

    def __init__(self, request: web.Request, headers: dict[str, str], fault: Fault | None) -> None:
        self.response = web.StreamResponse(headers=headers)
        self.request = request
        self.fault = fault
        # The units (frames, tokens) sent so far, as the fault counts them.
        self.sent = 0

    @property
    def due(self) -> Fault | None:
        """Return the fault if it fires before the next unit."""
        return self.fault if self.fault is not None and self.sent == self.fault.after else None

    async def write(self, data: bytes) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)
        await self.response.write(data)

    def drop(self) -> None:
        """Cut the connection, as a server that died does."""
        if self.request.transport is not None:
            self.request.transport.abort()

    async def finish(self) -> None:
        """End the reply (headers first, if nothing went out yet)."""
        if not self.response.prepared:
            await self.response.prepare(self.request)
        await self.response.write_eof()


class FakeServer:
    """A fake's server: bound by `start()` (or `async with`) on `host:port` (0: any free port), recording
    every request, counting those in hand and those whose client left, and holding injected faults."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.active = 0  # requests being handled, waiting ones included
        self.cancelled = 0  # requests whose client went away before the reply ended
        # Faults for the next requests, before any byte; and for the next streams, midway.
        self.failures = Faults()
        self.stream_faults = Faults()
        self.closing = False
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve; `port` and `url` are valid afterwards."""
        self.closing = False
        app = web.Application(client_max_size=1 << 30, middlewares=[self._middleware])
        self.build(app)
        # handler_cancellation makes a disconnecting client cancel its handler, which `cancelled` counts.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        url_host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{url_host}:{self.port}"
        await self.started(runner.addresses[0][0])

    async def close(self) -> None:
        """Stop serving; safe to call twice."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        self.closing = True
        self.closed()
        await runner.cleanup()

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- what each fake fills in ---------------------------------------------------------------------

    def build(self, app: web.Application) -> None:
        """Add the fake's routes (and any signal handlers) to its application."""
        raise NotImplementedError

    async def started(self, bound_host: str) -> None:
        """Called once the server listens on `bound_host`."""

    def closed(self) -> None:
        """Called as the server stops, before in-flight requests are cut."""

    async def dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer a recorded request: the fake's gatekeeping, faults and error shapes around `handler`."""
        raise NotImplementedError

    def ended(self, request: web.Request) -> None:
        """Called when a request's handling ends, however it ended."""

    def unread(self, request: web.Request) -> bool:
        """Tell whether a request's body streams through unread (a blob upload): it is recorded empty."""
        return False

    # -- plumbing ------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.active += 1
        try:
            await self._record(request)
            return await self.dispatch(request, handler)
        except asyncio.CancelledError:
            if not self.closing:
                self.cancelled += 1
            raise
        except ConnectionResetError:
            if not self.closing:
                self.cancelled += 1
            return web.Response()  # the client is gone: nothing of this will be sent
        finally:
            self.ended(request)
            self.active -= 1

    async def _record(self, request: web.Request) -> None:
        body = b"" if self.unread(request) else await request.read()
        try:
            parsed = json.loads(body) if body else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            parsed = None
        self.requests.append(
            RecordedRequest(
                request.method, request.path, request.query_string, dict(request.headers), body, parsed
            )
        )


def dumps(obj: Any) -> str:
    """Encode JSON compactly, as Go and the OpenAI-compatible servers do."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def embedding(text: str, dim: int, dimensions: int) -> list[float]:
    """Return a deterministic unit vector for the text, truncated to `dimensions` when smaller."""
    raw = hashlib.shake_256(text.encode()).digest(2 * dim)
    vector = [int.from_bytes(raw[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, 2 * dim, 2)]
    if 0 < dimensions < dim:
        vector = vector[:dimensions]
    norm = max(math.sqrt(sum(value * value for value in vector)), 1e-12)
    return [round(value / norm, 7) for value in vector]


def base64_floats(vector: Sequence[float]) -> str:
    """Encode floats as little-endian float32, base64, as OpenAI's encoding_format=base64 asks."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _route(request: web.Request) -> str | None:
    """Return the matched route's pattern (`/v1/models/{model}`), or None for 404/405."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical
