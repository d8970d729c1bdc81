"""The OpenAI backend's translators on their own: Ollama's requests into an OpenAI server's, and its
replies (stream events, whole replies, embeddings, errors) back into Ollama's, with no server running."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from inferhub_desktop.core.backends.openai.replies import (
    Turn,
    embeddings,
    renamed,
    renamed_events,
    server_error,
    sse_events,
    whole_as_events,
)
from inferhub_desktop.core.backends.openai.requests import completion, embedding
from inferhub_desktop.core.wire.errors import ApiError, BackendUnavailable

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()
SERVER = "desk's backend at http://127.0.0.1:8080"

# -- requests --------------------------------------------------------------------------------------------


def test_a_chat_becomes_chat_completions_with_its_options() -> None:
    fields = {
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": 0.2, "top_k": 40, "seed": 7, "stop": ["\n"], "num_predict": 64},
        "format": "json",
    }
    path, payload = completion(fields, chat=True) or ("", {})
    assert path == "/v1/chat/completions"
    assert payload == {
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_k": 40,
        "seed": 7,
        "stop": ["\n"],
        "max_tokens": 64,
        "response_format": {"type": "json_object"},
    }


@pytest.mark.parametrize("predict", [-1, -2, "64", None])
def test_no_limit_or_a_limit_that_is_not_a_count_asks_for_no_max_tokens(predict: Any) -> None:
    _, payload = completion({"prompt": "hi", "options": {"num_predict": predict}}, chat=False) or ("", {})
    assert "max_tokens" not in payload


def test_a_schema_format_is_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    _, payload = completion({"prompt": "hi", "format": schema}, chat=False) or ("", {})
    assert payload["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema},
    }


def test_a_generate_with_a_system_prompt_is_a_chat_of_two_messages() -> None:
    path, payload = completion({"prompt": "hi", "system": "Be brief."}, chat=False) or ("", {})
    assert path == "/v1/chat/completions"
    assert payload["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


@pytest.mark.parametrize(
    ("fields", "payload"),
    [
        ({"prompt": "def f(", "raw": True}, {"prompt": "def f("}),
        ({"prompt": "def f(", "suffix": "return 1"}, {"prompt": "def f(", "suffix": "return 1"}),
    ],
    ids=["raw", "suffix"],
)
def test_a_raw_or_suffixed_generate_goes_to_completions(
    fields: dict[str, Any], payload: dict[str, Any]
) -> None:
    assert completion(fields, chat=False) == ("/v1/completions", payload)


@pytest.mark.parametrize(
    ("fields", "chat"),
    [({"messages": []}, True), ({}, True), ({"prompt": ""}, False), ({}, False)],
)
def test_a_request_with_nothing_to_answer_asks_the_server_nothing(fields: dict[str, Any], chat: bool) -> None:
    assert completion(fields, chat=chat) is None


def test_images_are_data_uris_of_their_own_type() -> None:
    fields = {"messages": [{"role": "user", "content": "what is this?", "images": [PNG, JPEG]}]}
    _, payload = completion(fields, chat=True) or ("", {})
    assert payload["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]


def test_tool_results_are_paired_with_the_calls_they_answer() -> None:
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                {"id": "given", "function": {"name": "time", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "12:00", "tool_name": "time"},
        {"role": "tool", "content": "sunny"},
    ]
    _, payload = completion({"messages": messages}, chat=True) or ("", {})
    calls = payload["messages"][1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1_0", "given"]
    assert calls[0]["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    assert [m.get("tool_call_id") for m in payload["messages"][2:]] == ["given", "call_1_0"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"messages": "hi"}, "messages must be a list"),
        ({"messages": ["hi"]}, "each message must be an object"),
        ({"messages": [{"role": "user", "content": 5}]}, "content must be a string"),
        ({"messages": [{"role": "user", "content": "", "images": "x"}]}, "images must be a list"),
        ({"messages": [{"role": "user", "content": "", "images": ["%%%"]}]}, "not valid base64"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"function": 1}]}]}, "must have a function"),
        ({"prompt": 5}, "prompt must be a string"),
    ],
)
def test_a_request_the_server_cannot_be_asked_is_a_400(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError, match=message) as refused:
        completion(fields, chat="messages" in fields)
    assert refused.value.status == 400


def test_an_embedding_asks_for_floats_and_keeps_its_dimensions() -> None:
    assert embedding({"input": ["a", "b"], "dimensions": 64}, "nomic.gguf", legacy=False) == {
        "model": "nomic.gguf",
        "input": ["a", "b"],
        "encoding_format": "float",
        "dimensions": 64,
    }
    assert embedding({"prompt": "a", "dimensions": 64}, "m", legacy=True) == {
        "model": "m",
        "input": "a",
        "encoding_format": "float",
    }
    assert embedding({"input": ""}, "m", legacy=False) is None
    with pytest.raises(ApiError, match="input must be"):
        embedding({"input": 5}, "m", legacy=False)


# -- replies ---------------------------------------------------------------------------------------------


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def events_of(*values: dict[str, Any] | None, clock: Clock | None = None) -> AsyncIterator[Any]:
    for value in values:
        if clock is not None:
            clock.now += 0.5
        yield value


def delta(content: str = "", finish: str | None = None, **more: Any) -> dict[str, Any]:
    return {"choices": [{"delta": {"content": content, **more}, "finish_reason": finish}]}


def lines(stream: AsyncIterator[bytes]) -> list[dict[str, Any]]:
    async def read() -> list[bytes]:
        return [chunk async for chunk in stream]

    return [json.loads(line) for line in asyncio.run(read())]


def test_a_stream_becomes_ollamas_chunks_ending_in_counts_and_durations() -> None:
    clock = Clock()
    turn = Turn("smollm2", chat=True, clock=clock)
    events = events_of(
        delta("Hel"),
        delta("lo", reasoning_content="thinking"),
        delta(finish="stop"),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
        None,
        clock=clock,
    )
    chunks = lines(turn.ndjson(events, SERVER))
    assert [c["message"]["content"] for c in chunks[:-1]] == ["Hel", "lo"]
    assert chunks[1]["message"]["thinking"] == "thinking"
    final = chunks[-1]
    assert (final["done"], final["done_reason"], final["model"]) == (True, "stop", "smollm2")
    assert (final["prompt_eval_count"], final["eval_count"]) == (9, 2)
    # The prompt took until the first piece (0.5 s), generation the rest (four more events).
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (500_000_000, 2_000_000_000)
    assert final["total_duration"] == 2_500_000_000


def test_llama_cpps_timings_are_taken_for_the_durations() -> None:
    turn = Turn("m", chat=False, clock=Clock())
    events = events_of(
        delta("a"), {**delta("b", finish="length"), "timings": {"prompt_ms": 12, "predicted_ms": 340}}
    )
    final = lines(turn.ndjson(events, SERVER))[-1]
    assert (final["done_reason"], final["prompt_eval_duration"], final["eval_duration"]) == (
        "length",
        12_000_000,
        340_000_000,
    )
    # With no usage, each piece of text is a token.
    assert final["eval_count"] == 2


def test_a_tool_call_in_pieces_is_one_call() -> None:
    turn = Turn("m", chat=True, clock=Clock())
    pieces = [
        {"index": 0, "id": "c1", "function": {"name": "weather", "arguments": '{"ci'}},
        {"index": 0, "function": {"arguments": 'ty": "Paris"}'}},
    ]
    events = events_of(*(delta(tool_calls=[piece]) for piece in pieces), delta(finish="tool_calls"), None)
    chunks = lines(turn.ndjson(events, SERVER))
    calls = chunks[-2]["message"]["tool_calls"]
    assert calls == [
        {"id": "c1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}}
    ]


def test_tool_arguments_that_are_not_json_end_the_stream_with_an_error() -> None:
    turn = Turn("m", chat=True, clock=Clock())
    events = events_of(delta(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": "{"}}]), None)
    assert "arguments that are not JSON" in lines(turn.ndjson(events, SERVER))[-1]["error"]


def test_an_error_event_ends_the_stream_with_it() -> None:
    turn = Turn("m", chat=True, clock=Clock())
    events = events_of(delta("a"), {"error": {"message": "out of memory"}})
    assert lines(turn.ndjson(events, SERVER))[-1] == {"error": "out of memory"}


def test_a_stream_cut_short_is_a_broken_backend() -> None:
    turn = Turn("m", chat=True, clock=Clock())
    with pytest.raises(BackendUnavailable, match="ended its reply before the model finished"):
        lines(turn.ndjson(events_of(delta("a")), SERVER))


def test_a_whole_reply_is_gathered_into_one_object() -> None:
    whole = {
        "choices": [
            {"message": {"content": "Hi there", "reasoning_content": "greet"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }

    async def gather() -> dict[str, Any]:
        return await Turn("m", chat=True, clock=Clock()).gather(whole_as_events(whole), SERVER)

    reply = asyncio.run(gather())
    assert reply["message"] == {"role": "assistant", "content": "Hi there", "thinking": "greet"}
    assert (reply["done"], reply["eval_count"], reply["prompt_eval_count"]) == (True, 2, 3)


def test_a_load_or_unload_is_answered_as_ollama_answers_it() -> None:
    assert Turn("m", chat=False).loaded(unloaded=True)["done_reason"] == "unload"
    loaded = Turn("m", chat=True).loaded(unloaded=False)
    assert (loaded["done_reason"], loaded["message"]) == ("load", {"role": "assistant", "content": ""})


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


async def stream(data: bytes, size: int) -> AsyncIterator[bytes]:
    for chunk in chunks_of(data, size):
        yield chunk


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_sse_is_read_into_its_events_however_it_is_cut(size: int) -> None:
    data = b'data: {"a": 1}\r\n\r\n: a comment\n\ndata: {"b":\ndata: 2}\n\ndata: [DONE]\n\ndata: {"c": 3}\n\n'

    async def read() -> list[Any]:
        return [event async for event in sse_events(stream(data, size))]

    assert asyncio.run(read()) == [{"a": 1}, {"b": 2}, None]


def test_a_passed_through_stream_names_the_model_the_client_sent() -> None:
    data = (
        b'data: {"model": "x.gguf", "choices": []}\n\n'
        b'data: {"response": {"model": "x.gguf"}}\n\n'
        b"data: [DONE]\n\n"
    )

    async def read() -> bytes:
        return b"".join([chunk async for chunk in renamed_events(stream(data, 5), "smollm2")])

    events = asyncio.run(read()).split(b"\n\n")
    assert json.loads(events[0].removeprefix(b"data: "))["model"] == "smollm2"
    assert json.loads(events[1].removeprefix(b"data: "))["response"]["model"] == "smollm2"
    assert events[2] == b"data: [DONE]"
    assert renamed({"id": 1}, "m") == {"id": 1}


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, b'{"error": {"message": "bad request", "type": "x"}}', "bad request"),
        (422, b'{"detail": [{"msg": "field required"}, {"msg": "too long"}]}', "field required; too long"),
        (404, b'{"error": "The model `x` does not exist."}', "model 'smollm2' not found"),
        (500, b"", "HTTP 500"),
        (503, b"Loading model", "Loading model"),
    ],
)
def test_a_servers_error_is_said_in_ollamas_words(status: int, body: bytes, message: str) -> None:
    error = server_error(status, body, "smollm2")
    assert (error.status, error.message) == (status, message)


def test_embeddings_come_back_in_input_order() -> None:
    reply = {
        "data": [{"index": 1, "embedding": [0.3, 0.4]}, {"index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 4},
    }
    got = embeddings(reply, "nomic", legacy=False, took_s=0.25, server=SERVER)
    assert got == {
        "model": "nomic",
        "embeddings": [[0.1, 0.2], [0.3, 0.4]],
        "total_duration": 250_000_000,
        "load_duration": 0,
        "prompt_eval_count": 4,
    }
    assert embeddings(reply, "nomic", legacy=True, took_s=0.25, server=SERVER) == {"embedding": [0.1, 0.2]}


def test_a_vector_per_token_is_no_embedding() -> None:
    reply = {"data": [{"index": 0, "embedding": [[0.1], [0.2]]}]}
    with pytest.raises(ApiError, match="is smollm2 an embedding model") as refused:
        embeddings(reply, "smollm2", legacy=False, took_s=0.1, server=SERVER)
    assert refused.value.status == 500
    with pytest.raises(BackendUnavailable, match="without a `data` list"):
        embeddings({"object": "list"}, "smollm2", legacy=False, took_s=0.1, server=SERVER)


def test_a_server_repeating_the_name_in_every_piece_names_the_call_once() -> None:
    """llama-cpp-python sends the call's id and name with each piece of its arguments."""
    turn = Turn("m", chat=True, clock=Clock())
    pieces = [
        {"index": 0, "id": "c1", "function": {"name": "weather", "arguments": part}}
        for part in ('{"city":', ' "Paris"}')
    ]
    events = events_of(*(delta(tool_calls=[piece]) for piece in pieces), delta(finish="tool_calls"), None)
    calls = lines(turn.ndjson(events, SERVER))[-2]["message"]["tool_calls"]
    assert calls == [
        {"id": "c1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}}
    ]


def test_calls_a_server_numbers_alike_are_told_apart_by_their_ids() -> None:
    turn = Turn("m", chat=True, clock=Clock())
    pieces = [
        {"index": 0, "id": "c1", "function": {"name": "weather", "arguments": "{}"}},
        {"index": 0, "id": "c2", "function": {"name": "time", "arguments": "{}"}},
    ]
    events = events_of(*(delta(tool_calls=[piece]) for piece in pieces), delta(finish="tool_calls"), None)
    calls = lines(turn.ndjson(events, SERVER))[-2]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["index"], c["function"]["name"]) for c in calls] == [
        ("c1", 0, "weather"),
        ("c2", 1, "time"),
    ]
