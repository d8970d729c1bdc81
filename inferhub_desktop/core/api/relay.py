"""Relay a backend's answer to the client: headers filtered, stream frames forwarded as they arrive."""

from __future__ import annotations

import enum

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ..backends.base import UpstreamResponse
from ..errors import BackendUnavailable
from .responses import error_payload, go_json

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
# uncompressed so stream frames can be seen.
_NOT_SENT_UP = _HOP_BY_HOP | {"host", "content-length", "origin", "accept-encoding"}
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
