"""How Ollama's server speaks HTTP: content types, errors as gin and Ollama word them, stream framing and
writing, the CORS and Host checks, and reading request bodies as Go's decoder does."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import hdrs, web

from tests.fakes.base import Fault, Json, StreamWriter, dumps

JSON_UTF8 = "application/json; charset=utf-8"  # gin's c.JSON


JSON_PLAIN = "application/json"  # set explicitly by Ollama's stream helpers and the /v1 writers


NDJSON = "application/x-ndjson"


EVENT_STREAM = "text/event-stream"


DEFAULT_KEEP_ALIVE_S = 300.0  # OLLAMA_KEEP_ALIVE's default


FOREVER_S = (2**63 - 1) / 1e9  # a negative keep_alive becomes Go's longest time.Duration


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


_DURATION = re.compile(f"(?:{_DURATION_PART.pattern})+")


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


_GO_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "bool"),  # before int: bool is an int in Python
    (int, "number"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(cidr) for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


_CORS_PATTERNS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)


_CORS_HEADERS = (
    "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,Openai-Beta,X-Stainless-Arch,"
    "X-Stainless-Async,X-Stainless-Custom-Poll-Interval,X-Stainless-Helper-Method,X-Stainless-Lang,"
    "X-Stainless-Os,X-Stainless-Package-Version,X-Stainless-Poll-Helper,X-Stainless-Retry-Count,"
    "X-Stainless-Runtime,X-Stainless-Runtime-Version,X-Stainless-Timeout"
)


_PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
    "Access-Control-Allow-Headers": _CORS_HEADERS,
    "Access-Control-Max-Age": "43200",
}


_CORS_ORIGIN = web.RequestKey("cors_origin", str)


_HELD = web.RequestKey("held", contextlib.ExitStack)  # what a request lets go of when it ends


class _ApiError(Exception):
    """An error reply worded like Ollama's, sent as the status when no byte has gone out yet."""

    def __init__(self, status: int, message: str, content_type: str = JSON_UTF8) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.content_type = content_type


def _local_now() -> datetime:
    """Return the current local time, offset included."""
    return datetime.now().astimezone()


@dataclass(frozen=True)
class _Framing:
    """How a streamed reply frames its objects: NDJSON natively, SSE on /v1."""

    content_type: str
    prefix: bytes
    suffix: bytes
    trailer: bytes
    error_lines: bool  # native streams report a late error as an {"error": ...} line; /v1 just stops

    def frame(self, obj: Json) -> bytes:
        """Encode one object as one frame."""
        return self.prefix + dumps(obj).encode() + self.suffix


_NDJSON_FRAMING = _Framing(NDJSON, b"", b"\n", b"", error_lines=True)


_SSE_FRAMING = _Framing(EVENT_STREAM, b"data: ", b"\n\n", b"data: [DONE]\n\n", error_lines=False)


class _StreamWriter(StreamWriter):
    """Write one streamed reply, one chunk per frame, firing an injected fault before a frame."""

    def __init__(self, request: web.Request, framing: _Framing, fault: Fault | None) -> None:
        super().__init__(request, {hdrs.CONTENT_TYPE: framing.content_type}, fault)
        self._framing = framing

    async def send(self, frame: bytes) -> bool:
        """Send one frame as its own chunk; return False once an injected drop cut the connection."""
        if (fault := self.due) is not None:
            if fault.drop:
                self.drop()
                return False
            raise _ApiError(500, fault.message)
        await self.write(frame)
        self.sent += 1
        return True

    async def fail(self, error: _ApiError) -> None:
        """Report an error: as the status before the first byte, else in-stream, then end."""
        if not self.response.prepared:
            # Ollama's streamResponse switches to a plain application/json error while nothing is written.
            raise _ApiError(error.status, error.message, JSON_PLAIN) from error
        if self._framing.error_lines:
            await self.response.write(self._framing.frame({"error": error.message}))
        await self.response.write_eof()


def _quote(text: str) -> str:
    """Quote like Go's %q."""
    return json.dumps(text, ensure_ascii=False)


def _go_kind(value: Any) -> str:
    """Name a JSON value's kind the way Go's json errors do."""
    return next((name for kind, name in _GO_KINDS if isinstance(value, kind)), "null")


async def _read_json(request: web.Request, *, empty_message: str = "missing request body") -> Json:
    """Parse the body as JSON whatever the Content-Type, with Go-like errors."""
    raw = (await request.read()).decode("utf-8", errors="replace")
    if not raw.strip():
        raise _ApiError(400, empty_message)
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(raw.rstrip()):
            raise _ApiError(400, "unexpected EOF") from None
        raise _ApiError(400, f"invalid character '{raw[exc.pos]}' looking for beginning of value") from None
    if not isinstance(body, dict):
        raise _ApiError(400, f"json: cannot unmarshal {_go_kind(body)} into Go value of type struct")
    return body


def _string(body: Json, key: str) -> str:
    """Read a string field; absent or null is empty, another type is a 400 like Go's decoder."""
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _ApiError(
            400, f"json: cannot unmarshal {_go_kind(value)} into Go struct field {key} of type string"
        )
    return value


def _int_option(options: Any, key: str) -> int:
    """Read an integer from `options`, 0 when absent."""
    value = options.get(key) if isinstance(options, dict) else None
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _keep_alive(value: Any) -> float | None:
    """Parse keep_alive like api.Duration: seconds, or a Go duration string; negative means forever."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _ApiError(400, f"Unsupported type: '{_go_kind(value)}'")
    seconds = _go_duration(value) if isinstance(value, str) else float(value)
    return FOREVER_S if seconds < 0 else seconds


def _go_duration(text: str) -> float:
    """Parse a Go duration string ("5m", "1h30m", "0") into seconds."""
    sign = -1.0 if text.startswith("-") else 1.0
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    if not _DURATION.fullmatch(body):
        problem = "missing unit in duration" if re.fullmatch(r"[\d.]+", body) else "invalid duration"
        raise _ApiError(400, f"time: {problem} {_quote(text)}")
    return sign * sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(body))


def _check_top_logprobs(body: Json) -> None:
    """Reject top_logprobs outside 0..20."""
    top_logprobs = body.get("top_logprobs") or 0
    if not isinstance(top_logprobs, int) or not 0 <= top_logprobs <= 20:
        raise _ApiError(400, "top_logprobs must be between 0 and 20")


def _check_raw(body: Json) -> None:
    """Reject a raw generate that also sets a template, system or context."""
    if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
        raise _ApiError(400, "raw mode does not support template, system, or context")


def _rfc3339(moment: datetime) -> str:
    """Format like Go's RFC3339Nano: trailing fraction zeros trimmed, `Z` for a zero offset."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    offset = moment.strftime("%z")
    return text + ("Z" if offset in ("", "+0000") else f"{offset[:3]}:{offset[3:]}")


def _utc_now() -> str:
    """Return `created_at` for a reply: now, UTC."""
    return _rfc3339(datetime.now(UTC))


def _json(obj: Json, content_type: str = JSON_UTF8, status: int = 200) -> web.Response:
    """Answer one JSON object, as gin's c.JSON does."""
    return web.Response(status=status, body=dumps(obj).encode(), headers={hdrs.CONTENT_TYPE: content_type})


def _openai_json(obj: Json, status: int = 200) -> web.Response:
    """Answer JSON the way the /v1 writers do: json.Encoder, so a trailing newline."""
    return web.Response(
        status=status, body=f"{dumps(obj)}\n".encode(), headers={hdrs.CONTENT_TYPE: JSON_PLAIN}
    )


def _error_response(path: str, error: _ApiError) -> web.Response:
    """Word an error natively ({"error": msg}) or, on /v1, in OpenAI's envelope."""
    if not path.startswith("/v1/"):
        return _json({"error": error.message}, error.content_type, error.status)
    kinds = {400: "invalid_request_error", 404: "not_found_error"}
    envelope = {
        "message": error.message,
        "type": kinds.get(error.status, "api_error"),
        "param": None,
        "code": None,
    }
    return _openai_json({"error": envelope}, error.status)


def _plain(status: int, text: str) -> web.Response:
    """Answer like gin's own 404/405: bare `text/plain`, no charset."""
    return web.Response(status=status, body=text.encode(), headers={hdrs.CONTENT_TYPE: "text/plain"})


async def _handle_root(request: web.Request) -> web.StreamResponse:
    """GET/HEAD /."""
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


async def _add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Echo an allowed cross-origin request's Origin, as gin-contrib/cors does."""
    origin = request.get(_CORS_ORIGIN)
    if origin:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
        response.headers.add(hdrs.VARY, "Origin")


def _origin_allowed(origin: str) -> bool:
    """Tell whether an Origin matches Ollama's default allowed origins (wildcards allowed)."""
    for pattern in _CORS_PATTERNS:
        prefix, wildcard, suffix = pattern.partition("*")
        if origin == pattern or (wildcard and origin.startswith(prefix) and origin.endswith(suffix)):
            return True
    return False


def _split_host(value: str) -> str:
    """Drop the port like Go's net.SplitHostPort, keeping the whole value when that fails."""
    if value.startswith("[") and "]:" in value:
        return value[1 : value.index("]:")]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def _host_verdict(header: str, local_ips: frozenset[str]) -> Literal["ip", "name", "deny"]:
    """Apply Ollama's allowedHostsMiddleware to a Host header."""
    host = _split_host(header)
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        private = any(ip in network for network in _PRIVATE_NETWORKS)
        if ip.is_loopback or ip.is_unspecified or private or str(ip) in local_ips:
            return "ip"
    lowered = host.lower()
    if lowered in ("", "localhost", socket.gethostname().lower()) or lowered.endswith(_LOCAL_SUFFIXES):
        return "name"
    return "deny"


async def _local_addresses() -> frozenset[str]:
    """Return this machine's own addresses, which Ollama's Host check also accepts."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(socket.gethostname(), None)
    except OSError:
        return frozenset()
    return frozenset(str(info[4][0]) for info in infos)
