"""FakeOllama: the server that puts the areas together (scheduler, native inference, /v1, management),
with its knobs, its routes and Ollama's gatekeeping, and the listings."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncGenerator, Iterable
from datetime import datetime
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from tests.fakes.base import FakeServer, Fault, Json, paths_of

from .compat import OpenAICompat
from .files import ModelFiles
from .inference import Inference
from .manage import Management
from .messages import AnthropicCompat
from .models import _SHOW_NAMES, FakeModel, _as_model, _find, _Name, _ps_entry, _show, _tag_entry
from .responses import ResponsesCompat
from .scheduler import Scheduling, _Runner
from .wire import (
    _CORS_ORIGIN,
    _HELD,
    _PREFLIGHT_HEADERS,
    _add_cors_headers,
    _ApiError,
    _error_response,
    _Framing,
    _handle_root,
    _host_verdict,
    _json,
    _local_addresses,
    _origin_allowed,
    _plain,
    _read_json,
    _StreamWriter,
    _string,
)

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
        "/v1/messages",
        "/v1/responses",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
    }
)


class FakeOllama(
    FakeServer, Scheduling, Inference, OpenAICompat, AnthropicCompat, ResponsesCompat, Management
):
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
        models_dir: Path | None = None,
    ) -> None:
        # With a models directory, models are files in Ollama's layout: those it holds are listed, and
        # `models` it lacks are written there, their weights `size` bytes each.
        self.files = ModelFiles(models_dir) if models_dir is not None else None
        self.models: dict[str, FakeModel] = {}
        for model in map(_as_model, models):
            self._install(model)
        for model in self.files.models() if self.files else ():
            self.models.setdefault(model.name, model)
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
        super().__init__(host, port)
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._runners: dict[str, _Runner] = {}  # by model name, while some request uses the model
        self._scheduling = asyncio.Lock()  # Ollama's scheduler takes one pending load at a time, FIFO
        self._pending = 0  # requests queued for a load, the one in hand included
        self._waiting = 0
        self._freed = asyncio.Event()  # a model went idle or unloaded: a queued load may find room
        self._loopback = False
        self._local_ips: frozenset[str] = frozenset()
        for name in loaded:
            self._touch(self._require_known(name), None)

    def _install(self, model: FakeModel) -> None:
        """Add a model, replacing any with the same name; with a models directory, one that has no
        manifest there yet is written there."""
        if self.files is not None and not self.files.has(model.ref):
            model = self.files.seed(model)
        super()._install(model)

    def build(self, app: web.Application) -> None:
        app.on_response_prepare.append(_add_cors_headers)
        app.add_routes(self._routes())

    async def started(self, bound_host: str) -> None:
        self._loopback = ipaddress.ip_address(bound_host).is_loopback
        self._local_ips = await _local_addresses()

    def closed(self) -> None:
        for task in self._loading.values():
            task.cancel()

    @property
    def waiting(self) -> int:
        """Return how many requests wait for room to load a model, for its load, or for a slot."""
        return self._waiting

    def fail_next(
        self,
        status: int = 500,
        message: str = "llama runner process has terminated",
        count: int = 1,
        *,
        paths: Iterable[str] | None = None,
    ) -> None:
        """Make the next `count` inference/read requests (or those on `paths`) fail before any byte."""
        self.failures.add(Fault(count, paths_of(paths, _FAULTABLE), status=status, message=message))

    def drop_after(self, chunks: int, count: int = 1, *, paths: Iterable[str] | None = None) -> None:
        """Make the next `count` streamed replies abort the TCP connection after `chunks` frames."""
        self.stream_faults.add(Fault(count, paths_of(paths), drop=True, after=chunks))

    def error_after(
        self,
        chunks: int,
        message: str = "an error was encountered while running the model",
        count: int = 1,
        *,
        paths: Iterable[str] | None = None,
    ) -> None:
        """Make the next `count` streamed replies report `message` after `chunks` frames and end."""
        self.stream_faults.add(Fault(count, paths_of(paths), message=message, after=chunks))

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
            web.post("/v1/messages", self._handle_messages),
            web.post("/v1/responses", self._handle_responses),
            web.post("/v1/messages/count_tokens", self._handle_count_tokens),
            web.post("/v1/completions", self._handle_openai_completions),
            web.post("/v1/embeddings", self._handle_openai_embeddings),
            web.get("/v1/models", self._handle_openai_models, allow_head=False),
            web.get("/v1/models/{model}", self._handle_openai_model, allow_head=False),
        ]

    def unread(self, request: web.Request) -> bool:
        return request.method == hdrs.METH_POST and request.path.startswith("/api/blobs/")

    async def dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run the handler behind the CORS and Host checks, turning errors into Ollama's replies; what the
        request holds (a loaded model, a slot) is let go when it ends."""
        with contextlib.ExitStack() as held:
            request[_HELD] = held
            rejection = self._gatekeep(request)
            if rejection is not None:
                return rejection
            try:
                if (fault := self.failures.take(request)) is not None:
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
        writer = _StreamWriter(request, framing, self.stream_faults.take(request))
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
