"""An OpenAI-compatible server's replies as Ollama's: its stream events as NDJSON chunks or one whole
reply, its embeddings, its errors, and `/v1` streams passed through under the client's model name."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from ...wire.errors import ApiError, BackendUnavailable
from ...wire.framing import FrameSplitter, Framing
from ...wire.payload import count
from ...wire.responses import go_json
from .models import as_object, rfc3339


class Turn:
    """One reply of the model, read from the server's events and written as Ollama's chunks."""

    def __init__(self, model: str, *, chat: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self._model = model
        self._chat = chat
        self._clock = clock
        self._started = clock()
        self._first_at: float | None = None
        self._deltas = 0
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        # llama-server's own measure of prompt and generation time, in milliseconds.
        self._timings: dict[str, Any] = {}
        self._calls = ToolCalls()
        self._ended = False

    def loaded(self, unloaded: bool) -> dict[str, Any]:
        """The reply to a request with nothing to say, which Ollama uses to load or unload a model: an
        OpenAI server keeps its models loaded, so there is nothing to do."""
        reason = "unload" if unloaded else "load"
        if self._chat:
            return {
                **self._head(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": reason,
                "done": True,
            }
        return {**self._head(), "response": "", "done_reason": reason, "done": True}

    async def ndjson(
        self, events: AsyncGenerator[dict[str, Any] | None, None], server: str
    ) -> AsyncIterator[bytes]:
        """Yield Ollama's stream: a chunk per piece of text, the tool calls, then the final chunk."""
        async with contextlib.aclosing(events):
            async for event in events:
                if event is None:
                    self._ended = True
                elif error := event_error(event):
                    yield go_json({"error": error}) + b"\n"
                    return
                else:
                    for content, thinking in self._feed(event):
                        yield go_json(self._chunk(content, thinking)) + b"\n"
        self._check_ended(server)
        if self._calls.calls:
            try:
                calls = self._tool_calls()
            except ApiError as refusal:
                yield go_json({"error": refusal.message}) + b"\n"
                return
            yield go_json(self._chunk("", "", tool_calls=calls)) + b"\n"
        yield go_json(self._final()) + b"\n"

    async def gather(
        self, events: AsyncGenerator[dict[str, Any] | None, None], server: str
    ) -> dict[str, Any]:
        """Return the whole reply as one Ollama object, for a client that asked for no stream."""
        contents: list[str] = []
        thoughts: list[str] = []
        async with contextlib.aclosing(events):
            async for event in events:
                if event is None:
                    self._ended = True
                elif error := event_error(event):
                    raise ApiError(500, error)
                else:
                    for content, thinking in self._feed(event):
                        contents.append(content)
                        thoughts.append(thinking)
        self._check_ended(server)
        final = self._final()
        text, thinking = "".join(contents), "".join(thoughts)
        if self._chat:
            final["message"]["content"] = text
            if thinking:
                final["message"]["thinking"] = thinking
            if self._calls.calls:
                final["message"]["tool_calls"] = self._tool_calls()
        else:
            final["response"] = text
            if thinking:
                final["thinking"] = thinking
        return final

    def _check_ended(self, server: str) -> None:
        # A stream cut short ends with neither `[DONE]` nor a finish reason.
        if not self._ended and self._finish is None:
            raise BackendUnavailable(f"{server} ended its reply before the model finished")

    def _feed(self, event: dict[str, Any]) -> list[tuple[str, str]]:
        """Take in one event; return the (text, thinking) pieces it adds."""
        if isinstance(event.get("usage"), dict):
            self._usage = event["usage"]
        if isinstance(event.get("timings"), dict):
            self._timings = event["timings"]
        pieces = []
        choices = event.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
            delta = as_object(choice.get("delta"))
            # /v1/completions streams `text`; vLLM and llama.cpp name thinking `reasoning_content`, Ollama
            # and newer vLLM `reasoning`.
            content = delta.get("content") or choice.get("text") or ""
            thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
            for call in delta.get("tool_calls") or ():
                if self._first_at is None:
                    self._first_at = self._clock()
                self._calls.add(call)
            if isinstance(content, str) and isinstance(thinking, str) and (content or thinking):
                self._deltas += 1
                if self._first_at is None:
                    self._first_at = self._clock()
                pieces.append((content, thinking))
        return pieces

    def _tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index, gathered in enumerate(self._calls.calls):
            try:
                arguments = json.loads(gathered["arguments"] or "{}")
            except ValueError:
                raise ApiError(
                    500,
                    f"the model called {gathered['name']} with arguments that are not JSON: "
                    f"{gathered['arguments']!r}",
                ) from None
            call: dict[str, Any] = {
                "function": {"index": index, "name": gathered["name"], "arguments": arguments}
            }
            if gathered["id"]:
                call["id"] = gathered["id"]
            calls.append(call)
        return calls

    def _head(self) -> dict[str, Any]:
        return {"model": self._model, "created_at": rfc3339(datetime.now(UTC))}

    def _chunk(
        self, content: str, thinking: str, tool_calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        if self._chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if tool_calls:
                message["tool_calls"] = tool_calls
            return {**self._head(), "message": message, "done": False}
        chunk: dict[str, Any] = {**self._head(), "response": content}
        if thinking:
            chunk["thinking"] = thinking
        return {**chunk, "done": False}

    def _final(self) -> dict[str, Any]:
        end = self._clock()
        first = self._first_at or end
        usage = self._usage or {}
        # Without `usage`, each piece of text a server streams is one token.
        eval_count = count(usage.get("completion_tokens"))
        final = self._chunk("", "")
        final.update(
            done=True,
            done_reason="length" if self._finish == "length" else "stop",
            total_duration=ns(end - self._started),
            load_duration=0,
        )
        if (prompt_tokens := count(usage.get("prompt_tokens"))) is not None:
            final["prompt_eval_count"] = prompt_tokens
        prompt_ms, predicted_ms = self._timings.get("prompt_ms"), self._timings.get("predicted_ms")
        if isinstance(prompt_ms, int | float) and isinstance(predicted_ms, int | float):
            prompt_s, eval_s = prompt_ms / 1000, predicted_ms / 1000
        elif self._deltas > 1:
            # A stream: the prompt took until the first piece, generation the rest.
            prompt_s, eval_s = first - self._started, end - first
        else:
            # A whole reply does not say how its time was split: all of it counts as generation.
            prompt_s, eval_s = 0.0, end - self._started
        final.update(
            prompt_eval_duration=ns(prompt_s),
            eval_count=self._deltas if eval_count is None else eval_count,
            eval_duration=ns(eval_s),
        )
        return final


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Yield the JSON objects of an SSE stream's `data:` fields, and None for `[DONE]`.

    What follows `[DONE]` is read and dropped, so the connection is read to its end and can be kept.
    """
    splitter = FrameSplitter(Framing.SSE)
    done = False
    async for chunk in chunks:
        if done:
            continue
        for event in _events(splitter.feed(chunk)):
            data = b"\n".join(
                line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if data.strip() == b"[DONE]":
                done = True
                yield None
                break
            value = loads_or_none(data)
            if value is not None:
                yield value


async def whole_as_events(value: dict[str, Any]) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Yield a whole chat.completion or text_completion as the one stream event it amounts to."""
    choices = []
    for choice in value.get("choices") or ():
        if isinstance(choice, dict):
            message = as_object(choice.get("message"))
            calls = [
                {**c, "index": i}
                for i, c in enumerate(message.get("tool_calls") or ())
                if isinstance(c, dict)
            ]
            delta = {**message, "tool_calls": calls}
            choices.append(
                {"delta": delta, "text": choice.get("text"), "finish_reason": choice.get("finish_reason")}
            )
    yield {"choices": choices, "usage": value.get("usage"), "timings": value.get("timings")}
    yield None


async def renamed_events(chunks: AsyncIterator[bytes], model: str) -> AsyncIterator[bytes]:
    """Pass an SSE stream through with each event's model name set to the one the client sent."""
    splitter = FrameSplitter(Framing.SSE)
    async for chunk in chunks:
        if frames := splitter.feed(chunk):
            lines = []
            for line in b"\n\n".join(_events(frames)).split(b"\n"):
                if line.startswith(b"data:") and (value := loads_or_none(line[5:])) is not None:
                    line = b"data: " + go_json(renamed(value, model))
                lines.append(line)
            yield b"\n".join(lines) + b"\n\n"
    if splitter.pending:
        yield splitter.pending


def _events(frames: bytes) -> list[bytes]:
    """Split complete SSE frames into their events; their lines may end in CRLF."""
    return frames.replace(b"\r\n", b"\n").removesuffix(b"\n\n").split(b"\n\n")


def renamed(value: dict[str, Any], model: str) -> dict[str, Any]:
    """Set the model name of an OpenAI reply, or of the response object a /v1/responses event carries."""
    renamed = {**value, "model": model} if "model" in value else dict(value)
    if isinstance(value.get("response"), dict) and "model" in value["response"]:
        renamed["response"] = {**value["response"], "model": model}
    return renamed


def event_error(event: dict[str, Any]) -> str | None:
    """Return the error an event reports (a server that failed midway), if it is one."""
    error = event.get("error")
    if error is None and event.get("object") == "error":
        error = event
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)
    return str(error) if error else None


def server_error(status: int, body: bytes, model: str) -> ApiError:
    """Turn the server's error into Ollama's words, with its status."""
    value = loads_or_none(body) or {}
    message = event_error(value) or value.get("detail") or value.get("message")
    if isinstance(message, list):  # FastAPI's validation errors
        message = "; ".join(
            str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in message
        )
    text = str(message or body.decode("utf-8", "replace").strip() or f"HTTP {status}")
    if status == 404 and "model" in text.lower():
        text = f"model '{model}' not found"
    return ApiError(status, text)


def embeddings(
    reply: dict[str, Any], requested: str, *, legacy: bool, took_s: float, server: str
) -> dict[str, Any]:
    """Turn a `/v1/embeddings` reply into `/api/embed`'s (or, `legacy`, `/api/embeddings'`); `server`
    names the server in errors."""
    data = reply.get("data")
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise BackendUnavailable(f"{server} answered /v1/embeddings without a `data` list")
    vectors = [d.get("embedding") for d in sorted(data, key=lambda d: count(d.get("index")) or 0)]
    if not all(isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in vectors):
        # llama-cpp-python gives a model without pooling (a chat model) one vector per token.
        raise ApiError(
            500,
            f"{server} did not answer with one vector of numbers per input; "
            f"is {requested} an embedding model?",
        )
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    usage = as_object(reply.get("usage"))
    return {
        "model": requested,
        "embeddings": vectors,
        "total_duration": ns(took_s),
        "load_duration": 0,
        "prompt_eval_count": count(usage.get("prompt_tokens")) or 0,
    }


def loads(body: bytes, path: str) -> dict[str, Any]:
    value = loads_or_none(body)
    if value is None:
        raise ValueError(f"{path} answered with a body that is not a JSON object: {body[:80]!r}")
    return value


def loads_or_none(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.JSONDecoder().raw_decode(data.decode("utf-8").strip())[0]
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


class ToolCalls:
    """A stream's tool calls gathered whole from their pieces, to be told once complete, as Ollama tells
    them. A piece with a new id is a new call even at an index used before: some servers number every
    call 0; one with the same id, or none, adds to the last call at its index."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []  # id, name, arguments (text), index

    def add(self, piece: Any) -> None:
        if not isinstance(piece, dict):
            return
        function = as_object(piece.get("function"))
        index, ident = piece.get("index", 0), piece.get("id")
        last = next((c for c in reversed(self.calls) if c["index"] == index), None)
        if last is None or (ident and last["id"] and ident != last["id"]):
            self.calls.append({"index": index, "id": ident or "", "name": "", "arguments": ""})
            last = self.calls[-1]
        last["id"] = last["id"] or ident or ""
        last["name"] = last["name"] or str(function.get("name") or "")
        arguments = function.get("arguments")
        last["arguments"] += arguments if isinstance(arguments, str) else json.dumps(arguments or {})
