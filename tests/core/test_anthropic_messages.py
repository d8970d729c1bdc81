"""Anthropic's Messages API, as the `anthropic` SDK (and Claude Code) speaks it, through a node whose
backend is an OpenAI-compatible server that has none: asked as a chat completion, answered whole and
streamed as Anthropic's, tool use both ways, errors in Anthropic's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from inferhub_desktop.core import BackendUnavailable, Node
from inferhub_desktop.core.backends.openai.anthropic import message_events
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeModel, FakeOpenAI
from tests.support import eventually, node_settings

LLAMA = "llama-3.1-8b-instruct"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI([FakeModel(LLAMA)], reply_tokens=12) as fake:
        yield fake


@pytest.fixture
async def node(server: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Node]:
    async with Node(node_settings(tmp_path, f"openai:{server.url}/v1", name="desk"), environ={}) as node:
        await eventually(lambda: node.backend_state.reachable)
        yield node


@pytest.fixture
async def claude(node: Node) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The SDK Claude Code is built on, pointed at the node as ANTHROPIC_BASE_URL points it."""
    async with anthropic.AsyncAnthropic(base_url=node.api_url, api_key="unused", max_retries=0) as sdk:
        yield sdk


async def direct(server: FakeOpenAI, body: dict[str, Any]) -> dict[str, Any]:
    """What the server itself answers the chat completion the node asked."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url + "/v1/chat/completions", json=body) as reply,
    ):
        return dict(await reply.json())


def asked(server: FakeOpenAI) -> dict[str, Any]:
    return [r.json for r in server.requests if r.path == "/v1/chat/completions"][-1]


async def test_a_message_is_answered_whole_as_the_server_answers_the_chat(
    claude: anthropic.AsyncAnthropic, server: FakeOpenAI
) -> None:
    message = await claude.messages.create(
        model=LLAMA,
        max_tokens=12,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        # This SDK no longer names the sampling fields; the API still takes them.
        extra_body={"temperature": 0, "stop_sequences": ["\n\n"]},
    )
    sent = asked(server)
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["stop"]) == (12, 0, ["\n\n"])
    said = await direct(server, {k: v for k, v in sent.items() if k != "stream"})
    assert message.model == LLAMA
    assert message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == said["choices"][0]["message"]["content"]
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        said["usage"]["prompt_tokens"],
        said["usage"]["completion_tokens"],
    )


async def test_a_streamed_message_tells_its_events_and_adds_up_to_the_whole(
    claude: anthropic.AsyncAnthropic,
) -> None:
    question = {"model": LLAMA, "max_tokens": 12, "messages": [{"role": "user", "content": "Hello"}]}
    async with claude.messages.stream(**question) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    whole = await claude.messages.create(**question)
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_start" in kinds
    assert "content_block_stop" in kinds
    assert [block.type for block in final.content] == ["text"]
    assert final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_tool_use_goes_both_ways(
    claude: anthropic.AsyncAnthropic, server: FakeOpenAI, streamed: bool
) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    if streamed:
        async with claude.messages.stream(
            model=LLAMA, max_tokens=50, messages=question, tools=[WEATHER]
        ) as s:
            message = await s.get_final_message()
    else:
        message = await claude.messages.create(model=LLAMA, max_tokens=50, messages=question, tools=[WEATHER])
    assert asked(server)["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "The weather in a city",
            },
        }
    ]
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert message.stop_reason == "tool_use"
    assert call.name == "get_weather"
    assert set(call.input) == {"city"}  # type: ignore[arg-type]

    # The result goes back paired with the call it answers.
    followup = [
        *question,
        {"role": "assistant", "content": [call.model_dump(include={"type", "id", "name", "input"})]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees"}],
        },
    ]
    answer = await claude.messages.create(model=LLAMA, max_tokens=20, messages=followup, tools=[WEATHER])
    assert answer.role == "assistant"
    _, assistant, tool = asked(server)["messages"]
    assert assistant["tool_calls"] == [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps(call.input, separators=(",", ":"))},
        }
    ]
    assert tool == {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}


async def test_an_image_goes_as_a_data_url(claude: anthropic.AsyncAnthropic, server: FakeOpenAI) -> None:
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixel}},
        {"type": "text", "text": "What is this?"},
    ]
    with pytest.raises(anthropic.APIStatusError):
        # The fake llama.cpp model has no vision, and says so as the server would; the request it got says
        # how the image went.
        await claude.messages.create(
            model=LLAMA, max_tokens=5, messages=[{"role": "user", "content": content}]
        )
    [user] = asked(server)["messages"]
    assert user["content"][0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}


async def test_errors_come_in_anthropics_shape(node: Node, claude: anthropic.AsyncAnthropic) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            node.api_url + "/v1/messages", json={"model": "nope", "max_tokens": 5, "messages": []}
        ) as r:
            missing = (r.status, await r.json())
        body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(node.api_url + "/v1/messages", json=body) as r:
            no_limit = (r.status, await r.json())
    assert missing == (
        404,
        {"type": "error", "error": {"type": "not_found_error", "message": "model 'nope' not found"}},
    )
    assert no_limit[0] == 400
    assert no_limit[1]["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens is required and must be a positive integer",
    }
    with pytest.raises(anthropic.NotFoundError):
        await claude.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])


async def test_reasoning_arrives_as_thinking_blocks(tmp_path: Path) -> None:
    async with (
        FakeOpenAI([LLAMA], flavour="vllm", reasoning=True, reply_tokens=10) as server,
        Node(node_settings(tmp_path, f"openai:{server.url}", name="desk"), environ={}) as node,
        anthropic.AsyncAnthropic(base_url=node.api_url, api_key="unused", max_retries=0) as claude,
    ):
        await eventually(lambda: node.backend_state.reachable)
        question = {
            "model": LLAMA,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "Think first"}],
        }
        whole = await claude.messages.create(**question)  # type: ignore[arg-type]
        async with claude.messages.stream(**question) as stream:  # type: ignore[arg-type]
            streamed = await stream.get_final_message()
    for message in (whole, streamed):
        assert [block.type for block in message.content] == ["thinking", "text"]
    assert whole.content[0].thinking == streamed.content[0].thinking  # type: ignore[union-attr]
    assert whole.content[0].thinking  # type: ignore[union-attr]


async def test_input_tokens_are_counted_as_ollama_estimates_them(claude: anthropic.AsyncAnthropic) -> None:
    counted = await claude.messages.count_tokens(
        model=LLAMA, messages=[{"role": "user", "content": "x" * 40}]
    )
    # Ollama's estimate: the text's length (the role's too) over four.
    assert counted.input_tokens == (len("user") + 40) // 4


async def test_ollamas_own_messages_api_is_routed_across_the_pool(tmp_path: Path) -> None:
    """Ollama serves /v1/messages itself: a peer's model is asked there, through the node, unchanged."""
    async with FakeOllama(["other:latest"]) as fake_a, FakeOllama(["llama3:latest"]) as fake_b:
        alpha = Node(node_settings(tmp_path / "a", fake_a.url, name="alpha"), environ={})
        beta = Node(node_settings(tmp_path / "b", fake_b.url, name="beta", share=True), environ={})
        async with alpha, beta:
            await eventually(
                lambda: any(p.name == "beta" and p.status.backend.installed for p in alpha.peers())
            )
            async with anthropic.AsyncAnthropic(
                base_url=alpha.api_url, api_key="unused", max_retries=0
            ) as claude:
                question = {
                    "model": "llama3",
                    "max_tokens": 6,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                raw = await claude.messages.with_raw_response.create(**question)  # type: ignore[arg-type]
                whole = await raw.parse()
                async with claude.messages.stream(**question) as stream:  # type: ignore[arg-type]
                    streamed = await stream.get_final_message()
    assert raw.headers["X-InferHub-Node"] == "beta"
    assert [r.path for r in fake_b.requests if r.path.startswith("/v1/")] == ["/v1/messages"] * 2
    assert not [r for r in fake_a.requests if r.path == "/v1/messages"]
    assert whole.model == "llama3"
    assert streamed.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert (streamed.stop_reason, whole.stop_reason) == ("max_tokens", "max_tokens")


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_ollamas_messages_api_calls_tools_through_the_node(tmp_path: Path, streamed: bool) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    asked: dict[str, Any] = {"model": "llama3", "max_tokens": 20, "messages": question, "tools": [WEATHER]}
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, name="alpha"), environ={}) as node,
        anthropic.AsyncAnthropic(base_url=node.api_url, api_key="unused", max_retries=0) as claude,
    ):
        await eventually(lambda: node.backend_state.reachable)
        if streamed:
            async with claude.messages.stream(**asked) as stream:
                message = await stream.get_final_message()
        else:
            message = await claude.messages.create(**asked)
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert (call.name, call.input, message.stop_reason) == ("get_weather", {"city": "Paris"}, "tool_use")


async def chunks(*events: dict[str, Any] | None, fail: str = "") -> AsyncIterator[dict[str, Any] | None]:
    """Chat completion stream events as a server sends them; `fail` breaks the stream after them."""
    for event in events:
        yield event
    if fail:
        raise BackendUnavailable(fail)


def call_piece(index: int, ident: str | None, name: str | None, arguments: str) -> dict[str, Any]:
    function = {"arguments": arguments, **({"name": name} if name else {})}
    return {"choices": [{"delta": {"tool_calls": [{"index": index, "id": ident, "function": function}]}}]}


def parsed(stream: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    frames = b"".join(stream).decode().strip().split("\n\n")
    return [
        (f.split("\n")[0].removeprefix("event: "), json.loads(f.split("\n")[1].removeprefix("data: ")))
        for f in frames
    ]


async def test_tool_calls_numbered_alike_and_split_by_text_come_out_whole_and_apart() -> None:
    stream = [
        piece
        async for piece in message_events(
            chunks(
                # Two calls a server numbers 0 both, told by their ids; text in between; arguments in pieces.
                call_piece(0, "a", "get_weather", '{"city":'),
                {"choices": [{"delta": {"content": "Looking"}}]},
                call_piece(0, "a", "get_weather", '"Paris"}'),
                call_piece(0, "b", "get_time", '{"zone":"CET"}'),
                {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]},
                None,
            ),
            "m",
            3,
        )
    ]
    events = parsed(stream)
    starts = [e["content_block"] for name, e in events if name == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use", "tool_use"]
    assert [(b["id"], b["name"]) for b in starts[1:]] == [("a", "get_weather"), ("b", "get_time")]
    inputs = [
        json.loads(e["delta"]["partial_json"])
        for name, e in events
        if e.get("delta", {}).get("type") == "input_json_delta"
    ]
    assert inputs == [{"city": "Paris"}, {"zone": "CET"}]
    # Every delta goes to the block open at that moment.
    open_block = None
    for name, event in events:
        if name == "content_block_start":
            open_block = event["index"]
        elif name == "content_block_delta":
            assert event["index"] == open_block
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_a_server_failing_midway_ends_the_stream_with_an_error_event() -> None:
    stream = [
        piece
        async for piece in message_events(
            chunks({"choices": [{"delta": {"content": "Hi"}}]}, fail="it went away"), "m", 1
        )
    ]
    name, error = parsed(stream)[-1]
    assert (name, error["error"]["message"]) == ("error", "it went away")
