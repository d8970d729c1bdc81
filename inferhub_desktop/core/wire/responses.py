"""Responses the node writes itself, in the shapes Ollama's clients parse."""

from __future__ import annotations

import json

from aiohttp import web

# Go's json.Marshal escapes these so its output is safe inside HTML and JavaScript.
_GO_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})


def go_json(value: object) -> bytes:
    """Encode JSON byte for byte as Go's json.Marshal does: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return valid_utf8(text).encode()


def valid_utf8(text: str) -> str:
    """Replace what UTF-8 cannot carry (lone surrogates, from JSON's \\ud800) with U+FFFD, as Go does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def error_payload(status: int, message: str, *, openai: bool) -> dict[str, object]:
    """Shape an error as Ollama's native API, or its OpenAI-compatible API, writes it."""
    if not openai:
        return {"error": message}
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def error_response(status: int, message: str, *, openai: bool) -> web.Response:
    """Return an error response, for failures before any byte of a reply was sent."""
    body = go_json(error_payload(status, message, openai=openai))
    return web.Response(status=status, body=body, content_type="application/json", charset="utf-8")


def text_response(status: int, text: str) -> web.Response:
    """Return a plain-text response, as gin writes its 404, 405 and `/` bodies."""
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8")


def json_response(value: object, status: int = 200) -> web.Response:
    """Answer with `value` as JSON, written as Go's encoder (Ollama's) writes it."""
    return web.Response(status=status, body=go_json(value), content_type="application/json")
