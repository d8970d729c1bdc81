"""What a relayed reply shows about the node that produced it: tokens, tokens/s, load and run time."""

from __future__ import annotations

import json
import time
from typing import Any

from ..speeds import Observation
from ..wire.endpoints import Endpoint, Kind
from ..wire.payload import count

_NS = 1e-9
# Whole replies larger than this (long embedding lists) are timed, not parsed.
_MAX_PARSED_BYTES = 1 << 20


class ReplyMeter:
    """Watch a reply go by, cheaply: its timing, and its last frames, read once it is over."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._start = time.monotonic()
        self._first: float | None = None
        self._last: float | None = None
        self._frames = 0
        # The last two batches of frames: Ollama's final chunk, or an OpenAI stream's usage event
        # followed by `data: [DONE]`.
        self._tail = (b"", b"")
        # Why the reply broke off midway, if it did.
        self.broken: str | None = None

    @property
    def first_at(self) -> float | None:
        """When the first of the reply reached the client (monotonic seconds), if it did."""
        return self._first

    def frames(self, data: bytes) -> None:
        """Note a batch of stream frames on its way to the client."""
        now = time.monotonic()
        if self._first is None:
            self._first = now
        self._last = now
        self._frames += 1
        self._tail = (self._tail[1], data)

    def whole(self, body: bytes) -> None:
        """Note a reply that was not streamed."""
        self._first = self._last = time.monotonic()
        self._tail = (b"", body if len(body) <= _MAX_PARSED_BYTES else b"")

    def failed_in_stream(self) -> str | None:
        """Return the error a stream ended with, if its last frame is one (the backend failed midway)."""
        return self.error() if self._frames else None

    def error(self) -> str | None:
        """Return the error the reply carried: an error body, or a stream's error frame."""
        payloads = self._payloads(self._tail[1])
        if not payloads:
            return None
        error = payloads[-1].get("error")
        if isinstance(error, dict):
            error = error.get("message")
        return str(error) if error else None

    def observation(self) -> Observation | None:
        """Return what the reply showed of the node's speed; None for replies that show nothing."""
        if self._endpoint.kind is not Kind.INFERENCE or self.broken or self._last is None:
            return None
        total_s = self._last - self._start
        if self._endpoint.openai:
            return self._openai(total_s)
        payloads = self._payloads(self._tail[1])
        final = payloads[-1] if payloads else None
        if final is None or not isinstance(final.get("total_duration"), int):
            return Observation(total_s=total_s)
        return Observation(
            total_s=final["total_duration"] * _NS,
            eval_count=count(final.get("eval_count")),
            eval_s=_seconds(final.get("eval_duration")),
            prompt_s=_seconds(final.get("prompt_eval_duration")),
            load_s=_seconds(final.get("load_duration")),
        )

    def _payloads(self, batch: bytes) -> list[dict[str, Any]]:
        """Return the JSON objects of a batch of frames: NDJSON lines, or SSE events' data."""
        frames = batch.split(b"\n\n" if self._endpoint.openai else b"\n")
        return [p for f in frames if (p := _object(f.strip().removeprefix(b"data:").strip())) is not None]

    def _openai(self, total_s: float) -> Observation:
        """Read the token count from OpenAI's `usage`; only a stream times the tokens as they came."""
        usage: Any = None
        for batch in self._tail:
            for payload in self._payloads(batch):
                if isinstance(payload.get("usage"), dict):
                    usage = payload["usage"]
        tokens = count(usage.get("completion_tokens")) if usage else None
        eval_s = None
        if self._frames > 1 and self._first is not None and self._last is not None:
            eval_s = (self._last - self._first) or None
        return Observation(total_s=total_s, eval_count=tokens, eval_s=eval_s)


def _object(data: bytes) -> dict[str, Any] | None:
    if not data.startswith(b"{"):
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _seconds(value: Any) -> float | None:
    nanoseconds = count(value)
    return nanoseconds * _NS if nanoseconds is not None else None
