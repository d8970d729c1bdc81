"""An OpenAI-compatible server as a backend: llama.cpp's llama-server, LM Studio, vLLM, TGI.

The API layer speaks Ollama to every backend, so this adapter answers Ollama's native endpoints itself.
`/api/chat` and `/api/generate` become a streamed `/v1/chat/completions` (a raw generate becomes
`/v1/completions`), `/api/embed` and `/api/embeddings` become `/v1/embeddings`, and the listings and
`/api/show` are read from `/v1/models`. The server's SSE comes back as Ollama's NDJSON, ending in a final
chunk whose counts come from the server's `usage` and whose durations are measured here; a client that
asked for no stream gets the stream gathered into one reply. `/v1` requests pass through with their model
names mapped.

Each OpenAI model id is listed under an Ollama name made from the id alone (`smollm2` is
`smollm2:latest`, `Qwen/Qwen2.5-7B-Instruct` is `Qwen/Qwen2.5-7B-Instruct:latest`, a file path such as
`/models/x.gguf` is `x:latest`), so a model has the same name on every node and across restarts, and
requests may name it either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from ...names import model_key, short_name
from ...wire.endpoints import Kind, match
from ...wire.errors import ApiError, BackendUnavailable
from ...wire.payload import unloads_now
from ...wire.responses import error_payload, go_json
from ..base import BackendState, Body, InstalledModel, LoadedModel, UpstreamResponse
from ..http1 import HttpBackend
from . import responses
from .anthropic import (
    Refused,
    chat_request,
    error_body,
    estimate_tokens,
    message_events,
    message_reply,
)
from .models import (
    FOREVER,
    ServedModel,
    humancount,
    lookup,
    openai_entry,
    ps_entry,
    rfc3339,
    served_models,
    tags_entry,
)
from .replies import (
    Turn,
    embeddings,
    loads,
    loads_or_none,
    renamed,
    renamed_events,
    server_error,
    sse_events,
    whole_as_events,
)
from .requests import completion, embedding, text_field

# The Ollama release whose API the translation follows; clients such as Open WebUI read it as numbers.
OLLAMA_VERSION = "0.12.10"

_JSON = "application/json; charset=utf-8"
# The APIs answered with chat completions where the server has none of its own.
_TRANSLATED = frozenset({"/v1/messages", "/v1/messages/count_tokens", "/v1/responses"})
_NDJSON = "application/x-ndjson"
_PROBE_TIMEOUT_S = 3.0
# A request naming a model the last listing lacks reads the listing again, at most this often.
_RELIST_GAP_S = 1.0
# A probe reads the listing at most this often, and otherwise only checks that the server is there:
# llama-cpp-python's server ends whatever stream it is sending when any other request arrives.
_PROBE_LIST_S = 60.0


class _Reply:
    """An answer made here: an Ollama-shaped translation of the server's, or the adapter's own."""

    def __init__(self, status: int, content_type: str, body: bytes | AsyncIterator[bytes]) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict({"Content-Type": content_type}))
        self._body = body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if isinstance(self._body, bytes):
            if self._body:
                yield self._body
            return
        async for chunk in self._body:
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])


def _json_reply(value: Any, status: int = 200) -> _Reply:
    return _Reply(status, _JSON, go_json(value))


def _error_reply(status: int, message: str, *, openai: bool = False) -> _Reply:
    return _json_reply(error_payload(status, message, openai=openai), status)


class OpenAIBackend:
    """A server with an OpenAI-compatible API, spoken to in Ollama's terms."""

    kind = "openai"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        name: str = "the backend",
        hint: str = "Start the model server, or point InferHub at another one with --backend",
        api_key: str | None = None,
    ) -> None:
        self.url = url
        self.name = name
        # Sent as a bearer token to a server started with an API key, in place of whatever a client sent.
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = HttpBackend(url, connect_timeout_s=connect_timeout_s, name=name, hint=hint)
        self._models: dict[str, ServedModel] = {}
        self._listed_at = -_RELIST_GAP_S
        self._first_listed: dict[str, int] = {}
        # Whether the server has each translated API itself, once asked.
        self._served: dict[str, bool] = {}
        # Requests the server is working on: generations, embeddings and /v1 calls.
        self._working = 0

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: Body
    ) -> AsyncIterator[UpstreamResponse]:
        # The server's connection stays open while a translated stream is read.
        async with contextlib.AsyncExitStack() as stack:
            yield await self._answer(stack, method, path_qs, headers, body)

    def close(self) -> None:
        self._http.close()

    def abort(self, reason: str) -> None:
        self._http.abort(reason)

    async def probe(self) -> BackendState:
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                if self._listed_at >= 0 and time.monotonic() - self._listed_at < _PROBE_LIST_S:
                    await self._http.check()
                    models = self._models
                else:
                    models = await self._list()
            owners = sorted({m.owned_by for m in models.values() if m.owned_by})
            expires = rfc3339(datetime.now(UTC) + FOREVER)
            return BackendState(
                kind=self.kind,
                url=self.url,
                reachable=True,
                # What the listing says serves the models (llamacpp, vllm, ...): OpenAI has no version call.
                version=", ".join(owners) or "OpenAI-compatible",
                installed=tuple(
                    InstalledModel(
                        name=m.name,
                        size=m.size,
                        digest=m.digest,
                        parameter_size=humancount(m.parameters) if m.parameters else "",
                    )
                    for m in models.values()
                ),
                loaded=tuple(
                    LoadedModel(
                        name=m.name,
                        size=m.size,
                        size_vram=0,
                        expires_at=expires,
                        context_length=m.context_length,
                    )
                    for m in models.values()
                ),
            )
        except TimeoutError:
            error = f"{self.name} at {self.url} did not answer within {_PROBE_TIMEOUT_S:g} s"
        except BackendUnavailable as exc:
            error = str(exc)
        except ValueError as exc:
            error = f"{self.name} at {self.url} does not answer like an OpenAI-compatible server ({exc})"
        return BackendState(kind=self.kind, url=self.url, reachable=False, error=error)

    # -- listings ------------------------------------------------------------------------------------

    async def _list(self) -> dict[str, ServedModel]:
        """Read the server's models afresh; while the model is working, give the last listing.

        llama-cpp-python's server ends a stream early when another request arrives (its
        --interrupt_requests, on by default), so the node's own streams are not disturbed by listings.
        """
        if self._working and self._listed_at >= 0:
            return self._models
        async with self._http.request(
            "GET", "/v1/models", {"Accept": "application/json", **self._auth}, None
        ) as upstream:
            body = await upstream.read()
            if upstream.status in (401, 403):
                raise BackendUnavailable(
                    f"{self.name} at {self.url} wants an API key (HTTP {upstream.status}): give the node "
                    "the key the server was started with in the environment variable INFERHUB_BACKEND_API_KEY"
                )
            if upstream.status != 200:
                raise BackendUnavailable(
                    f"{self.name} at {self.url} answered /v1/models with HTTP {upstream.status}"
                )
        models = served_models(loads(body, "/v1/models"))
        # A server that gives no creation time (llama-cpp-python) has its models dated when first listed.
        now = int(time.time())
        self._models = {
            key: m if m.created else dataclasses.replace(m, created=self._first_listed.setdefault(m.id, now))
            for key, m in models.items()
        }
        self._listed_at = time.monotonic()
        return self._models

    def _work(self, stack: contextlib.AsyncExitStack) -> None:
        """Count a request as the server's work until `stack` closes."""
        self._working += 1
        stack.callback(self._worked)

    def _worked(self) -> None:
        self._working -= 1

    async def _find(self, requested: str) -> ServedModel | None:
        """Return the served model a request names, by its Ollama name or its id; None if not served."""
        found = lookup(self._models, requested)
        if found is None and time.monotonic() - self._listed_at >= _RELIST_GAP_S:
            found = lookup(await self._list(), requested)
        return found

    # -- dispatch ------------------------------------------------------------------------------------

    async def _answer(
        self,
        stack: contextlib.AsyncExitStack,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: Body,
    ) -> UpstreamResponse:
        path = path_qs.partition("?")[0]
        # Only blob uploads come streamed, and they are refused unread: an OpenAI server keeps no blobs.
        if isinstance(body, StreamReader):
            body = None
        try:
            if path.startswith("/v1/"):
                return await self._openai(stack, method, path, path_qs, headers, body)
            return await self._native(stack, method, path, body)
        except ApiError as refusal:
            return _error_reply(refusal.status, refusal.message, openai=path.startswith("/v1/"))

    async def _native(
        self, stack: contextlib.AsyncExitStack, method: str, path: str, body: bytes | None
    ) -> _Reply:
        if path == "/api/version":
            return _json_reply({"version": OLLAMA_VERSION})
        if path == "/api/tags":
            models = await self._list()
            return _json_reply({"models": [tags_entry(m) for m in models.values()]})
        if path == "/api/ps":
            models = await self._list()
            expires = rfc3339(datetime.now(UTC) + FOREVER)
            return _json_reply({"models": [ps_entry(m, expires) for m in models.values()]})
        fields = _fields(body) if method == "POST" else {}
        if path == "/api/show":
            return await self._show(fields)
        if path in ("/api/chat", "/api/generate"):
            return await self._generate(stack, fields, chat=path == "/api/chat")
        if path in ("/api/embed", "/api/embeddings"):
            return await self._embed(stack, fields, legacy=path == "/api/embeddings")
        found = match(method, path).endpoint
        if found is not None and found.kind in (Kind.MANAGE, Kind.BLOB):
            raise ApiError(
                501,
                f"{self.name} at {self.url} is an OpenAI-compatible server, which InferHub cannot ask to "
                "pull, create, copy or delete models; manage its models in that server",
            )
        return _Reply(404, "text/plain; charset=utf-8", b"404 page not found")

    # -- /api/show -----------------------------------------------------------------------------------

    async def _show(self, fields: dict[str, Any]) -> _Reply:
        requested = text_field(fields, "model") or text_field(fields, "name")
        if not requested:
            raise ApiError(400, "model is required")
        model = await self._find(requested)
        if model is None:
            raise ApiError(404, f"model '{short_name(model_key(requested))}' not found")
        # The architecture is not listed; clients read `<architecture>.context_length` all the same.
        info: dict[str, Any] = {"general.architecture": "unknown"}
        if model.parameters:
            info["general.parameter_count"] = model.parameters
        if model.context_length:
            info["unknown.context_length"] = model.context_length
        return _json_reply(
            {
                "license": "",
                "modelfile": f"# Served by the OpenAI-compatible server at {self.url} as {model.id!r}\n"
                f"FROM {model.id}\n",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": model.details(),
                "model_info": info,
                "capabilities": ["completion"],
                "modified_at": model.modified_at(),
            }
        )

    # -- /api/chat and /api/generate ------------------------------------------------------------------

    async def _generate(
        self, stack: contextlib.AsyncExitStack, fields: dict[str, Any], *, chat: bool
    ) -> _Reply:
        requested = text_field(fields, "model") or ""
        if not requested:
            raise ApiError(400, "model is required") if chat else ApiError(404, "model '' not found")
        model = await self._find(requested)
        if model is None:
            raise ApiError(404, f"model '{requested}' not found")
        turn = Turn(requested, chat=chat)
        asked = completion(fields, chat=chat)
        if asked is None:
            return _json_reply(turn.loaded(unloads_now(fields.get("keep_alive"))))
        path, payload = asked
        # A stream is asked for as a stream, so its pieces go out as they come and are timed here; a
        # whole reply is asked for whole, since some servers count prompt tokens only then.
        streamed = fields.get("stream") is not False
        payload.update(model=model.id, stream=streamed)
        if streamed:
            payload["stream_options"] = {"include_usage": True}
        upstream = await self._post(stack, path, payload)
        if upstream.status != 200:
            raise server_error(upstream.status, await upstream.read(), requested)
        if "text/event-stream" in upstream.headers.get("Content-Type", ""):
            events = sse_events(upstream.iter_chunks())
        else:
            # A server that ignores `stream` answers with one object; it is one stream event to this.
            events = whole_as_events(loads(await upstream.read(), path))
        if streamed:
            return _Reply(200, _NDJSON, turn.ndjson(events, f"{self.name} at {self.url}"))
        return _json_reply(await turn.gather(events, f"{self.name} at {self.url}"))

    # -- /api/embed and /api/embeddings ---------------------------------------------------------------

    async def _embed(
        self, stack: contextlib.AsyncExitStack, fields: dict[str, Any], *, legacy: bool
    ) -> _Reply:
        requested = text_field(fields, "model") or ""
        if not requested:
            raise ApiError(400, "model is required") if legacy else ApiError(404, "model '' not found")
        model = await self._find(requested)
        if model is None:
            raise ApiError(
                404, f"model {json.dumps(requested, ensure_ascii=False)} not found, try pulling it first"
            )
        payload = embedding(fields, model.id, legacy=legacy)
        if payload is None:
            return _json_reply({"embedding": []} if legacy else {"model": requested, "embeddings": []})
        started = time.monotonic()
        upstream = await self._post(stack, "/v1/embeddings", payload)
        body = await upstream.read()
        if upstream.status != 200:
            raise server_error(upstream.status, body, requested)
        reply = loads(body, "/v1/embeddings")
        server = f"{self.name} at {self.url}"
        return _json_reply(
            embeddings(reply, requested, legacy=legacy, took_s=time.monotonic() - started, server=server)
        )

    async def _post(
        self, stack: contextlib.AsyncExitStack, path: str, payload: dict[str, Any]
    ) -> UpstreamResponse:
        """Ask the server `payload` as JSON at `path`, counted as work until the request ends."""
        self._work(stack)
        headers = {"Content-Type": "application/json", **self._auth}
        return await stack.enter_async_context(self._http.request("POST", path, headers, go_json(payload)))

    # -- /v1/messages and /v1/responses, where the server has none ------------------------------------

    async def _serves(self, path: str) -> bool:
        """Whether the server has an API of its own at `path`: asked with an empty request, which a server
        with it refuses as invalid and one without answers 404. Only a clear answer is kept: a server
        loading a model (503) or behind a failing proxy is asked again next time, translated meanwhile."""
        api = "/v1/messages" if path.startswith("/v1/messages") else path
        if api in self._served:
            return self._served[api]
        headers = {"Content-Type": "application/json", **self._auth}
        async with (
            asyncio.timeout(_PROBE_TIMEOUT_S),
            self._http.request("POST", api, headers, b"{}") as upstream,
        ):
            await upstream.read()
        if upstream.status in (404, 405):
            self._served[api] = False
        elif upstream.status < 300 or upstream.status in (400, 422):
            self._served[api] = True
        return self._served.get(api, False)

    async def _responses(self, stack: contextlib.AsyncExitStack, body: bytes | None) -> _Reply:
        """Answer OpenAI's Responses API, which many OpenAI-compatible servers lack, as a chat completion."""
        fields = _fields(body)
        requested = text_field(fields, "model") or ""
        model = await self._find(requested) if requested else None
        if model is None:
            raise ApiError(404, f"model '{requested}' not found")
        try:
            payload = responses.chat_request(fields, model.id)
        except responses.Refused as exc:
            raise ApiError(400, str(exc)) from None
        upstream = await self._post(stack, "/v1/chat/completions", payload)
        if upstream.status != 200:
            raise server_error(upstream.status, await upstream.read(), requested)
        if payload.get("stream"):
            events = responses.response_events(await _events_of(upstream), fields, requested)
            return _Reply(200, "text/event-stream", events)
        return _json_reply(
            responses.response(loads(await upstream.read(), "/v1/chat/completions"), fields, requested)
        )

    async def _messages(self, stack: contextlib.AsyncExitStack, body: bytes | None) -> _Reply:
        """Answer Anthropic's Messages API, which OpenAI-compatible servers lack, with a chat completion;
        its errors in Anthropic's shape, which its clients read."""
        fields = _fields(body)
        requested = text_field(fields, "model") or ""
        model = await self._find(requested) if requested else None
        if model is None:
            return _json_reply(error_body(f"model '{requested}' not found", 404), 404)
        try:
            payload = chat_request(fields, model.id)
        except Refused as exc:
            return _json_reply(error_body(str(exc), 400), 400)
        upstream = await self._post(stack, "/v1/chat/completions", payload)
        if upstream.status != 200:
            refusal = server_error(upstream.status, await upstream.read(), requested)
            return _json_reply(error_body(refusal.message, refusal.status), refusal.status)
        if payload.get("stream"):
            events = message_events(await _events_of(upstream), requested, estimate_tokens(fields))
            return _Reply(200, "text/event-stream", events)
        return _json_reply(message_reply(loads(await upstream.read(), "/v1/chat/completions"), requested))

    # -- /v1 -----------------------------------------------------------------------------------------

    async def _openai(
        self,
        stack: contextlib.AsyncExitStack,
        method: str,
        path: str,
        path_qs: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> UpstreamResponse:
        """Answer the model listings under Ollama's names, and Anthropic's Messages API and OpenAI's
        Responses API as chat completions where the server lacks them; pass the rest through, the model
        name mapped."""
        if method == "POST" and path in _TRANSLATED and not await self._serves(path):
            if path == "/v1/messages":
                return await self._messages(stack, body)
            if path == "/v1/responses":
                return await self._responses(stack, body)
            # As Ollama counts them: an estimate from the text's length.
            return _json_reply({"input_tokens": estimate_tokens(_fields(body))})
        if path == "/v1/models" and method == "GET":
            models = await self._list()
            return _json_reply({"object": "list", "data": [openai_entry(m) for m in models.values()]})
        if path.startswith("/v1/models/") and method == "GET":
            name = path.removeprefix("/v1/models/")
            model = await self._find(name)
            if model is None:
                raise ApiError(404, f"model '{short_name(model_key(name))}' not found")
            return _json_reply({**openai_entry(model), "id": name})
        requested: str | None = None
        if body and headers.get("Content-Type", "").startswith("application/json"):
            fields = loads_or_none(body)
            if fields is not None and isinstance(fields.get("model"), str):
                requested = fields["model"]
                model = await self._find(requested)
                if model is None:
                    raise ApiError(404, f"model '{requested}' not found")
                body = go_json({**fields, "model": model.id})
        self._work(stack)
        upstream = await stack.enter_async_context(
            self._http.request(method, path_qs, {**headers, **self._auth}, body)
        )
        content_type = upstream.headers.get("Content-Type", "")
        if requested is None or upstream.status != 200:
            return upstream
        # Replies echo the model name the client sent, as Ollama's do.
        if "text/event-stream" in content_type:
            return _Reply(200, content_type, renamed_events(upstream.iter_chunks(), requested))
        value = loads_or_none(await upstream.read())
        if value is None:
            raise BackendUnavailable(
                f"{self.name} at {self.url} answered {path} with a body that is not JSON"
            )
        return _Reply(200, content_type or _JSON, go_json(renamed(value, requested)))


async def _events_of(upstream: UpstreamResponse) -> AsyncIterator[dict[str, Any] | None]:
    """The stream events of a chat completion asked for as a stream: a server that ignores `stream` and
    answers whole gives the one event it amounts to, so the client still gets the events it asked for."""
    if "text/event-stream" in upstream.headers.get("Content-Type", ""):
        return sse_events(upstream.iter_chunks())
    return whole_as_events(loads(await upstream.read(), "/v1/chat/completions"))


def _fields(body: bytes | None) -> dict[str, Any]:
    """Read a request's JSON object; the API layer has checked it decodes (as Go's decoder reads it)."""
    value = loads_or_none(body or b"")
    return value if value is not None else {}
