"""Ollama's Anthropic-compatible API (anthropic/anthropic.go, served since 0.14): /v1/messages answered
through the native chat, whole or as Anthropic's events, and /v1/messages/count_tokens as its estimate."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from tests.fakes.base import Json, dumps

from .inference import _collect
from .wire import EVENT_STREAM, _ApiError, _Framing, _openai_json, _read_json


class _EventFraming(_Framing):
    """Anthropic's SSE: each event named by its type, no [DONE] at the end."""

    def frame(self, obj: Json) -> bytes:
        return f"event: {obj['type']}\ndata: ".encode() + dumps(obj).encode() + b"\n\n"


_EVENT_FRAMING = _EventFraming(EVENT_STREAM, b"", b"", b"", error_lines=False)
# Error types by status, as NewError names them.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error"}
_ERROR_TYPES |= {
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error(error: _ApiError) -> web.Response:
    """NewError's envelope: the type from the status, and a request id."""
    body = {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(error.status, "api_error"), "message": error.message},
        "request_id": _generate_id("req"),
    }
    return _openai_json(body, error.status)


def _generate_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _chat_from_messages(body: Json) -> Json:
    """FromMessagesRequest: the system prompt, each message's blocks, max_tokens as num_predict."""
    messages: list[Json] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        text = "".join(b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text")
        if text:
            messages.append({"role": "system", "content": text})
    for message in body.get("messages") or []:
        messages += _convert_message(message)
    options: Json = {"num_predict": body.get("max_tokens", 0)}
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            options[key] = body[key]
    if body.get("stop_sequences"):
        options["stop"] = body["stop_sequences"]
    native: Json = {"model": body.get("model", ""), "messages": messages, "options": options}
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        native["think"] = thinking["type"] == "enabled"
    if body.get("tools"):
        native["tools"] = [
            {"type": "function", "function": {"name": t.get("name"), "parameters": t.get("input_schema")}}
            for t in body["tools"]
        ]
    return native


def _convert_message(message: Any) -> list[Json]:
    """convertMessage: text joined, tool results as tool messages (first, for a user's)."""
    role = str(message.get("role", "")).lower()
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    text, results, calls, thinking = [], [], [], ""
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use":
            if not block.get("id"):
                raise _ApiError(400, "tool_use block missing required 'id' field")
            calls.append(
                {"id": block["id"], "function": {"name": block.get("name"), "arguments": block.get("input")}}
            )
        elif kind == "tool_result":
            result = block.get("content")
            if isinstance(result, list):
                result = "".join(b.get("text", "") for b in result if b.get("type") == "text")
            results.append(
                {"role": "tool", "content": result or "", "tool_call_id": block.get("tool_use_id")}
            )
        elif kind == "thinking":
            thinking = block.get("thinking", "")
    said = []
    if text or calls or thinking:
        said.append({"role": role, "content": "".join(text), "tool_calls": calls, "thinking": thinking})
    return results + said if role == "user" else said + results


def _stop_reason(reason: str, called: bool) -> str:
    """mapStopReason."""
    if called:
        return "tool_use"
    return {"stop": "end_turn", "length": "max_tokens"}.get(reason, "stop_sequence" if reason else "")


def _estimate(body: Json) -> int:
    """estimateTokens: the text's length over four, at least one where there is a message or system."""
    size = (
        len(body["system"])
        if isinstance(body.get("system"), str)
        else len(json.dumps(body.get("system") or ""))
    )
    for message in body.get("messages") or []:
        content = message.get("content")
        size += len(message.get("role", "")) + (
            len(content) if isinstance(content, str) else len(json.dumps(content))
        )
    tools = body.get("tools") or []
    size += sum(
        len(t.get("name", "")) + len(t.get("description", "")) + len(json.dumps(t.get("input_schema")))
        for t in tools
    )
    return max(size // 4, 1 if body.get("messages") or body.get("system") else 0)


def _messages_response(ident: str, obj: Json) -> Json:
    """ToMessagesResponse."""
    message = obj["message"]
    content: list[Json] = []
    if message.get("thinking"):
        content.append({"type": "thinking", "thinking": message["thinking"]})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls") or []
    for call in calls:
        function = call["function"]
        content.append(
            {"type": "tool_use", "id": call["id"], "name": function["name"], "input": function["arguments"]}
        )
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": obj["model"],
        "content": content,
        "stop_reason": _stop_reason(obj.get("done_reason", ""), bool(calls)),
        "usage": {"input_tokens": obj.get("prompt_eval_count", 0), "output_tokens": obj.get("eval_count", 0)},
    }


async def _message_events(
    ident: str, objects: AsyncGenerator[Json, None], estimated: int
) -> AsyncGenerator[Json, None]:
    """StreamConverter.Process over the native chat objects."""
    called = False
    first, index, thinking_started, thinking_done, text_started = True, 0, False, False, False
    async with contextlib.aclosing(objects):
        async for obj in objects:
            message = obj["message"]
            if first:
                first = False
                usage = {"input_tokens": obj.get("prompt_eval_count") or estimated, "output_tokens": 0}
                start = {
                    "id": ident,
                    "type": "message",
                    "role": "assistant",
                    "model": obj["model"],
                    "content": [],
                    "usage": usage,
                }
                yield {"type": "message_start", "message": start}
            if message.get("thinking") and not thinking_done:
                if not thinking_started:
                    thinking_started = True
                    block = {"type": "thinking", "thinking": ""}
                    yield {"type": "content_block_start", "index": index, "content_block": block}
                delta = {"type": "thinking_delta", "thinking": message["thinking"]}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
            if message.get("content"):
                if thinking_started and not thinking_done:
                    thinking_done = True
                    yield {"type": "content_block_stop", "index": index}
                    index += 1
                if not text_started:
                    text_started = True
                    yield {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    }
                yield {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": message["content"]},
                }
            for call in message.get("tool_calls") or []:
                # A whole call: its block opened, its arguments in one delta, closed.
                if thinking_started and not thinking_done:
                    thinking_done = True
                    yield {"type": "content_block_stop", "index": index}
                    index += 1
                if text_started:
                    text_started = False
                    yield {"type": "content_block_stop", "index": index}
                    index += 1
                function = call["function"]
                block = {"type": "tool_use", "id": call["id"], "name": function["name"], "input": {}}
                yield {"type": "content_block_start", "index": index, "content_block": block}
                delta = {"type": "input_json_delta", "partial_json": dumps(function["arguments"])}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
                yield {"type": "content_block_stop", "index": index}
                called = True
                index += 1
            if obj["done"]:
                if text_started or (thinking_started and not thinking_done):
                    yield {"type": "content_block_stop", "index": index}
                usage = {
                    "input_tokens": obj.get("prompt_eval_count", 0),
                    "output_tokens": obj.get("eval_count", 0),
                }
                delta = {"stop_reason": _stop_reason(obj.get("done_reason", ""), called)}
                yield {"type": "message_delta", "delta": delta, "usage": usage}
                yield {"type": "message_stop"}


class AnthropicCompat:
    """The Anthropic-compatible endpoints of FakeOllama."""

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/messages, through the native chat as Ollama's AnthropicMessagesMiddleware does."""
        started_ns = time.perf_counter_ns()
        try:
            body = await _read_json(request, empty_message="EOF")
            reply = await self._infer(request, _chat_from_messages(body), chat=True, started_ns=started_ns)  # type: ignore[attr-defined]
        except _ApiError as exc:
            return anthropic_error(exc)
        ident = _generate_id("msg")
        if body.get("stream") is True:
            return await self._stream(
                request, _EVENT_FRAMING, _message_events(ident, reply.objects, _estimate(body))
            )  # type: ignore[attr-defined]
        return _openai_json(_messages_response(ident, await _collect(reply.objects)))

    async def _handle_count_tokens(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/messages/count_tokens: the estimate, not the model's tokenizer."""
        try:
            body = await _read_json(request, empty_message="EOF")
        except _ApiError as exc:
            return anthropic_error(exc)
        return _openai_json({"input_tokens": _estimate(body)})
