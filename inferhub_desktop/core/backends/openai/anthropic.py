"""Anthropic's Messages API (`/v1/messages`, what Claude Code and the `anthropic` SDK speak) on an
OpenAI-compatible server that has none: the request as a chat completion, the answer and its stream as
Anthropic's, as Ollama translates them to its chat (anthropic/anthropic.go). Pure functions and one
stream translator; no I/O."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ...wire.errors import BackendUnavailable
from ...wire.responses import go_json
from .replies import ToolCalls, event_error

# How a chat completion's finish reason reads as a message's stop reason (a tool call makes it tool_use).
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


# Error types by HTTP status, as Ollama's Messages API names them.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


class Refused(ValueError):
    """The request is not one the Messages API takes; the message says why, as Anthropic's would."""


def stop_reason(finish_reason: str | None, *, called: bool) -> str:
    """Say why a message stopped, as Ollama maps its done reasons: a tool call, the end of the turn, the
    token limit, else a stop sequence."""
    if called:
        return "tool_use"
    return _STOP_REASONS.get(finish_reason or "stop", "stop_sequence")


def estimate_tokens(fields: dict[str, Any]) -> int:
    """Estimate a Messages request's input tokens as Ollama does for count_tokens: its text's length over
    four, at least one where there is anything."""
    size = len(_text(fields.get("system")))
    for message in fields.get("messages") or []:
        if isinstance(message, dict):
            content = message.get("content")
            size += len(str(message.get("role", "")))
            size += len(content) if isinstance(content, str) else len(json.dumps(content or []))
    for tool in fields.get("tools") or []:
        if isinstance(tool, dict):
            size += len(str(tool.get("name", ""))) + len(str(tool.get("description", "")))
            size += len(json.dumps(tool.get("input_schema") or {}))
    return max(size // 4, 1 if fields.get("messages") or fields.get("system") else 0)


def chat_request(fields: dict[str, Any], model_id: str) -> dict[str, Any]:
    """Return the chat completion request that asks what a Messages request asks; raise Refused."""
    max_tokens = fields.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise Refused("max_tokens is required and must be a positive integer")
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused("messages is required and must not be empty")
    chat: list[dict[str, Any]] = []
    if system := _text(fields.get("system")):
        chat.append({"role": "system", "content": system})
    for message in messages:
        chat += _chat_messages(message)
    payload: dict[str, Any] = {"model": model_id, "messages": chat, "max_tokens": max_tokens}
    # top_k is no OpenAI field, but llama.cpp's server and vLLM take it.
    names = (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stop_sequences", "stop"),
    )
    for ours, theirs in names:
        if fields.get(ours) is not None:
            payload[theirs] = fields[ours]
    if isinstance(tools := fields.get("tools"), list) and tools:
        payload["tools"] = [_tool(tool) for tool in tools]
        if (choice := _tool_choice(fields.get("tool_choice"))) is not None:
            payload["tool_choice"] = choice
    if fields.get("stream") is True:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


def message_reply(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """Return the Messages API's answer for a whole chat completion, under the model name asked for."""
    choice = (completion.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if thinking := said.get("reasoning_content") or said.get("reasoning"):
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if said.get("content"):
        content.append({"type": "text", "text": said["content"]})
    for call in said.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _tool_id(),
                "name": function.get("name", ""),
                "input": _arguments(function.get("arguments")),
            }
        )
    usage = completion.get("usage") or {}
    return {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), called=bool(said.get("tool_calls"))),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
        },
    }


def error_body(message: str, status: int) -> dict[str, Any]:
    """Return an error as the Messages API words one, its type from the HTTP status."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


async def message_events(
    events: AsyncIterator[dict[str, Any] | None], model: str, input_tokens: int
) -> AsyncIterator[bytes]:
    """Turn a chat completion's stream events into the Messages API's: message_start, each content block
    (thinking, text) opened, its deltas, closed, each tool call whole, then message_delta and
    message_stop. message_start tells `input_tokens`, an estimate, until the server counts them; a server
    that fails midway ends the stream with an error event."""
    stream = _MessageStream(model, input_tokens)
    yield stream.start()
    try:
        async for event in events:
            if event is None:
                continue  # [DONE]; what follows is read to the end, so the connection can be kept
            if (error := event_error(event)) is not None:
                yield _event("error", error_body(error, 500))
                return
            if said := stream.chunk(event):
                yield said
    except BackendUnavailable as exc:
        yield _event("error", error_body(str(exc), 502))
        return
    yield stream.stop()


class _MessageStream:
    """The Messages API's stream of one answer, built from chat completion chunks as they come."""

    def __init__(self, model: str, input_tokens: int) -> None:
        self._model = model
        self._index = -1
        self._open: str | None = None  # the kind of the content block open now: thinking, text, or a call
        self._calls = ToolCalls()
        self._finish: str | None = None
        self._usage = {"input_tokens": input_tokens, "output_tokens": 0}
        # Pieces generated: the output's tokens where the server reports no usage (llama-cpp-python's
        # streams do not), as each piece of a stream is a token.
        self._pieces = 0

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": _message_id(),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": dict(self._usage),
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def chunk(self, event: dict[str, Any]) -> bytes:
        out = []
        if usage := event.get("usage"):
            self._usage = {
                "input_tokens": usage.get("prompt_tokens") or self._usage["input_tokens"],
                "output_tokens": usage.get("completion_tokens", 0),
            }
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            self._pieces += any(
                delta.get(k) for k in ("content", "reasoning_content", "reasoning", "tool_calls")
            )
            if thinking := delta.get("reasoning_content") or delta.get("reasoning"):
                out += self._into("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
            if delta.get("content"):
                out += self._into("text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                self._calls.add(call)
            if reason := choice.get("finish_reason"):
                self._finish = reason
        return b"".join(out)

    def stop(self) -> bytes:
        out = self._close()
        # Each call whole, once its arguments are: a block of its own, one delta, closed.
        for number, call in enumerate(self._calls.calls):
            block = {"type": "tool_use", "id": call["id"] or _tool_id(), "name": call["name"], "input": {}}
            out += self._into(f"call {number}", block)
            out.append(self._delta({"type": "input_json_delta", "partial_json": call["arguments"] or "{}"}))
            out += self._close()
        usage = {**self._usage, "output_tokens": self._usage["output_tokens"] or self._pieces}
        reason = stop_reason(self._finish, called=bool(self._calls.calls))
        return b"".join([*out, _ending(reason, usage)])

    def _into(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        """Make `kind` the open block: close the one open, if another, and start this one."""
        if self._open == kind:
            return []
        out = self._close()
        self._index += 1
        self._open = kind
        out.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": self._index, "content_block": block},
            )
        )
        return out

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event(
            "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )


def _chat_messages(message: Any) -> list[dict[str, Any]]:
    """Return the chat messages one Messages API message stands for: tool results become tool messages."""
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise Refused("each message needs a role of user or assistant")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise Refused("a message's content is a string or a list of content blocks")
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"))}})
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        elif kind == "tool_result":
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id"),
                    "content": _text(block.get("content")),
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the model's own reasoning is not sent back, as Ollama leaves it out of the prompt
        else:
            raise Refused(f"content block type {kind!r} is not supported")
    said: list[dict[str, Any]] = []
    if parts or calls:
        text_only = all(part["type"] == "text" for part in parts)
        body: Any = "".join(part["text"] for part in parts) if text_only else parts
        chat: dict[str, Any] = {"role": role, "content": body if body or not calls else None}
        if calls:
            chat["tool_calls"] = calls
        said.append(chat)
    # Tool results answer the assistant's calls, so they come first, as the chat API expects.
    return results + said


def _text(value: Any) -> str:
    """The text of a system prompt or a tool result: a string, or text blocks joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            str(b.get("text", "")) for b in value if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _image_url(source: Any) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if isinstance(source, dict) and source.get("type") == "url":
        return str(source.get("url", ""))
    raise Refused("an image block needs a base64 or url source")


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
        raise Refused("each tool needs a name")
    function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))


def _arguments(arguments: Any) -> Any:
    """A tool call's arguments as the object they encode; text that is no JSON object stays text."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}


def _ending(reason: str, usage: dict[str, int]) -> bytes:
    """The events that end a message: why it stopped, what it cost, and the end."""
    delta = {"stop_reason": reason, "stop_sequence": None}
    ending = _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
    return ending + _event("message_stop", {"type": "message_stop"})


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + go_json(data) + b"\n\n"


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"
