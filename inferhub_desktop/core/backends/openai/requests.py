"""Ollama's requests as an OpenAI-compatible server's: pure functions of a request's fields, which raise
ApiError (400) for fields the server could not be asked with."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ...wire.errors import ApiError
from .models import as_object

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
_IMAGE_TYPES = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def completion(fields: dict[str, Any], *, chat: bool) -> tuple[str, dict[str, Any]] | None:
    """Return the path and body (less its model and stream) that ask the server for an `/api/chat` or
    `/api/generate`; None for a request with nothing to answer, which Ollama takes to load or unload."""
    payload: dict[str, Any]
    if chat:
        messages = fields.get("messages") or []
        if not isinstance(messages, list):
            raise ApiError(400, "messages must be a list of {role, content} objects")
        if not messages:
            return None
        path, payload = "/v1/chat/completions", {"messages": openai_messages(messages)}
    else:
        prompt = text_field(fields, "prompt") or ""
        images = fields.get("images")
        if not prompt and not images:
            return None
        if fields.get("raw") is True or text_field(fields, "suffix"):
            # A raw prompt is the model's input as it is: the completions API, with no chat template.
            path, payload = "/v1/completions", {"prompt": prompt}
            if suffix := text_field(fields, "suffix"):
                payload["suffix"] = suffix
        else:
            system = text_field(fields, "system")
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": message_content(prompt, images)})
            path, payload = "/v1/chat/completions", {"messages": messages}
    return path, {**payload, **sampling(fields)}


def embedding(fields: dict[str, Any], model_id: str, *, legacy: bool) -> dict[str, Any] | None:
    """Return the `/v1/embeddings` body for an `/api/embed` (or, `legacy`, `/api/embeddings`); None for
    one with no input."""
    inputs = fields.get("prompt") if legacy else fields.get("input")
    if not inputs:
        return None
    if not isinstance(inputs, str | list):
        raise ApiError(400, "input must be a string or a list of strings")
    payload: dict[str, Any] = {"model": model_id, "input": inputs, "encoding_format": "float"}
    if not legacy and isinstance(fields.get("dimensions"), int):
        payload["dimensions"] = fields["dimensions"]
    return payload


def text_field(fields: dict[str, Any], key: str) -> str | None:
    """Return a string field of a request; raise ApiError (400) for a field of another type."""
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{key} must be a string")
    return value


def openai_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Translate Ollama's chat messages; tool calls get the ids OpenAI's API pairs results with."""
    out: list[dict[str, Any]] = []
    unanswered: list[tuple[str, str]] = []  # (id, function name) of tool calls awaiting their result
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, "each message must be an object with a role and content")
        role = str(message.get("role") or "")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise ApiError(400, "a message's content must be a string")
        translated: dict[str, Any] = {
            "role": role,
            "content": message_content(content, message.get("images")),
        }
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list) and calls:
            translated["tool_calls"] = []
            for index, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict):
                    raise ApiError(400, "a tool call must have a function")
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


def message_content(text: str, images: Any) -> str | list[dict[str, Any]]:
    """Return a message's content; with images, OpenAI's parts, each image a data: URI."""
    if not images:
        return text
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise ApiError(400, "images must be a list of base64-encoded strings")
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for image in images:
        parts.append({"type": "image_url", "image_url": {"url": f"data:{_image_type(image)};base64,{image}"}})
    return parts


def _image_type(encoded: str) -> str:
    try:
        head = base64.b64decode(encoded[:24] + "=" * (-len(encoded[:24]) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "an image is not valid base64") from None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in _IMAGE_TYPES if head.startswith(magic)), "image/png")


def sampling(fields: dict[str, Any]) -> dict[str, Any]:
    """Translate Ollama's options, format and tools into an OpenAI request's fields."""
    options = as_object(fields.get("options"))
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
