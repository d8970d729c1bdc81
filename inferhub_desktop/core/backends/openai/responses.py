"""OpenAI's Responses API (`/v1/responses`) on an OpenAI-compatible server that has only chat completions
(llama-cpp-python's, older llama.cpp and vLLM): the request as a chat completion, the answer and its
stream as a response's items and events, as Ollama translates them to its chat (openai/responses.go).
Pure functions and one stream translator; no I/O."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ...wire.errors import BackendUnavailable
from ...wire.responses import go_json
from .replies import ToolCalls, event_error


class Refused(ValueError):
    """The request is not one the Responses API takes; the message says why."""


def chat_request(fields: dict[str, Any], model_id: str) -> dict[str, Any]:
    """Return the chat completion request that asks what a Responses request asks; raise Refused."""
    chat: list[dict[str, Any]] = []
    if isinstance(instructions := fields.get("instructions"), str) and instructions:
        chat.append({"role": "system", "content": instructions})
    given = fields.get("input")
    if isinstance(given, str):
        chat.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for item in given:
            _add_item(chat, item)
    else:
        raise Refused("input is required: a string, or a list of input items")
    payload: dict[str, Any] = {"model": model_id, "messages": chat}
    for ours, theirs in (
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
    ):
        if fields.get(ours) is not None:
            payload[theirs] = fields[ours]
    tools = [_tool(tool) for tool in fields.get("tools") or [] if isinstance(tool, dict)]
    if tools:
        payload["tools"] = tools
        choice = fields.get("tool_choice")
        if isinstance(choice, str):
            payload["tool_choice"] = choice
        elif isinstance(choice, dict) and choice.get("type") == "function":
            payload["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if fields.get("stream") is True:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


def response(completion: dict[str, Any], fields: dict[str, Any], model: str) -> dict[str, Any]:
    """Return the Responses API's answer for a whole chat completion, under the model name asked for."""
    choice = (completion.get("choices") or [{}])[0]
    said = choice.get("message") or {}
    items: list[dict[str, Any]] = []
    if thinking := said.get("reasoning_content") or said.get("reasoning"):
        items.append(_reasoning_item(_item_id("rs"), thinking))
    if said.get("content"):
        items.append(_message_item(_item_id("msg"), said["content"], "completed"))
    for call in said.get("tool_calls") or []:
        function = call.get("function") or {}
        items.append(
            _call_item(
                _item_id("fc"),
                call.get("id") or _item_id("call"),
                function.get("name", ""),
                _text(function.get("arguments")),
            )
        )
    usage = completion.get("usage") or {}
    return _resource(
        _item_id("resp"),
        fields,
        model,
        items,
        usage.get("prompt_tokens", 0),
        usage.get("completion_tokens", 0),
    )


async def response_events(
    events: AsyncIterator[dict[str, Any] | None], fields: dict[str, Any], model: str
) -> AsyncIterator[bytes]:
    """Turn a chat completion's stream events into the Responses API's, each numbered: created and in
    progress, each output item added, its deltas, done, function calls whole, then completed; a server
    that fails midway ends it with response.failed."""
    stream = _ResponseStream(fields, model)
    yield stream.start()
    try:
        async for event in events:
            if event is None:
                continue  # [DONE]; what follows is read to the end, so the connection can be kept
            if (error := event_error(event)) is not None:
                yield stream.failed(error)
                return
            if said := stream.chunk(event):
                yield said
    except BackendUnavailable as exc:
        yield stream.failed(str(exc))
        return
    yield stream.stop()


class _ResponseStream:
    """The Responses API's events for one answer, built from chat completion chunks as they come."""

    def __init__(self, fields: dict[str, Any], model: str) -> None:
        self._fields = fields
        self._model = model
        self._id = _item_id("resp")
        self._sequence = -1
        self._items: list[dict[str, Any]] = []  # the output so far; the last may still be open
        self._open: str | None = None  # "reasoning", "message", or "call N"
        self._usage = (0, 0)
        self._calls = ToolCalls()
        self._pieces = 0

    def start(self) -> bytes:
        resource = self._resource("in_progress")
        return self._event("response.created", response=resource) + self._event(
            "response.in_progress", response=resource
        )

    def chunk(self, event: dict[str, Any]) -> bytes:
        out = []
        if usage := event.get("usage"):
            self._usage = (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            self._pieces += any(
                delta.get(k) for k in ("content", "reasoning_content", "reasoning", "tool_calls")
            )
            if thinking := delta.get("reasoning_content") or delta.get("reasoning"):
                out += self._into("reasoning", _reasoning_item(_item_id("rs"), ""))
                self._items[-1]["summary"][0]["text"] += thinking
                where = {k: v for k, v in self._where().items() if k != "content_index"}
                out.append(
                    self._event(
                        "response.reasoning_summary_text.delta", **where, summary_index=0, delta=thinking
                    )
                )
            if text := delta.get("content"):
                out += self._into("message", _message_item(_item_id("msg"), "", "in_progress"))
                self._items[-1]["content"][0]["text"] += text
                out.append(
                    self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])
                )
            for call in delta.get("tool_calls") or []:
                self._calls.add(call)
        return b"".join(out)

    def stop(self) -> bytes:
        out = self._close()
        # Each call whole, once its arguments are, as Ollama tells them: added, its arguments, done.
        for number, call in enumerate(self._calls.calls):
            item = _call_item(_item_id("fc"), call["id"] or _item_id("call"), call["name"], "")
            out += self._into(f"call {number}", {**item, "status": "in_progress"})
            self._items[-1]["arguments"] = call["arguments"] or "{}"
            where = {"item_id": item["id"], "output_index": len(self._items) - 1}
            out.append(
                self._event(
                    "response.function_call_arguments.delta", **where, delta=call["arguments"] or "{}"
                )
            )
            out += self._close()
        prompt, completion = self._usage
        resource = _resource(
            self._id, self._fields, self._model, self._items, prompt, completion or self._pieces
        )
        out.append(self._event("response.completed", response=resource))
        return b"".join(out)

    def failed(self, message: str) -> bytes:
        resource = {**self._resource("failed"), "error": {"code": "server_error", "message": message}}
        return self._event("response.failed", response=resource)

    def _resource(self, status: str) -> dict[str, Any]:
        return {
            **_resource(self._id, self._fields, self._model, [], 0, 0),
            "status": status,
            "usage": None,
        }

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._items[-1]["id"], "output_index": len(self._items) - 1, "content_index": 0}

    def _into(self, kind: str, item: dict[str, Any]) -> list[bytes]:
        """Make `kind` the open item: close the one open, if another, and add this one."""
        if self._open == kind:
            return []
        out = self._close()
        self._open = kind
        self._items.append(item)
        # Added as it is before its first delta: a message with no content yet, a reasoning no summary.
        added = {**item, "content": []} if item["type"] == "message" else _copy(item)
        if item["type"] == "reasoning":
            added = {"id": item["id"], "type": "reasoning", "summary": []}
        out.append(self._event("response.output_item.added", output_index=len(self._items) - 1, item=added))
        if item["type"] == "message":
            part = {**item["content"][0], "text": ""}
            out.append(self._event("response.content_part.added", **self._where(), part=part))
        return out

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        item = self._items[-1]
        out = []
        if item["type"] == "message":
            item["status"] = "completed"
            text = item["content"][0]["text"]
            out.append(self._event("response.output_text.done", **self._where(), text=text, logprobs=[]))
            out.append(
                self._event("response.content_part.done", **self._where(), part=_copy(item["content"][0]))
            )
        elif item["type"] == "reasoning":
            text = item["encrypted_content"] = item["summary"][0]["text"]
            where = {k: v for k, v in self._where().items() if k != "content_index"}
            out.append(
                self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=text)
            )
        else:
            item["status"] = "completed"
            where = self._where()
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=where["item_id"],
                    output_index=where["output_index"],
                    arguments=item["arguments"],
                )
            )
        out.append(
            self._event("response.output_item.done", output_index=len(self._items) - 1, item=_copy(item))
        )
        return out

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._sequence += 1
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        return b"event: " + kind.encode() + b"\ndata: " + go_json(data) + b"\n\n"


def _add_item(chat: list[dict[str, Any]], item: Any) -> None:
    """Add one input item to the chat: messages as they are, function calls to the assistant's message
    before them, their outputs as tool messages."""
    if not isinstance(item, dict):
        raise Refused("each input item must be an object")
    kind = item.get("type", "message")
    if kind == "message":
        role = {"developer": "system"}.get(item.get("role", ""), item.get("role"))
        if role not in ("system", "user", "assistant"):
            raise Refused(
                f"a message's role must be user, assistant, system or developer, not {item.get('role')!r}"
            )
        chat.append({"role": role, "content": _content(item.get("content"))})
    elif kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": _text(item.get("arguments"))},
        }
        if chat and chat[-1]["role"] == "assistant" and "tool_calls" in chat[-1]:
            chat[-1]["tool_calls"].append(call)
        else:
            chat.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        chat.append(
            {"role": "tool", "tool_call_id": item.get("call_id"), "content": _text(item.get("output"))}
        )
    elif kind != "reasoning":  # the model's own reasoning is not sent back
        raise Refused(f"input item type {kind!r} is not supported")


def _content(content: Any) -> Any:
    """A message's content for the chat API: text as text, images as image_url parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Refused("a message's content is a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": str(part.get("image_url", ""))}})
        else:
            raise Refused(f"content part type {kind!r} is not supported")
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        raise Refused(f"tool type {tool.get('type')!r} is not supported: only functions, each with a name")
    function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _resource(
    ident: str,
    fields: dict[str, Any],
    model: str,
    items: list[dict[str, Any]],
    input_tokens: int,
    output_tokens: int,
) -> dict[str, Any]:
    """A response object, as the API returns one whole and in its created and completed events."""
    # Completed even when cut at max_output_tokens, as Ollama answers: the pool answers alike whichever
    # machine's server it reached.
    return {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": [_copy(item) for item in items],
        "error": None,
        "incomplete_details": None,
        "instructions": fields.get("instructions"),
        "max_output_tokens": fields.get("max_output_tokens"),
        "parallel_tool_calls": fields.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "temperature": fields.get("temperature"),
        "top_p": fields.get("top_p"),
        "tool_choice": fields.get("tool_choice", "auto"),
        "tools": fields.get("tools") or [],
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": fields.get("metadata") or {},
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def _message_item(ident: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": ident,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _reasoning_item(ident: str, text: str) -> dict[str, Any]:
    """A reasoning item as Ollama gives one: its text as the summary, and as the plain encrypted content."""
    return {
        "id": ident,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
        "encrypted_content": text,
    }


def _call_item(ident: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": ident,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def _text(value: Any) -> str:
    """Arguments or an output as text: a string as it is, anything else as its JSON."""
    return (
        value
        if isinstance(value, str)
        else json.dumps(value if value is not None else {}, separators=(",", ":"))
    )


def _copy(item: dict[str, Any]) -> dict[str, Any]:
    """A snapshot of an item that later deltas do not change."""
    snapshot: dict[str, Any] = json.loads(json.dumps(item))
    return snapshot


def _item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"
