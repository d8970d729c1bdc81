"""Stream framing: how Ollama's NDJSON and OpenAI's server-sent events are cut into frames that must
reach a client whole."""

from __future__ import annotations

import enum

from .responses import error_payload, go_json


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
