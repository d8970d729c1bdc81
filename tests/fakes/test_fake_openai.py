"""Check that the fake OpenAI-compatible server answers the way llama.cpp, vLLM and LM Studio do."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.fakes.openai import (
    IMAGE_TOKENS,
    FakeModel,
    FakeOpenAI,
    Flavour,
    _fake,
    _parse_args,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAT = "llama-3.1-8b-instruct"
EMBED = "nomic-embed-text-v1.5"
MODELS = (FakeModel(CHAT, vision=True), FakeModel(EMBED, kind="embedding", dimensions=16, matryoshka=True))
FLAVOURS: tuple[Flavour, ...] = ("llama.cpp", "vllm", "lmstudio")
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "why is the sky blue"}]
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["location", "unit"],
        },
    },
}
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """Open a raw HTTP client."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client:
        yield client


@asynccontextmanager
async def serving(flavour: Flavour, **knobs: Any) -> AsyncIterator[tuple[FakeOpenAI, openai.AsyncOpenAI]]:
    """Serve a fake with a chat and an embedding model, and the official client pointed at it."""
    async with FakeOpenAI(MODELS, flavour=flavour, **knobs) as fake:
        client = openai.AsyncOpenAI(base_url=f"{fake.url}/v1", api_key="sk-local", max_retries=0)
        async with client:
            yield fake, client


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    """Post a JSON body and return the status and the decoded reply."""
    async with session.post(url, json=body) as response:
        return response.status, await response.json(content_type=None)


async def events(session: aiohttp.ClientSession, url: str, body: Any) -> list[str]:
    """Post a streamed request and return its SSE events' data, `[DONE]` included."""
    async with session.post(url, json={**body, "stream": True}) as response:
        assert response.status == 200, await response.text()
        text = (await response.read()).decode()
    assert text.endswith("\n\n")
    frames = text.split("\n\n")[:-1]
    assert all(frame.startswith("data: ") for frame in frames), frames
    return [frame.removeprefix("data: ") for frame in frames]


async def collect_lines(response: aiohttp.ClientResponse, sink: list[bytes]) -> None:
    """Append raw body lines to sink as they arrive, so they survive a broken stream."""
    async for line in response.content:
        sink.append(line)


async def wait_for(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Poll until condition() holds."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def chunks(data: list[str]) -> list[Any]:
    """Decode SSE data that must end with [DONE]."""
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def deltas(parsed: list[Any]) -> list[Any]:
    """Return the delta of every chunk that has a choice."""
    return [chunk["choices"][0]["delta"] for chunk in parsed if chunk["choices"]]


def called(reply: ChatCompletion) -> tuple[str, str]:
    """Return the name and arguments of the one function a reply calls."""
    calls = reply.choices[0].message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].type == "function"
    return calls[0].function.name, calls[0].function.arguments


def chat(**extra: Any) -> dict[str, Any]:
    """Build a chat request body."""
    return {"model": CHAT, "messages": HELLO, **extra}


# -- the official client --------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_client_chat_runs_to_its_natural_end(flavour: Flavour) -> None:
    async with serving(flavour, reply_tokens=6) as (_, client):
        reply = await client.chat.completions.create(model=CHAT, messages=HELLO)
    choice = reply.choices[0]
    assert (reply.object, reply.model, choice.finish_reason) == ("chat.completion", CHAT, "stop")
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert len(choice.message.content.split()) == 6
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6
    # "user: why is the sky blue" is 7 tokens, plus the BOS token.
    assert reply.usage.prompt_tokens == 8
    assert reply.usage.total_tokens == 14


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_client_stream_with_usage_matches_the_whole_reply(flavour: Flavour) -> None:
    async with serving(flavour) as (_, client):
        whole = await client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=5)
        stream = await client.chat.completions.create(
            model=CHAT,
            messages=HELLO,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        parts = [chunk async for chunk in stream]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in parts if chunk.choices)
    assert text == whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length"
    finishes = [chunk.choices[0].finish_reason for chunk in parts if chunk.choices]
    assert finishes[-1] == "length"
    assert finishes[:-1] == [None] * (len(finishes) - 1)
    assert parts[-1].choices == []
    assert parts[-1].usage is not None
    assert (parts[-1].usage.prompt_tokens, parts[-1].usage.completion_tokens) == (8, 5)
    assert len({chunk.id for chunk in parts}) == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_client_completions(flavour: Flavour) -> None:
    async with serving(flavour) as (_, client):
        whole = await client.completions.create(model=CHAT, prompt="Once upon a time", max_tokens=4)
        stream = await client.completions.create(
            model=CHAT, prompt="Once upon a time", max_tokens=4, stream=True
        )
        parts = [chunk async for chunk in stream]
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason == "length"
    assert len(whole.choices[0].text.split()) == 4
    assert whole.usage is not None
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (5, 4)
    assert "".join(chunk.choices[0].text for chunk in parts if chunk.choices) == whole.choices[0].text


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_client_embeddings_are_deterministic_unit_vectors(flavour: Flavour) -> None:
    async with serving(flavour) as (_, client):
        # The client asks for base64 unless told otherwise, and decodes it.
        first = await client.embeddings.create(model=EMBED, input=["red apple", "blue sky"])
        again = await client.embeddings.create(model=EMBED, input="red apple", encoding_format="float")
    vectors = [item.embedding for item in first.data]
    assert [item.index for item in first.data] == [0, 1]
    assert all(len(vector) == 16 for vector in vectors)
    assert all(math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5) for vector in vectors)
    assert vectors[0] != vectors[1]
    assert again.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
    assert first.usage.prompt_tokens == 6  # two words and a BOS token each


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_client_parses_a_tool_call(flavour: Flavour) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What's the weather in Paris?"}]
    async with serving(flavour) as (_, client):
        reply = await client.chat.completions.create(
            model=CHAT,
            messages=messages,
            tools=[WEATHER_TOOL],
        )
        stream = await client.chat.completions.create(
            model=CHAT,
            messages=messages,
            tools=[WEATHER_TOOL],
            stream=True,
        )
        parts = [chunk async for chunk in stream]
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "unit": "celsius"}
    calls = [
        delta.tool_calls[0]
        for chunk in parts
        if chunk.choices
        for delta in [chunk.choices[0].delta]
        if delta.tool_calls
    ]
    assert calls[0].index == 0
    assert calls[0].id
    assert calls[0].type == "function"
    assert calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    streamed = "".join(c.function.arguments or "" for c in calls if c.function is not None)
    assert json.loads(streamed) == {"location": "Paris", "unit": "celsius"}
    assert all(c.id is None for c in calls[1:])
    assert [chunk.choices[0].finish_reason for chunk in parts if chunk.choices][-1] == "tool_calls"


async def test_tool_choice_decides_whether_and_which_tool_is_called() -> None:
    other: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {"name": "lookup", "parameters": {"type": "object"}},
    }
    async with serving("vllm") as (_, client):
        plain = await client.chat.completions.create(model=CHAT, messages=HELLO, tools=[WEATHER_TOOL])
        required = await client.chat.completions.create(
            model=CHAT,
            messages=HELLO,
            tools=[WEATHER_TOOL, other],
            tool_choice="required",
        )
        named = await client.chat.completions.create(
            model=CHAT,
            messages=HELLO,
            tools=[WEATHER_TOOL, other],
            tool_choice={"type": "function", "function": {"name": "lookup"}},
        )
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content
    assert called(required) == ("get_weather", '{"location": "Paris", "unit": "celsius"}')
    assert called(named) == ("lookup", "{}")


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_client_lists_models(flavour: Flavour) -> None:
    async with serving(flavour) as (_, client):
        listed = [model async for model in client.models.list()]
    assert [model.id for model in listed] == [CHAT, EMBED]
    owner = {"llama.cpp": "llamacpp", "vllm": "vllm", "lmstudio": "organization_owner"}[flavour]
    assert {model.owned_by for model in listed} == {owner}


async def test_client_raises_each_servers_errors() -> None:
    async with serving("vllm") as (_, client):
        with pytest.raises(openai.NotFoundError, match=r"The model `gpt-4o` does not exist\.") as unknown:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
        with pytest.raises(openai.BadRequestError, match="max_tokens must be at least 1, got -1") as negative:
            await client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=-1)
    assert (unknown.value.type, unknown.value.param) == ("NotFoundError", "model")
    assert negative.value.param == "max_tokens"
    async with serving("lmstudio") as (_, client):
        with pytest.raises(openai.BadRequestError, match='Invalid model identifier "gpt-4o"') as invalid:
            await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert invalid.value.code == "model_not_found"
    async with serving("llama.cpp") as (fake, client):
        no_content = cast("ChatCompletionMessageParam", {"role": "user"})  # invalid on purpose
        with pytest.raises(openai.BadRequestError, match="All non-assistant messages must contain 'content'"):
            await client.chat.completions.create(model=CHAT, messages=[no_content])
        fake.fail_next(503, "no slot available")
        with pytest.raises(openai.InternalServerError, match="no slot available") as busy:
            await client.chat.completions.create(model=CHAT, messages=HELLO)
        fake.error_after(2, "CUDA error: out of memory")
        stream = await client.chat.completions.create(model=CHAT, messages=HELLO, stream=True)
        with pytest.raises(openai.APIError, match="CUDA error: out of memory"):
            async for _ in stream:
                pass
    assert (busy.value.status_code, busy.value.type) == (503, "unavailable_error")


# -- framing, per flavour ---------------------------------------------------------------------------


async def test_llama_cpp_stream_framing(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS) as fake:
        url = f"{fake.url}/v1/chat/completions"
        async with session.post(url, json=chat(max_tokens=3, stream=True)) as response:
            assert (response.headers["Content-Type"], response.headers["Server"]) == (
                "text/event-stream",
                "llama.cpp",
            )
            http_chunks = []
            async for data, end_of_chunk in response.content.iter_chunks():
                assert end_of_chunk
                http_chunks.append(data)
        plain = chunks([chunk.decode().removeprefix("data: ").removesuffix("\n\n") for chunk in http_chunks])
        with_usage = chunks(
            await events(session, url, chat(max_tokens=3, stream_options={"include_usage": True}))
        )
    # Each SSE event leaves as its own HTTP chunk.
    assert len(http_chunks) == 6
    assert deltas(plain)[0] == {"role": "assistant", "content": None}
    assert [set(delta) for delta in deltas(plain)[1:4]] == [{"content"}] * 3
    assert plain[4]["choices"][0] == {"finish_reason": "length", "index": 0, "delta": {}}
    assert all("usage" not in chunk for chunk in plain)
    assert "timings" in plain[-1]
    assert all("timings" not in chunk for chunk in plain[:-1])
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}
    assert with_usage[-1]["timings"]["predicted_n"] == 3
    assert {chunk["object"] for chunk in with_usage} == {"chat.completion.chunk"}
    assert {chunk["system_fingerprint"] for chunk in with_usage} == {"b7123-00dd0816"}


async def test_llama_cpp_completion_stream_always_ends_with_usage(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS) as fake:
        parsed = chunks(
            await events(session, f"{fake.url}/v1/completions", {"prompt": "hi", "max_tokens": 2})
        )
    assert [chunk["choices"][0]["finish_reason"] for chunk in parsed] == [None, None, "length"]
    assert parsed[-1]["choices"][0]["text"] == ""
    assert parsed[-1]["usage"]["completion_tokens"] == 2
    assert "timings" in parsed[-1]
    assert parsed[0]["id"].startswith("chatcmpl-")  # llama-server names every completion so


async def test_vllm_stream_framing(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, flavour="vllm") as fake:
        url = f"{fake.url}/v1/chat/completions"
        async with session.post(url, json=chat(max_tokens=1, stream=True)) as response:
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        limited = chunks(await events(session, url, chat(max_tokens=3)))
        natural = chunks(await events(session, url, chat(stream_options={})))
    # The role chunk, then one chunk per token; the last token carries finish_reason.
    assert limited[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert limited[0]["prompt_token_ids"] is None
    assert len(limited) == 4
    assert [chunk["choices"][0]["finish_reason"] for chunk in limited] == [None, None, None, "length"]
    assert limited[-1]["choices"][0]["delta"]["content"]
    # Running to its end, the EOS token decodes to "" in a chunk of its own; sending
    # stream_options at all asks for usage, whose default is true.
    assert natural[-2]["choices"][0]["delta"] == {"content": ""}
    assert natural[-2]["choices"][0]["finish_reason"] == "stop"
    assert natural[-1]["choices"] == []
    assert natural[-1]["usage"]["completion_tokens"] == 8
    assert "usage" not in natural[0]


async def test_vllm_continuous_usage_stats(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, flavour="vllm") as fake:
        options = {"include_usage": True, "continuous_usage_stats": True}
        parsed = chunks(
            await events(
                session, f"{fake.url}/v1/chat/completions", chat(max_tokens=2, stream_options=options)
            )
        )
    assert [chunk["usage"]["completion_tokens"] for chunk in parsed] == [0, 1, 2, 2]


async def test_lmstudio_stream_framing(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, flavour="lmstudio") as fake:
        parsed = chunks(await events(session, f"{fake.url}/v1/chat/completions", chat(max_tokens=2)))
    # The role rides on the first token; no usage without include_usage.
    assert deltas(parsed)[0]["role"] == "assistant"
    assert deltas(parsed)[0]["content"]
    assert "role" not in deltas(parsed)[1]
    assert parsed[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all("usage" not in chunk for chunk in parsed)
    assert {chunk["system_fingerprint"] for chunk in parsed} == {CHAT}


@pytest.mark.parametrize(
    ("flavour", "key", "other"),
    [("llama.cpp", "reasoning_content", "reasoning"), ("vllm", "reasoning", "reasoning_content")],
)
async def test_reasoning_comes_first_under_the_flavours_name(
    session: aiohttp.ClientSession, flavour: Flavour, key: str, other: str
) -> None:
    async with FakeOpenAI(MODELS, flavour=flavour, reasoning=True) as fake:
        url = f"{fake.url}/v1/chat/completions"
        status, whole = await post(session, url, chat(max_tokens=6))
        streamed = deltas(chunks(await events(session, url, chat(max_tokens=6))))
    assert status == 200
    message = whole["choices"][0]["message"]
    assert len(message[key].split()) == 3
    assert len(message["content"].split()) == 3
    assert other not in message
    kinds = [
        next(name for name in (key, "content") if delta.get(name))
        for delta in streamed
        if delta.get(key) or delta.get("content")
    ]
    assert kinds == [key] * 3 + ["content"] * 3
    assert "".join(delta.get(key) or "" for delta in streamed) == message[key]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_stop_sequences_cut_the_reply(session: aiohttp.ClientSession, flavour: Flavour) -> None:
    async with FakeOpenAI(MODELS, flavour=flavour) as fake:
        url = f"{fake.url}/v1/chat/completions"
        _, whole = await post(session, url, chat(max_tokens=8))
        words = whole["choices"][0]["message"]["content"].split()
        stop = f" {words[3]}"
        _, cut = await post(session, url, chat(max_tokens=8, stop=[stop]))
        streamed = deltas(chunks(await events(session, url, chat(max_tokens=8, stop=stop))))
    expected = whole["choices"][0]["message"]["content"].split(stop)[0]
    assert cut["choices"][0]["message"]["content"] == expected
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert "".join(delta.get("content") or "" for delta in streamed) == expected
    if flavour == "vllm":
        assert cut["choices"][0]["stop_reason"] == stop


@pytest.mark.parametrize("flavour", ["llama.cpp", "vllm"])
async def test_json_response_formats_reply_with_valid_json(
    session: aiohttp.ClientSession, flavour: Flavour
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
    async with FakeOpenAI(MODELS, flavour=flavour) as fake:
        url = f"{fake.url}/v1/chat/completions"
        _, loose = await post(session, url, chat(response_format={"type": "json_object"}))
        strict = {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}}
        streamed = deltas(chunks(await events(session, url, chat(response_format=strict))))
    answer = json.loads(loose["choices"][0]["message"]["content"])
    assert list(answer) == ["answer"]
    assert len(answer["answer"].split()) == 8
    trip = json.loads("".join(delta.get("content") or "" for delta in streamed))
    assert set(trip) == {"city", "days"}
    assert isinstance(trip["city"], str)
    assert trip["days"] == 20


async def test_lmstudio_refuses_json_object(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, flavour="lmstudio") as fake:
        status, body = await post(
            session, f"{fake.url}/v1/chat/completions", chat(response_format={"type": "json_object"})
        )
    assert (status, body) == (400, {"error": "'response_format.type' must be 'json_schema' or 'text'"})


# -- errors, per flavour ---------------------------------------------------------------------------

_NO_MESSAGES = {"model": CHAT}


@pytest.mark.parametrize(
    ("flavour", "path", "body", "status", "error"),
    [
        (
            "llama.cpp",
            "/v1/chat/completions",
            _NO_MESSAGES,
            400,
            {"error": {"code": 400, "message": "'messages' is required", "type": "invalid_request_error"}},
        ),
        (
            "llama.cpp",
            "/v1/completions",
            {"model": CHAT},
            500,
            {"error": {"code": 500, "message": '"prompt" is required', "type": "server_error"}},
        ),
        (
            "llama.cpp",
            "/v1/chat/completions",
            chat(response_format={"type": "yaml"}),
            400,
            {
                "error": {
                    "code": 400,
                    "message": 'response_format type must be one of "text" or "json_object", but got: yaml',
                    "type": "invalid_request_error",
                }
            },
        ),
        (
            "vllm",
            "/v1/chat/completions",
            chat(stream_options={"include_usage": True}),
            400,
            {"type": "Bad Request", "param": "stream_options", "code": 400},
        ),
        (
            "vllm",
            "/v1/chat/completions",
            _NO_MESSAGES,
            400,
            {"type": "Bad Request", "param": "body.messages", "code": 400},
        ),
        ("vllm", "/v1/chat/completions", chat(tools=[]), 400, {"type": "Bad Request", "param": "tools"}),
        (
            "vllm",
            "/v1/completions",
            {"model": CHAT},
            400,
            {"type": "Bad Request", "param": "body", "code": 400},
        ),
        (
            "vllm",
            "/v1/chat/completions",
            chat(max_tokens=9000),
            400,
            {"type": "BadRequestError", "param": "max_tokens", "code": 400},
        ),
        # pydantic rejects the body before the model is looked up
        ("vllm", "/v1/embeddings", {"model": "nope"}, 400, {"type": "Bad Request", "param": "body.input"}),
        (
            "lmstudio",
            "/v1/embeddings",
            {"model": CHAT, "input": "x"},
            400,
            {"type": "invalid_request_error", "param": "model", "code": None},
        ),
    ],
)
async def test_errors_are_shaped_per_flavour(
    session: aiohttp.ClientSession,
    flavour: Flavour,
    path: str,
    body: Any,
    status: int,
    error: Any,
) -> None:
    async with FakeOpenAI(MODELS, flavour=flavour) as fake:
        got_status, got = await post(session, f"{fake.url}{path}", body)
    assert got_status == status, got
    if flavour == "llama.cpp":
        assert got == error
    else:
        assert set(got["error"]) == {"message", "type", "param", "code"}
        assert error.items() <= got["error"].items()


async def test_vllm_validation_messages_list_pydantic_errors(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, flavour="vllm") as fake:
        _, missing = await post(session, f"{fake.url}/v1/chat/completions", _NO_MESSAGES)
        async with session.post(f"{fake.url}/v1/chat/completions", data=b'{"model": ') as response:
            broken = await response.json()
    assert missing["error"]["message"].startswith(
        "1 validation error:\n  {'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required'"
    )
    assert broken["error"]["message"] == (
        "1 validation error:\n  {'type': 'json_invalid', 'loc': ('body', 10), 'msg': 'JSON decode error', "
        "'input': {}, 'ctx': {'error': 'Expecting value'}}"
    )
    assert broken["error"]["param"] == "body.10"


async def test_llama_cpp_answers_bad_json_with_a_parser_500(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS) as fake:
        async with session.post(f"{fake.url}/v1/chat/completions", data=b"") as response:
            assert (response.status, response.headers["Content-Type"]) == (
                500,
                "application/json; charset=utf-8",
            )
            empty = await response.json()
        async with session.post(f"{fake.url}/v1/chat/completions", data=b"nope") as response:
            assert response.status == 500
            broken = await response.json()
    assert empty["error"]["type"] == "server_error"
    assert "attempting to parse an empty input" in empty["error"]["message"]
    assert broken["error"]["message"].startswith("[json.exception.parse_error.101] parse error at line 1")


@pytest.mark.parametrize(
    ("flavour", "method", "path", "status", "body"),
    [
        (
            "llama.cpp",
            "GET",
            "/v1/nothing",
            404,
            {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}},
        ),
        (
            "llama.cpp",
            "GET",
            "/v1/chat/completions",
            404,
            {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}},
        ),
        (
            "llama.cpp",
            "GET",
            f"/v1/models/{CHAT}",
            404,
            {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}},
        ),
        ("vllm", "GET", "/v1/nothing", 404, {"detail": "Not Found"}),
        ("vllm", "GET", "/v1/chat/completions", 405, {"detail": "Method Not Allowed"}),
        (
            "lmstudio",
            "GET",
            "/v1/nothing",
            200,
            {"error": "Unexpected endpoint or method. (GET /v1/nothing)"},
        ),
        ("lmstudio", "POST", "/health", 200, {"error": "Unexpected endpoint or method. (POST /health)"}),
    ],
)
async def test_unknown_paths_are_answered_the_servers_way(
    session: aiohttp.ClientSession, flavour: Flavour, method: str, path: str, status: int, body: Any
) -> None:
    async with (
        FakeOpenAI(MODELS, flavour=flavour) as fake,
        session.request(method, f"{fake.url}{path}") as response,
    ):
        assert (response.status, await response.json(content_type=None)) == (status, body)


async def test_vllm_serves_only_the_routes_its_model_kind_has(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI([FakeModel(EMBED, kind="embedding")], flavour="vllm") as fake:
        status, body = await post(session, f"{fake.url}/v1/chat/completions", chat())
    assert (status, body) == (404, {"detail": "Not Found"})


@pytest.mark.parametrize(
    ("flavour", "model", "status", "served"),
    [
        ("llama.cpp", "gpt-4o", 200, CHAT),
        ("vllm", "gpt-4o", 404, None),
        ("vllm", None, 200, CHAT),
        ("lmstudio", "gpt-4o", 400, None),
    ],
)
async def test_unknown_model_names(
    session: aiohttp.ClientSession, flavour: Flavour, model: str | None, status: int, served: str | None
) -> None:
    async with FakeOpenAI(MODELS, flavour=flavour) as fake:
        body = {"messages": HELLO} | ({"model": model} if model else {})
        got_status, got = await post(session, f"{fake.url}/v1/chat/completions", body)
    assert got_status == status
    if served:
        assert got["model"] == served  # llama-server serves its one model whatever `model` says


async def test_llama_cpp_refuses_embeddings_without_the_flag(session: aiohttp.ClientSession) -> None:
    refusal = {
        "error": {
            "code": 501,
            "message": "This server does not support embeddings. Start it with `--embeddings`",
            "type": "not_supported_error",
        }
    }
    async with FakeOpenAI([CHAT]) as fake:
        assert await post(session, f"{fake.url}/v1/embeddings", {"input": "x"}) == (501, refusal)
    async with FakeOpenAI([CHAT], embeddings=True) as fake:
        status, body = await post(session, f"{fake.url}/v1/embeddings", {"input": "x"})
    assert status == 200
    assert len(body["data"][0]["embedding"]) == 8


async def test_llama_cpp_embeddings_take_token_arrays_and_echo_the_model(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(MODELS) as fake:
        url = f"{fake.url}/v1/embeddings"
        status, tokens = await post(session, url, {"model": "whatever", "input": [[1, 2, 3], [4, 5]]})
        _, encoded = await post(session, url, {"model": EMBED, "input": "x", "encoding_format": "base64"})
        bad = await post(session, url, {"model": EMBED, "input": "x", "encoding_format": "int8"})
    assert status == 200
    assert tokens["model"] == "whatever"
    assert tokens["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    assert encoded["data"][0]["encoding_format"] == "base64"
    vector = struct.unpack("<16f", base64.b64decode(encoded["data"][0]["embedding"]))
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)
    assert bad[0] == 400


async def test_vllm_shortens_vectors_only_for_matryoshka_models(session: aiohttp.ClientSession) -> None:
    plain = FakeModel("bge-m3", kind="embedding", dimensions=16)
    async with FakeOpenAI([*MODELS, plain], flavour="vllm") as fake:
        url = f"{fake.url}/v1/embeddings"
        _, short = await post(session, url, {"model": EMBED, "input": "x", "dimensions": 4})
        status, refused = await post(session, url, {"model": "bge-m3", "input": "x", "dimensions": 4})
    assert len(short["data"][0]["embedding"]) == 4
    assert short["id"].startswith("embd-")
    assert status == 400
    assert refused["error"]["message"] == (
        'Model "bge-m3" does not support matryoshka representation, '
        "changing output dimensions will lead to poor results."
    )


async def test_context_limits(session: aiohttp.ClientSession) -> None:
    small = FakeModel(CHAT, context_length=10)
    long_prompt = [{"role": "user", "content": "one two three four five six seven eight nine"}]
    async with FakeOpenAI([small]) as fake:
        status, body = await post(session, f"{fake.url}/v1/chat/completions", {"messages": long_prompt})
        _, capped = await post(
            session, f"{fake.url}/v1/chat/completions", {"messages": HELLO, "max_tokens": 50}
        )
    assert status == 400
    assert body["error"]["type"] == "exceed_context_size_error"
    assert (
        body["error"]["message"]
        == "request (12 tokens) exceeds the available context size (10 tokens), try increasing it"
    )
    assert (body["error"]["n_prompt_tokens"], body["error"]["n_ctx"]) == (12, 10)
    # Generation stops when the context is full.
    assert capped["usage"]["completion_tokens"] == 2
    assert capped["choices"][0]["finish_reason"] == "length"


# -- images ----------------------------------------------------------------------------------------


def image_message(url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe"},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_images_as_data_urls_cost_prompt_tokens(
    session: aiohttp.ClientSession, flavour: Flavour
) -> None:
    async with FakeOpenAI(MODELS, flavour=flavour) as fake:
        status, body = await post(
            session, f"{fake.url}/v1/chat/completions", {"model": CHAT, "messages": image_message(PNG)}
        )
    assert status == 200
    assert body["usage"]["prompt_tokens"] == 4 + IMAGE_TOKENS  # "user: describe", BOS, the image


@pytest.mark.parametrize(
    ("flavour", "model", "url", "status", "message"),
    [
        (
            "llama.cpp",
            FakeModel(CHAT),
            PNG,
            500,
            "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj",
        ),
        (
            "llama.cpp",
            FakeModel(CHAT, vision=True),
            "data:text/plain;base64,eA==",
            500,
            "Invalid url format: data:text/plain;base64",
        ),
        (
            "llama.cpp",
            FakeModel(CHAT, vision=True),
            "file:///etc/passwd",
            400,
            "file:// URLs are not allowed unless --media-path is specified",
        ),
        ("vllm", FakeModel(CHAT), PNG, 400, "At most 0 image(s) may be provided in one prompt."),
        (
            "vllm",
            FakeModel(CHAT, vision=True),
            "ftp://host/cat.png",
            400,
            "The URL must be either a HTTP, data or file URL.",
        ),
        (
            "lmstudio",
            FakeModel(CHAT, vision=True),
            "https://example.com/cat.png",
            400,
            "Only base64 data URLs are supported for images",
        ),
    ],
)
async def test_images_are_refused_in_each_servers_words(
    session: aiohttp.ClientSession, flavour: Flavour, model: FakeModel, url: str, status: int, message: str
) -> None:
    async with FakeOpenAI([model], flavour=flavour) as fake:
        got_status, body = await post(
            session, f"{fake.url}/v1/chat/completions", {"model": CHAT, "messages": image_message(url)}
        )
    assert (got_status, body["error"]["message"]) == (status, message)


# -- timing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_tokens_per_second_paces_streams_and_whole_replies(
    session: aiohttp.ClientSession, flavour: Flavour
) -> None:
    async with FakeOpenAI(MODELS, flavour=flavour, tokens_per_second=100.0) as fake:
        url = f"{fake.url}/v1/chat/completions"
        started = time.monotonic()
        streamed = deltas(chunks(await events(session, url, chat(max_tokens=20))))
        stream_s = time.monotonic() - started
        started = time.monotonic()
        status, _ = await post(session, url, chat(max_tokens=20))
        whole_s = time.monotonic() - started
    assert sum(1 for delta in streamed if delta.get("content")) == 20
    assert status == 200
    assert stream_s >= 0.19  # 20 tokens at 100/s
    assert whole_s >= 0.19


async def test_prompt_tokens_per_second_delays_the_first_token(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, prompt_tokens_per_second=40.0, tokens_per_second=0) as fake:
        started = time.monotonic()
        async with session.post(f"{fake.url}/v1/chat/completions", json=chat(stream=True)) as response:
            await response.content.readline()
            first_s = time.monotonic() - started
            rest = await response.read()
    assert first_s >= 0.19  # 8 prompt tokens at 40/s
    assert rest.endswith(b"data: [DONE]\n\n")
    timings = json.loads(rest.decode().split("\n\n")[-3].removeprefix("data: "))["timings"]
    assert timings["prompt_ms"] >= 190


async def test_load_delay_is_paid_once(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, flavour="vllm", load_delay_s=0.3) as fake:
        url = f"{fake.url}/v1/chat/completions"
        started = time.monotonic()
        first, second = await asyncio.gather(post(session, url, chat()), post(session, url, chat()))
        together_s = time.monotonic() - started
        started = time.monotonic()
        await post(session, url, chat())
        later_s = time.monotonic() - started
    assert (first[0], second[0]) == (200, 200)
    assert together_s >= 0.3
    assert later_s < together_s  # no second load; a comparison, not a bound on the machine's speed


async def test_slots_queue_requests_in_order(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, slots=1, tokens_per_second=50.0) as fake:
        url = f"{fake.url}/v1/chat/completions"
        order: list[str] = []

        async def run(tag: str) -> None:
            async with session.post(url, json=chat(max_tokens=3, stream=True)) as response:
                async for line in response.content:
                    if line.startswith(b"data: {"):
                        order.append(tag)

        first = asyncio.ensure_future(run("first"))
        await wait_for(lambda: bool(order))
        second = asyncio.ensure_future(run("second"))
        await wait_for(lambda: fake.waiting == 1)
        assert fake.active == 2
        await asyncio.gather(first, second)
    assert order == ["first"] * 5 + ["second"] * 5  # role, 3 tokens and the finish chunk each


async def test_llama_cpp_answers_loading_until_started(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, startup_s=0.3) as fake:
        async with session.get(f"{fake.url}/health") as response:
            assert response.status == 503
            assert await response.json() == {
                "error": {"message": "Loading model", "type": "unavailable_error", "code": 503}
            }
        status, _ = await post(session, f"{fake.url}/v1/chat/completions", chat())
        assert status == 503
        await asyncio.sleep(0.35)
        async with session.get(f"{fake.url}/health") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})


async def test_vllm_health_is_an_empty_200(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, flavour="vllm") as fake, session.get(f"{fake.url}/health") as response:
        assert (response.status, await response.read()) == (200, b"")


def test_startup_is_llama_cpp_only() -> None:
    with pytest.raises(ValueError, match=r"llama\.cpp"):
        FakeOpenAI(flavour="vllm", startup_s=1.0)
    with pytest.raises(ValueError, match="flavour"):
        FakeOpenAI(flavour=cast("Flavour", "ollama"))


# -- faults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flavour", "error"),
    [
        ("llama.cpp", {"code": 503, "message": "busy", "type": "unavailable_error"}),
        ("vllm", {"message": "busy", "type": "InternalServerError", "param": None, "code": 503}),
        ("lmstudio", {"message": "busy", "type": "server_error", "param": None, "code": None}),
    ],
)
async def test_fail_next_answers_in_the_flavours_shape(
    session: aiohttp.ClientSession, flavour: Flavour, error: Any
) -> None:
    async with FakeOpenAI(MODELS, flavour=flavour) as fake:
        fake.fail_next(503, "busy", count=2)
        url = f"{fake.url}/v1/chat/completions"
        replies = [await post(session, url, chat()) for _ in range(3)]
    assert replies[0] == replies[1] == (503, {"error": error})
    assert replies[2][0] == 200


async def test_fail_next_spares_health_and_can_target_paths(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS) as fake:
        fake.fail_next(500, "boom", paths=["/v1/embeddings"])
        async with session.get(f"{fake.url}/health") as response:
            assert response.status == 200
        assert (await post(session, f"{fake.url}/v1/chat/completions", chat()))[0] == 200
        assert (await post(session, f"{fake.url}/v1/embeddings", {"model": EMBED, "input": "x"}))[0] == 500


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_break_after_cuts_the_stream(session: aiohttp.ClientSession, flavour: Flavour) -> None:
    async with FakeOpenAI(MODELS, flavour=flavour) as fake:
        fake.break_after(3)
        received: list[bytes] = []
        async with session.post(f"{fake.url}/v1/chat/completions", json=chat(stream=True)) as response:
            assert response.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await collect_lines(response, received)
        tokens = [json.loads(line[6:]) for line in received if line.startswith(b"data: {")]
        assert sum(1 for delta in deltas(tokens) if delta.get("content")) == 3
        assert all(chunk["choices"][0]["finish_reason"] is None for chunk in tokens)
        assert fake.cancelled == 0  # the server cut it; no client left
        fake.break_after(0)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, f"{fake.url}/v1/chat/completions", chat())
        assert (await post(session, f"{fake.url}/v1/chat/completions", chat()))[0] == 200


async def test_error_after_reports_mid_stream_errors_the_flavours_way(session: aiohttp.ClientSession) -> None:
    body = chat(stream=True)
    async with FakeOpenAI(MODELS) as fake:
        fake.error_after(2, "boom")
        llama = await events(session, f"{fake.url}/v1/chat/completions", body)
        fake.error_after(0, "boom")
        early = await post(session, f"{fake.url}/v1/chat/completions", body)
    async with FakeOpenAI(MODELS, flavour="vllm") as fake:
        fake.error_after(1, "boom")
        vllm = await events(session, f"{fake.url}/v1/chat/completions", body)
    # llama.cpp ends on the error event; an error before the first token is a plain status.
    assert json.loads(llama[-1]) == {"error": {"code": 500, "message": "boom", "type": "server_error"}}
    assert len(llama) == 4  # the role chunk, two tokens, the error; no finish chunk and no [DONE]
    assert [set(delta) for delta in deltas([json.loads(item) for item in llama[:3]])] == [
        {"role", "content"},
        {"content"},
        {"content"},
    ]
    assert early == (500, {"error": {"code": 500, "message": "boom", "type": "server_error"}})
    # vLLM still says [DONE] after the error event.
    assert vllm[-1] == "[DONE]"
    assert json.loads(vllm[-2])["error"]["type"] == "InternalServerError"


async def test_close_mid_stream_cuts_it_at_once(session: aiohttp.ClientSession) -> None:
    fake = FakeOpenAI(MODELS, tokens_per_second=20.0)
    await fake.start()
    after: list[bytes] = []
    try:
        url = f"{fake.url}/v1/chat/completions"
        async with session.post(url, json=chat(stream=True, max_tokens=100)) as response:
            assert (await response.content.readline()).startswith(b"data: ")
            await fake.close()
            with pytest.raises(aiohttp.ClientPayloadError):
                await collect_lines(response, after)
    finally:
        await fake.close()
    # A shutdown that let streams run on would deliver about 20 more tokens in its grace second.
    assert len([line for line in after if line.startswith(b"data: ")]) <= 2
    assert fake.cancelled == 0
    with pytest.raises(aiohttp.ClientConnectorError):
        await post(session, f"{fake.url}/v1/models", None)


async def test_a_client_that_leaves_frees_its_slot(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(MODELS, slots=1, tokens_per_second=20.0) as fake:
        url = f"{fake.url}/v1/chat/completions"
        async with session.post(url, json=chat(stream=True, max_tokens=100)) as response:
            await response.content.readline()
            response.close()
        await wait_for(lambda: fake.cancelled == 1 and fake.active == 0)
        assert (await post(session, url, chat(max_tokens=1)))[0] == 200


# -- introspection and the process -----------------------------------------------------------------


async def test_requests_are_recorded(session: aiohttp.ClientSession) -> None:
    async with serving("vllm") as (fake, client):
        await client.chat.completions.create(model=CHAT, messages=HELLO, max_tokens=2)
        async with session.post(f"{fake.url}/v1/chat/completions?x=1", data=b"not json"):
            pass
    first, second = fake.requests
    assert (first.method, first.path, first.query_string) == ("POST", "/v1/chat/completions", "")
    assert first.json == {"messages": HELLO, "model": CHAT, "max_tokens": 2}
    assert first.headers["Authorization"] == "Bearer sk-local"
    assert (second.query_string, second.body, second.json) == ("x=1", b"not json", None)


def test_cli_flags_build_the_fake() -> None:
    args = _parse_args(
        [
            "--flavour",
            "vllm",
            "--model",
            "qwen",
            "--model",
            "bge=embedding,matryoshka",
            "--slots",
            "2",
            "--tps",
            "40",
        ]
    )
    fake = _fake(args)
    assert fake.flavour == "vllm"
    assert [(model.id, model.kind, model.matryoshka) for model in fake.models] == [
        ("qwen", "chat", False),
        ("bge", "embedding", True),
    ]
    assert (fake.slots, fake.tokens_per_second) == (2, 40.0)
    with pytest.raises(SystemExit):
        _parse_args(["--model", "x=chatty"])


async def test_cli_prints_listening_and_exits_cleanly_on_sigterm(session: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.openai",
        "--port",
        "0",
        "--flavour",
        "lmstudio",
        "--model",
        "qwen2.5-7b-instruct",
        "--model",
        "text-embedding-nomic=embedding",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        # Without PYTHONUNBUFFERED a piped stdout is block-buffered: the fake must flush its line itself.
        env={name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"},
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=15)).decode()
        match = re.fullmatch(r"LISTENING (http://127\.0\.0\.1:\d+)\n", line)
        assert match is not None, line
        async with session.get(f"{match.group(1)}/v1/models") as response:
            assert [model["id"] for model in (await response.json())["data"]] == [
                "qwen2.5-7b-instruct",
                "text-embedding-nomic",
            ]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
