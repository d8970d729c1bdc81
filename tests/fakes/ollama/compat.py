"""Ollama's OpenAI-compatible API (middleware/openai.go): /v1 chat, completions, embeddings and models,
translated to the native handlers and back."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from tests.fakes.base import Json, base64_floats, dumps

from .inference import _collect
from .models import _SHOW_NAMES, FakeModel, _Name
from .wire import _SSE_FRAMING, _ApiError, _go_kind, _openai_json, _quote, _read_json, _string

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
    called = False
    async with contextlib.aclosing(objects):
        async for obj in objects:
            message = obj["message"]
            # The metrics-only final object becomes no content chunk, unless it is the only object.
            if not (obj["done"] and not first and not message["content"] and not message.get("thinking")):
                delta: Json = {"role": "assistant"} if first else {}
                delta["content"] = message["content"]
                if message.get("thinking"):
                    delta["reasoning"] = message["thinking"]
                if message.get("tool_calls"):
                    delta["tool_calls"] = _openai_tool_calls(message["tool_calls"])
                    called = True
                yield _openai_chat_chunk(ident, created, obj["model"], delta, None)
                first = False
            if obj["done"]:
                reason = "tool_calls" if called else obj.get("done_reason") or "stop"
                finish = _openai_chat_chunk(ident, created, obj["model"], {}, reason)
                yield finish
                if include_usage:
                    yield {**finish, "choices": [], "usage": _usage(obj)}


def _openai_tool_calls(calls: list[Json]) -> list[Json]:
    """ToToolCalls: each call with its index, its arguments as a JSON string."""
    return [
        {
            "id": call["id"],
            "index": call["function"].get("index", index),
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": dumps(call["function"]["arguments"])},
        }
        for index, call in enumerate(calls)
    ]


def _openai_chat_completion(ident: str, obj: Json) -> Json:
    """Convert a merged native chat reply to a chat.completion."""
    message: Json = {"role": "assistant", "content": obj["message"]["content"]}
    if obj["message"].get("thinking"):
        message["reasoning"] = obj["message"]["thinking"]
    finish = obj.get("done_reason")
    if calls := obj["message"].get("tool_calls"):
        message["tool_calls"] = _openai_tool_calls(calls)
        finish = "tool_calls"
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": obj["model"],
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
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
        {"object": "embedding", "embedding": base64_floats(vector) if as_base64 else vector, "index": index}
        for index, vector in enumerate(result["embeddings"])
    ]
    tokens = result.get("prompt_eval_count", 0)
    return {
        "object": "list",
        "data": data,
        "model": result["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _openai_model(raw: str, model: FakeModel) -> Json:
    """Return one /v1/models entry; owned_by is the name's namespace."""
    created = int(model.modified_at.timestamp())
    return {"id": raw, "object": "model", "created": created, "owned_by": _Name.parse(raw).namespace}


class OpenAICompat:
    """The /v1 endpoints of FakeOllama, answered through the native handlers."""

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
