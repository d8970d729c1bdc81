"""The request path the local and share APIs have in common, and the relaying of a backend's answer.

Both APIs word their failures as Ollama does, name the node in every response, stop request loops,
cap bodies, choose a backend and relay its answer, headers filtered and stream frames forwarded as
they arrive; each decides on its own which requests it takes.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import quote

from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, CIMultiDictProxy

from ..backends.base import Backend, Body, UpstreamResponse
from ..errors import ApiError, BackendUnavailable
from ..settings import SETTINGS_FILE, Settings
from .endpoints import Endpoint, Kind, match
from .payload import parse_body, string_field
from .responses import error_payload, error_response, go_json, text_response

_log = logging.getLogger(__name__)

NODE_HEADER = "X-InferHub-Node"
# Node ids a request has passed through; a node that sees its own id is its own backend.
VIA_HEADER = "X-InferHub-Via"

# Picks the backend for a request to `endpoint` naming `model` (None when the body names none).
BackendChooser = Callable[[Endpoint, str | None], Backend]
# Told of each request relayed, so the node can look again at what may have changed.
RelayedHook = Callable[[Endpoint], None]
# The node's full state as JSON values.
StatusSource = Callable[[], dict[str, Any]]
# Holds a request to `endpoint` while it is sent to the backend and its answer relayed; this is
# where an API counts requests against the backend's slots, or waits for one.
Admit = Callable[[Endpoint], AbstractAsyncContextManager[None]]

_STARTED_KEY = web.RequestKey("response_started", bool)

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Host is set from the backend's URL (Ollama rejects foreign ones); Origin was checked here, by the
# user's OLLAMA_ORIGINS, and must not be checked again by a backend that has its own; bodies travel
# uncompressed so stream frames can be seen; the body has been read already, so nothing is expected.
_NOT_SENT_UP = _HOP_BY_HOP | {"host", "content-length", "origin", "accept-encoding", "expect"}
# aiohttp writes its own framing and Date; CORS headers are the node's, not the backend's.
_NOT_SENT_DOWN = _HOP_BY_HOP | {"content-length", "date", "server", "vary"}


class Framing(enum.Enum):
    """How a streamed body is cut into frames that must reach the client whole."""

    NDJSON = b"\n"
    SSE = b"\n\n"

    def error_frame(self, message: str) -> bytes:
        """Encode an error the client's parser reads as the stream's last frame."""
        if self is Framing.NDJSON:
            return go_json({"error": message}) + b"\n"
        return b"data: " + go_json(error_payload(500, message, openai=True)) + b"\n\n"


def framing_of(content_type: str) -> Framing | None:
    """Tell from a Content-Type whether the body is a stream, and of which kind."""
    media = content_type.split(";", 1)[0].strip().lower()
    return {"application/x-ndjson": Framing.NDJSON, "text/event-stream": Framing.SSE}.get(media)


class FrameSplitter:
    """Hold back a trailing partial frame so a broken stream never leaves half a line behind."""

    def __init__(self, framing: Framing) -> None:
        # SSE events may also end in CRLF CRLF.
        self._delimiters = (b"\n",) if framing is Framing.NDJSON else (b"\n\n", b"\r\n\r\n")
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        """Add received bytes; return the complete frames among them, in order."""
        buffer = self.pending + data
        end = 0
        for delimiter in self._delimiters:
            at = buffer.rfind(delimiter)
            if at != -1:
                end = max(end, at + len(delimiter))
        self.pending = buffer[end:]
        return buffer[:end]


def upstream_headers(request: web.BaseRequest, *, keep_length: bool) -> CIMultiDict[str]:
    """Copy the client's headers for the backend, less those that belong to this hop."""
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _NOT_SENT_UP)
    if keep_length and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    return headers


def _downstream_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict(
        (k, v)
        for k, v in headers.items()
        if k.lower() not in _NOT_SENT_DOWN and not k.lower().startswith("access-control-")
    )


async def relay(request: web.Request, upstream: UpstreamResponse) -> web.StreamResponse:
    """Send the backend's answer to the client.

    Whole bodies are read first, so a broken backend still gets a clean 502. Streams go out frame
    by frame as they arrive, the status line with the first frame, as Ollama sends it; if the
    backend breaks after that, the client gets an error frame in the stream's own format.
    """
    headers = _downstream_headers(upstream.headers)
    framing = framing_of(upstream.headers.get("Content-Type", ""))
    if framing is None or request.method == "HEAD":
        return web.Response(status=upstream.status, body=await upstream.read(), headers=headers)

    response = web.StreamResponse(status=upstream.status, headers=headers)
    splitter = FrameSplitter(framing)
    try:
        async for chunk in upstream.iter_chunks():
            if frames := splitter.feed(chunk):
                if not response.prepared:
                    await response.prepare(request)
                await response.write(frames)
    except BackendUnavailable as exc:
        if not response.prepared:
            raise  # nothing reached the client yet: it gets a clean 502
        await response.write(framing.error_frame(str(exc)))
    else:
        if not response.prepared:
            await response.prepare(request)
        if splitter.pending:
            # The backend ended without a final delimiter: pass its last bytes on as they are.
            await response.write(splitter.pending)
    await response.write_eof()
    return response


def route(request: web.BaseRequest) -> Endpoint | web.Response:
    """Find the request's endpoint, or answer unknown paths, other methods and `/` as Ollama does."""
    found = match(request.method, request.path)
    if found.endpoint is None:
        if found.method_not_allowed:
            return text_response(405, "405 method not allowed")
        return text_response(404, "404 page not found")
    if found.endpoint.kind is Kind.ROOT:
        return text_response(200, "Ollama is running")
    return found.endpoint


class Forwarder:
    """The part of answering a request that both APIs share, from the error shapes to the relay."""

    def __init__(
        self,
        settings: Settings,
        choose_backend: BackendChooser,
        *,
        status: StatusSource,
        relayed: RelayedHook,
    ) -> None:
        self._settings = settings
        self._choose_backend = choose_backend
        self._status = status
        self._relayed = relayed
        self._node_header = quote(settings.name, safe=" !#$&'()*+,/:;=?@[]~")

    def app(self, handler: Handler) -> web.Application:
        """Build an application that sends every path to `handler`, its failures in Ollama's shapes."""
        app = web.Application(handler_args={"max_field_size": 65536}, middlewares=[self._errors])
        app.router.add_route("*", "/{path:.*}", handler)
        app.on_response_prepare.append(self._on_prepare)
        return app

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        request[_STARTED_KEY] = True
        response.headers[NODE_HEADER] = self._node_header

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Turn failures into Ollama-format errors: the /v1 paths in OpenAI's shape, never a traceback."""
        openai = request.path.startswith("/v1/")
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, openai=openai)
        except BackendUnavailable as exc:
            return error_response(502, str(exc), openai=openai)
        except Exception:
            if request.get(_STARTED_KEY):
                raise  # the status line is out; aiohttp drops the connection
            # Never a traceback to the client: the log has it.
            _log.exception("internal error answering %s %s", request.method, request.path)
            return error_response(500, "internal error in the InferHub node; see its log", openai=openai)

    def status_reply(self, request: web.BaseRequest) -> web.Response:
        """Answer a request for the node's status: its state as JSON to GET and HEAD."""
        if request.method not in ("GET", "HEAD"):
            return text_response(405, "405 method not allowed")
        return web.Response(body=go_json(self._status()), content_type="application/json")

    async def forward(self, request: web.Request, endpoint: Endpoint, admit: Admit) -> web.StreamResponse:
        """Send the request to the backend chosen for it and relay the answer, held by `admit`."""
        via = [v.strip() for v in request.headers.get(VIA_HEADER, "").split(",") if v.strip()]
        if self._settings.node_id in via:
            raise ApiError(
                508,
                f"request loop: the backend {self._settings.backend} leads back to this InferHub node; "
                "point --backend at Ollama itself (default http://127.0.0.1:11434)",
            )
        body = await self._body(request, endpoint)
        model = None
        if endpoint.request_type is not None and isinstance(body, bytes):
            fields = parse_body(body, endpoint.request_type, openai=endpoint.openai)
            model = string_field(fields, "model", endpoint.request_type)
        backend = self._choose_backend(endpoint, model)

        headers = upstream_headers(request, keep_length=isinstance(body, StreamReader))
        headers[VIA_HEADER] = ",".join([*via, self._settings.node_id])
        # The body is read and checked first: a request that would fail anyway takes no slot.
        async with (
            admit(endpoint),
            backend.request(request.method, request.raw_path, headers, body) as upstream,
        ):
            response = await relay(request, upstream)
        self._relayed(endpoint)
        return response

    async def _body(self, request: web.Request, endpoint: Endpoint) -> Body:
        """Read the body within the size limit; blob uploads stream through unread and unlimited."""
        if not request.body_exists:
            return None
        if endpoint.kind is Kind.BLOB:
            return request.content
        limit = self._settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"request body is larger than the {self._settings.max_body_mib} MiB limit; raise it with "
            f"--max-body-mib or max_body_mib in {self._settings.config_dir / SETTINGS_FILE}",
        )
