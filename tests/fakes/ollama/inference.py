"""Generation and embeddings on the native API (/api/generate, /api/chat, /api/embed, /api/embeddings):
requests checked as Ollama checks them, and deterministic tokens paced at the fake's speed."""

from __future__ import annotations

import hashlib
import random
import time
import zlib
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.base import Json, Pacer, embedding

from .models import _CHAT_NAMES, _EMBED_NAMES, _EMBEDDINGS_NAMES, _GENERATE_NAMES, FakeModel, _NameErrors
from .wire import (
    _NDJSON_FRAMING,
    _ApiError,
    _check_raw,
    _check_top_logprobs,
    _int_option,
    _json,
    _keep_alive,
    _quote,
    _read_json,
    _string,
    _utc_now,
)

_THINK_LEVELS = ("high", "medium", "low", "max")


_THINK_CHOICES = '"high", "medium", "low", "max", true, or false'


_VOCABULARY = (
    "the", "model", "answers", "with", "a", "short", "and", "deterministic", "reply", "about", "your",
    "prompt", "while", "tokens", "flow", "through", "proxy", "pool", "of", "machines", "on", "local",
    "network", "each", "word", "arrives", "in", "its", "own", "chunk", "quickly", "today",
)  # fmt: skip


@dataclass(frozen=True)
class _Job:
    """A validated generate or chat request, ready to produce tokens."""

    chat: bool
    echo: str  # the request's `model`, echoed verbatim
    model: FakeModel
    prompt: str
    count: int
    done_reason: str
    think: bool
    context: bool  # generate without raw returns `context`
    keep_alive: float | None
    started_ns: int
    loaded_ns: int  # when the model was ready: load_duration, queueing for the load included
    running_ns: int  # when it got a slot: the wait for one counts in total_duration only, as in Ollama
    # The tool the reply calls instead of answering in words: (name, arguments), or None.
    call: tuple[str, Json] | None = None


@dataclass(frozen=True)
class _Reply:
    """What generate or chat produced: a token stream, or a single load/unload object."""

    objects: AsyncGenerator[Json, None]
    streamable: bool


def _wanted_capabilities(body: Json, chat: bool) -> list[str]:
    """List what a request needs: completion, plus tools (chat with tools) or insert (suffix)."""
    wanted = ["completion"]
    if chat and body.get("tools"):
        wanted.append("tools")
    if not chat and body.get("suffix"):
        wanted.append("insert")
    return wanted


def _thinking(model: FakeModel, echo: str, value: Any) -> bool:
    """Decide whether to think: thinking models default to it; others reject think=true."""
    if value is not None and not isinstance(value, bool):
        if not isinstance(value, str):
            raise _ApiError(400, f"think must be a boolean or string ({_THINK_CHOICES})")
        if value not in _THINK_LEVELS:
            raise _ApiError(400, f"invalid think value: {_quote(value)} (must be {_THINK_CHOICES})")
    wanted = value is None or value is True or isinstance(value, str)
    if "thinking" in model.capabilities:
        return wanted
    if value is not None and wanted:
        raise _ApiError(400, f"{_quote(echo)} does not support thinking")
    return False


def _require(model: FakeModel, echo: str, wanted: Iterable[str], verb: str | None) -> None:
    """Reject a request for capabilities the model lacks, worded like Ollama's scheduler."""
    missing = [capability for capability in wanted if capability not in model.capabilities]
    if verb is not None and "completion" in missing:
        raise _ApiError(400, f"{_quote(echo)} does not support {verb}")
    if missing:
        raise _ApiError(400, f"{model.ref} does not support " + "\n".join(missing))


def _chat_prompt(messages: Any) -> str:
    """Join the messages' text: the fake's prompt for chat."""
    if not isinstance(messages, list):
        return ""
    return "\n".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))


def _tool_call(body: Json) -> tuple[str, Json] | None:
    """The fake's model calls the first tool, its required arguments filled, when the last user message
    asks about the weather; otherwise it answers in words."""
    tools = body.get("tools") or []
    asked = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    if not tools or not asked or "weather" not in str(asked[-1].get("content", "")).lower():
        return None
    function = tools[0].get("function") or {}
    schema = function.get("parameters") or {}
    return str(function.get("name", "")), dict.fromkeys(schema.get("required") or [], "Paris")


def _embed_inputs(value: Any) -> list[str]:
    """Accept a string or a list of strings, as /api/embed does."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise _ApiError(400, "invalid input type")


def _words(prompt: str, count: int) -> list[str]:
    """Pick `count` words, deterministically from the prompt."""
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    return [rng.choice(_VOCABULARY) for _ in range(count)]


def _native_chunk(
    chat: bool, model: str, content: str = "", thinking: str = "", done_reason: str | None = None
) -> Json:
    """Build one generate or chat object; a done_reason makes it the final one."""
    chunk: Json = {"model": model, "created_at": _utc_now()}
    if chat:
        message = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        chunk["message"] = message
    else:
        chunk["response"] = content
        if thinking:
            chunk["thinking"] = thinking
    chunk["done"] = done_reason is not None
    if done_reason:
        chunk["done_reason"] = done_reason
    return chunk


async def _once(obj: Json) -> AsyncGenerator[Json, None]:
    """Yield a single object."""
    yield obj


async def _collect(objects: AsyncGenerator[Json, None]) -> Json:
    """Merge a token stream into Ollama's non-streamed reply: the final object with the full text."""
    content: list[str] = []
    thinking: list[str] = []
    calls: list[Json] = []
    last: Json = {}
    async for last in objects:
        holder, key = _text_slot(last)
        content.append(holder[key])
        thinking.append(holder.get("thinking", ""))
        calls += holder.get("tool_calls") or []
    holder, key = _text_slot(last)
    holder[key] = "".join(content)
    if any(thinking):
        holder["thinking"] = "".join(thinking)
    if calls:
        holder["tool_calls"] = calls
    return last


def _text_slot(obj: Json) -> tuple[Json, str]:
    """Return where an object keeps its text: chat's message.content or generate's response."""
    return (obj["message"], "content") if "message" in obj else (obj, "response")


class Inference:
    """The native inference endpoints of FakeOllama."""

    async def _infer(self, request: web.Request, body: Json, *, chat: bool, started_ns: int) -> _Reply:
        """Validate a generate (chat=False) or chat request in Ollama's order and start its reply."""
        keep_alive = _keep_alive(body.get("keep_alive"))
        _check_top_logprobs(body)
        echo = _string(body, "model")
        model = self._lookup(echo, _CHAT_NAMES if chat else _GENERATE_NAMES)
        prompt = _chat_prompt(body.get("messages")) if chat else _string(body, "prompt")
        has_input = bool(body.get("messages")) if chat else bool(prompt)
        if not has_input and keep_alive == 0:
            self._unload(model)
            return _Reply(_once(_native_chunk(chat, echo, done_reason="unload")), streamable=False)
        if not chat:
            _check_raw(body)
        think = _thinking(model, echo, body.get("think"))
        _require(model, echo, _wanted_capabilities(body, chat), "chat" if chat else "generate")
        loaded_ns = await self._load(request, model, keep_alive)
        if not has_input:
            return _Reply(_once(_native_chunk(chat, echo, done_reason="load")), streamable=False)
        running_ns = await self._take_slot(request, model)
        num_predict = _int_option(body.get("options"), "num_predict")
        job = _Job(
            chat=chat,
            echo=echo,
            model=model,
            prompt=prompt,
            count=num_predict if num_predict > 0 else self.default_num_predict,
            done_reason="length" if num_predict > 0 else "stop",
            think=think,
            context=not chat and not body.get("raw"),
            keep_alive=keep_alive,
            started_ns=started_ns,
            loaded_ns=loaded_ns,
            running_ns=running_ns,
            call=_tool_call(body) if chat else None,
        )
        return _Reply(self._run(job), streamable=True)

    async def _run(self, job: _Job) -> AsyncGenerator[Json, None]:
        """Emit the job's tokens on the tokens_per_second schedule, then the final chunk with metrics."""
        words = _words(job.prompt, job.count)
        thinking = job.count // 2 if job.think else 0
        pacer = Pacer(self.tokens_per_second)
        first_ns = 0
        for index, word in enumerate(words if job.call is None else []):
            await pacer.wait()
            first_ns = first_ns or time.perf_counter_ns()
            piece = word if index in (0, thinking) else f" {word}"
            if index < thinking:
                yield _native_chunk(job.chat, job.echo, thinking=piece)
            else:
                yield _native_chunk(job.chat, job.echo, content=piece)
        if job.call is not None:
            # The parser hands over a whole call, in one chunk before the final one, as Ollama's does.
            await pacer.wait()
            first_ns = time.perf_counter_ns()
            chunk = _native_chunk(job.chat, job.echo)
            name, arguments = job.call
            call = {
                "id": f"call_{zlib.crc32(job.prompt.encode()):08x}",
                "function": {"index": 0, "name": name, "arguments": arguments},
            }
            chunk["message"]["tool_calls"] = [call]
            yield chunk
        done_ns = time.perf_counter_ns()
        first_ns = first_ns or done_ns
        final = _native_chunk(job.chat, job.echo, done_reason="stop" if job.call else job.done_reason)
        if job.context:
            final["context"] = [zlib.crc32(word.encode()) % 32000 for word in [*job.prompt.split(), *words]]
        final.update(
            total_duration=done_ns - job.started_ns,
            load_duration=job.loaded_ns - job.started_ns,
            prompt_eval_count=max(1, len(job.prompt.split())),
            prompt_eval_duration=first_ns - job.running_ns,
            eval_count=job.count,
            eval_duration=done_ns - first_ns,
        )
        self._touch(job.model, job.keep_alive)
        yield final

    async def _load_embedder(
        self, request: web.Request, body: Json, names: _NameErrors, *, slot: bool
    ) -> tuple[str, int]:
        """Resolve and load an embedding model, then take a slot if asked; return the echo and load time."""
        keep_alive = _keep_alive(body.get("keep_alive"))
        echo = _string(body, "model")
        model = self._lookup(echo, names)
        _require(model, echo, ("embedding",), None)
        loaded_ns = await self._load(request, model, keep_alive)
        self._touch(model, keep_alive)
        if slot:
            await self._take_slot(request, model)
        return echo, loaded_ns

    async def _embed(self, request: web.Request, body: Json, started_ns: int) -> Json:
        """Embed like /api/embed: deterministic unit vectors from a hash of each input."""
        inputs = _embed_inputs(body.get("input"))
        # Ollama answers empty input once the model is loaded, without taking a slot.
        echo, loaded_ns = await self._load_embedder(request, body, _EMBED_NAMES, slot=bool(inputs))
        if not inputs:
            return {"model": echo, "embeddings": []}
        dimensions = body.get("dimensions") or 0
        return {
            "model": echo,
            "embeddings": [embedding(text, self.embedding_dim, dimensions) for text in inputs],
            "total_duration": time.perf_counter_ns() - started_ns,
            "load_duration": loaded_ns - started_ns,
            "prompt_eval_count": sum(max(1, len(text.split())) for text in inputs),
        }

    async def _handle_generate(self, request: web.Request) -> web.StreamResponse:
        """POST /api/generate."""
        return await self._handle_native(request, chat=False)

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        """POST /api/chat."""
        return await self._handle_native(request, chat=True)

    async def _handle_native(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        """Answer native generate or chat: NDJSON unless `stream` is explicitly false."""
        started_ns = time.perf_counter_ns()
        body = await _read_json(request)
        reply = await self._infer(request, body, chat=chat, started_ns=started_ns)
        if reply.streamable and body.get("stream") is not False:
            return await self._stream(request, _NDJSON_FRAMING, reply.objects)
        return _json(await _collect(reply.objects))

    async def _handle_embed(self, request: web.Request) -> web.StreamResponse:
        """POST /api/embed."""
        started_ns = time.perf_counter_ns()
        return _json(await self._embed(request, await _read_json(request), started_ns))

    async def _handle_embeddings(self, request: web.Request) -> web.StreamResponse:
        """POST /api/embeddings (legacy): one prompt, float64 vector."""
        body = await _read_json(request)
        prompt = _string(body, "prompt")
        await self._load_embedder(request, body, _EMBEDDINGS_NAMES, slot=bool(prompt))
        return _json({"embedding": embedding(prompt, self.embedding_dim, 0) if prompt else []})
