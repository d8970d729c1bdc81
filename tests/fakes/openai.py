"""A faithful fake of an OpenAI-compatible local model server, for tests and benchmarks.

It answers /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models the way one of three
servers does, chosen by `flavour`: llama.cpp's llama-server, vLLM's OpenAI server or LM Studio. Each
flavour keeps its server's JSON shapes, SSE framing, status codes, error bodies and quirks; knobs
shape timing, limit concurrency and inject faults. Sources, named beside each behaviour:

- llama.cpp: tools/server/server.cpp, server-context.cpp, server-common.cpp, server-task.cpp,
  server-http.cpp and common/chat.cpp (upstream master, 2025-26);
- vLLM: vllm/entrypoints/openai/{engine,chat_completion,completion}/, pooling/embed/protocol.py and
  serve/utils/server_utils.py (2026), vllm/exceptions.py;
- LM Studio (closed source): its API changelog and what its bug tracker and users quote verbatim.

What the fake generates is deterministic:

- The tokeniser splits text into words and single punctuation marks (`\\w+|[^\\w\\s]`). A prompt costs
  those tokens plus one (the BOS token); a chat prompt is its messages rendered as `role: text`
  lines, and each image adds IMAGE_TOKENS.
- A reply is words drawn from a fixed vocabulary by a generator seeded with the prompt, one word per
  token. It has `max_tokens` tokens (finish "length") or, when no limit is sent, `reply_tokens`
  (finish "stop", the model's natural end); a `stop` sequence cuts it short (finish "stop").
- With `tools`, a last user message containing the word "weather" (or a tool_choice of "required"
  or a named function) gets a call to the first tool (or the named one) instead of text, its
  arguments filled from the tool's required JSON-schema properties.
- `response_format` json_object / json_schema replies are a JSON object: the schema's required
  properties, or {"answer": "<words>"}, sent in as many slices as the reply has tokens.
- With `reasoning`, the first half of a chat reply's tokens are reasoning, sent before the content.

None of the three serves GET /v1/models/{id}: each answers it as a path it does not know. close()
cuts the streams in progress, as a server that goes away does. Run the fake as its own process with
``python -m tests.fakes.openai --help``; it prints ``LISTENING <url>`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import re
import secrets
import string
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from tests.fakes import serve_until_stopped
from tests.fakes.base import (
    FakeServer,
    Fault,
    Json,
    Pacer,
    StreamWriter,
    base64_floats,
    dumps,
    embedding,
    paths_of,
)

Flavour = Literal["llama.cpp", "vllm", "lmstudio"]
FLAVOURS: tuple[Flavour, ...] = get_args(Flavour)
Kind = Literal["chat", "embedding"]

IMAGE_TOKENS = 64  # what one image adds to prompt_tokens
JSON_UTF8 = "application/json; charset=utf-8"
JSON_PLAIN = "application/json"
EVENT_STREAM = "text/event-stream"
LLAMA_CPP_BUILD = "b7123-00dd0816"  # llama-server sends its build_info as system_fingerprint
DONE = b"data: [DONE]\n\n"

_TOKEN = re.compile(r"\w+|[^\w\s]")
_FRAGMENT = re.compile(r"\s*(?:\w+|[^\w\s])")  # a token with the whitespace before it
_WEATHER = re.compile(r"\bweather\b", re.IGNORECASE)
_VOCABULARY = (
    "the", "model", "answers", "with", "a", "short", "and", "deterministic", "reply", "about", "your",
    "prompt", "while", "tokens", "flow", "through", "proxy", "pool", "of", "machines", "on", "local",
    "network", "each", "word", "arrives", "in", "its", "own", "chunk", "quickly", "today",
)  # fmt: skip
_ALNUM = string.ascii_letters + string.digits

# Endpoints that fail_next() applies to by default: inference and listings, not /health; and those
# whose replies break_after() and error_after() can cut.
_FAULTABLE = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"})
_GENERATING = frozenset({"/v1/chat/completions", "/v1/completions"})


class _ApiError(Exception):
    """An error reply: the handler words it, the flavour shapes it.

    `kind` overrides the flavour's error type; `param` and `code` fill OpenAI's fields where the
    flavour has them; `extra` adds fields to the error object; `body` replaces the whole body.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        param: str | None = None,
        code: str | None = None,
        extra: Json | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.extra = extra or {}
        self.body = body


@dataclass(frozen=True)
class FakeModel:
    """One model the server serves, with the metadata its listings report."""

    id: str
    kind: Kind = "chat"
    context_length: int = 8192  # llama.cpp's n_ctx (and n_ctx_train), vLLM's max_model_len
    n_params: int = 8_030_261_248
    size: int = 4_920_734_016
    n_vocab: int = 128_256
    n_embd: int = 4096
    dimensions: int = 8  # the length of the embedding vectors it returns
    vision: bool = False  # accepts image_url parts (llama.cpp: started with an mmproj)
    matryoshka: bool = False  # vLLM honours `dimensions` only for these
    ftype: str = "Q4_K - Medium"


@dataclass(frozen=True)
class _Piece:
    """One generated token as it goes out: text, reasoning, or part of a tool call."""

    channel: Literal["content", "reasoning", "tool", "arguments"]
    text: str


@dataclass(frozen=True)
class _ToolCall:
    """The tool call a reply makes."""

    id: str
    name: str
    arguments: str  # a JSON object, as a string


@dataclass
class _Clock:
    """When a request's stages happened (loop time, seconds), for llama.cpp's `timings`."""

    started: float = 0.0
    prompt_done: float = 0.0
    last_token: float = 0.0


@dataclass
class _Job:
    """A validated inference request and the reply planned for it."""

    model: FakeModel
    prompt_tokens: int
    pieces: list[_Piece]
    tokens: int  # completion tokens, the dropped tail of a stop sequence included
    finish: str
    stream: bool
    include_usage: bool
    continuous_usage: bool = False
    stop_reason: str | None = None
    tool: _ToolCall | None = None
    ident: str = ""
    created: int = 0
    clock: _Clock = field(default_factory=_Clock)

    @property
    def usage(self) -> Json:
        """Return OpenAI's usage object."""
        return _usage(self.prompt_tokens, self.tokens)


@dataclass(frozen=True)
class _Frames:
    """SSE events that go out together; `token` marks those that carry a generated token."""

    events: tuple[bytes, ...]
    token: bool


@dataclass(frozen=True)
class _Limits:
    """How many tokens a reply may have, and whether that is its natural end."""

    budget: int
    natural: bool


class _StreamWriter(StreamWriter):
    """Write one SSE reply, each event as its own chunk, firing an injected fault before a token."""

    def __init__(
        self, request: web.Request, dialect: _Dialect, fault: Fault | None, streams: dict[int, web.Request]
    ) -> None:
        super().__init__(request, {hdrs.CONTENT_TYPE: dialect.sse_type, **dialect.headers}, fault)
        self._dialect = dialect
        self._streams = streams

    async def send(self, frames: _Frames) -> bool:
        """Send the frames; return False once a fault ended the reply."""
        if frames.token and (fault := self.due) is not None:
            await self._fire(fault)
            return False
        for event in frames.events:
            await self.write(event)
        self.sent += frames.token
        return True

    async def write(self, data: bytes) -> None:
        # A stream under way is cut when the server goes away.
        self._streams[id(self.request)] = self.request
        await super().write(data)

    async def _fire(self, fault: Fault) -> None:
        if fault.drop:
            self.drop()
            return
        if not self.response.prepared and self._dialect.first_error_as_status:
            # llama.cpp answers an error that comes before the first chunk as a plain status
            # (server-context.cpp handle_completions_impl: "the first error must be treated as
            # non-stream response").
            raise _ApiError(500, fault.message)
        await self.write(self._dialect.stream_error(fault.message))
        if self._dialect.done_after_error:
            await self.write(DONE)


# -- the flavours -------------------------------------------------------------------------------------


class _Dialect:
    """How one server validates requests and words replies and errors; a subclass per server."""

    json_type: ClassVar[str] = JSON_UTF8
    sse_type: ClassVar[str] = EVENT_STREAM
    headers: ClassVar[dict[str, str]] = {}
    done_after_error: ClassVar[bool] = False
    first_error_as_status: ClassVar[bool] = False

    def __init__(self, models: Sequence[FakeModel], embeddings: bool) -> None:
        self.models = list(models)
        self.embeddings = embeddings

    # -- routes and plain replies

    def routes(self, fake: FakeOpenAI) -> list[web.RouteDef]:
        """Return the server's route table."""
        return [
            web.get("/v1/models", fake.handle_models, allow_head=False),
            web.post("/v1/chat/completions", fake.handle_chat),
            web.post("/v1/completions", fake.handle_completions),
            web.post("/v1/embeddings", fake.handle_embeddings),
        ]

    def json(self, obj: Any, status: int = 200) -> web.Response:
        """Answer one JSON value."""
        return web.Response(
            status=status,
            body=dumps(obj).encode(),
            headers={hdrs.CONTENT_TYPE: self.json_type, **self.headers},
        )

    def error_response(self, error: _ApiError) -> web.Response:
        """Answer an error in the server's own shape."""
        body = error.body if error.body is not None else {"error": self.error_object(error)}
        return self.json(body, error.status)

    def error_object(self, error: _ApiError) -> Json:
        """Return the server's error object."""
        raise NotImplementedError

    def stream_error(self, message: str) -> bytes:
        """Return the SSE event that reports an error once a stream has begun."""
        return _sse({"error": self.error_object(_ApiError(500, message))})

    def not_found(self, request: web.Request) -> web.Response:
        """Answer a path the server does not serve."""
        raise NotImplementedError

    def method_not_allowed(self, request: web.Request) -> web.Response:
        """Answer a known path asked with the wrong method."""
        return self.not_found(request)

    def models_body(self) -> Json:
        """Return GET /v1/models."""
        raise NotImplementedError

    # -- request checks

    def parse_body(self, raw: bytes) -> Json:
        """Parse a request body as a JSON object, failing in the server's words."""
        raise NotImplementedError

    def resolve(self, name: Any, kind: Kind) -> FakeModel:
        """Pick the model a request names, or fail the way the server does."""
        raise NotImplementedError

    def check_chat(self, body: Json) -> None:
        """Validate a chat request's shape before its model is looked up."""

    def check_completion(self, body: Json) -> None:
        """Validate a completion request's shape before its model is looked up."""

    def check_embedding(self, body: Json) -> None:
        """Validate an embedding request's shape before its model is looked up."""

    def check_kind(self, model: FakeModel, kind: Kind) -> None:
        """Refuse inference the model cannot do."""

    def check_image(self, url: str, model: FakeModel) -> None:
        """Accept an image_url part or refuse it in the server's words."""

    def response_format(self, body: Json) -> Json | None:
        """Return the JSON schema a reply must follow ({} for any object), or None for text."""
        fmt = body.get("response_format")
        if not isinstance(fmt, dict):
            return None
        if fmt.get("type") == "json_object":
            return fmt.get("schema") if isinstance(fmt.get("schema"), dict) else {}
        if fmt.get("type") == "json_schema":
            wrapper = fmt.get("json_schema")
            schema = wrapper.get("schema") if isinstance(wrapper, dict) else None
            return schema if isinstance(schema, dict) else {}
        return None

    def limits(self, body: Json, model: FakeModel, prompt_tokens: int, reply_tokens: int) -> _Limits:
        """Decide the reply's length: max_tokens (negative: unlimited), capped by the context."""
        limit = _max_tokens(body, ("max_completion_tokens", "max_tokens"))
        room = max(0, model.context_length - prompt_tokens)
        if limit is None or limit < 0:
            return _Limits(min(reply_tokens, room), reply_tokens <= room)
        return _Limits(min(limit, room), False)

    def usage_options(self, body: Json) -> tuple[bool, bool]:
        """Return (include_usage, continuous usage) from stream_options."""
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True, False

    def stop_words(self, body: Json) -> list[str]:
        """Return the stop sequences (a string or a list)."""
        stop = body.get("stop")
        if isinstance(stop, str):
            return [stop] if stop else []
        if isinstance(stop, list):
            return [word for word in stop if isinstance(word, str) and word]
        return []

    def embed_inputs(self, body: Json) -> list[str | list[int]]:
        """Return the texts (or token arrays) to embed."""
        value = body.get("input")
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(_is_int(item) for item in value):
            return [list(value)]
        if isinstance(value, list) and all(isinstance(item, str | list) for item in value):
            return list(value)
        raise _ApiError(400, "invalid input")

    def embed_dimensions(self, body: Json, model: FakeModel) -> int:
        """Return the vector length asked for (0: the model's own)."""
        return 0

    def embed_encoding(self, body: Json) -> bool:
        """Return whether vectors go out as base64 float32."""
        encoding = body.get("encoding_format")
        if encoding in (None, "float"):
            return False
        if encoding == "base64":
            return True
        raise _ApiError(400, f"Invalid encoding_format: {encoding}")

    # -- replies

    def chat_ident(self) -> str:
        """Return a new chat completion id."""
        return f"chatcmpl-{uuid.uuid4().hex}"

    def completion_ident(self) -> str:
        """Return a new text completion id."""
        return f"cmpl-{uuid.uuid4().hex}"

    def tool_ident(self) -> str:
        """Return a new tool call id."""
        return f"call_{uuid.uuid4().hex[:24]}"

    def chat_body(self, job: _Job) -> Json:
        """Return a non-streamed chat.completion."""
        raise NotImplementedError

    def chat_stream(self, job: _Job, pieces: AsyncIterator[_Piece]) -> AsyncGenerator[_Frames, None]:
        """Return the SSE events of a streamed chat completion."""
        raise NotImplementedError

    def completion_body(self, job: _Job) -> Json:
        """Return a non-streamed text_completion."""
        raise NotImplementedError

    def completion_stream(self, job: _Job, pieces: AsyncIterator[_Piece]) -> AsyncGenerator[_Frames, None]:
        """Return the SSE events of a streamed text completion."""
        raise NotImplementedError

    def embeddings_body(self, job: _Job, echo: Any, vectors: list[list[float]], as_base64: bool) -> Json:
        """Return an embedding list."""
        raise NotImplementedError

    def health(self) -> web.Response:
        """Answer GET /health, where the server has it."""
        raise NotImplementedError


def _llama_cpp_delta(piece: _Piece, tool: _ToolCall | None) -> Json:
    """One piece of a streamed reply as llama.cpp's delta (common/chat.cpp
    common_chat_msg_diff_to_json_oaicompat)."""
    if piece.channel == "content":
        return {"content": piece.text}
    if piece.channel == "reasoning":
        return {"reasoning_content": piece.text}
    call: Json = {"index": 0}
    if piece.channel == "tool" and tool is not None:
        call |= {"id": tool.id, "type": "function", "function": {"name": piece.text, "arguments": ""}}
    else:
        call["function"] = {"arguments": piece.text}
    return {"tool_calls": [call]}


class _LlamaCpp(_Dialect):
    """llama.cpp's llama-server (tools/server)."""

    headers: ClassVar[dict[str, str]] = {"Server": "llama.cpp"}  # server-http.cpp set_default_headers
    first_error_as_status = True
    # server-common.cpp format_error_response: each error_type has one HTTP status.
    _TYPES: ClassVar[dict[int, str]] = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        500: "server_error",
        501: "not_supported_error",
        503: "unavailable_error",
    }

    def routes(self, fake: FakeOpenAI) -> list[web.RouteDef]:
        # server.cpp registers /health and /v1/health, and /models beside /v1/models.
        return [
            *super().routes(fake),
            web.get("/health", fake.handle_health, allow_head=False),
            web.get("/v1/health", fake.handle_health, allow_head=False),
            web.get("/models", fake.handle_models, allow_head=False),
        ]

    def error_object(self, error: _ApiError) -> Json:
        kind = error.kind or self._TYPES.get(error.status, "server_error")
        return {"code": error.status, "message": error.message, "type": kind, **error.extra}

    def not_found(self, request: web.Request) -> web.Response:
        # server-http.cpp set_error_handler; cpp-httplib has no 405, so a wrong method lands here too.
        return self.json(
            {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}, 404
        )

    def health(self) -> web.Response:
        return self.json({"status": "ok"})

    def loading(self) -> web.Response:
        """Answer anything while the model loads (server-http.cpp middleware_server_state)."""
        return self.json(
            {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}, 503
        )

    def models_body(self) -> Json:
        # server-context.cpp get_res_models: an Ollama-style `models` list beside OpenAI's `data`.
        now = int(time.time())
        return {
            "models": [_llama_cpp_ollama_entry(model) for model in self.models],
            "object": "list",
            "data": [_llama_cpp_model_info(model, now) for model in self.models],
        }

    def parse_body(self, raw: bytes) -> Json:
        # Handlers call nlohmann's json::parse; its parse_error is no invalid_argument, so ex_wrapper
        # (server.cpp) answers 500 server_error with the parser's message.
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            message = (
                "[json.exception.parse_error.101] parse error at line 1, column 1: attempting to parse an "
                "empty input; check that your input string or stream contains the expected JSON"
            )
            raise _ApiError(500, message)
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            last = text[max(0, exc.pos - 1) : exc.pos + 1] or text[-1:]
            message = (
                f"[json.exception.parse_error.101] parse error at line {exc.lineno}, column {exc.colno + 1}: "
                f"syntax error while parsing value - invalid literal; last read: '{last}'"
            )
            raise _ApiError(500, message) from None
        # Fields are read with contains() and json_value(), which find nothing in a non-object.
        return body if isinstance(body, dict) else {}

    def resolve(self, name: Any, kind: Kind) -> FakeModel:
        # A single-model llama-server serves its model whatever `model` says (the reply names the
        # server's model: oaicompat_model = meta->model_name). Several models stand for several
        # servers: a name the fake knows picks that one, any other the first of the kind asked for.
        named = next((model for model in self.models if model.id == name), None)
        fitting = next((model for model in self.models if model.kind == kind), self.models[0])
        return named or fitting

    def check_chat(self, body: Json) -> None:
        # server-common.cpp oaicompat_chat_params_parse, in its order.
        fmt = body.get("response_format")
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if isinstance(kind, str) and kind and kind not in ("text", "json_object", "json_schema"):
            raise _ApiError(
                400, f'response_format type must be one of "text" or "json_object", but got: {kind}'
            )
        if "messages" not in body:
            raise _ApiError(400, "'messages' is required")
        messages = body["messages"]
        if not isinstance(messages, list):
            raise _ApiError(400, "Expected 'messages' to be an array")
        for message in messages:
            message = message if isinstance(message, dict) else {}
            role = message.get("role")
            if role != "assistant" and "content" not in message:
                raise _ApiError(400, "All non-assistant messages must contain 'content'")
            if role == "assistant" and "content" not in message and "tool_calls" not in message:
                raise _ApiError(400, "Assistant message must contain either 'content' or 'tool_calls'!")
            content = message.get("content")
            if content is None or isinstance(content, str):
                continue
            if not isinstance(content, list):
                raise _ApiError(400, "Expected 'content' to be a string or an array")
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "image_url", "input_audio"):
                    raise _ApiError(400, "unsupported content[].type")

    def check_completion(self, body: Json) -> None:
        # server-common.cpp oaicompat_completion_params_parse throws runtime_error: a 500.
        if "prompt" not in body:
            raise _ApiError(500, '"prompt" is required')
        if body.get("echo") is True:
            raise _ApiError(500, "Only no echo is supported")
        for param in ("best_of", "suffix"):
            if param in body:
                raise _ApiError(500, f"Unsupported param: {param}")

    def check_kind(self, model: FakeModel, kind: Kind) -> None:
        if kind == "embedding" and model.kind == "chat" and not self.embeddings:
            raise _ApiError(501, "This server does not support embeddings. Start it with `--embeddings`")
        if kind == "chat" and model.kind == "embedding":
            # An embedding model runs with --embeddings, which llama-server releases of 2025 refuse
            # completions under (handle_completions_impl).
            raise _ApiError(501, "This server does not support completions. Start it without `--embeddings`")

    def check_image(self, url: str, model: FakeModel) -> None:
        # oaicompat_chat_params_parse and handle_media: runtime_error is a 500, invalid_argument a 400.
        if not model.vision:
            hint = "if this is unexpected, you may need to provide the mmproj"
            raise _ApiError(500, f"image input is not supported - hint: {hint}")
        if url.startswith("http"):
            return  # llama-server downloads it; the fake takes the download as done
        if url.startswith("file://"):
            raise _ApiError(400, "file:// URLs are not allowed unless --media-path is specified")
        parts = url.split(",")
        if len(parts) != 2:
            raise _ApiError(500, "Invalid url value")
        if not parts[0].startswith("data:image/"):
            raise _ApiError(500, f"Invalid url format: {parts[0]}")
        if not parts[0].endswith("base64"):
            raise _ApiError(500, "url must be base64 encoded")

    def limits(self, body: Json, model: FakeModel, prompt_tokens: int, reply_tokens: int) -> _Limits:
        # task params: n_predict beats max_completion_tokens beats max_tokens; -1 means no limit.
        if prompt_tokens >= model.context_length:
            message = (
                f"request ({prompt_tokens} tokens) exceeds the available context size "
                f"({model.context_length} tokens), try increasing it"
            )
            extra = {"n_prompt_tokens": prompt_tokens, "n_ctx": model.context_length}
            raise _ApiError(400, message, kind="exceed_context_size_error", extra=extra)
        limit = _max_tokens(body, ("n_predict", "max_completion_tokens", "max_tokens"))
        room = model.context_length - prompt_tokens
        if limit is None or limit < 0:
            return _Limits(min(reply_tokens, room), reply_tokens <= room)
        return _Limits(min(limit, room), False)

    def embed_inputs(self, body: Json) -> list[str | list[int]]:
        # handle_embeddings_impl and tokenize_input_prompts: a string, a token array, or a list of
        # either; an empty list throws outside the handler's try, hence a 500.
        if "input" in body:
            value = body["input"]
        elif "content" in body:
            value = body["content"]
        else:
            raise _ApiError(400, '"input" or "content" must be provided')
        if isinstance(value, list) and not value:
            raise _ApiError(500, '"prompt" must not be empty')
        if isinstance(value, list) and all(_is_int(item) for item in value):
            return [list(value)]
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(item, str | list) for item in value):
            return list(value)
        message = (
            '"prompt" elements must be a string, a list of tokens, a JSON object containing a prompt '
            "string, or a list of mixed strings & tokens."
        )
        raise _ApiError(500, message)

    def embed_encoding(self, body: Json) -> bool:
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise _ApiError(400, "The format to return the embeddings in. Can be either float or base64")
        return bool(encoding == "base64")

    def chat_ident(self) -> str:
        return "chatcmpl-" + "".join(secrets.choice(_ALNUM) for _ in range(32))  # gen_chatcmplid

    def completion_ident(self) -> str:
        return self.chat_ident()  # handle_completions_impl uses gen_chatcmplid for every endpoint

    def tool_ident(self) -> str:
        return "".join(secrets.choice(_ALNUM) for _ in range(32))  # gen_tool_call_id

    def _head(self, job: _Job, kind: str) -> Json:
        return {
            "created": job.created,
            "id": job.ident,
            "model": job.model.id,
            "system_fingerprint": LLAMA_CPP_BUILD,
            "object": kind,
        }

    def chat_body(self, job: _Job) -> Json:
        # server-task.cpp to_json_oaicompat_chat and common/chat.cpp to_json_oaicompat.
        message: Json = {"role": "assistant"}
        reasoning = _joined(job.pieces, "reasoning")
        if reasoning:
            message["reasoning_content"] = reasoning
        content = _joined(job.pieces, "content")
        message["content"] = None if job.tool is not None and not content else content
        if job.tool is not None:
            message["tool_calls"] = [
                {
                    "type": "function",
                    "function": {"name": job.tool.name, "arguments": _joined(job.pieces, "arguments")},
                    "id": job.tool.id,
                }
            ]
        choice = {"finish_reason": job.finish, "index": 0, "message": message}
        reply = {"choices": [choice], **self._head(job, "chat.completion"), "usage": job.usage}
        return reply | {"timings": _timings(job)}

    def _delta(self, piece: _Piece, tool: _ToolCall | None) -> Json:
        return _llama_cpp_delta(piece, tool)

    def _chunk(self, job: _Job, delta: Json, finish: str | None) -> Json:
        return {
            "choices": [{"finish_reason": finish, "index": 0, "delta": delta}],
            **self._head(job, "chat.completion.chunk"),
        }

    async def chat_stream(self, job: _Job, pieces: AsyncIterator[_Piece]) -> AsyncGenerator[_Frames, None]:
        # server-task.cpp: the first partial result adds a role delta; each diff is its own chunk;
        # the final result is an empty delta with finish_reason, then a usage chunk (choices: [])
        # only with include_usage; timings ride on the last chunk. [DONE] ends it.
        first = True
        async for piece in pieces:
            events = [_sse(self._chunk(job, {"role": "assistant", "content": None}, None))] if first else []
            events.append(_sse(self._chunk(job, self._delta(piece, job.tool), None)))
            first = False
            yield _Frames(tuple(events), token=True)
        tail = [self._chunk(job, {}, job.finish)]
        if job.include_usage:
            tail.append({"choices": [], **self._head(job, "chat.completion.chunk"), "usage": job.usage})
        tail[-1]["timings"] = _timings(job)
        yield _Frames((*map(_sse, tail), DONE), token=False)

    def completion_body(self, job: _Job) -> Json:
        # server-task.cpp to_json_oaicompat.
        text = _joined(job.pieces, "content")
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": job.finish}
        reply = {"choices": [choice], **self._head(job, "text_completion"), "usage": job.usage}
        return reply | {"timings": _timings(job)}

    async def completion_stream(
        self, job: _Job, pieces: AsyncIterator[_Piece]
    ) -> AsyncGenerator[_Frames, None]:
        # Partial results are text_completion chunks; the final result reuses to_json_oaicompat,
        # so it always carries usage and timings, whatever stream_options says.
        async for piece in pieces:
            choice = {"text": piece.text, "index": 0, "logprobs": None, "finish_reason": None}
            yield _Frames((_sse({"choices": [choice], **self._head(job, "text_completion")}),), token=True)
        final = self.completion_body(job)
        final["choices"][0]["text"] = ""
        yield _Frames((_sse(final), DONE), token=False)

    def embeddings_body(self, job: _Job, echo: Any, vectors: list[list[float]], as_base64: bool) -> Json:
        # server-common.cpp format_embeddings_response_oaicompat: `model` echoes the request.
        data = []
        for index, vector in enumerate(vectors):
            item: Json = {"embedding": base64_floats(vector) if as_base64 else vector, "index": index}
            item["object"] = "embedding"
            if as_base64:
                item["encoding_format"] = "base64"
            data.append(item)
        model = echo if isinstance(echo, str) else job.model.id
        usage = {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens}
        return {"model": model, "object": "list", "usage": usage, "data": data}


class _Vllm(_Dialect):
    """vLLM's OpenAI-compatible server (vllm/entrypoints/openai)."""

    json_type = JSON_PLAIN  # FastAPI's JSONResponse
    sse_type = "text/event-stream; charset=utf-8"  # Starlette adds the charset
    done_after_error = True  # chat_completion_stream_generator yields [DONE] after an error event
    # engine/serving.py create_error_response: error type by exception class.
    _TYPES: ClassVar[dict[int, str]] = {
        400: "BadRequestError",
        404: "NotFoundError",
        500: "InternalServerError",
        501: "NotImplementedError",
    }

    def routes(self, fake: FakeOpenAI) -> list[web.RouteDef]:
        # api_server.py build_app registers generate routes for generate models and pooling routes
        # for pooling models; a server lacking one answers FastAPI's 404 there.
        kinds = {model.kind for model in self.models}
        routes = [
            web.get("/v1/models", fake.handle_models, allow_head=False),
            web.get("/health", fake.handle_health, allow_head=False),
        ]
        if "chat" in kinds:
            routes += [
                web.post("/v1/chat/completions", fake.handle_chat),
                web.post("/v1/completions", fake.handle_completions),
            ]
        if "embedding" in kinds:
            routes.append(web.post("/v1/embeddings", fake.handle_embeddings))
        return routes

    def error_object(self, error: _ApiError) -> Json:
        kind = error.kind or self._TYPES.get(error.status, "InternalServerError")
        return {"message": error.message, "type": kind, "param": error.param, "code": error.status}

    def not_found(self, request: web.Request) -> web.Response:
        return self.json({"detail": "Not Found"}, 404)  # FastAPI's default for a missing route

    def method_not_allowed(self, request: web.Request) -> web.Response:
        return self.json({"detail": "Method Not Allowed"}, 405)

    def health(self) -> web.Response:
        return web.Response(status=200)  # /health answers 200 with an empty body

    def models_body(self) -> Json:
        # engine/protocol.py ModelCard and ModelPermission.
        now = int(time.time())
        cards = [
            {
                "id": model.id,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": model.id,
                "parent": None,
                "max_model_len": model.context_length,
                "permission": [_vllm_permission(now)],
            }
            for model in self.models
        ]
        return {"object": "list", "data": cards}

    def _invalid(self, errors: list[Json], param: str | None = None) -> _ApiError:
        # serve/utils/server_utils.py validation_exception_handler: pydantic's errors, listed.
        count = len(errors)
        message = f"{count} validation {'error' if count == 1 else 'errors'}:\n"
        message += "".join(f"  {error}\n" for error in errors)
        if param is None:
            param = ".".join(str(part) for part in errors[0]["loc"])
        return _ApiError(400, message.rstrip(), kind="Bad Request", param=param)

    def _value_error(self, body: Json, message: str, param: str) -> _ApiError:
        # A VLLMValidationError raised by a model_validator; its str() appends the parameter.
        error = {
            "type": "value_error",
            "loc": ("body",),
            "msg": f"Value error, {message} (parameter={param})",
        }
        return self._invalid([{**error, "input": body}], param)

    def parse_body(self, raw: bytes) -> Json:
        # FastAPI: an empty body is a missing one; bad JSON is a json_invalid validation error.
        if not raw.strip():
            raise self._invalid(
                [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
            )
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as exc:
            error = {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": exc.msg},
            }
            raise self._invalid([error]) from None
        if not isinstance(body, dict):
            msg = "Input should be a valid dictionary or object to extract fields from"
            raise self._invalid(
                [{"type": "model_attributes_type", "loc": ("body",), "msg": msg, "input": body}]
            )
        return body

    def _require(self, body: Json, name: str) -> None:
        if name not in body:
            raise self._invalid(
                [{"type": "missing", "loc": ("body", name), "msg": "Field required", "input": body}]
            )

    def resolve(self, name: Any, kind: Kind) -> FakeModel:
        # engine/serving.py _check_model: no name means the served model; any other unknown name
        # is a 404. Each model stands for its own server, so one of the other kind is unknown here.
        fitting = [model for model in self.models if model.kind == kind]
        if not name:
            return fitting[0]
        model = next((model for model in fitting if model.id == name), None)
        if model is None:
            raise _ApiError(404, f"The model `{name}` does not exist.", param="model")
        return model

    def check_chat(self, body: Json) -> None:
        # chat_completion/protocol.py ChatCompletionRequest and its model validators.
        self._require(body, "messages")
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and fmt.get("json_schema") is None:
            message = "When response_format type is 'json_schema', the 'json_schema' field must be provided."
            raise self._value_error(body, message, "response_format")
        if body.get("stream_options") and not body.get("stream"):
            raise self._value_error(
                body, "Stream options can only be defined when `stream=True`.", "stream_options"
            )
        if body.get("tools") == []:
            message = (
                "`tools` must not be an empty array. "
                "Either provide at least one tool or omit the field entirely."
            )
            raise self._value_error(body, message, "tools")

    def check_completion(self, body: Json) -> None:
        # completion/protocol.py validate_prompt_and_prompt_embeds.
        prompt = body.get("prompt")
        if prompt is None or prompt == "":
            message = "Either prompt or prompt_embeds must be provided and non-empty."
            error = {"type": "value_error", "loc": ("body",), "msg": f"Value error, {message}", "input": body}
            raise self._invalid([error], "body")
        if body.get("stream_options") and not body.get("stream"):
            raise self._value_error(
                body, "Stream options can only be defined when `stream=True`.", "stream_options"
            )

    def check_image(self, url: str, model: FakeModel) -> None:
        # A text-only model takes no image; vLLM fetches http(s) URLs itself (the fake takes the
        # fetch as done) and decodes data URLs (vllm/multimodal MediaConnector).
        if not model.vision:
            raise _ApiError(400, "At most 0 image(s) may be provided in one prompt.")
        if url.startswith(("http://", "https://", "data:")):
            return
        if url.startswith("file:"):
            raise _ApiError(400, "Cannot load local files without `--allowed-local-media-path`.")
        raise _ApiError(400, "The URL must be either a HTTP, data or file URL.")

    def limits(self, body: Json, model: FakeModel, prompt_tokens: int, reply_tokens: int) -> _Limits:
        # engine/serving.py _validate_input, then SamplingParams; without a limit, get_max_tokens
        # allows whatever the context has room for.
        limit = _max_tokens(body, ("max_completion_tokens", "max_tokens"))
        context = model.context_length
        if prompt_tokens >= context:
            message = (
                f"This model's maximum context length is {context} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages. "
                f"(parameter=input_tokens, value={prompt_tokens})"
            )
            raise _ApiError(400, message, param="input_tokens")
        if limit is not None and prompt_tokens + limit > context:
            message = (
                f"'max_tokens' or 'max_completion_tokens' is too large: {limit}. This model's maximum "
                f"context length is {context} tokens and your request has {prompt_tokens} input tokens "
                f"({limit} > {context} - {prompt_tokens}). (parameter=max_tokens, value={limit})"
            )
            raise _ApiError(400, message, param="max_tokens")
        if limit is not None and limit < 1:
            message = f"max_tokens must be at least 1, got {limit}. (parameter=max_tokens, value={limit})"
            raise _ApiError(400, message, param="max_tokens")
        if limit is None:
            room = context - prompt_tokens
            return _Limits(min(reply_tokens, room), reply_tokens <= room)
        return _Limits(limit, False)

    def usage_options(self, body: Json) -> tuple[bool, bool]:
        # StreamOptions.include_usage defaults to True: sending stream_options at all asks for
        # usage (serve/utils/api_utils.py should_include_usage); continuous_usage_stats adds it to
        # every chunk.
        options = body.get("stream_options")
        if not isinstance(options, dict):
            return False, False
        include = options.get("include_usage", True) is not False
        return include, include and bool(options.get("continuous_usage_stats"))

    def check_embedding(self, body: Json) -> None:
        self._require(body, "input")  # pooling/embed/protocol.py: input is a required field

    def embed_dimensions(self, body: Json, model: FakeModel) -> int:
        # PoolingParams verification: only matryoshka models may shorten their vectors.
        dimensions = body.get("dimensions")
        if dimensions is None:
            return 0
        if not model.matryoshka:
            message = (
                f'Model "{model.id}" does not support matryoshka representation, changing output '
                "dimensions will lead to poor results."
            )
            raise _ApiError(400, message)
        return int(dimensions)

    def tool_ident(self) -> str:
        return f"chatcmpl-tool-{uuid.uuid4().hex}"  # chat_utils.make_tool_call_id

    def chat_body(self, job: _Job) -> Json:
        # chat_completion/protocol.py ChatCompletionResponse, dumped in full; ChatMessage drops
        # an empty tool_calls list.
        content = _joined(job.pieces, "content")
        message: Json = {
            "role": "assistant",
            "content": None if job.tool is not None and not content else content,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
        }
        if job.tool is not None:
            function = {"name": job.tool.name, "arguments": _joined(job.pieces, "arguments")}
            message["tool_calls"] = [{"id": job.tool.id, "type": "function", "function": function}]
        message["reasoning"] = _joined(job.pieces, "reasoning") or None  # once reasoning_content
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": job.finish,
            "stop_reason": job.stop_reason,
            "token_ids": None,
        }
        return {
            "id": job.ident,
            "object": "chat.completion",
            "created": job.created,
            "model": job.model.id,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": job.usage | {"prompt_tokens_details": None},
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "kv_transfer_params": None,
        }

    def _delta(self, piece: _Piece, tool: _ToolCall | None) -> Json:
        if piece.channel == "content":
            return {"content": piece.text}
        if piece.channel == "reasoning":
            return {"reasoning": piece.text}  # DeltaMessage's name for it, once reasoning_content
        if piece.channel == "tool" and tool is not None:
            return {
                "tool_calls": [
                    {"id": tool.id, "type": "function", "index": 0, "function": {"name": piece.text}}
                ]
            }
        return {"tool_calls": [{"index": 0, "function": {"arguments": piece.text}}]}

    def _chunk(self, job: _Job, kind: str, choices: list[Json], sent: int) -> Json:
        chunk: Json = {"id": job.ident, "object": kind, "created": job.created, "model": job.model.id}
        chunk["choices"] = choices
        if job.continuous_usage:
            chunk["usage"] = _usage(job.prompt_tokens, sent)
        return chunk

    def _last_carries_finish(self, job: _Job) -> bool:
        # The output that ends generation carries finish_reason. A limit or a stop string ends
        # on a token that has text; an EOS token decodes to "" and a tool call's closing tag to
        # nothing, so those end on a chunk of their own.
        return job.finish == "length" or job.stop_reason is not None

    async def chat_stream(self, job: _Job, pieces: AsyncIterator[_Piece]) -> AsyncGenerator[_Frames, None]:
        # chat_completion/serving.py chat_completion_stream_generator: a role chunk with the first
        # output, a chunk per output, finish_reason on the output that ends generation.
        kind = "chat.completion.chunk"
        last = len(job.pieces) - 1 if self._last_carries_finish(job) else -1
        sent = 0
        async for piece in pieces:
            events = []
            if sent == 0:
                role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
                first = self._chunk(job, kind, [role | {"finish_reason": None}], 0)
                events.append(_sse(first | {"prompt_token_ids": None}))
            finish = job.finish if sent == last else None
            sent += 1
            events.append(self._chat_event(job, piece, finish, sent))
            yield _Frames(tuple(events), token=True)
        tail = []
        if last < 0 or not job.pieces:
            delta = {} if job.tool is not None else {"content": ""}
            closing = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": job.finish}
            closing |= {"stop_reason": job.stop_reason, "token_ids": None}
            tail.append(_sse(self._chunk(job, kind, [closing], sent)))
        if job.include_usage:
            usage = {"id": job.ident, "object": kind, "created": job.created, "model": job.model.id}
            tail.append(_sse(usage | {"choices": [], "usage": job.usage}))
        yield _Frames((*tail, DONE), token=False)

    def _chat_event(self, job: _Job, piece: _Piece, finish: str | None, sent: int) -> bytes:
        choice = {
            "index": 0,
            "delta": self._delta(piece, job.tool),
            "logprobs": None,
            "finish_reason": finish,
        }
        if finish is not None:
            choice["stop_reason"] = job.stop_reason
        choice["token_ids"] = None
        return _sse(self._chunk(job, "chat.completion.chunk", [choice], sent))

    def completion_body(self, job: _Job) -> Json:
        # completion/protocol.py CompletionResponse.
        choice = {
            "index": 0,
            "text": _joined(job.pieces, "content"),
            "logprobs": None,
            "finish_reason": job.finish,
            "stop_reason": job.stop_reason,
            "prompt_logprobs": None,
        }
        return {
            "id": job.ident,
            "object": "text_completion",
            "created": job.created,
            "model": job.model.id,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": job.usage | {"prompt_tokens_details": None},
            "kv_transfer_params": None,
        }

    async def completion_stream(
        self, job: _Job, pieces: AsyncIterator[_Piece]
    ) -> AsyncGenerator[_Frames, None]:
        # completion/serving.py completion_stream_generator: like chat, minus the role chunk.
        last = len(job.pieces) - 1 if self._last_carries_finish(job) else -1
        sent = 0
        async for piece in pieces:
            finish = job.finish if sent == last else None
            sent += 1
            yield _Frames((self._text_event(job, piece.text, finish, sent),), token=True)
        tail = []
        if last < 0 or not job.pieces:
            tail.append(self._text_event(job, "", job.finish, sent))
        if job.include_usage:
            head = {
                "id": job.ident,
                "object": "text_completion",
                "created": job.created,
                "model": job.model.id,
            }
            tail.append(_sse(head | {"choices": [], "usage": job.usage}))
        yield _Frames((*tail, DONE), token=False)

    def _text_event(self, job: _Job, text: str, finish: str | None, sent: int) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        if finish is not None:
            choice["stop_reason"] = job.stop_reason
        return _sse(self._chunk(job, "text_completion", [choice], sent))

    def embeddings_body(self, job: _Job, echo: Any, vectors: list[list[float]], as_base64: bool) -> Json:
        # pooling/embed/protocol.py EmbeddingResponse.
        data = [
            {
                "index": index,
                "object": "embedding",
                "embedding": base64_floats(vector) if as_base64 else vector,
            }
            for index, vector in enumerate(vectors)
        ]
        usage = _usage(job.prompt_tokens, 0) | {"prompt_tokens_details": None}
        return {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": job.created,
            "model": job.model.id,
            "data": data,
            "usage": usage,
        }


class _LmStudio(_Dialect):
    """LM Studio's OpenAI-compatible endpoints, as its changelog and users' captures show them.

    Where no capture of a case could be found, the fake picks a plausible OpenAI-style error and
    says so beside it.
    """

    def error_object(self, error: _ApiError) -> Json:
        kind = error.kind or ("invalid_request_error" if error.status < 500 else "server_error")
        return {"message": error.message, "type": kind, "param": error.param, "code": error.code}

    def not_found(self, request: web.Request) -> web.Response:
        # "Unexpected endpoint or method. (GET /x). Returning 200 anyway" (bug tracker #1323).
        return self.json({"error": f"Unexpected endpoint or method. ({request.method} {request.path})"})

    def models_body(self) -> Json:
        # Only id, object and owned_by, embedding models included.
        return {
            "data": [
                {"id": model.id, "object": "model", "owned_by": "organization_owner"} for model in self.models
            ],
            "object": "list",
        }

    def parse_body(self, raw: bytes) -> Json:
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            raise _ApiError(400, f"Invalid JSON in request body: {exc.msg}") from None  # the fake's wording
        if not isinstance(body, dict):
            raise _ApiError(400, "Request body must be a JSON object")  # the fake's wording
        return body

    def resolve(self, name: Any, kind: Kind) -> FakeModel:
        # With JIT loading (the default), an unknown identifier is a 400 listing downloaded models.
        fitting = [model for model in self.models if model.kind == kind]
        if not name:
            return fitting[0] if fitting else self.models[0]
        model = next((model for model in self.models if model.id == name), None)
        if model is None:
            examples = ", ".join(model.id for model in self.models[:3])
            message = (
                f'Invalid model identifier "{name}". '
                f"Please specify a valid downloaded model (e.g., {examples})."
            )
            raise _ApiError(400, message, param="model", code="model_not_found")
        return model

    def check_chat(self, body: Json) -> None:
        if not isinstance(body.get("messages"), list):
            raise _ApiError(400, "'messages' field is required", param="messages")  # the fake's wording
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") not in ("json_schema", "text"):
            # 400 with a bare string, as many clients quote it.
            message = "'response_format.type' must be 'json_schema' or 'text'"
            raise _ApiError(400, message, body={"error": message})

    def check_completion(self, body: Json) -> None:
        if not isinstance(body.get("prompt"), str):
            raise _ApiError(400, "'prompt' field is required", param="prompt")  # the fake's wording

    def check_kind(self, model: FakeModel, kind: Kind) -> None:
        if model.kind != kind:
            noun = "an embedding model" if model.kind == "embedding" else "not an embedding model"
            raise _ApiError(400, f'Model "{model.id}" is {noun}', param="model")  # the fake's wording

    def check_image(self, url: str, model: FakeModel) -> None:
        # The fake's wording: no capture of LM Studio refusing an image was found.
        if not model.vision:
            raise _ApiError(400, f'Model "{model.id}" does not support images', param="messages")
        if not url.startswith("data:image/"):
            raise _ApiError(400, "Only base64 data URLs are supported for images", param="messages")

    def chat_ident(self) -> str:
        return "chatcmpl-" + "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(20)
        )

    def completion_ident(self) -> str:
        return "cmpl-" + self.chat_ident().removeprefix("chatcmpl-")

    def tool_ident(self) -> str:
        return str(secrets.randbelow(900_000_000) + 100_000_000)  # LM Studio's ids are digit strings

    def _head(self, job: _Job, kind: str) -> Json:
        return {"id": job.ident, "object": kind, "created": job.created, "model": job.model.id}

    def chat_body(self, job: _Job) -> Json:
        # A capture in lmstudio-bug-tracker #619 / #676: usage, an empty stats object and the
        # model as system_fingerprint.
        message: Json = {"role": "assistant", "content": _joined(job.pieces, "content")}
        reasoning = _joined(job.pieces, "reasoning")
        if reasoning:
            message["reasoning_content"] = reasoning
        if job.tool is not None:
            function = {"name": job.tool.name, "arguments": _joined(job.pieces, "arguments")}
            message["tool_calls"] = [{"id": job.tool.id, "type": "function", "function": function}]
        choice = {"index": 0, "logprobs": None, "finish_reason": job.finish, "message": message}
        return {**self._head(job, "chat.completion"), "choices": [choice], "usage": job.usage} | {
            "stats": {},
            "system_fingerprint": job.model.id,
        }

    def _delta(self, piece: _Piece, tool: _ToolCall | None) -> Json:
        # LM Studio runs llama.cpp, and its deltas are llama.cpp's.
        return _llama_cpp_delta(piece, tool)

    def _chunk(self, job: _Job, delta: Json, finish: str | None) -> Json:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            **self._head(job, "chat.completion.chunk"),
            "system_fingerprint": job.model.id,
            "choices": [choice],
        }

    async def chat_stream(self, job: _Job, pieces: AsyncIterator[_Piece]) -> AsyncGenerator[_Frames, None]:
        # The role rides on the first token's delta; the finish chunk has an empty delta. Usage
        # comes in its own chunk with stream_options.include_usage (0.3.18 and later).
        first = True
        async for piece in pieces:
            delta = self._delta(piece, job.tool)
            if first:
                delta = {"role": "assistant", **delta}
            first = False
            yield _Frames((_sse(self._chunk(job, delta, None)),), token=True)
        tail = [_sse(self._chunk(job, {}, job.finish))]
        if job.include_usage:
            usage = {**self._head(job, "chat.completion.chunk"), "system_fingerprint": job.model.id}
            tail.append(_sse(usage | {"choices": [], "usage": job.usage}))
        yield _Frames((*tail, DONE), token=False)

    def completion_body(self, job: _Job) -> Json:
        choice = {
            "index": 0,
            "text": _joined(job.pieces, "content"),
            "logprobs": None,
            "finish_reason": job.finish,
        }
        return {**self._head(job, "text_completion"), "choices": [choice], "usage": job.usage, "stats": {}}

    async def completion_stream(
        self, job: _Job, pieces: AsyncIterator[_Piece]
    ) -> AsyncGenerator[_Frames, None]:
        async for piece in pieces:
            choice = {"index": 0, "text": piece.text, "logprobs": None, "finish_reason": None}
            yield _Frames((_sse({**self._head(job, "text_completion"), "choices": [choice]}),), token=True)
        choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": job.finish}
        tail = [_sse({**self._head(job, "text_completion"), "choices": [choice]})]
        if job.include_usage:
            tail.append(_sse({**self._head(job, "text_completion"), "choices": [], "usage": job.usage}))
        yield _Frames((*tail, DONE), token=False)

    def embeddings_body(self, job: _Job, echo: Any, vectors: list[list[float]], as_base64: bool) -> Json:
        data = [
            {
                "object": "embedding",
                "embedding": base64_floats(vector) if as_base64 else vector,
                "index": index,
            }
            for index, vector in enumerate(vectors)
        ]
        usage = {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens}
        return {"object": "list", "data": data, "model": job.model.id, "usage": usage}


_DIALECTS: dict[Flavour, type[_Dialect]] = {"llama.cpp": _LlamaCpp, "vllm": _Vllm, "lmstudio": _LmStudio}


# -- the server ---------------------------------------------------------------------------------------


class FakeOpenAI(FakeServer):
    """An aiohttp server that speaks one OpenAI-compatible server's dialect, with timing and fault knobs."""

    def __init__(
        self,
        models: Iterable[str | FakeModel] = ("llama-3.1-8b-instruct",),
        *,
        flavour: Flavour = "llama.cpp",
        embeddings: bool = False,
        reasoning: bool = False,
        tokens_per_second: float = 500.0,
        prompt_tokens_per_second: float = 0.0,
        load_delay_s: float = 0.0,
        startup_s: float = 0.0,
        slots: int | None = None,
        reply_tokens: int = 8,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, not {flavour!r}")
        self.models = [model if isinstance(model, FakeModel) else FakeModel(model) for model in models]
        if not self.models:
            raise ValueError("the fake needs at least one model")
        if startup_s and flavour != "llama.cpp":
            raise ValueError("startup_s is llama.cpp's: vLLM and LM Studio listen only once ready")
        self.flavour = flavour
        # llama-server's --embeddings: lets a chat model answer /v1/embeddings (an embedding
        # model's server always runs with it).
        self.embeddings = embeddings
        self.reasoning = reasoning  # chat replies think first, in the flavour's reasoning field
        self.tokens_per_second = tokens_per_second  # generation pace; 0 is as fast as it can
        self.prompt_tokens_per_second = prompt_tokens_per_second  # prompt processing; 0 is instant
        self.load_delay_s = load_delay_s  # the first inference request waits this long for a load
        self.startup_s = startup_s  # llama.cpp answers 503 "Loading model" this long after start()
        self.slots = slots  # requests run at once (llama-server's --parallel, 4 by default); None: any
        self.reply_tokens = reply_tokens  # the length of a reply that runs to its natural end
        self.api_key = api_key  # the servers' --api-key: every request must bear it
        super().__init__(host, port)
        self.waiting = 0  # requests waiting for the model load or a free slot
        self._dialect = _DIALECTS[flavour](self.models, embeddings)
        self._streams: dict[int, web.Request] = {}  # streams in progress, by id(request)
        self._slots: asyncio.Semaphore | None = None
        self._loading: asyncio.Task[None] | None = None
        self._loaded = False
        self._ready_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Bind and serve (on another host or port than the fake was made with, if given)."""
        self.host = host or self.host
        self.port = self.port if port is None else port
        self._loaded = self.load_delay_s <= 0
        self._slots = asyncio.Semaphore(self.slots) if self.slots else None
        self._ready_at = asyncio.get_running_loop().time() + self.startup_s
        await super().start()

    def build(self, app: web.Application) -> None:
        app.add_routes(self._dialect.routes(self))

    def closed(self) -> None:
        """Go away: cut every stream in progress."""
        if self._loading is not None:
            self._loading.cancel()
        for request in list(self._streams.values()):
            if request.transport is not None:
                request.transport.abort()

    # -- knobs -------------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int = 500,
        message: str = "an internal error occurred",
        count: int = 1,
        *,
        paths: Iterable[str] | None = None,
    ) -> None:
        """Answer the next `count` inference/listing requests (or those on `paths`) with this error."""
        self.failures.add(Fault(count, paths_of(paths, _FAULTABLE), status=status, message=message))

    def break_after(self, tokens: int, count: int = 1, *, paths: Iterable[str] | None = None) -> None:
        """Abort the TCP connection of the next `count` replies after `tokens` streamed tokens.

        A non-streamed reply is cut before it is sent, as if the server died while generating.
        """
        self.stream_faults.add(Fault(count, paths_of(paths, _GENERATING), after=tokens, drop=True))

    def error_after(
        self,
        tokens: int,
        message: str = "an internal error occurred",
        count: int = 1,
        *,
        paths: Iterable[str] | None = None,
    ) -> None:
        """Make the next `count` streams report `message` after `tokens` tokens, the flavour's way.

        A non-streamed reply answers the error as a 500 instead.
        """
        self.stream_faults.add(Fault(count, paths_of(paths, _GENERATING), message=message, after=tokens))

    # -- plumbing ----------------------------------------------------------------------------------

    def ended(self, request: web.Request) -> None:
        self._streams.pop(id(request), None)

    async def dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer 503 while llama.cpp loads, check the API key, apply faults, word errors as the flavour."""
        dialect = self._dialect
        if isinstance(dialect, _LlamaCpp) and asyncio.get_running_loop().time() < self._ready_at:
            return dialect.loading()
        try:
            if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                # llama-server's words (server.cpp's API key middleware), shaped as the flavour shapes errors.
                raise _ApiError(401, "Invalid API Key")
            if (fault := self.failures.take(request)) is not None:
                raise _ApiError(fault.status, fault.message)
            return await handler(request)
        except _ApiError as error:
            return dialect.error_response(error)
        except web.HTTPMethodNotAllowed:
            return dialect.method_not_allowed(request)
        except web.HTTPNotFound:
            return dialect.not_found(request)

    async def _body(self, request: web.Request) -> Json:
        return self._dialect.parse_body(await request.read())

    async def _load(self) -> None:
        """Wait for the model load the first inference request starts (load_delay_s)."""
        if self._loaded:
            return
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(asyncio.sleep(self.load_delay_s))
        self.waiting += 1
        try:
            await asyncio.shield(self._loading)  # a client that leaves does not abort the load
        finally:
            self.waiting -= 1
        self._loaded = True

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Hold one of the server's slots, queueing FIFO for it like llama-server's task queue."""
        if self._slots is None:
            yield
            return
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    async def _paced(self, job: _Job) -> AsyncGenerator[_Piece, None]:
        """Spend the prompt time, then release the job's pieces at tokens_per_second."""
        loop = asyncio.get_running_loop()
        job.clock.started = loop.time()
        if self.prompt_tokens_per_second > 0:
            await asyncio.sleep(job.prompt_tokens / self.prompt_tokens_per_second)
        job.clock.prompt_done = job.clock.last_token = loop.time()
        pacer = Pacer(self.tokens_per_second)
        for piece in job.pieces:
            await pacer.wait()
            job.clock.last_token = loop.time()
            yield piece

    async def _run(
        self,
        request: web.Request,
        job: _Job,
        stream: Callable[[_Job, AsyncIterator[_Piece]], AsyncGenerator[_Frames, None]],
        body: Callable[[_Job], Json],
    ) -> web.StreamResponse:
        """Load, take a slot, then stream the job or answer it whole."""
        await self._load()
        async with self._slot():
            fault = self.stream_faults.take(request)
            if job.stream:
                return await self._stream(request, stream(job, self._paced(job)), fault)
            async for _ in self._paced(job):
                pass
            if fault is not None and fault.drop:
                if request.transport is not None:
                    request.transport.abort()
                return web.Response()
            if fault is not None:
                raise _ApiError(500, fault.message)
            return self._dialect.json(body(job))

    async def _stream(
        self, request: web.Request, frames: AsyncGenerator[_Frames, None], fault: Fault | None
    ) -> web.StreamResponse:
        writer = _StreamWriter(request, self._dialect, fault, self._streams)
        async with contextlib.aclosing(frames):
            async for group in frames:
                if not await writer.send(group):
                    if writer.response.prepared and not (fault and fault.drop):
                        await writer.response.write_eof()
                    return writer.response
        await writer.finish()
        return writer.response

    # -- endpoints ---------------------------------------------------------------------------------

    async def handle_health(self, request: web.Request) -> web.StreamResponse:
        """GET /health."""
        return self._dialect.health()

    async def handle_models(self, request: web.Request) -> web.StreamResponse:
        """GET /v1/models."""
        return self._dialect.json(self._dialect.models_body())

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions."""
        dialect = self._dialect
        body = await self._body(request)
        dialect.check_chat(body)
        model = dialect.resolve(body.get("model"), "chat")
        dialect.check_kind(model, "chat")
        messages = [message for message in body.get("messages") or [] if isinstance(message, dict)]
        rendered, images = _render_chat(messages)
        for url in images:
            dialect.check_image(url, model)
        prompt_tokens = _count(rendered) + 1 + IMAGE_TOKENS * len(images)
        limits = dialect.limits(body, model, prompt_tokens, self.reply_tokens)
        tool = _chosen_tool(body, messages)
        call = _ToolCall(dialect.tool_ident(), tool[0], tool[1]) if tool is not None else None
        job = self._plan(body, model, rendered, prompt_tokens, limits, chat=True, tool=call)
        job.ident = dialect.chat_ident()
        return await self._run(request, job, dialect.chat_stream, dialect.chat_body)

    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/completions."""
        dialect = self._dialect
        body = await self._body(request)
        dialect.check_completion(body)
        model = dialect.resolve(body.get("model"), "chat")
        dialect.check_kind(model, "chat")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and not all(_is_int(item) for item in prompt):
            prompt = prompt[0]  # several prompts get several choices on the real servers; one here
        if isinstance(prompt, list):
            text, prompt_tokens = " ".join(map(str, prompt)), len(prompt)
        else:
            text = str(prompt or "")
            prompt_tokens = _count(text) + 1
        limits = dialect.limits(body, model, prompt_tokens, self.reply_tokens)
        job = self._plan(body, model, text, prompt_tokens, limits, chat=False, tool=None)
        job.ident = dialect.completion_ident()
        return await self._run(request, job, dialect.completion_stream, dialect.completion_body)

    async def handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/embeddings."""
        dialect = self._dialect
        body = await self._body(request)
        dialect.check_embedding(body)
        model = dialect.resolve(body.get("model"), "embedding")
        dialect.check_kind(model, "embedding")
        inputs = dialect.embed_inputs(body)
        as_base64 = dialect.embed_encoding(body)
        dimensions = dialect.embed_dimensions(body, model)
        texts = [" ".join(map(str, item)) if isinstance(item, list) else item for item in inputs]
        tokens = sum(len(item) if isinstance(item, list) else _count(item) + 1 for item in inputs)
        job = _Job(model, tokens, [], 0, "stop", stream=False, include_usage=False, created=int(time.time()))
        await self._load()
        async with self._slot():
            if self.prompt_tokens_per_second > 0:
                await asyncio.sleep(tokens / self.prompt_tokens_per_second)
            vectors = [embedding(text, model.dimensions, dimensions) for text in texts]
            return dialect.json(dialect.embeddings_body(job, body.get("model"), vectors, as_base64))

    # -- planning ----------------------------------------------------------------------------------

    def _plan(
        self,
        body: Json,
        model: FakeModel,
        prompt: str,
        prompt_tokens: int,
        limits: _Limits,
        *,
        chat: bool,
        tool: _ToolCall | None,
    ) -> _Job:
        """Plan the reply's tokens: reasoning, then a tool call, JSON, or text cut at a stop word."""
        dialect = self._dialect
        stream = body.get("stream") is True
        include_usage, continuous = dialect.usage_options(body) if stream else (False, False)
        words = _words(prompt, limits.budget)
        thinking = limits.budget // 2 if chat and self.reasoning else 0
        pieces = [_Piece("reasoning", text) for text in _spaced(words[:thinking])]
        rest = words[thinking:]
        finish = "stop" if limits.natural else "length"
        stop_reason = None
        tokens = limits.budget
        schema = dialect.response_format(body) if chat else None
        if tool is not None:
            calls = [_Piece("tool", tool.name)] + [
                _Piece("arguments", part) for part in _FRAGMENT.findall(tool.arguments)
            ]
            taken = calls if limits.natural else calls[: len(rest)]
            pieces += taken
            tokens = thinking + len(taken)
            finish = "tool_calls" if len(taken) == len(calls) else "length"
        elif schema is not None and rest:
            document = _json_reply(schema, " ".join(rest))
            pieces += [_Piece("content", text) for text in _slices(document, len(rest))]
        else:
            content, cut = _cut_at_stop(_spaced(rest), dialect.stop_words(body))
            pieces += [_Piece("content", text) for text in content]
            if cut is not None:
                finish, stop_reason = "stop", cut
                tokens = thinking + len(content)  # the token that completed the stop counts, even if cut away
                pieces = [piece for piece in pieces if piece.text]
        return _Job(
            model,
            prompt_tokens,
            pieces,
            tokens,
            finish,
            stream=stream,
            include_usage=include_usage,
            continuous_usage=continuous,
            stop_reason=stop_reason,
            tool=tool,
            created=int(time.time()),
        )


# -- helpers --------------------------------------------------------------------------------------------


def _sse(obj: Any) -> bytes:
    """Frame one SSE data event."""
    return f"data: {dumps(obj)}\n\n".encode()


def _usage(prompt_tokens: int, completion_tokens: int) -> Json:
    """Return OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _timings(job: _Job) -> Json:
    """Return llama.cpp's timings object (server-task.cpp result_timings::to_json)."""
    clock = job.clock
    prompt_ms = max((clock.prompt_done - clock.started) * 1e3, 1e-3)
    predicted_ms = max((clock.last_token - clock.prompt_done) * 1e3, 1e-3)
    predicted_n = max(job.tokens, 1)
    return {
        "cache_n": 0,
        "prompt_n": job.prompt_tokens,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / max(job.prompt_tokens, 1),
        "prompt_per_second": 1e3 / prompt_ms * job.prompt_tokens,
        "predicted_n": job.tokens,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n,
        "predicted_per_second": 1e3 / predicted_ms * job.tokens,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _max_tokens(body: Json, keys: Sequence[str]) -> int | None:
    """Return the first integer limit among `keys` (a non-integer is ignored, like json_value)."""
    for key in keys:
        if _is_int(body.get(key)):
            return int(body[key])
    return None


def _count(text: str) -> int:
    """Count tokens the fake's way: words and single punctuation marks."""
    return len(_TOKEN.findall(text))


def _text_of(content: Any) -> tuple[str, list[str]]:
    """Return a message content's text and its image URLs."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    texts, images = [], []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            images.append(str(image.get("url", "")) if isinstance(image, dict) else str(image or ""))
    return "\n".join(texts), images


def _render_chat(messages: list[Json]) -> tuple[str, list[str]]:
    """Render messages as `role: text` lines (the prompt the fake counts and seeds), with their images."""
    lines, images = [], []
    for message in messages:
        text, urls = _text_of(message.get("content"))
        lines.append(f"{message.get('role', '')}: {text}")
        images += urls
    return "\n".join(lines), images


def _chosen_tool(body: Json, messages: list[Json]) -> tuple[str, str] | None:
    """Return the tool a reply calls and its arguments, or None for a text reply."""
    tools = [
        tool
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        named = choice["function"].get("name")
        tool = next((tool for tool in tools if tool["function"].get("name") == named), tools[0])
    else:
        user = next((message for message in reversed(messages) if message.get("role") == "user"), {})
        if choice != "required" and not _WEATHER.search(_text_of(user.get("content"))[0]):
            return None
        tool = tools[0]
    function = tool["function"]
    return str(function.get("name", "")), json.dumps(_sample_object(function.get("parameters")))


def _sample_object(schema: Any) -> Json:
    """Fill an object's required properties with sample values of their JSON-schema types."""
    if not isinstance(schema, dict):
        return {}
    properties: Json = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
    required = [name for name in schema.get("required") or [] if isinstance(name, str)]
    return {name: _sample_value(properties.get(name)) for name in required}


def _sample_value(schema: Any, text: str = "Paris") -> Any:
    """Return a value of a property's type: its first enum value, else a fixed sample per type."""
    if not isinstance(schema, dict):
        return text
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), "string")
    samples = {"integer": 20, "number": 20, "boolean": True, "array": [], "null": None}
    if kind == "object":
        return _sample_object(schema)
    return samples.get(kind, text) if isinstance(kind, str) else text


def _json_reply(schema: Json, words: str) -> str:
    """Build the JSON a json_object / json_schema reply carries."""
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    if not required:
        return json.dumps({"answer": words})
    properties: Json = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
    return json.dumps(
        {name: _sample_value(properties.get(name), words) for name in required if isinstance(name, str)}
    )


def _slices(text: str, count: int) -> list[str]:
    """Split text into `count` non-empty slices of near-equal length (fewer if it is shorter)."""
    count = max(1, min(count, len(text)))
    bounds = [round(index * len(text) / count) for index in range(count + 1)]
    return [text[start:end] for start, end in itertools.pairwise(bounds)]


def _words(prompt: str, count: int) -> list[str]:
    """Pick `count` words, deterministically from the prompt."""
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    return [rng.choice(_VOCABULARY) for _ in range(count)]


def _spaced(words: Sequence[str]) -> list[str]:
    """Return the words as they stream: a space before every word but the first."""
    return [word if index == 0 else f" {word}" for index, word in enumerate(words)]


def _cut_at_stop(pieces: list[str], stops: list[str]) -> tuple[list[str], str | None]:
    """Cut the pieces where the text first contains a stop sequence; return them and the stop hit."""
    if not stops:
        return pieces, None
    text = ""
    for index, piece in enumerate(pieces):
        text += piece
        hits = [(text.find(stop), stop) for stop in stops if stop in text]
        if hits:
            at, stop = min(hits)
            before = len(text) - len(piece)
            return [*pieces[:index], text[before:at] if at > before else ""], stop
    return pieces, None


def _joined(pieces: Iterable[_Piece], channel: str) -> str:
    """Join the text of one channel's pieces."""
    return "".join(piece.text for piece in pieces if piece.channel == channel)


def _llama_cpp_model_info(model: FakeModel, now: int) -> Json:
    """Return one `data` entry of llama-server's /v1/models (server-context.cpp get_res_model_info)."""
    return {
        "id": model.id,
        "aliases": [model.id],
        "tags": [],
        "object": "model",
        "created": now,
        "owned_by": "llamacpp",
        "meta": {
            "vocab_type": 2,
            "n_vocab": model.n_vocab,
            "n_ctx": model.context_length,
            "n_ctx_train": model.context_length,
            "n_embd": model.n_embd,
            "n_params": model.n_params,
            "size": model.size,
            "ftype": model.ftype,
        },
    }


def _llama_cpp_ollama_entry(model: FakeModel) -> Json:
    """Return one `models` entry of llama-server's /v1/models, its Ollama-compatible listing."""
    return {
        "name": model.id,
        "model": model.id,
        "modified_at": "",
        "size": "",
        "digest": "",
        "type": "model",
        "description": "",
        "tags": [""],
        "capabilities": ["completion", "multimodal"] if model.vision else ["completion"],
        "parameters": "",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "",
            "families": [""],
            "parameter_size": "",
            "quantization_level": "",
        },
    }


def _vllm_permission(now: int) -> Json:
    """Return vLLM's ModelPermission with its defaults."""
    return {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": now,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


# -- CLI --------------------------------------------------------------------------------------------


def _model_spec(spec: str) -> FakeModel:
    """Parse `ID[=flag,flag]`; flags: embedding, vision, matryoshka."""
    name, _, flags = spec.partition("=")
    chosen = {flag for flag in flags.split(",") if flag}
    unknown = chosen - {"chat", "embedding", "vision", "matryoshka"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model flags: {', '.join(sorted(unknown))}")
    kind: Kind = "embedding" if "embedding" in chosen else "chat"
    return FakeModel(name, kind=kind, vision="vision" in chosen, matryoshka="matryoshka" in chosen)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.openai", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--flavour", choices=FLAVOURS, default="llama.cpp")
    parser.add_argument("--model", action="append", type=_model_spec, help="ID[=embedding,vision,matryoshka]")
    parser.add_argument("--embeddings", action="store_true", help="llama.cpp: chat models answer embeddings")
    parser.add_argument("--reasoning", action="store_true", help="chat replies reason before answering")
    parser.add_argument("--tps", type=float, default=500.0, help="tokens per second (0: as fast as it can)")
    parser.add_argument("--prompt-tps", type=float, default=0.0, help="prompt tokens per second (0: instant)")
    parser.add_argument("--load-delay", type=float, default=0.0, help="seconds the first request waits")
    parser.add_argument("--startup", type=float, default=0.0, help="llama.cpp: seconds of 503 Loading model")
    parser.add_argument("--slots", type=int, help="requests run at once (default: no limit)")
    parser.add_argument("--reply-tokens", type=int, default=8, help="tokens of a reply with no max_tokens")
    return parser.parse_args(argv)


def _fake(args: argparse.Namespace) -> FakeOpenAI:
    """Build the fake the command line describes."""
    return FakeOpenAI(
        args.model or ("llama-3.1-8b-instruct",),
        flavour=args.flavour,
        embeddings=args.embeddings,
        reasoning=args.reasoning,
        tokens_per_second=args.tps,
        prompt_tokens_per_second=args.prompt_tps,
        load_delay_s=args.load_delay,
        startup_s=args.startup,
        slots=args.slots,
        reply_tokens=args.reply_tokens,
        host=args.host,
        port=args.port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake as a process."""
    return asyncio.run(serve_until_stopped(_fake(_parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())
