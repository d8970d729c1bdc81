"""Read the fields the node needs from a JSON body, failing the way Ollama's Go decoder fails."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import ApiError

# Python's JSON error messages and the context words Go's encoding/json uses for the same fault.
_SYNTAX_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
    "Invalid control character at": "in string literal",
    "Invalid \\escape": "in string escape code",
}

# keep_alive values that mean "unload now": 0 as a number or a Go duration.
_ZERO_DURATION = re.compile(r"[+-]?(?:0|(?:(?:0+\.?0*|\.0+)(?:ns|us|µs|μs|ms|s|m|h))+)")

_GO_KIND = {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number"}


def parse_body(body: bytes, go_type: str, *, openai: bool) -> dict[str, Any]:
    """Decode a request body as Ollama does, or raise ApiError(400) with Go's message.

    Like Go's json.Decoder, only the first JSON value counts and trailing bytes are ignored;
    `null` decodes to an empty request.
    """
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        # Ollama's native handlers say this; its OpenAI middleware passes Go's io.EOF through.
        raise ApiError(400, "EOF" if openai else "missing request body")
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, _go_syntax_error(exc)) from None
    except RecursionError:
        raise ApiError(400, "exceeded max depth") from None  # Go's decoder says so past its limit
    except ValueError:
        # Integers past Python's digit limit; Go fails on them as out of range.
        raise ApiError(400, "json: a number in the body is out of range") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"json: cannot unmarshal {_GO_KIND[type(value)]} into Go value of type {go_type}")
    return value


def string_field(request: dict[str, Any], name: str, go_type: str) -> str | None:
    """Return a string field, matched case-insensitively as Go does; None when absent or null."""
    key = name if name in request else next((k for k in request if k.lower() == name), None)
    if key is None or request[key] is None:
        return None
    value = request[key]
    if not isinstance(value, str):
        field = f"{go_type.split('.')[-1]}.{name}"
        raise ApiError(
            400, f"json: cannot unmarshal {_GO_KIND[type(value)]} into Go struct field {field} of type string"
        )
    return value


def count(value: Any) -> int | None:
    """Return a JSON value that is a count (an integer, not a boolean, at least 0), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def unloads_now(keep_alive: Any) -> bool:
    """Tell whether a keep_alive says "unload now": 0 as a number, or a zero Go duration."""
    if isinstance(keep_alive, int | float) and not isinstance(keep_alive, bool):
        return keep_alive == 0
    return isinstance(keep_alive, str) and _ZERO_DURATION.fullmatch(keep_alive.strip()) is not None


def _go_syntax_error(exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(exc.doc) or exc.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    context = _SYNTAX_CONTEXT.get(exc.msg, "looking for beginning of value")
    return f"invalid character {_go_quote_char(exc.doc[exc.pos])} {context}"


_GO_ESCAPED_CHARS = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
    "'": "\\'",
}


def _go_quote_char(ch: str) -> str:
    """Quote a character as encoding/json's quoteChar does (strconv.Quote inside single quotes)."""
    if ch in _GO_ESCAPED_CHARS:
        return f"'{_GO_ESCAPED_CHARS[ch]}'"
    if ch.isprintable():
        return f"'{ch}'"
    code = ord(ch)
    if code < 0x80:
        return f"'\\x{code:02x}'"
    return f"'\\u{code:04x}'" if code <= 0xFFFF else f"'\\U{code:08x}'"
