"""A faithful fake of Ollama's HTTP API, for tests and benchmarks.

It serves the endpoints in shared/OLLAMA_API.md with Ollama's paths, methods, content types, status
codes, error bodies and stream framing, and exposes knobs that shape timing, limit concurrency like
Ollama's scheduler and inject faults. Behaviour follows Ollama's server/routes.go, server/sched.go and
middleware/openai.go; run it as its own process with ``python -m tests.fakes.ollama --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import hashlib
import ipaddress
import json
import math
import random
import re
import socket
import struct
import sys
import time
import zlib
from collections.abc import AsyncGenerator, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from tests.fakes import serve_until_stopped

Json = dict[str, Any]

JSON_UTF8 = "application/json; charset=utf-8"  # gin's c.JSON
JSON_PLAIN = "application/json"  # set explicitly by Ollama's stream helpers and the /v1 writers
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"

DEFAULT_KEEP_ALIVE_S = 300.0  # OLLAMA_KEEP_ALIVE's default
FOREVER_S = (2**63 - 1) / 1e9  # a negative keep_alive becomes Go's longest time.Duration
CONTEXT_LENGTH = 4096
MODELS_DIR = "/usr/share/ollama/.ollama/models"  # only used to word "file not found" errors

_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"
_DEFAULT_TAG = "latest"
_INVALID_NAME = "invalid model name"
_SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"  # ErrMaxQueue, 2 spaces
# Architectures Ollama 0.12.10 loads with one slot whatever OLLAMA_NUM_PARALLEL says (an encoder cache).
_SERIAL_FAMILIES = frozenset({"mllama", "qwen3vl", "qwen3vlmoe"})
_HOST_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(f"(?:{_DURATION_PART.pattern})+")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "bool"),  # before int: bool is an int in Python
    (int, "number"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)
_THINK_LEVELS = ("high", "medium", "low", "max")
_THINK_CHOICES = '"high", "medium", "low", "max", true, or false'
_REASONING_EFFORTS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}
_VOCABULARY = (
    "the", "model", "answers", "with", "a", "short", "and", "deterministic", "reply", "about", "your",
    "prompt", "while", "tokens", "flow", "through", "proxy", "pool", "of", "machines", "on", "local",
    "network", "each", "word", "arrives", "in", "its", "own", "chunk", "quickly", "today",
)  # fmt: skip

_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(cidr) for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
_CORS_PATTERNS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
_CORS_HEADERS = (
    "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,Openai-Beta,X-Stainless-Arch,"
    "X-Stainless-Async,X-Stainless-Custom-Poll-Interval,X-Stainless-Helper-Method,X-Stainless-Lang,"
    "X-Stainless-Os,X-Stainless-Package-Version,X-Stainless-Poll-Helper,X-Stainless-Retry-Count,"
    "X-Stainless-Runtime,X-Stainless-Runtime-Version,X-Stainless-Timeout"
)
_PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
    "Access-Control-Allow-Headers": _CORS_HEADERS,
    "Access-Control-Max-Age": "43200",
}
_CORS_ORIGIN = web.RequestKey("cors_origin", str)
_HELD = web.RequestKey("held", contextlib.ExitStack)  # what a request lets go of when it ends

# Endpoints that fail_next() applies to by default: inference and reads, not liveness (/, /api/version).
_FAULTABLE = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/tags",
        "/api/show",
        "/api/ps",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
    }
)


class _ApiError(Exception):
    """An error reply worded like Ollama's, sent as the status when no byte has gone out yet."""

    def __init__(self, status: int, message: str, content_type: str = JSON_UTF8) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.content_type = content_type


@dataclass(frozen=True)
class _Name:
    """A model name split like Ollama's types/model.Name, with the defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, raw: str) -> _Name:
        """Parse `[host/][namespace/]model[:tag]`; raise ValueError when a part is empty or malformed."""
        rest, tag = raw.strip(), _DEFAULT_TAG
        if rest.rfind(":") > rest.rfind("/"):
            rest, _, tag = rest.rpartition(":")
        pieces = rest.rsplit("/", 2)
        host = pieces[0].split("://", 1)[-1] if len(pieces) == 3 else _DEFAULT_HOST
        namespace = pieces[-2] if len(pieces) >= 2 else _DEFAULT_NAMESPACE
        name = cls(host, namespace, pieces[-1], tag)
        parts = (
            (_HOST_PART, host),
            (_NAMESPACE_PART, namespace),
            (_MODEL_PART, name.model),
            (_MODEL_PART, tag),
        )
        if not all(pattern.fullmatch(part) for pattern, part in parts):
            raise ValueError(f"invalid model name: {raw!r}")
        return name

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Return the identity Ollama matches on: the full name, case-folded."""
        return str(self).lower()

    @property
    def short(self) -> str:
        """Return the shortest display form, as listings show it (`llama3:latest`, `user/m:tag`)."""
        if self.host.lower() != _DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != _DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def _local_now() -> datetime:
    """Return the current local time, offset included."""
    return datetime.now().astimezone()


@dataclass(frozen=True)
class FakeModel:
    """One model the fake has on disk; `name` is normalised to its shortest form on construction."""

    name: str
    size: int = 4_661_224_676
    family: str = "llama"
    parameter_size: str = "8.0B"
    quantization_level: str = "Q4_0"
    capabilities: tuple[str, ...] = ("completion", "tools")
    modified_at: datetime = field(default_factory=_local_now, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _Name.parse(self.name).short)
        object.__setattr__(self, "capabilities", tuple(self.capabilities))

    @property
    def ref(self) -> _Name:
        """Return the parsed name."""
        return _Name.parse(self.name)

    @property
    def digest(self) -> str:
        """Return the manifest digest (sha256 hex) that listings show, derived from the name."""
        return hashlib.sha256(self.ref.key.encode()).hexdigest()


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it (blob uploads are recorded with an empty body)."""

    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Fault:
    """An injected fault and how many more requests it applies to."""

    remaining: int
    paths: frozenset[str] | None
    status: int = 500
    message: str = ""
    drop: bool = False
    chunks: int = 0

    def matches(self, request: web.Request) -> bool:
        """Tell whether the fault applies to this request's path or route pattern."""
        return self.paths is None or request.path in self.paths or _route(request) in self.paths


@dataclass(frozen=True)
class _Framing:
    """How a streamed reply frames its objects: NDJSON natively, SSE on /v1."""

    content_type: str
    prefix: bytes
    suffix: bytes
    trailer: bytes
    error_lines: bool  # native streams report a late error as an {"error": ...} line; /v1 just stops

    def frame(self, obj: Json) -> bytes:
        """Encode one object as one frame."""
        return self.prefix + _dumps(obj).encode() + self.suffix


_NDJSON_FRAMING = _Framing(NDJSON, b"", b"\n", b"", error_lines=True)
_SSE_FRAMING = _Framing(EVENT_STREAM, b"data: ", b"\n\n", b"data: [DONE]\n\n", error_lines=False)


@dataclass(frozen=True)
class _NameErrors:
    """How one endpoint words errors for an empty, malformed or unknown model name.

    Templates may use {raw} (the name as sent), {q} (Go-quoted) and {short} (normalised).
    """

    empty: tuple[int, str]
    invalid: tuple[int, str]
    missing: tuple[int, str]


_GENERATE_NAMES = _NameErrors(
    (404, "model '{raw}' not found"), (400, _INVALID_NAME), (404, "model '{raw}' not found")
)
_CHAT_NAMES = _NameErrors((400, "model is required"), (400, _INVALID_NAME), (404, "model '{raw}' not found"))
_EMBED_NAMES = _NameErrors(
    (404, "model '{raw}' not found"), (400, _INVALID_NAME), (404, "model {q} not found, try pulling it first")
)
_EMBEDDINGS_NAMES = _NameErrors(
    (400, "model is required"), (400, _INVALID_NAME), (404, "model {q} not found, try pulling it first")
)
_SHOW_NAMES = _NameErrors(
    (400, "model is required"), (400, _INVALID_NAME), (404, "model '{short}' not found")
)
_DELETE_NAMES = _NameErrors(
    (400, "model is required"), (400, "name {q} is invalid"), (404, "model '{raw}' not found")
)


@dataclass(frozen=True)
class _Job:
    """A validated generate or chat request, ready to produce tokens."""

    chat: bool
    echo: str  # the request's `model`, echoed verbatim
    model: FakeModel
    prompt: str
    count: int
    done_reason: str
    think: bool
    context: bool  # generate without raw returns `context`
    keep_alive: float | None
    started_ns: int
    loaded_ns: int  # when the model was ready: load_duration, queueing for the load included
    running_ns: int  # when it got a slot: the wait for one counts in total_duration only, as in Ollama


@dataclass
class _Runner:
    """The requests using one loaded model: all of them keep it loaded; `running` ones hold its slots."""

    users: int = 0
    running: int = 0
    queue: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


@dataclass(frozen=True)
class _Reply:
    """What generate or chat produced: a token stream, or a single load/unload object."""

    objects: AsyncGenerator[Json, None]
    streamable: bool


class _Pacer:
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


class _StreamWriter:
    """Write one streamed reply, one chunk per frame, firing an injected fault before a frame."""

    def __init__(self, request: web.Request, framing: _Framing, fault: _Fault | None) -> None:
        self.response = web.StreamResponse(headers={hdrs.CONTENT_TYPE: framing.content_type})
        self._request = request
        self._framing = framing
        self._fault = fault
        self._sent = 0

    async def send(self, frame: bytes) -> bool:
        """Send one frame as its own chunk; return False once an injected drop cut the connection."""
        if self._fault is not None and self._sent == self._fault.chunks:
            if self._fault.drop:
                if self._request.transport is not None:
                    self._request.transport.abort()
                return False
            raise _ApiError(500, self._fault.message)
        if not self.response.prepared:
            await self.response.prepare(self._request)
        await self.response.write(frame)
        self._sent += 1
        return True

    async def fail(self, error: _ApiError) -> None:
        """Report an error: as the status before the first byte, else in-stream, then end."""
        if not self.response.prepared:
            # Ollama's streamResponse switches to a plain application/json error while nothing is written.
            raise _ApiError(error.status, error.message, JSON_PLAIN) from error
        if self._framing.error_lines:
            await self.response.write(self._framing.frame({"error": error.message}))
        await self.response.write_eof()


class FakeOllama:
    """An aiohttp server that speaks Ollama's HTTP API, with knobs for timing, scheduling and faults."""

    def __init__(
        self,
        models: Iterable[str | FakeModel] = ("llama3:latest",),
        *,
        loaded: Iterable[str] = (),
        registry: Iterable[str | FakeModel] = (),
        tokens_per_second: float = 500.0,
        load_delay_s: float = 0.0,
        num_parallel: int | None = None,
        max_loaded_models: int | None = None,
        max_queue: int = 512,
        version: str = "0.12.10",
        default_num_predict: int = 8,
        embedding_dim: int = 8,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.models: dict[str, FakeModel] = {m.name: m for m in map(_as_model, models)}
        self.registry: dict[str, FakeModel] = {m.name: m for m in map(_as_model, registry)}
        self.loaded: dict[str, datetime] = {}
        self.blobs: dict[str, int] = {}
        self.tokens_per_second = tokens_per_second
        self.load_delay_s = load_delay_s
        # Ollama's scheduler limits: OLLAMA_NUM_PARALLEL and OLLAMA_MAX_LOADED_MODELS (None or 0: no
        # limit), and OLLAMA_MAX_QUEUE, how many requests may queue for a load behind the one in hand.
        self.num_parallel = num_parallel
        self.max_loaded_models = max_loaded_models
        self.max_queue = max_queue
        self.version = version
        self.default_num_predict = default_num_predict
        self.embedding_dim = embedding_dim
        self.host = host
        self.port = port
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.cancelled = 0
        self.active = 0  # requests being handled, waiting ones included
        self._failures: list[_Fault] = []
        self._stream_faults: list[_Fault] = []
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._runners: dict[str, _Runner] = {}  # by model name, while some request uses the model
        self._scheduling = asyncio.Lock()  # Ollama's scheduler takes one pending load at a time, FIFO
        self._pending = 0  # requests queued for a load, the one in hand included
        self._waiting = 0
        self._freed = asyncio.Event()  # a model went idle or unloaded: a queued load may find room
        self._runner: web.AppRunner | None = None
        self._loopback = False
        self._local_ips: frozenset[str] = frozenset()
        self._closing = False
        for name in loaded:
            self._touch(self._require_known(name), None)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; `port` and `url` are valid afterwards."""
        self._closing = False
        app = web.Application(client_max_size=1 << 30, middlewares=[self._middleware])
        app.on_response_prepare.append(_add_cors_headers)
        app.add_routes(self._routes())
        # handler_cancellation makes a disconnecting client cancel its handler, which `cancelled` counts.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        bound_host, self.port = runner.addresses[0][:2]
        self.url = f"http://{_url_host(self.host)}:{self.port}"
        self._loopback = ipaddress.ip_address(bound_host).is_loopback
        self._local_ips = await _local_addresses()

    async def close(self) -> None:
        """Stop serving, letting in-flight requests finish briefly; safe to call twice."""
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        self._closing = True
        for task in self._loading.values():
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> FakeOllama:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def waiting(self) -> int:
        """Return how many requests wait for room to load a model, for its load, or for a slot."""
        return self._waiting

    # -- knobs -------------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        message: str = "llama runner process has terminated",
        count: int = 1,
        *,
        paths: Iterable[str] | None = None,
    ) -> None:
        """Make the next `count` inference/read requests (or those on `paths`) fail before any byte."""
        self._failures.append(_Fault(count, _paths(paths) or _FAULTABLE, status=status, message=message))

    def drop_after(self, chunks: int, count: int = 1, *, paths: Iterable[str] | None = None) -> None:
        """Make the next `count` streamed replies abort the TCP connection after `chunks` frames."""
        self._stream_faults.append(_Fault(count, _paths(paths), drop=True, chunks=chunks))

    def error_after(
        self,
        chunks: int,
        message: str = "an error was encountered while running the model",
        count: int = 1,
        *,
        paths: Iterable[str] | None = None,
    ) -> None:
        """Make the next `count` streamed replies report `message` after `chunks` frames and end."""
        self._stream_faults.append(_Fault(count, _paths(paths), message=message, chunks=chunks))

    # -- plumbing ----------------------------------------------------------------------------------

    def _routes(self) -> list[web.RouteDef]:
        """Return the route table, with Ollama's methods (HEAD only where gin registers it)."""
        return [
            web.get("/", _handle_root),
            web.get("/api/version", self._handle_version),
            web.post("/api/generate", self._handle_generate),
            web.post("/api/chat", self._handle_chat),
            web.post("/api/embed", self._handle_embed),
            web.post("/api/embeddings", self._handle_embeddings),
            web.get("/api/tags", self._handle_tags),
            web.post("/api/show", self._handle_show),
            web.get("/api/ps", self._handle_ps, allow_head=False),
            web.post("/api/pull", self._handle_pull),
            web.post("/api/push", self._handle_push),
            web.post("/api/create", self._handle_create),
            web.post("/api/copy", self._handle_copy),
            web.delete("/api/delete", self._handle_delete),
            web.head("/api/blobs/{digest}", self._handle_blob_head),
            web.post("/api/blobs/{digest}", self._handle_blob_post),
            web.post("/v1/chat/completions", self._handle_openai_chat),
            web.post("/v1/completions", self._handle_openai_completions),
            web.post("/v1/embeddings", self._handle_openai_embeddings),
            web.get("/v1/models", self._handle_openai_models, allow_head=False),
            web.get("/v1/models/{model}", self._handle_openai_model, allow_head=False),
        ]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record the request, apply Ollama's gatekeeping and faults, and word errors like Ollama."""
        self.active += 1
        try:
            with contextlib.ExitStack() as held:
                request[_HELD] = held
                await self._record(request)
                return await self._dispatch(request, handler)
        except asyncio.CancelledError:
            if not self._closing:
                self.cancelled += 1
            raise
        except ConnectionResetError:
            self.cancelled += 1
            return web.Response()  # the client is gone: nothing of this will be sent
        finally:
            self.active -= 1

    async def _record(self, request: web.Request) -> None:
        """Append the request to `requests`, reading its body unless it is a streamed blob upload."""
        streamed = request.method == hdrs.METH_POST and request.path.startswith("/api/blobs/")
        body = b"" if streamed else await request.read()
        headers = dict(request.headers)
        self.requests.append(
            RecordedRequest(request.method, request.path, request.query_string, headers, body)
        )

    async def _dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run the handler behind the CORS and Host checks, turning errors into Ollama's replies."""
        rejection = self._gatekeep(request)
        if rejection is not None:
            return rejection
        try:
            if (fault := _take(self._failures, request)) is not None:
                raise _ApiError(fault.status, fault.message)
            return await handler(request)
        except _ApiError as error:
            return _error_response(request.path, error)
        except web.HTTPMethodNotAllowed:
            return _plain(405, "405 method not allowed")
        except web.HTTPNotFound:
            return _plain(404, "404 page not found")

    def _gatekeep(self, request: web.Request) -> web.Response | None:
        """Apply gin-contrib/cors and Ollama's Host check; return the rejection or preflight reply."""
        host = request.headers.get(hdrs.HOST, "")
        origin = request.headers.get(hdrs.ORIGIN, "")
        if origin and origin not in (f"http://{host}", f"https://{host}"):
            if not _origin_allowed(origin):
                return web.Response(status=403)
            request[_CORS_ORIGIN] = origin
            if request.method == hdrs.METH_OPTIONS:
                return web.Response(status=204, headers=_PREFLIGHT_HEADERS)
        if not self._loopback:
            return None  # Ollama checks Host only when it listens on loopback
        verdict = _host_verdict(host, self._local_ips)
        if verdict == "deny":
            return web.Response(status=403)
        if verdict == "name" and request.method == hdrs.METH_OPTIONS:
            return web.Response(status=204)
        return None

    async def _stream(
        self, request: web.Request, framing: _Framing, objects: AsyncGenerator[Json, None]
    ) -> web.StreamResponse:
        """Stream `objects`, each frame written separately so it leaves as its own chunk."""
        writer = _StreamWriter(request, framing, _take(self._stream_faults, request))
        async with contextlib.aclosing(objects):
            try:
                async for obj in objects:
                    if not await writer.send(framing.frame(obj)):
                        return writer.response
                if framing.trailer and not await writer.send(framing.trailer):
                    return writer.response
            except _ApiError as error:
                await writer.fail(error)
                return writer.response
        await writer.response.write_eof()
        return writer.response

    # -- model state -------------------------------------------------------------------------------

    def _lookup(self, raw: str, errors: _NameErrors) -> FakeModel:
        """Find a local model by name, raising the endpoint's own wording when that fails."""
        if not raw.strip():
            raise _name_error(errors.empty, raw)
        try:
            name = _Name.parse(raw)
        except ValueError:
            raise _name_error(errors.invalid, raw) from None
        model = _find(self.models.values(), name)
        if model is None:
            raise _name_error(errors.missing, raw, name.short)
        return model

    def _require_known(self, raw: str) -> FakeModel:
        """Find a local model for a constructor argument."""
        model = _find(self.models.values(), _Name.parse(raw))
        if model is None:
            raise ValueError(f"loaded model {raw!r} is not among the fake's models")
        return model

    def _install(self, model: FakeModel) -> None:
        """Add a model, replacing any model with the same name."""
        self._forget(self.models, model.ref)
        self.models[model.name] = model

    def _loaded_now(self) -> dict[str, datetime]:
        """Drop idle loaded models whose keep-alive ran out, as Ollama's scheduler does; return the rest."""
        now = datetime.now(UTC)
        # A model in use never expires: Ollama starts its keep-alive timer once it goes idle.
        expired = [
            name for name, expires in self.loaded.items() if expires <= now and name not in self._runners
        ]
        for name in expired:
            del self.loaded[name]
        return self.loaded

    def _is_loaded(self, model: FakeModel) -> bool:
        """Tell whether the model is loaded now."""
        return any(_Name.parse(name).key == model.ref.key for name in self._loaded_now())

    def _touch(self, model: FakeModel, keep_alive: float | None) -> None:
        """Keep the model loaded for `keep_alive` seconds from now (the default when None; 0 unloads)."""
        self._forget(self.loaded, model.ref)
        if keep_alive != 0:
            seconds = DEFAULT_KEEP_ALIVE_S if keep_alive is None else keep_alive
            self.loaded[model.name] = _local_now() + timedelta(seconds=seconds)

    @staticmethod
    def _forget(entries: dict[str, Any], name: _Name) -> None:
        """Remove every entry filed under the same model name."""
        for key in [key for key in entries if _Name.parse(key).key == name.key]:
            del entries[key]

    def _unload(self, model: FakeModel) -> None:
        """Unload the model at once, making room for a load that waits for some."""
        self._forget(self.loaded, model.ref)
        self._freed.set()

    def _resident(self, model: FakeModel) -> bool:
        """Tell whether the model is loaded or loading."""
        return model.name in self._loading or self._is_loaded(model)

    def _full(self) -> bool:
        """Tell whether max_loaded_models are loaded or loading."""
        if not self.max_loaded_models:
            return False
        return len(self._loaded_now()) + len(self._loading) >= self.max_loaded_models

    def _parallel(self, model: FakeModel) -> int | None:
        """Return how many requests the model runs at once, None for no limit."""
        if self.num_parallel is None:
            return None
        if "completion" not in model.capabilities or model.family in _SERIAL_FAMILIES:
            return 1  # Ollama gives embedding-only models one slot, like _SERIAL_FAMILIES
        return max(self.num_parallel, 1)

    async def _load(self, request: web.Request, model: FakeModel, keep_alive: float | None) -> int:
        """Get the model loaded for the request, which uses it till it ends; return when ready, in perf ns."""
        if not self._resident(model):
            await self._make_room(model)
        runner = self._runners.setdefault(model.name, _Runner())
        runner.users += 1
        request[_HELD].callback(self._leave, model.name, runner)
        if not self._is_loaded(model):
            task = self._loading.get(model.name)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._become_loaded(model))
                self._loading[model.name] = task
            self._waiting += 1
            try:
                # A client that leaves does not abort the load, like Ollama's scheduler.
                await asyncio.shield(task)
            finally:
                self._waiting -= 1
        loaded_ns = time.perf_counter_ns()
        self._touch(model, keep_alive or None)  # keep_alive 0 unloads only once the request is done
        return loaded_ns

    async def _make_room(self, model: FakeModel) -> None:
        """Queue for a load like Ollama's pending requests, unloading the least recently used idle model."""
        # Ollama's pending channel holds max_queue requests behind the one its scheduler has in hand.
        if self._pending > self.max_queue:
            raise _ApiError(503, _SERVER_BUSY)
        self._pending += 1
        self._waiting += 1
        try:
            async with self._scheduling:
                while not self._resident(model) and self._full():
                    # _touch re-files a model on each use, so `loaded` runs from least recently used.
                    idle = next((name for name in self._loaded_now() if name not in self._runners), None)
                    if idle is not None:
                        del self.loaded[idle]
                        continue
                    self._freed.clear()
                    await self._freed.wait()
        finally:
            self._pending -= 1
            self._waiting -= 1

    async def _become_loaded(self, model: FakeModel) -> None:
        """Spend load_delay_s, then mark the model loaded."""
        try:
            await asyncio.sleep(self.load_delay_s)
            self._touch(model, None)
        finally:
            self._loading.pop(model.name, None)
            self._freed.set()  # a model loaded for clients that left is idle: a queued load may evict it

    def _leave(self, name: str, runner: _Runner) -> None:
        """Stop using a model; once idle it may be unloaded to make room for another."""
        runner.users -= 1
        if not runner.users:
            del self._runners[name]
            self._freed.set()

    async def _take_slot(self, request: web.Request, model: FakeModel) -> int:
        """Wait FIFO for a slot of the model, held till the request ends; return when taken, in perf ns."""
        runner = self._runners[model.name]
        limit = self._parallel(model)
        if limit is None or (runner.running < limit and not runner.queue):
            runner.running += 1
        else:
            turn = asyncio.get_running_loop().create_future()
            runner.queue.append(turn)
            self._waiting += 1
            try:
                await turn  # a finishing request hands its slot straight over, so none jumps the queue
            except asyncio.CancelledError:
                if not turn.cancelled():
                    self._release(runner)  # the slot came as the client left: pass it on
                elif turn in runner.queue:
                    runner.queue.remove(turn)
                raise
            finally:
                self._waiting -= 1
        request[_HELD].callback(self._release, runner)
        return time.perf_counter_ns()

    def _release(self, runner: _Runner) -> None:
        """Hand a freed slot to the oldest request still waiting, or give it back."""
        while runner.queue:
            turn = runner.queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        runner.running -= 1

    def _has_blob(self, digest: str) -> bool:
        """Tell whether a blob with this digest was uploaded."""
        return bool(_DIGEST.fullmatch(digest)) and _blob_key(digest) in self.blobs

    # -- inference ---------------------------------------------------------------------------------

    async def _infer(self, request: web.Request, body: Json, *, chat: bool, started_ns: int) -> _Reply:
        """Validate a generate (chat=False) or chat request in Ollama's order and start its reply."""
        keep_alive = _keep_alive(body.get("keep_alive"))
        _check_top_logprobs(body)
        echo = _string(body, "model")
        model = self._lookup(echo, _CHAT_NAMES if chat else _GENERATE_NAMES)
        prompt = _chat_prompt(body.get("messages")) if chat else _string(body, "prompt")
        has_input = bool(body.get("messages")) if chat else bool(prompt)
        if not has_input and keep_alive == 0:
            self._unload(model)
            return _Reply(_once(_native_chunk(chat, echo, done_reason="unload")), streamable=False)
        if not chat:
            _check_raw(body)
        think = _thinking(model, echo, body.get("think"))
        _require(model, echo, _wanted_capabilities(body, chat), "chat" if chat else "generate")
        loaded_ns = await self._load(request, model, keep_alive)
        if not has_input:
            return _Reply(_once(_native_chunk(chat, echo, done_reason="load")), streamable=False)
        running_ns = await self._take_slot(request, model)
        num_predict = _int_option(body.get("options"), "num_predict")
        job = _Job(
            chat=chat,
            echo=echo,
            model=model,
            prompt=prompt,
            count=num_predict if num_predict > 0 else self.default_num_predict,
            done_reason="length" if num_predict > 0 else "stop",
            think=think,
            context=not chat and not body.get("raw"),
            keep_alive=keep_alive,
            started_ns=started_ns,
            loaded_ns=loaded_ns,
            running_ns=running_ns,
        )
        return _Reply(self._run(job), streamable=True)

    async def _run(self, job: _Job) -> AsyncGenerator[Json, None]:
        """Emit the job's tokens on the tokens_per_second schedule, then the final chunk with metrics."""
        words = _words(job.prompt, job.count)
        thinking = job.count // 2 if job.think else 0
        pacer = _Pacer(self.tokens_per_second)
        first_ns = 0
        for index, word in enumerate(words):
            await pacer.wait()
            first_ns = first_ns or time.perf_counter_ns()
            piece = word if index in (0, thinking) else f" {word}"
            if index < thinking:
                yield _native_chunk(job.chat, job.echo, thinking=piece)
            else:
                yield _native_chunk(job.chat, job.echo, content=piece)
        done_ns = time.perf_counter_ns()
        first_ns = first_ns or done_ns
        final = _native_chunk(job.chat, job.echo, done_reason=job.done_reason)
        if job.context:
            final["context"] = [zlib.crc32(word.encode()) % 32000 for word in [*job.prompt.split(), *words]]
        final.update(
            total_duration=done_ns - job.started_ns,
            load_duration=job.loaded_ns - job.started_ns,
            prompt_eval_count=max(1, len(job.prompt.split())),
            prompt_eval_duration=first_ns - job.running_ns,
            eval_count=job.count,
            eval_duration=done_ns - first_ns,
        )
        self._touch(job.model, job.keep_alive)
        yield final

    async def _load_embedder(
        self, request: web.Request, body: Json, names: _NameErrors, *, slot: bool
    ) -> tuple[str, int]:
        """Resolve and load an embedding model, then take a slot if asked; return the echo and load time."""
        keep_alive = _keep_alive(body.get("keep_alive"))
        echo = _string(body, "model")
        model = self._lookup(echo, names)
        _require(model, echo, ("embedding",), None)
        loaded_ns = await self._load(request, model, keep_alive)
        self._touch(model, keep_alive)
        if slot:
            await self._take_slot(request, model)
        return echo, loaded_ns

    async def _embed(self, request: web.Request, body: Json, started_ns: int) -> Json:
        """Embed like /api/embed: deterministic unit vectors from a hash of each input."""
        inputs = _embed_inputs(body.get("input"))
        # Ollama answers empty input once the model is loaded, without taking a slot.
        echo, loaded_ns = await self._load_embedder(request, body, _EMBED_NAMES, slot=bool(inputs))
        if not inputs:
            return {"model": echo, "embeddings": []}
        dimensions = body.get("dimensions") or 0
        return {
            "model": echo,
            "embeddings": [_embedding(text, self.embedding_dim, dimensions) for text in inputs],
            "total_duration": time.perf_counter_ns() - started_ns,
            "load_duration": loaded_ns - started_ns,
            "prompt_eval_count": sum(max(1, len(text.split())) for text in inputs),
        }

    async def _handle_generate(self, request: web.Request) -> web.StreamResponse:
        """POST /api/generate."""
        return await self._handle_native(request, chat=False)

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        """POST /api/chat."""
        return await self._handle_native(request, chat=True)

    async def _handle_native(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        """Answer native generate or chat: NDJSON unless `stream` is explicitly false."""
        started_ns = time.perf_counter_ns()
        body = await _read_json(request)
        reply = await self._infer(request, body, chat=chat, started_ns=started_ns)
        if reply.streamable and body.get("stream") is not False:
            return await self._stream(request, _NDJSON_FRAMING, reply.objects)
        return _json(await _collect(reply.objects))

    async def _handle_embed(self, request: web.Request) -> web.StreamResponse:
        """POST /api/embed."""
        started_ns = time.perf_counter_ns()
        return _json(await self._embed(request, await _read_json(request), started_ns))

    async def _handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        """POST /api/embeddings (legacy): one prompt, float64 vector."""
        body = await _read_json(request)
        prompt = _string(body, "prompt")
        await self._load_embedder(request, body, _EMBEDDINGS_NAMES, slot=bool(prompt))
        return _json({"embedding": _embedding(prompt, self.embedding_dim, 0) if prompt else []})

    # -- OpenAI compatibility ----------------------------------------------------------------------

    async def _handle_openai_chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions, mapped onto chat the way Ollama's ChatMiddleware does."""
        started_ns = time.perf_counter_ns()
        body = await _read_json(request, empty_message="EOF")
        reply = await self._infer(request, _chat_from_openai(body), chat=True, started_ns=started_ns)
        ident = f"chatcmpl-{random.randrange(999)}"
        if body.get("stream") is True:
            chunks = _openai_chat_chunks(ident, reply.objects, _include_usage(body))
            return await self._stream(request, _SSE_FRAMING, chunks)
        return _openai_json(_openai_chat_completion(ident, await _collect(reply.objects)))

    async def _handle_openai_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions, mapped onto generate the way Ollama's CompletionsMiddleware does."""
        started_ns = time.perf_counter_ns()
        body = await _read_json(request, empty_message="EOF")
        native = {
            "model": _string(body, "model"),
            "prompt": _string(body, "prompt"),
            "suffix": body.get("suffix"),
            "options": _openai_options(body),
        }
        reply = await self._infer(request, native, chat=False, started_ns=started_ns)
        ident = f"cmpl-{random.randrange(999)}"
        if body.get("stream") is True:
            chunks = _openai_completion_chunks(ident, reply.objects, _include_usage(body))
            return await self._stream(request, _SSE_FRAMING, chunks)
        return _openai_json(_openai_completion(ident, await _collect(reply.objects)))

    async def _handle_openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/embeddings, mapped onto /api/embed the way Ollama's EmbeddingsMiddleware does."""
        started_ns = time.perf_counter_ns()
        body = await _read_json(request, empty_message="EOF")
        encoding = _string(body, "encoding_format")
        if encoding and encoding.lower() not in ("float", "base64"):
            raise _ApiError(
                400,
                f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', 'base64'].",
            )
        value = [""] if body.get("input") == "" else body.get("input")
        if value is None or value == []:
            raise _ApiError(400, "invalid input")
        native = {"model": _string(body, "model"), "input": value, "dimensions": body.get("dimensions")}
        result = await self._embed(request, native, started_ns)
        return _openai_json(_openai_embedding_list(result, encoding.lower() == "base64"))

    async def _handle_openai_models(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/models; like Ollama, `data` is null when there are no models."""
        data = [_openai_model(m.name, m) for m in self._by_recency()]
        return _openai_json({"object": "list", "data": data or None})

    async def _handle_openai_model(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/models/{model}, answered through show's lookup."""
        raw = request.match_info["model"]
        return _openai_json(_openai_model(raw, self._lookup(raw, _SHOW_NAMES)))

    # -- reads -------------------------------------------------------------------------------------

    async def _handle_version(self, request: web.Request) -> web.StreamResponse:
        """GET/HEAD /api/version."""
        return _json({"version": self.version})

    async def _handle_tags(self, request: web.Request) -> web.StreamResponse:
        """GET/HEAD /api/tags, newest first."""
        return _json({"models": [_tag_entry(model) for model in self._by_recency()]})

    async def _handle_ps(self, request: web.Request) -> web.StreamResponse:
        """GET /api/ps: loaded models, longest remaining keep-alive first."""
        entries: list[tuple[datetime, Json]] = []
        for name, expires in self._loaded_now().items():
            model = _find(self.models.values(), _Name.parse(name))
            if model is not None:
                entries.append((expires, _ps_entry(model, expires)))
        entries.sort(key=lambda pair: pair[0], reverse=True)
        return _json({"models": [entry for _, entry in entries]})

    async def _handle_show(self, request: web.Request) -> web.StreamResponse:
        """POST /api/show; accepts `model` or the legacy `name`."""
        body = await _read_json(request)
        raw = _string(body, "model") or _string(body, "name")
        reply = _show(self._lookup(raw, _SHOW_NAMES), self.embedding_dim)
        if request.headers.get(hdrs.USER_AGENT, "").startswith("GitHubCopilotChat/"):
            reply["model_info"]["general.basename"] = raw
        return _json(reply)

    def _by_recency(self) -> list[FakeModel]:
        """Return the local models, most recently modified first."""
        return sorted(self.models.values(), key=lambda model: model.modified_at, reverse=True)

    # -- model management --------------------------------------------------------------------------

    async def _progress_reply(
        self, request: web.Request, body: Json, lines: Iterator[Json]
    ) -> web.StreamResponse:
        """Stream progress lines, or with `stream` false answer only the last one (errors as status)."""
        objects = self._paced(lines)
        if body.get("stream") is not False:
            return await self._stream(request, _NDJSON_FRAMING, objects)
        last: Json = {}
        try:
            async for line in objects:
                last = line  # Ollama's waitForStream keeps only the latest
        except _ApiError as error:
            raise _ApiError(error.status, error.message, JSON_PLAIN) from error
        return _json(last, JSON_PLAIN)

    async def _paced(self, lines: Iterable[Json]) -> AsyncGenerator[Json, None]:
        """Release progress lines one per token interval, like a transfer in progress."""
        pacer = _Pacer(self.tokens_per_second)
        for line in lines:
            await pacer.wait()
            yield line

    async def _handle_pull(self, request: web.Request) -> web.StreamResponse:
        """POST /api/pull: from `registry`, or a re-pull of a local model."""
        body = await _read_json(request)
        name = _parse_or_fail(_string(body, "model") or _string(body, "name"))
        return await self._progress_reply(request, body, self._pull_lines(name))

    def _pull_lines(self, name: _Name) -> Generator[Json, None, FakeModel]:
        """Yield Ollama's pull progress, install the model, and return it."""
        yield {"status": "pulling manifest"}
        local = _find(self.models.values(), name)
        source = _find(self.registry.values(), name) or local
        if source is None:
            raise _ApiError(500, "pull model manifest: file does not exist")
        yield from _transfer_lines("pulling", source)
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        model = replace(source, name=local.name if local else name.short, modified_at=_local_now())
        self._install(model)
        yield {"status": "success"}
        return model

    async def _handle_push(self, request: web.Request) -> web.StreamResponse:
        """POST /api/push: copies a local model into `registry`."""
        body = await _read_json(request)
        raw = _string(body, "model") or _string(body, "name")
        if not raw:
            raise _ApiError(400, "model is required")
        return await self._progress_reply(request, body, self._push_lines(_parse_or_fail(raw)))

    def _push_lines(self, name: _Name) -> Iterator[Json]:
        """Yield Ollama's push progress and publish the model."""
        yield {"status": "retrieving manifest"}
        model = _find(self.models.values(), name)
        if model is None:
            yield {"status": "couldn't retrieve manifest"}
            path = f"{MODELS_DIR}/manifests/{name.host}/{name.namespace}/{name.model}/{name.tag}"
            raise _ApiError(500, f"open {path}: no such file or directory")
        yield from _transfer_lines("pushing", model)
        yield {"status": "pushing manifest"}
        self._forget(self.registry, model.ref)
        self.registry[model.name] = model
        yield {"status": "success"}

    async def _handle_create(self, request: web.Request) -> web.StreamResponse:
        """POST /api/create from a local model (`from`) or uploaded blobs (`files`)."""
        body = await _read_json(request)
        files = body.get("files") or {}
        if not isinstance(files, dict):
            raise _ApiError(
                400, f"json: cannot unmarshal {_go_kind(files)} into Go struct field files of type map"
            )
        for path, digest in files.items():
            if not _valid_path(path):
                raise _ApiError(400, "file path must be relative")
            if not digest:
                raise _ApiError(400, "invalid digest format")
        name = _parse_or_fail(_string(body, "model") or _string(body, "name"))
        return await self._progress_reply(request, body, self._create_lines(name, body, files))

    def _create_lines(self, name: _Name, body: Json, files: dict[str, str]) -> Iterator[Json]:
        """Yield Ollama's create progress and install the new model."""
        base = _string(body, "from")
        if base:
            model = yield from self._layers_from_model(_parse_or_fail(base))
        elif files:
            model = yield from self._layers_from_files(name, files)
        else:
            raise _ApiError(400, "neither 'from' or 'files' was specified")
        quantize = _string(body, "quantize").upper() or model.quantization_level
        yield {"status": "writing manifest"}
        self._install(replace(model, name=name.short, quantization_level=quantize, modified_at=_local_now()))
        yield {"status": "success"}

    def _layers_from_model(self, base: _Name) -> Generator[Json, None, FakeModel]:
        """Reuse a local model's layers, pulling it first when missing (as Ollama does)."""
        model = _find(self.models.values(), base)
        if model is None:
            model = yield from self._pull_lines(base)
        yield {"status": f"using existing layer sha256:{model.digest}"}
        return model

    def _layers_from_files(self, name: _Name, files: dict[str, str]) -> Generator[Json, None, FakeModel]:
        """Build a model from uploaded blobs; each digest must have been uploaded first."""
        yield {"status": "parsing GGUF"}
        for digest in files.values():
            if not self._has_blob(digest):
                blob = f"sha256-{digest[7:]}" if _DIGEST.fullmatch(digest) else digest
                raise _ApiError(500, f"open {MODELS_DIR}/blobs/{blob}: no such file or directory")
            yield {"status": f"using existing layer {_blob_key(digest)}"}
        return FakeModel(name.short, size=sum(self.blobs[_blob_key(digest)] for digest in files.values()))

    async def _handle_copy(self, request: web.Request) -> web.StreamResponse:
        """POST /api/copy: 200 with an empty body."""
        body = await _read_json(request)
        source, destination = _string(body, "source"), _string(body, "destination")
        source_name = _parse_or_fail(source, message=f"source {_quote(source)} is invalid")
        target = _parse_or_fail(destination, message=f"destination {_quote(destination)} is invalid")
        model = _find(self.models.values(), source_name)
        if model is None:
            raise _ApiError(404, f"model {_quote(source)} not found")
        self._install(replace(model, name=target.short, modified_at=_local_now()))
        return web.Response()

    async def _handle_delete(self, request: web.Request) -> web.StreamResponse:
        """DELETE /api/delete: 200 with an empty body."""
        body = await _read_json(request)
        model = self._lookup(_string(body, "model") or _string(body, "name"), _DELETE_NAMES)
        self._forget(self.models, model.ref)
        self._unload(model)
        return web.Response()

    async def _handle_blob_head(self, request: web.Request) -> web.StreamResponse:
        """HEAD /api/blobs/{digest}: 200 when uploaded, else 404."""
        digest = _check_digest(request.match_info["digest"])
        if not self._has_blob(digest):
            raise _ApiError(404, f"blob {_quote(digest)} not found")
        return web.Response()

    async def _handle_blob_post(self, request: web.Request) -> web.StreamResponse:
        """POST /api/blobs/{digest}: read the body in chunks and verify its sha256."""
        digest = _check_digest(request.match_info["digest"])
        if self._has_blob(digest):
            return web.Response()  # like Ollama, answers without reading the body
        hasher, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
        actual = f"sha256:{hasher.hexdigest()}"
        self.blobs[actual] = size  # Ollama keeps the blob under its real digest even on a mismatch
        if actual != digest:
            raise _ApiError(400, f"digest mismatch, expected {_quote(digest)}, got {_quote(actual)}")
        return web.Response(status=201)


# -- helpers: names, parsing, wording ---------------------------------------------------------------


def _as_model(model: str | FakeModel) -> FakeModel:
    """Accept a model or a bare name."""
    return model if isinstance(model, FakeModel) else FakeModel(model)


def _find(models: Iterable[FakeModel], name: _Name) -> FakeModel | None:
    """Return the model with this name (case-insensitive, defaults applied), if any."""
    return next((model for model in models if model.ref.key == name.key), None)


def _paths(paths: Iterable[str] | None) -> frozenset[str] | None:
    """Freeze a fault's path filter."""
    return None if paths is None else frozenset(paths)


def _take(faults: list[_Fault], request: web.Request) -> _Fault | None:
    """Consume one use of the first fault that applies to the request."""
    fault = next((fault for fault in faults if fault.matches(request)), None)
    if fault is not None:
        fault.remaining -= 1
        if fault.remaining <= 0:
            faults.remove(fault)
    return fault


def _route(request: web.Request) -> str | None:
    """Return the matched route's pattern (`/v1/models/{model}`), or None for 404/405."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def _quote(text: str) -> str:
    """Quote like Go's %q."""
    return json.dumps(text, ensure_ascii=False)


def _name_error(template: tuple[int, str], raw: str, short: str = "") -> _ApiError:
    """Word a model-name error from an endpoint's template."""
    status, text = template
    return _ApiError(status, text.format(raw=raw, q=_quote(raw), short=short))


def _parse_or_fail(raw: str, *, message: str = _INVALID_NAME) -> _Name:
    """Parse a model name or raise Ollama's 400 for a bad one."""
    try:
        return _Name.parse(raw)
    except ValueError:
        raise _ApiError(400, message) from None


def _check_digest(digest: str) -> str:
    """Accept only `sha256:<64 hex>` (or `sha256-`), as Ollama's blob store does."""
    if not _DIGEST.fullmatch(digest):
        raise _ApiError(400, "invalid digest format")
    return digest


def _blob_key(digest: str) -> str:
    """File a digest the way the blob store does, whichever separator it was sent with."""
    return f"sha256:{digest[7:]}"


def _valid_path(path: str) -> bool:
    """Tell whether a `files` key is a relative, clean path (Go's fs.ValidPath)."""
    return path == "." or all(part not in ("", ".", "..") for part in path.split("/"))


def _go_kind(value: Any) -> str:
    """Name a JSON value's kind the way Go's json errors do."""
    return next((name for kind, name in _GO_KINDS if isinstance(value, kind)), "null")


async def _read_json(request: web.Request, *, empty_message: str = "missing request body") -> Json:
    """Parse the body as JSON whatever the Content-Type, with Go-like errors."""
    raw = (await request.read()).decode("utf-8", errors="replace")
    if not raw.strip():
        raise _ApiError(400, empty_message)
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(raw.rstrip()):
            raise _ApiError(400, "unexpected EOF") from None
        raise _ApiError(400, f"invalid character '{raw[exc.pos]}' looking for beginning of value") from None
    if not isinstance(body, dict):
        raise _ApiError(400, f"json: cannot unmarshal {_go_kind(body)} into Go value of type struct")
    return body


def _string(body: Json, key: str) -> str:
    """Read a string field; absent or null is empty, another type is a 400 like Go's decoder."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _ApiError(
            400, f"json: cannot unmarshal {_go_kind(value)} into Go struct field {key} of type string"
        )
    return value


def _int_option(options: Any, key: str) -> int:
    """Read an integer from `options`, 0 when absent."""
    value = options.get(key) if isinstance(options, dict) else None
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _keep_alive(value: Any) -> float | None:
    """Parse keep_alive like api.Duration: seconds, or a Go duration string; negative means forever."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _ApiError(400, f"Unsupported type: '{_go_kind(value)}'")
    seconds = _go_duration(value) if isinstance(value, str) else float(value)
    return FOREVER_S if seconds < 0 else seconds


def _go_duration(text: str) -> float:
    """Parse a Go duration string ("5m", "1h30m", "0") into seconds."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    if not _DURATION.fullmatch(body):
        problem = "missing unit in duration" if re.fullmatch(r"[\d.]+", body) else "invalid duration"
        raise _ApiError(400, f"time: {problem} {_quote(text)}")
    return sign * sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(body))


def _check_top_logprobs(body: Json) -> None:
    """Reject top_logprobs outside 0..20."""
    top_logprobs = body.get("top_logprobs") or 0
    if not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
        raise _ApiError(400, "top_logprobs must be between 0 and 20")


def _check_raw(body: Json) -> None:
    """Reject a raw generate that also sets a template, system or context."""
    if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        raise _ApiError(400, "raw mode does not support template, system, or context")


def _wanted_capabilities(body: Json, chat: bool) -> list[str]:
    """List what a request needs: completion, plus tools (chat with tools) or insert (suffix)."""
    wanted = ["completion"]
    if chat and body.get("tools"):
        wanted.append("tools")
    if not chat and body.get("suffix"):
        wanted.append("insert")
    return wanted


def _thinking(model: FakeModel, echo: str, value: Any) -> bool:
    """Decide whether to think: thinking models default to it; others reject think=true."""
    if value is not None and not isinstance(value, bool):
        if not isinstance(value, str):
            raise _ApiError(400, f"think must be a boolean or string ({_THINK_CHOICES})")
        if value not in _THINK_LEVELS:
            raise _ApiError(400, f"invalid think value: {_quote(value)} (must be {_THINK_CHOICES})")
    wanted = value is None or value is True or isinstance(value, str)
    if "thinking" in model.capabilities:
        return wanted
    if value is not None and wanted:
        raise _ApiError(400, f"{_quote(echo)} does not support thinking")
    return False


def _require(model: FakeModel, echo: str, wanted: Iterable[str], verb: str | None) -> None:
    """Reject a request for capabilities the model lacks, worded like Ollama's scheduler."""
    missing = [capability for capability in wanted if capability not in model.capabilities]
    if verb is not None and "completion" in missing:
        raise _ApiError(400, f"{_quote(echo)} does not support {verb}")
    if missing:
        raise _ApiError(400, f"{model.ref} does not support " + "\n".join(missing))


def _chat_prompt(messages: Any) -> str:
    """Join the messages' text: the fake's prompt for chat."""
    if not isinstance(messages, list):
        return ""
    return "\n".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))


def _embed_inputs(value: Any) -> list[str]:
    """Accept a string or a list of strings, as /api/embed does."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise _ApiError(400, "invalid input type")


# -- helpers: generated content -------------------------------------------------------------------


def _words(prompt: str, count: int) -> list[str]:
    """Pick `count` words, deterministically from the prompt."""
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    return [rng.choice(_VOCABULARY) for _ in range(count)]


def _embedding(text: str, dim: int, dimensions: int) -> list[float]:
    """Return a deterministic unit vector for the text, truncated to `dimensions` when smaller."""
    raw = hashlib.shake_256(text.encode()).digest(2 * dim)
    vector = [int.from_bytes(raw[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, 2 * dim, 2)]
    if 0 < dimensions < dim:
        vector = vector[:dimensions]
    norm = max(math.sqrt(sum(value * value for value in vector)), 1e-12)
    return [round(value / norm, 7) for value in vector]


def _rfc3339(moment: datetime) -> str:
    """Format like Go's RFC3339Nano: trailing fraction zeros trimmed, `Z` for a zero offset."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    offset = moment.strftime("%z")
    return text + ("Z" if offset in ("", "+0000") else f"{offset[:3]}:{offset[3:]}")


def _utc_now() -> str:
    """Return `created_at` for a reply: now, UTC."""
    return _rfc3339(datetime.now(UTC))


def _native_chunk(
    chat: bool, model: str, content: str = "", thinking: str = "", done_reason: str | None = None
) -> Json:
    """Build one generate or chat object; a done_reason makes it the final one."""
    chunk: Json = {"model": model, "created_at": _utc_now()}
    if chat:
        message = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        chunk["message"] = message
    else:
        chunk["response"] = content
        if thinking:
            chunk["thinking"] = thinking
    chunk["done"] = done_reason is not None
    if done_reason:
        chunk["done_reason"] = done_reason
    return chunk


async def _once(obj: Json) -> AsyncGenerator[Json, None]:
    """Yield a single object."""
    yield obj


async def _collect(objects: AsyncGenerator[Json, None]) -> Json:
    """Merge a token stream into Ollama's non-streamed reply: the final object with the full text."""
    content: list[str] = []
    thinking: list[str] = []
    last: Json = {}
    async for last in objects:
        holder, key = _text_slot(last)
        content.append(holder[key])
        thinking.append(holder.get("thinking", ""))
    holder, key = _text_slot(last)
    holder[key] = "".join(content)
    if any(thinking):
        holder["thinking"] = "".join(thinking)
    return last


def _text_slot(obj: Json) -> tuple[Json, str]:
    """Return where an object keeps its text: chat's message.content or generate's response."""
    return (obj["message"], "content") if "message" in obj else (obj, "response")


def _transfer_lines(verb: str, model: FakeModel) -> list[Json]:
    """Return Ollama's per-layer progress for a pull or push of the model's one layer."""
    status = f"{verb} {model.digest[:12]}"
    line: Json = {"status": status, "digest": f"sha256:{model.digest}", "total": model.size}
    return [line, *({**line, "completed": model.size * step // 4} for step in range(1, 5))]


def _details(model: FakeModel) -> Json:
    """Return the `details` object of listings, show and ps."""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def _tag_entry(model: FakeModel) -> Json:
    """Return one /api/tags entry."""
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": _rfc3339(model.modified_at),
        "size": model.size,
        "digest": model.digest,
        "details": _details(model),
    }


def _ps_entry(model: FakeModel, expires: datetime) -> Json:
    """Return one /api/ps entry; the fake runs everything fully on the GPU (size_vram == size)."""
    return {
        "name": model.name,
        "model": model.name,
        "size": model.size,
        "digest": model.digest,
        "details": _details(model),
        "expires_at": _rfc3339(expires.astimezone()),
        "size_vram": model.size,
        "context_length": CONTEXT_LENGTH,
    }


def _show(model: FakeModel, embedding_dim: int) -> Json:
    """Return /api/show's reply."""
    blob = f"{MODELS_DIR}/blobs/sha256-{model.digest}"
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f'# FROM {model.name}\n\nFROM {blob}\nTEMPLATE """{{{{ .Prompt }}}}"""\nPARAMETER stop <|eot_id|>\n'
    )
    return {
        "license": "FAKE MODEL LICENSE",
        "modelfile": modelfile,
        "parameters": f"{'stop':<30} " + '"<|eot_id|>"',
        "template": "{{ .Prompt }}",
        "details": _details(model),
        "model_info": {
            "general.architecture": model.family,
            f"{model.family}.context_length": 8192,
            f"{model.family}.embedding_length": embedding_dim,
        },
        "capabilities": list(model.capabilities),
        "modified_at": _rfc3339(model.modified_at),
    }


# -- helpers: OpenAI compatibility ------------------------------------------------------------------


def _openai_options(body: Json) -> Json:
    """Map max_tokens onto num_predict, the only option that shapes the fake's reply."""
    return {} if body.get("max_tokens") is None else {"num_predict": body["max_tokens"]}


def _chat_from_openai(body: Json) -> Json:
    """Translate a chat completion request into a native chat request, as ChatMiddleware does."""
    messages = body.get("messages")
    if not messages:
        raise _ApiError(400, "[] is too short - 'messages'")
    native: Json = {
        "model": _string(body, "model"),
        "messages": [_openai_message(message) for message in messages],
        "options": _openai_options(body),
        "tools": body.get("tools"),
    }
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    if effort:
        if effort not in _REASONING_EFFORTS:
            choices = '"minimal", "low", "medium", "high", "xhigh", "ultra", "max", or "none"'
            raise _ApiError(400, f"invalid reasoning value: {_quote(str(effort))} (must be {choices})")
        native["think"] = _REASONING_EFFORTS[effort]
    return native


def _openai_message(message: Any) -> Json:
    """Flatten one OpenAI message to role and text."""
    if not isinstance(message, dict):
        raise _ApiError(400, "invalid message format")
    content = message.get("content")
    if isinstance(content, list):
        parts = [part for part in content if isinstance(part, dict)]
        if len(parts) != len(content) or any(
            part.get("type") not in ("text", "image_url", "input_audio") for part in parts
        ):
            raise _ApiError(400, "invalid message format")
        content = "".join(str(part.get("text", "")) for part in parts if part.get("type") == "text")
    elif not isinstance(content, str):
        if not message.get("tool_calls"):
            kind = {"null": "<nil>", "number": "float64", "bool": "bool"}.get(
                _go_kind(content), "map[string]any"
            )
            raise _ApiError(400, f"invalid message content type: {kind}")
        content = ""
    return {"role": str(message.get("role", "")).lower(), "content": content}


def _include_usage(body: Json) -> bool:
    """Tell whether stream_options.include_usage was asked for."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(obj: Json) -> Json:
    """Return OpenAI usage from a final native object."""
    prompt, completion = obj.get("prompt_eval_count", 0), obj.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _openai_chat_chunk(ident: str, created: int, model: str, delta: Json, finish: str | None) -> Json:
    """Build one chat.completion.chunk."""
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def _openai_chat_chunks(
    ident: str, objects: AsyncGenerator[Json, None], include_usage: bool
) -> AsyncGenerator[Json, None]:
    """Convert native chat objects to SSE chunks: role first, deltas, a finish chunk, optional usage."""
    created = int(time.time())  # OpenAI stamps one `created` on every chunk of a stream
    first = True
    async with contextlib.aclosing(objects):
        async for obj in objects:
            message = obj["message"]
            # The metrics-only final object becomes no content chunk, unless it is the only object.
            if not (obj["done"] and not first and not message["content"] and not message.get("thinking")):
                delta: Json = {"role": "assistant"} if first else {}
                delta["content"] = message["content"]
                if message.get("thinking"):
                    delta["reasoning"] = message["thinking"]
                yield _openai_chat_chunk(ident, created, obj["model"], delta, None)
                first = False
            if obj["done"]:
                finish = _openai_chat_chunk(
                    ident, created, obj["model"], {}, obj.get("done_reason") or "stop"
                )
                yield finish
                if include_usage:
                    yield {**finish, "choices": [], "usage": _usage(obj)}


def _openai_chat_completion(ident: str, obj: Json) -> Json:
    """Convert a merged native chat reply to a chat.completion."""
    message: Json = {"role": "assistant", "content": obj["message"]["content"]}
    if obj["message"].get("thinking"):
        message["reasoning"] = obj["message"]["thinking"]
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": obj["model"],
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": message, "finish_reason": obj.get("done_reason")}],
        "usage": _usage(obj),
    }


def _openai_completion(ident: str, obj: Json) -> Json:
    """Convert a native generate object to a text_completion (chunk or whole)."""
    choice = {"text": obj["response"], "index": 0, "finish_reason": obj.get("done_reason")}
    return {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "model": obj["model"],
        "system_fingerprint": "fp_ollama",
        "choices": [choice],
        "usage": _usage(obj),
    }


async def _openai_completion_chunks(
    ident: str, objects: AsyncGenerator[Json, None], include_usage: bool
) -> AsyncGenerator[Json, None]:
    """Convert native generate objects to completion chunks, as CompleteWriter does."""
    async with contextlib.aclosing(objects):
        async for obj in objects:
            chunk = _openai_completion(ident, obj)
            usage = chunk.pop("usage")
            if include_usage:
                chunk["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            yield chunk
            if obj["done"] and include_usage:
                yield {**chunk, "choices": [], "usage": usage}


def _openai_embedding_list(result: Json, as_base64: bool) -> Json:
    """Convert an /api/embed reply to an OpenAI embedding list."""
    data = [
        {"object": "embedding", "embedding": _base64_floats(vector) if as_base64 else vector, "index": index}
        for index, vector in enumerate(result["embeddings"])
    ]
    tokens = result.get("prompt_eval_count", 0)
    return {
        "object": "list",
        "data": data,
        "model": result["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _base64_floats(vector: Sequence[float]) -> str:
    """Encode floats as little-endian float32, base64, like OpenAI's encoding_format=base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _openai_model(raw: str, model: FakeModel) -> Json:
    """Return one /v1/models entry; owned_by is the name's namespace."""
    created = int(model.modified_at.timestamp())
    return {"id": raw, "object": "model", "created": created, "owned_by": _Name.parse(raw).namespace}


# -- helpers: HTTP ----------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    """Encode JSON compactly, like Go."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _json(obj: Json, content_type: str = JSON_UTF8, status: int = 200) -> web.Response:
    """Answer one JSON object, as gin's c.JSON does."""
    return web.Response(status=status, body=_dumps(obj).encode(), headers={hdrs.CONTENT_TYPE: content_type})


def _openai_json(obj: Json, status: int = 200) -> web.Response:
    """Answer JSON the way the /v1 writers do: json.Encoder, so a trailing newline."""
    return web.Response(
        status=status, body=f"{_dumps(obj)}\n".encode(), headers={hdrs.CONTENT_TYPE: JSON_PLAIN}
    )


def _error_response(path: str, error: _ApiError) -> web.Response:
    """Word an error natively ({"error": msg}) or, on /v1, in OpenAI's envelope."""
    if not path.startswith("/v1/"):
        return _json({"error": error.message}, error.content_type, error.status)
    kinds = {400: "invalid_request_error", 404: "not_found_error"}
    envelope = {
        "message": error.message,
        "type": kinds.get(error.status, "api_error"),
        "param": None,
        "code": None,
    }
    return _openai_json({"error": envelope}, error.status)


def _plain(status: int, text: str) -> web.Response:
    """Answer like gin's own 404/405: bare `text/plain`, no charset."""
    return web.Response(status=status, body=text.encode(), headers={hdrs.CONTENT_TYPE: "text/plain"})


async def _handle_root(request: web.Request) -> web.StreamResponse:
    """GET/HEAD /."""
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


async def _add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Echo an allowed cross-origin request's Origin, as gin-contrib/cors does."""
    origin = request.get(_CORS_ORIGIN)
    if origin:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers.add(hdrs.VARY, "Origin")


def _origin_allowed(origin: str) -> bool:
    """Tell whether an Origin matches Ollama's default allowed origins (wildcards allowed)."""
    for pattern in _CORS_PATTERNS:
        prefix, wildcard, suffix = pattern.partition("*")
        if origin == pattern or (wildcard and origin.startswith(prefix) and origin.endswith(suffix)):
            return True
    return False


def _split_host(value: str) -> str:
    """Drop the port like Go's net.SplitHostPort, keeping the whole value when that fails."""
    if value.startswith("[") and "]:" in value:
        return value[1 : value.index("]:")]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def _host_verdict(header: str, local_ips: frozenset[str]) -> Literal["ip", "name", "deny"]:
    """Apply Ollama's allowedHostsMiddleware to a Host header."""
    host = _split_host(header)
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        private = any(ip in network for network in _PRIVATE_NETWORKS)
        if ip.is_loopback or ip.is_unspecified or private or str(ip) in local_ips:
            return "ip"
    lowered = host.lower()
    if lowered in ("", "localhost", socket.gethostname().lower()) or lowered.endswith(_LOCAL_SUFFIXES):
        return "name"
    return "deny"


async def _local_addresses() -> frozenset[str]:
    """Return this machine's own addresses, which Ollama's Host check also accepts."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(socket.gethostname(), None)
    except OSError:
        return frozenset()
    return frozenset(str(info[4][0]) for info in infos)


def _url_host(host: str) -> str:
    """Bracket an IPv6 literal for a URL."""
    return f"[{host}]" if ":" in host else host


# -- CLI --------------------------------------------------------------------------------------------


def _model_spec(spec: str) -> FakeModel:
    """Parse `NAME[=capability,capability]`."""
    name, _, capabilities = spec.partition("=")
    return FakeModel(name, capabilities=tuple(capabilities.split(","))) if capabilities else FakeModel(name)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.ollama", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", type=_model_spec, help="NAME[=cap,cap]; repeatable")
    parser.add_argument("--registry", action="append", type=_model_spec, default=[], help="pullable model")
    parser.add_argument("--loaded", action="append", default=[], help="model loaded at start; repeatable")
    parser.add_argument("--tps", type=float, default=500.0, help="tokens per second (0: as fast as it can)")
    parser.add_argument("--load-delay", type=float, default=0.0, help="seconds to load a model")
    parser.add_argument(
        "--parallel", type=int, help="requests each loaded model runs at once (OLLAMA_NUM_PARALLEL)"
    )
    parser.add_argument("--max-loaded", type=int, help="models loaded at once (OLLAMA_MAX_LOADED_MODELS)")
    parser.add_argument(
        "--max-queue", type=int, default=512, help="requests that may queue for a load (OLLAMA_MAX_QUEUE)"
    )
    parser.add_argument("--num-predict", type=int, default=8, help="tokens when num_predict is unset")
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--version", default="0.12.10")
    return parser.parse_args(argv)


def _fake(args: argparse.Namespace) -> FakeOllama:
    """Build the fake the command line describes."""
    return FakeOllama(
        args.model or ("llama3:latest",),
        loaded=args.loaded,
        registry=args.registry,
        tokens_per_second=args.tps,
        load_delay_s=args.load_delay,
        num_parallel=args.parallel,
        max_loaded_models=args.max_loaded,
        max_queue=args.max_queue,
        version=args.version,
        default_num_predict=args.num_predict,
        embedding_dim=args.embedding_dim,
        host=args.host,
        port=args.port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake as a process."""
    return asyncio.run(serve_until_stopped(_fake(_parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())
