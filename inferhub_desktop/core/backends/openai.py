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
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from ..names import model_key, short_name
from ..wire.endpoints import Kind, match
from ..wire.errors import BackendUnavailable
from ..wire.framing import FrameSplitter, Framing
from ..wire.payload import count, unloads_now
from ..wire.responses import error_payload, go_json
from .base import BackendState, Body, InstalledModel, LoadedModel, UpstreamResponse
from .http1 import HttpBackend

# The Ollama release whose API the translation follows; clients such as Open WebUI read it as numbers.
OLLAMA_VERSION = "0.12.10"

_JSON = "application/json; charset=utf-8"
_NDJSON = "application/x-ndjson"
_PROBE_TIMEOUT_S = 3.0
# A request naming a model the last listing lacks reads the listing again, at most this often.
_RELIST_GAP_S = 1.0
# A probe reads the listing at most this often, and otherwise only checks that the server is there:
# llama-cpp-python's server ends whatever stream it is sending when any other request arrives.
_PROBE_LIST_S = 60.0
# An OpenAI server keeps its models loaded while it runs: Ollama says so with the longest expiry it has.
_FOREVER = timedelta(days=365 * 292)
# Ollama's num_predict takes -1 (no limit) and -2 (fill the context); OpenAI servers have no such values.
_OPTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
)
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:/-]+")
_IMAGE_TYPES = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def ollama_name(model_id: str) -> str:
    """Return the Ollama name an OpenAI model id is listed under."""
    name = model_id.strip()
    if name.lower().endswith(".gguf") or name.startswith(("/", ".")) or "\\" in name:
        # A server started with a model file lists it under the file's path: the file name says more.
        name = re.split(r"[\\/]", name)[-1]
        name = name[:-5] if name.lower().endswith(".gguf") else name
    name = _UNSAFE_NAME_CHARS.sub("-", name).strip("-./:")
    # Ollama's names have a namespace and a model (a host aside): deeper ids keep their last two parts.
    name = "/".join(name.split("/")[-2:]) or "model"
    if name.rfind(":") <= name.rfind("/"):
        name += ":latest"
    return name


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A model the server lists, with what its listing says about it."""

    id: str
    name: str
    created: int = 0
    owned_by: str = ""
    size: int = 0
    parameters: int | None = None
    context_length: int | None = None

    @property
    def digest(self) -> str:
        # Stable for an id, as Ollama's digest is for a model's content.
        return hashlib.sha256(self.id.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf" if self.id.lower().endswith(".gguf") else "",
            "family": "",
            "families": None,
            "parameter_size": _humancount(self.parameters) if self.parameters else "",
            "quantization_level": "",
        }

    def modified_at(self) -> str:
        return _rfc3339(datetime.fromtimestamp(self.created, UTC))


def served_models(listing: Any) -> dict[str, ServedModel]:
    """Read a /v1/models reply into the models it lists, keyed by model_key of their Ollama names.

    Two ids that would get the same name (`a/x` and `b/x`... differ only in dropped parts) are told apart
    by a short hash of the later id, in id order, so each keeps its name while both are served.
    """
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        raise ValueError("/v1/models answered without a `data` list")
    entries = [e for e in listing["data"] if isinstance(e, dict) and isinstance(e.get("id"), str)]
    table: dict[str, ServedModel] = {}
    for entry in sorted(entries, key=lambda e: str(e["id"])):
        model_id = str(entry["id"])
        name = ollama_name(model_id)
        if model_key(name) in table:
            stem, _, tag = name.rpartition(":")
            name = f"{stem}-{hashlib.sha256(model_id.encode()).hexdigest()[:6]}:{tag}"
        meta = _object(entry.get("meta"))
        table[model_key(name)] = ServedModel(
            id=model_id,
            name=name,
            created=count(entry.get("created")) or 0,
            owned_by=str(entry.get("owned_by") or ""),
            # llama-server's `meta` has the file's size, its parameters and trained context; vLLM says
            # how long a context it serves.
            size=count(meta.get("size")) or 0,
            parameters=count(meta.get("n_params")),
            context_length=count(entry.get("max_model_len")) or count(meta.get("n_ctx_train")),
        )
    return table


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


class _Refusal(Exception):
    """The request cannot be answered: the client gets this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
            expires = _rfc3339(datetime.now(UTC) + _FOREVER)
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
                        parameter_size=_humancount(m.parameters) if m.parameters else "",
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
        models = served_models(_loads(body, "/v1/models"))
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
        found = _lookup(self._models, requested)
        if found is None and time.monotonic() - self._listed_at >= _RELIST_GAP_S:
            found = _lookup(await self._list(), requested)
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
        except _Refusal as refusal:
            return _error_reply(refusal.status, refusal.message, openai=path.startswith("/v1/"))

    async def _native(
        self, stack: contextlib.AsyncExitStack, method: str, path: str, body: bytes | None
    ) -> _Reply:
        if path == "/api/version":
            return _json_reply({"version": OLLAMA_VERSION})
        if path == "/api/tags":
            models = await self._list()
            return _json_reply({"models": [_tags_entry(m) for m in models.values()]})
        if path == "/api/ps":
            models = await self._list()
            expires = _rfc3339(datetime.now(UTC) + _FOREVER)
            return _json_reply({"models": [_ps_entry(m, expires) for m in models.values()]})
        fields = _fields(body) if method == "POST" else {}
        if path == "/api/show":
            return await self._show(fields)
        if path in ("/api/chat", "/api/generate"):
            return await self._generate(stack, fields, chat=path == "/api/chat")
        if path in ("/api/embed", "/api/embeddings"):
            return await self._embed(stack, fields, legacy=path == "/api/embeddings")
        found = match(method, path).endpoint
        if found is not None and found.kind in (Kind.MANAGE, Kind.BLOB):
            raise _Refusal(
                501,
                f"{self.name} at {self.url} is an OpenAI-compatible server, which InferHub cannot ask to "
                "pull, create, copy or delete models; manage its models in that server",
            )
        return _Reply(404, "text/plain; charset=utf-8", b"404 page not found")

    # -- /api/show -----------------------------------------------------------------------------------

    async def _show(self, fields: dict[str, Any]) -> _Reply:
        requested = _text(fields, "model") or _text(fields, "name")
        if not requested:
            raise _Refusal(400, "model is required")
        model = await self._find(requested)
        if model is None:
            raise _Refusal(404, f"model '{short_name(model_key(requested))}' not found")
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
        requested = _text(fields, "model") or ""
        if not requested:
            raise _Refusal(400, "model is required") if chat else _Refusal(404, "model '' not found")
        model = await self._find(requested)
        if model is None:
            raise _Refusal(404, f"model '{requested}' not found")
        turn = _Turn(requested, chat=chat)
        payload: dict[str, Any]
        if chat:
            messages = fields.get("messages") or []
            if not isinstance(messages, list):
                raise _Refusal(400, "messages must be a list of {role, content} objects")
            if not messages:
                return _json_reply(turn.loaded(unloads_now(fields.get("keep_alive"))))
            path, payload = "/v1/chat/completions", {"messages": _openai_messages(messages)}
        else:
            prompt = _text(fields, "prompt") or ""
            images = fields.get("images")
            if not prompt and not images:
                return _json_reply(turn.loaded(unloads_now(fields.get("keep_alive"))))
            if fields.get("raw") is True or _text(fields, "suffix"):
                # A raw prompt is the model's input as it is: the completions API, with no chat template.
                path, payload = "/v1/completions", {"prompt": prompt}
                if suffix := _text(fields, "suffix"):
                    payload["suffix"] = suffix
            else:
                system = _text(fields, "system")
                messages = [{"role": "system", "content": system}] if system else []
                messages.append({"role": "user", "content": _content(prompt, images)})
                path, payload = "/v1/chat/completions", {"messages": messages}
        payload.update(_sampling(fields))
        # A stream is asked for as a stream, so its pieces go out as they come and are timed here; a
        # whole reply is asked for whole, since some servers count prompt tokens only then.
        streamed = fields.get("stream") is not False
        payload.update(model=model.id, stream=streamed)
        if streamed:
            payload["stream_options"] = {"include_usage": True}
        self._work(stack)
        upstream = await stack.enter_async_context(
            self._http.request(
                "POST", path, {"Content-Type": "application/json", **self._auth}, go_json(payload)
            )
        )
        if upstream.status != 200:
            return _server_error(upstream.status, await upstream.read(), requested)
        if "text/event-stream" in upstream.headers.get("Content-Type", ""):
            events = _sse_events(upstream.iter_chunks())
        else:
            # A server that ignores `stream` answers with one object; it is one stream event to this.
            events = _whole_as_events(_loads(await upstream.read(), path))
        if streamed:
            return _Reply(200, _NDJSON, turn.ndjson(events, f"{self.name} at {self.url}"))
        return _json_reply(await turn.gather(events, f"{self.name} at {self.url}"))

    # -- /api/embed and /api/embeddings ---------------------------------------------------------------

    async def _embed(
        self, stack: contextlib.AsyncExitStack, fields: dict[str, Any], *, legacy: bool
    ) -> _Reply:
        requested = _text(fields, "model") or ""
        if not requested:
            raise _Refusal(400, "model is required") if legacy else _Refusal(404, "model '' not found")
        model = await self._find(requested)
        if model is None:
            raise _Refusal(
                404, f"model {json.dumps(requested, ensure_ascii=False)} not found, try pulling it first"
            )
        inputs = fields.get("prompt") if legacy else fields.get("input")
        if not inputs:
            return _json_reply({"embedding": []} if legacy else {"model": requested, "embeddings": []})
        if not isinstance(inputs, str | list):
            raise _Refusal(400, "input must be a string or a list of strings")
        payload: dict[str, Any] = {"model": model.id, "input": inputs, "encoding_format": "float"}
        if not legacy and isinstance(fields.get("dimensions"), int):
            payload["dimensions"] = fields["dimensions"]
        started = time.monotonic()
        self._work(stack)
        upstream = await stack.enter_async_context(
            self._http.request(
                "POST", "/v1/embeddings", {"Content-Type": "application/json", **self._auth}, go_json(payload)
            )
        )
        body = await upstream.read()
        if upstream.status != 200:
            return _server_error(upstream.status, body, requested)
        reply = _loads(body, "/v1/embeddings")
        data = reply.get("data")
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise BackendUnavailable(
                f"{self.name} at {self.url} answered /v1/embeddings without a `data` list"
            )
        vectors = [d.get("embedding") for d in sorted(data, key=lambda d: count(d.get("index")) or 0)]
        if not all(isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in vectors):
            # llama-cpp-python gives a model without pooling (a chat model) one vector per token.
            raise _Refusal(
                500,
                f"{self.name} at {self.url} did not answer with one vector of numbers per input; "
                f"is {requested} an embedding model?",
            )
        if legacy:
            return _json_reply({"embedding": vectors[0] if vectors else []})
        usage = _object(reply.get("usage"))
        return _json_reply(
            {
                "model": requested,
                "embeddings": vectors,
                "total_duration": _ns(time.monotonic() - started),
                "load_duration": 0,
                "prompt_eval_count": count(usage.get("prompt_tokens")) or 0,
            }
        )

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
        """Answer the model listings under Ollama's names; pass the rest through, the model name mapped."""
        if path == "/v1/models" and method == "GET":
            models = await self._list()
            return _json_reply({"object": "list", "data": [_openai_entry(m) for m in models.values()]})
        if path.startswith("/v1/models/") and method == "GET":
            name = path.removeprefix("/v1/models/")
            model = await self._find(name)
            if model is None:
                raise _Refusal(404, f"model '{short_name(model_key(name))}' not found")
            return _json_reply({**_openai_entry(model), "id": name})
        requested: str | None = None
        if body and headers.get("Content-Type", "").startswith("application/json"):
            fields = _loads_or_none(body)
            if fields is not None and isinstance(fields.get("model"), str):
                requested = fields["model"]
                model = await self._find(requested)
                if model is None:
                    raise _Refusal(404, f"model '{requested}' not found")
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
            return _Reply(200, content_type, _renamed_events(upstream.iter_chunks(), requested))
        value = _loads_or_none(await upstream.read())
        if value is None:
            raise BackendUnavailable(
                f"{self.name} at {self.url} answered {path} with a body that is not JSON"
            )
        return _Reply(200, content_type or _JSON, go_json(_renamed(value, requested)))


class _Turn:
    """One reply of the model, read from the server's events and written as Ollama's chunks."""

    def __init__(self, model: str, *, chat: bool) -> None:
        self._model = model
        self._chat = chat
        self._started = time.monotonic()
        self._first_at: float | None = None
        self._deltas = 0
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        # llama-server's own measure of prompt and generation time, in milliseconds.
        self._timings: dict[str, Any] = {}
        self._calls: dict[int, dict[str, str]] = {}
        self._ended = False

    def loaded(self, unloaded: bool) -> dict[str, Any]:
        """The reply to a request with nothing to say, which Ollama uses to load or unload a model: an
        OpenAI server keeps its models loaded, so there is nothing to do."""
        reason = "unload" if unloaded else "load"
        if self._chat:
            return {
                **self._head(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": reason,
                "done": True,
            }
        return {**self._head(), "response": "", "done_reason": reason, "done": True}

    async def ndjson(
        self, events: AsyncGenerator[dict[str, Any] | None, None], server: str
    ) -> AsyncIterator[bytes]:
        """Yield Ollama's stream: a chunk per piece of text, the tool calls, then the final chunk."""
        async with contextlib.aclosing(events):
            async for event in events:
                if event is None:
                    self._ended = True
                elif error := _event_error(event):
                    yield go_json({"error": error}) + b"\n"
                    return
                else:
                    for content, thinking in self._feed(event):
                        yield go_json(self._chunk(content, thinking)) + b"\n"
        self._check_ended(server)
        if self._calls:
            try:
                calls = self._tool_calls()
            except _Refusal as refusal:
                yield go_json({"error": refusal.message}) + b"\n"
                return
            yield go_json(self._chunk("", "", tool_calls=calls)) + b"\n"
        yield go_json(self._final()) + b"\n"

    async def gather(
        self, events: AsyncGenerator[dict[str, Any] | None, None], server: str
    ) -> dict[str, Any]:
        """Return the whole reply as one Ollama object, for a client that asked for no stream."""
        contents: list[str] = []
        thoughts: list[str] = []
        async with contextlib.aclosing(events):
            async for event in events:
                if event is None:
                    self._ended = True
                elif error := _event_error(event):
                    raise _Refusal(500, error)
                else:
                    for content, thinking in self._feed(event):
                        contents.append(content)
                        thoughts.append(thinking)
        self._check_ended(server)
        final = self._final()
        text, thinking = "".join(contents), "".join(thoughts)
        if self._chat:
            final["message"]["content"] = text
            if thinking:
                final["message"]["thinking"] = thinking
            if self._calls:
                final["message"]["tool_calls"] = self._tool_calls()
        else:
            final["response"] = text
            if thinking:
                final["thinking"] = thinking
        return final

    def _check_ended(self, server: str) -> None:
        # A stream cut short ends with neither `[DONE]` nor a finish reason.
        if not self._ended and self._finish is None:
            raise BackendUnavailable(f"{server} ended its reply before the model finished")

    def _feed(self, event: dict[str, Any]) -> list[tuple[str, str]]:
        """Take in one event; return the (text, thinking) pieces it adds."""
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self._timings = event["timings"]
        pieces = []
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
            delta = _object(choice.get("delta"))
            # /v1/completions streams `text`; vLLM and llama.cpp name thinking `reasoning_content`, Ollama
            # and newer vLLM `reasoning`.
            content = delta.get("content") or choice.get("text") or ""
            thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
            for call in delta.get("tool_calls") or ():
                self._add_call(call)
            if isinstance(content, str) and isinstance(thinking, str) and (content or thinking):
                self._deltas += 1
                if self._first_at is None:
                    self._first_at = time.monotonic()
                pieces.append((content, thinking))
        return pieces

    def _add_call(self, call: Any) -> None:
        """Gather a tool call that arrives in pieces: the name first, then the arguments in fragments."""
        if not isinstance(call, dict):
            return
        if self._first_at is None:
            self._first_at = time.monotonic()
        index = count(call.get("index"))
        slot = self._calls.setdefault(
            len(self._calls) if index is None else index, {"id": "", "name": "", "arguments": ""}
        )
        function = _object(call.get("function"))
        slot["id"] = str(call.get("id") or slot["id"])
        slot["name"] += str(function.get("name") or "")
        arguments = function.get("arguments")
        slot["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments or {})

    def _tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index, slot in sorted(self._calls.items()):
            try:
                arguments = json.loads(slot["arguments"] or "{}")
            except ValueError:
                raise _Refusal(
                    500,
                    f"the model called {slot['name']} with arguments that are not JSON: "
                    f"{slot['arguments']!r}",
                ) from None
            call: dict[str, Any] = {
                "function": {"index": index, "name": slot["name"], "arguments": arguments}
            }
            if slot["id"]:
                call["id"] = slot["id"]
            calls.append(call)
        return calls

    def _head(self) -> dict[str, Any]:
        return {"model": self._model, "created_at": _rfc3339(datetime.now(UTC))}

    def _chunk(
        self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        if self._chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            return {**self._head(), "message": message, "done": False}
        chunk: dict[str, Any] = {**self._head(), "response": content}
        if thinking:
            chunk["thinking"] = thinking
        return {**chunk, "done": False}

    def _final(self) -> dict[str, Any]:
        end = time.monotonic()
        first = self._first_at or end
        usage = self._usage or {}
        # Without `usage`, each piece of text a server streams is one token.
        eval_count = count(usage.get("completion_tokens"))
        final = self._chunk("", "")
        final.update(
            done=True,
            done_reason="length" if self._finish == "length" else "stop",
            total_duration=_ns(end - self._started),
            load_duration=0,
        )
        if (prompt_tokens := count(usage.get("prompt_tokens"))) is not None:
            final["prompt_eval_count"] = prompt_tokens
        prompt_ms, predicted_ms = self._timings.get("prompt_ms"), self._timings.get("predicted_ms")
        if isinstance(prompt_ms, int | float) and isinstance(predicted_ms, int | float):
            prompt_s, eval_s = prompt_ms / 1000, predicted_ms / 1000
        elif self._deltas > 1:
            # A stream: the prompt took until the first piece, generation the rest.
            prompt_s, eval_s = first - self._started, end - first
        else:
            # A whole reply does not say how its time was split: all of it counts as generation.
            prompt_s, eval_s = 0.0, end - self._started
        final.update(
            prompt_eval_duration=_ns(prompt_s),
            eval_count=self._deltas if eval_count is None else eval_count,
            eval_duration=_ns(eval_s),
        )
        return final


# -- translation helpers ----------------------------------------------------------------------------


def _openai_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Translate Ollama's chat messages; tool calls get the ids OpenAI's API pairs results with."""
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, function name) of tool calls awaiting their result
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Refusal(400, "each message must be an object with a role and content")
        role = str(message.get("role") or "")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise _Refusal(400, "a message's content must be a string")
        translated: dict[str, Any] = {"role": role, "content": _content(content, message.get("images"))}
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list) and calls:
            translated["tool_calls"] = []
            for index, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise _Refusal(400, "a tool call must have a function")
                call_id = str(call.get("id") or f"call_{number}_{index}")
                name = str(function.get("name") or "")
                translated["tool_calls"].append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(function.get("arguments") or {})},
                    }
                )
                unanswered.append((call_id, name))
        if role == "tool":
            answers = message.get("tool_call_id") or _answered(unanswered, message.get("tool_name"))
            if answers:
                translated["tool_call_id"] = str(answers)
        out.append(translated)
    return out


def _answered(unanswered: list[tuple[str, str]], name: Any) -> str | None:
    """Take the id of the earliest unanswered call (to the named function, if there is one)."""
    for position, (call_id, called) in enumerate(unanswered):
        if not name or called == name:
            del unanswered[position]
            return call_id
    return None


def _content(text: str, images: Any) -> str | list[dict[str, Any]]:
    """Return a message's content; with images, OpenAI's parts, each image a data: URI."""
    if not images:
        return text
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise _Refusal(400, "images must be a list of base64-encoded strings")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for image in images:
        parts.append({"type": "image_url", "image_url": {"url": f"data:{_image_type(image)};base64,{image}"}})
    return parts


def _image_type(encoded: str) -> str:
    try:
        head = base64.b64decode(encoded[:24] + "=" * (-len(encoded[:24]) % 4))
    except (binascii.Error, ValueError):
        raise _Refusal(400, "an image is not valid base64") from None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _IMAGE_TYPES if head.startswith(magic)), "image/png")


def _sampling(fields: dict[str, Any]) -> dict[str, Any]:
    """Translate Ollama's options, format and tools into an OpenAI request's fields."""
    options = _object(fields.get("options"))
    payload = {key: options[key] for key in _OPTIONS if options.get(key) is not None}
    predict = options.get("num_predict")
    if isinstance(predict, int) and predict >= 0:
        payload["max_tokens"] = predict
    fmt = fields.get("format")
    if fmt == "json":
        payload["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        payload["response_format"] = {"type": "json_schema", "json_schema": {"name": "reply", "schema": fmt}}
    if isinstance(fields.get("tools"), list) and fields["tools"]:
        payload["tools"] = fields["tools"]
    return payload


async def _sse_events(chunks: AsyncIterator[bytes]) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Yield the JSON objects of an SSE stream's `data:` fields, and None for `[DONE]`.

    What follows `[DONE]` is read and dropped, so the connection is read to its end and can be kept.
    """
    splitter = FrameSplitter(Framing.SSE)
    done = False
    async for chunk in chunks:
        if done:
            continue
        for event in _events(splitter.feed(chunk)):
            data = b"\n".join(
                line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if data.strip() == b"[DONE]":
                done = True
                yield None
                break
            value = _loads_or_none(data)
            if value is not None:
                yield value


async def _whole_as_events(value: dict[str, Any]) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Yield a whole chat.completion or text_completion as the one stream event it amounts to."""
    choices = []
    for choice in value.get("choices") or ():
        if isinstance(choice, dict):
            message = _object(choice.get("message"))
            calls = [
                {**c, "index": i}
                for i, c in enumerate(message.get("tool_calls") or ())
                if isinstance(c, dict)
            ]
            delta = {**message, "tool_calls": calls}
            choices.append(
                {"delta": delta, "text": choice.get("text"), "finish_reason": choice.get("finish_reason")}
            )
    yield {"choices": choices, "usage": value.get("usage"), "timings": value.get("timings")}
    yield None


async def _renamed_events(chunks: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
    """Pass an SSE stream through with each event's model name set to the one the client sent."""
    splitter = FrameSplitter(Framing.SSE)
    async for chunk in chunks:
        if frames := splitter.feed(chunk):
            lines = []
            for line in b"\n\n".join(_events(frames)).split(b"\n"):
                if line.startswith(b"data:") and (value := _loads_or_none(line[5:])) is not None:
                    line = b"data: " + go_json(_renamed(value, model))
                lines.append(line)
            yield b"\n".join(lines) + b"\n\n"
    if splitter.pending:
        yield splitter.pending


def _events(frames: bytes) -> list[bytes]:
    """Split complete SSE frames into their events; their lines may end in CRLF."""
    return frames.replace(b"\r\n", b"\n").removesuffix(b"\n\n").split(b"\n\n")


def _renamed(value: dict[str, Any], model: str) -> dict[str, Any]:
    """Set the model name of an OpenAI reply, or of the response object a /v1/responses event carries."""
    renamed = {**value, "model": model} if "model" in value else dict(value)
    if isinstance(value.get("response"), dict) and "model" in value["response"]:
        renamed["response"] = {**value["response"], "model": model}
    return renamed


def _event_error(event: dict[str, Any]) -> str | None:
    """Return the error an event reports (a server that failed midway), if it is one."""
    error = event.get("error")
    if error is None and event.get("object") == "error":
        error = event
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)
    return str(error) if error else None


def _server_error(status: int, body: bytes, model: str) -> _Reply:
    """Turn the server's error into Ollama's: `{"error": message}`, with its status."""
    value = _loads_or_none(body) or {}
    message = _event_error(value) or value.get("detail") or value.get("message")
    if isinstance(message, list):  # FastAPI's validation errors
        message = "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in message
        )
    text = str(message or body.decode("utf-8", "replace").strip() or f"HTTP {status}")
    if status == 404 and "model" in text.lower():
        text = f"model '{model}' not found"
    return _error_reply(status, text)


def _tags_entry(model: ServedModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": model.modified_at(),
        "size": model.size,
        "digest": model.digest,
        "details": model.details(),
    }


def _ps_entry(model: ServedModel, expires_at: str) -> dict[str, Any]:
    return {
        "name": model.name,
        "model": model.name,
        "size": model.size,
        "digest": model.digest,
        "details": model.details(),
        "expires_at": expires_at,
        # Whether the server holds the model in VRAM is not in its listing.
        "size_vram": 0,
        "context_length": model.context_length or 0,
    }


def _openai_entry(model: ServedModel) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by or "library",
    }


def _lookup(models: Mapping[str, ServedModel], requested: str) -> ServedModel | None:
    found = models.get(model_key(requested))
    if found is None:
        found = next((m for m in models.values() if m.id == requested.strip()), None)
    return found


def _fields(body: bytes | None) -> dict[str, Any]:
    """Read a request's JSON object; the API layer has checked it decodes (as Go's decoder reads it)."""
    value = _loads_or_none(body or b"")
    return value if value is not None else {}


def _text(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise _Refusal(400, f"{key} must be a string")
    return value


def _loads(body: bytes, path: str) -> dict[str, Any]:
    value = _loads_or_none(body)
    if value is None:
        raise ValueError(f"{path} answered with a body that is not a JSON object: {body[:80]!r}")
    return value


def _loads_or_none(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.JSONDecoder().raw_decode(data.decode("utf-8").strip())[0]
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _humancount(count: int) -> str:
    """Write a parameter count as Ollama's listings do: 135M, 7.6B."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(count)
