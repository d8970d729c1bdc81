"""Ollama's Responses API (openai/responses.go): /v1/responses answered through the native chat, whole or
as numbered events, the reasoning as a summary, completed whatever stopped it."""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from tests.fakes.base import Json, dumps

from .inference import _collect
from .messages import _EVENT_FRAMING
from .wire import _ApiError, _openai_json, _read_json


def _chat_from_responses(body: Json) -> Json:
    """FromResponsesRequest: instructions as the system message, the input's items as chat messages."""
    messages: list[Json] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        if given:
            messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for index, item in enumerate(given):
            kind = item.get("type") or ("message" if item.get("role") else "")
            if kind == "message":
                content = item.get("content")
                if isinstance(content, list):
                    content = "".join(
                        p.get("text", "") for p in content if p.get("type") in ("input_text", "output_text")
                    )
                messages.append({"role": item.get("role"), "content": content or ""})
            elif kind == "function_call_output":
                messages.append(
                    {"role": "tool", "content": item.get("output", ""), "tool_call_id": item.get("call_id")}
                )
            elif kind == "function_call":
                call = {
                    "id": item.get("call_id"),
                    "function": {
                        "name": item.get("name"),
                        "arguments": json.loads(item.get("arguments") or "{}"),
                    },
                }
                if messages and messages[-1]["role"] == "assistant":
                    messages[-1].setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif kind != "reasoning":
                raise _ApiError(400, f'input[{index}]: unknown input item type: "{kind}"')
    else:
        raise _ApiError(400, "input must be a string or array")
    options: Json = {"temperature": body["temperature"] if body.get("temperature") is not None else 1.0}
    if body.get("top_p") is not None:
        options["top_p"] = body["top_p"]
    if body.get("max_output_tokens") is not None:
        options["num_predict"] = body["max_output_tokens"]
    native: Json = {"model": body.get("model", ""), "messages": messages, "options": options}
    if body.get("tools"):
        native["tools"] = [
            {"type": "function", "function": {k: t.get(k) for k in ("name", "description", "parameters")}}
            for t in body["tools"]
        ]
    return native


def _resource(ident: str, body: Json, status: str, output: list[Json], usage: Json | None) -> Json:
    """buildResponseObject."""
    return {
        "id": ident,
        "object": "response",
        "created_at": int(time.time()),
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "incomplete_details": None,
        "model": body.get("model"),
        "previous_response_id": None,
        "instructions": body.get("instructions") or None,
        "output": output,
        "error": None,
        "tools": [],
        "tool_choice": "auto",
        "truncation": "disabled",
        "parallel_tool_calls": True,
        "text": {"format": {"type": "text"}},
        "top_p": body.get("top_p", 1.0),
        "temperature": body.get("temperature", 1.0),
        "usage": usage,
        "max_output_tokens": body.get("max_output_tokens"),
        "store": False,
        "metadata": {},
    }


def _usage(obj: Json) -> Json:
    prompt, generated = obj.get("prompt_eval_count", 0), obj.get("eval_count", 0)
    return {
        "input_tokens": prompt,
        "output_tokens": generated,
        "total_tokens": prompt + generated,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _message(ident: str, text: str, status: str) -> Json:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": ident, "type": "message", "status": status, "role": "assistant", "content": [part]}


def _function_call(ident: str, call: Json) -> Json:
    """A native tool call as a function_call item, its arguments as a JSON string."""
    function = call["function"]
    return {
        "id": ident,
        "type": "function_call",
        "status": "completed",
        "call_id": call["id"],
        "name": function["name"],
        "arguments": dumps(function["arguments"]),
    }


def _reasoning(ident: str, text: str) -> Json:
    return {
        "id": ident,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
        "encrypted_content": text,
    }


async def _response_events(
    ident: str, body: Json, objects: AsyncGenerator[Json, None]
) -> AsyncGenerator[Json, None]:
    """ResponsesStreamConverter: created and in progress, the reasoning and the message as they come,
    their closing events, then completed."""
    sequence = 0

    def event(kind: str, **fields: Any) -> Json:
        nonlocal sequence
        sequence += 1
        return {"type": kind, "sequence_number": sequence - 1, **fields}

    yield event("response.created", response=_resource(ident, body, "in_progress", [], None))
    yield event("response.in_progress", response=_resource(ident, body, "in_progress", [], None))
    output_index, thinking, text = 0, "", ""
    reasoning_id, message_id = f"rs_{random.randrange(999999)}", f"msg_{random.randrange(999999)}"
    reasoning_open, message_open = False, False
    calls: list[Json] = []
    async with contextlib.aclosing(objects):
        async for obj in objects:
            said = obj["message"]
            if said.get("thinking"):
                if not reasoning_open:
                    reasoning_open = True
                    item = {"id": reasoning_id, "type": "reasoning", "summary": []}
                    yield event("response.output_item.added", output_index=output_index, item=item)
                thinking += said["thinking"]
                where = {"item_id": reasoning_id, "output_index": output_index, "summary_index": 0}
                yield event("response.reasoning_summary_text.delta", **where, delta=said["thinking"])
            if (said.get("content") or obj["done"]) and reasoning_open:
                reasoning_open = False
                where = {"item_id": reasoning_id, "output_index": output_index, "summary_index": 0}
                yield event("response.reasoning_summary_text.done", **where, text=thinking)
                item = _reasoning(reasoning_id, thinking)
                yield event("response.output_item.done", output_index=output_index, item=item)
                output_index += 1
            for position, call in enumerate(said.get("tool_calls") or []):
                item = _function_call(f"fc_{random.randrange(999999)}_{position}", call)
                where = {"item_id": item["id"], "output_index": output_index}
                added = {**item, "status": "in_progress", "arguments": ""}
                yield event("response.output_item.added", output_index=output_index, item=added)
                yield event("response.function_call_arguments.delta", **where, delta=item["arguments"])
                yield event("response.function_call_arguments.done", **where, arguments=item["arguments"])
                yield event("response.output_item.done", output_index=output_index, item=item)
                calls.append(item)
                output_index += 1
            if said.get("content"):
                where = {"item_id": message_id, "output_index": output_index, "content_index": 0}
                if not message_open:
                    message_open = True
                    item = {**_message(message_id, "", "in_progress"), "content": []}
                    yield event("response.output_item.added", output_index=output_index, item=item)
                    yield event(
                        "response.content_part.added",
                        **where,
                        part=_message(message_id, "", "")["content"][0],
                    )
                text += said["content"]
                yield event("response.output_text.delta", **where, delta=said["content"], logprobs=[])
            if obj["done"]:
                output = [_reasoning(reasoning_id, thinking)] if thinking else []
                output += calls
                if message_open and not calls:
                    where = {"item_id": message_id, "output_index": output_index, "content_index": 0}
                    done = _message(message_id, text, "completed")
                    yield event("response.output_text.done", **where, text=text, logprobs=[])
                    yield event("response.content_part.done", **where, part=done["content"][0])
                    yield event("response.output_item.done", output_index=output_index, item=done)
                    output.append(done)
                yield event(
                    "response.completed", response=_resource(ident, body, "completed", output, _usage(obj))
                )


class ResponsesCompat:
    """The Responses endpoint of FakeOllama."""

    async def _handle_responses(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/responses, through the native chat as Ollama's ResponsesMiddleware does."""
        started_ns = time.perf_counter_ns()
        body = await _read_json(request, empty_message="EOF")
        reply = await self._infer(request, _chat_from_responses(body), chat=True, started_ns=started_ns)  # type: ignore[attr-defined]
        ident = f"resp_{random.randrange(999999)}"
        if body.get("stream") is True:
            return await self._stream(request, _EVENT_FRAMING, _response_events(ident, body, reply.objects))  # type: ignore[attr-defined]
        obj = await _collect(reply.objects)
        said = obj["message"]
        output = (
            [_reasoning(f"rs_{random.randrange(999999)}", said["thinking"])] if said.get("thinking") else []
        )
        calls = said.get("tool_calls") or []
        output += [_function_call(f"fc_{random.randrange(999999)}_{i}", call) for i, call in enumerate(calls)]
        if said.get("content") and not calls:
            output.append(_message(f"msg_{random.randrange(999999)}", said["content"], "completed"))
        return _openai_json(_resource(ident, body, "completed", output, _usage(obj)))
