"""OpenAI's Responses API, as the OpenAI SDK's `responses.create` speaks it, through a node whose backend
is an OpenAI-compatible server that has only chat completions: asked as a chat completion, answered as a
response whole and as its numbered events, function calls both ways."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from inferhub_desktop.core import Node
from inferhub_desktop.core.backends.openai.responses import response_events
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeModel, FakeOpenAI
from tests.support import eventually, node_settings

LLAMA = "llama-3.1-8b-instruct"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI([FakeModel(LLAMA)], reply_tokens=12) as fake:
        yield fake


@pytest.fixture
async def sdk(server: FakeOpenAI, tmp_path: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    async with Node(node_settings(tmp_path, f"openai:{server.url}/v1", name="desk"), environ={}) as node:
        await eventually(lambda: node.backend_state.reachable)
        async with openai.AsyncOpenAI(
            base_url=node.api_url + "/v1", api_key="unused", max_retries=0
        ) as client:
            yield client


def asked(server: FakeOpenAI) -> dict[str, Any]:
    return [r.json for r in server.requests if r.path == "/v1/chat/completions"][-1]


async def test_a_response_is_the_servers_chat_answer(sdk: openai.AsyncOpenAI, server: FakeOpenAI) -> None:
    whole = await sdk.responses.create(
        model=LLAMA, instructions="Answer briefly.", input="Why is the sky blue?", max_output_tokens=12
    )
    sent = asked(server)
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    assert sent["max_tokens"] == 12
    assert whole.model == LLAMA
    assert whole.output_text
    # Completed even when cut at the limit, as Ollama answers: the pool answers alike whichever server.
    assert whole.status == "completed"
    assert whole.usage is not None
    assert whole.usage.output_tokens == 12

    events = [
        event
        async for event in await sdk.responses.create(
            model=LLAMA,
            instructions="Answer briefly.",
            input="Why is the sky blue?",
            max_output_tokens=12,
            stream=True,
        )
    ]
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas == whole.output_text
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == whole.output_text


async def test_function_calls_go_both_ways(sdk: openai.AsyncOpenAI, server: FakeOpenAI) -> None:
    question = "What is the weather in Paris?"
    whole = await sdk.responses.create(model=LLAMA, input=question, tools=[WEATHER])  # type: ignore[list-item]
    [call] = [item for item in whole.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert set(json.loads(call.arguments)) == {"city"}
    assert asked(server)["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["parameters"],
                "description": "The weather in a city",
            },
        }
    ]
    streamed = [
        event
        async for event in await sdk.responses.create(
            model=LLAMA, input=question, tools=[WEATHER], stream=True
        )
    ]  # type: ignore[list-item]
    done = [e.item for e in streamed if e.type == "response.output_item.done"]  # type: ignore[union-attr]
    assert [(item.type, item.name) for item in done] == [("function_call", "get_weather")]
    arguments = "".join(e.delta for e in streamed if e.type == "response.function_call_arguments.delta")  # type: ignore[union-attr]
    assert arguments == done[0].arguments

    # The output goes back paired with the call it answers.
    followup = [
        {"role": "user", "content": question},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees"},
    ]
    await sdk.responses.create(model=LLAMA, input=followup, tools=[WEATHER])  # type: ignore[arg-type, list-item]
    _, assistant, tool = asked(server)["messages"]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": call.arguments},
            }
        ],
    }
    assert tool == {"role": "tool", "tool_call_id": call.call_id, "content": "18 degrees"}


async def test_an_unknown_model_and_a_bad_input_are_refused(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        await sdk.responses.create(model="nope", input="hi")
    with pytest.raises(openai.BadRequestError, match="input item type 'web_search_call' is not supported"):
        await sdk.responses.create(model=LLAMA, input=[{"type": "web_search_call", "id": "x"}])  # type: ignore[list-item]


async def test_ollamas_own_responses_api_is_routed_across_the_pool(tmp_path: Path) -> None:
    """Ollama serves /v1/responses itself: a peer's model is asked there, through the node, unchanged."""
    async with FakeOllama(["other:latest"]) as fake_a, FakeOllama(["llama3:latest"]) as fake_b:
        alpha = Node(node_settings(tmp_path / "a", fake_a.url, name="alpha"), environ={})
        beta = Node(node_settings(tmp_path / "b", fake_b.url, name="beta", share=True), environ={})
        async with alpha, beta:
            await eventually(
                lambda: any(p.name == "beta" and p.status.backend.installed for p in alpha.peers())
            )
            async with openai.AsyncOpenAI(
                base_url=alpha.api_url + "/v1", api_key="unused", max_retries=0
            ) as sdk:
                raw = await sdk.responses.with_raw_response.create(
                    model="llama3", input="hi", max_output_tokens=6
                )
                whole = raw.parse()
                events = [
                    e
                    async for e in await sdk.responses.create(
                        model="llama3", input="hi", max_output_tokens=6, stream=True
                    )
                ]
    assert raw.headers["X-InferHub-Node"] == "beta"
    assert [r.path for r in fake_b.requests if r.path.startswith("/v1/")] == ["/v1/responses"] * 2
    assert whole.model == "llama3"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == whole.output_text  # type: ignore[union-attr]


async def test_ollamas_responses_api_calls_functions_through_the_node(tmp_path: Path) -> None:
    asked: dict[str, Any] = {"model": "llama3", "input": "What is the weather in Paris?", "tools": [WEATHER]}
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, name="alpha"), environ={}) as node,
        openai.AsyncOpenAI(base_url=node.api_url + "/v1", api_key="unused", max_retries=0) as sdk,
    ):
        await eventually(lambda: node.backend_state.reachable)
        whole = await sdk.responses.create(**asked)
        events = [e async for e in await sdk.responses.create(**asked, stream=True)]
    for output in (whole.output, events[-1].response.output):  # type: ignore[union-attr]
        [call] = output
        assert (call.type, call.name, json.loads(call.arguments)) == (
            "function_call",
            "get_weather",
            {"city": "Paris"},
        )  # type: ignore[union-attr]


async def test_function_calls_numbered_alike_come_out_as_items_of_their_own() -> None:
    async def chunks() -> AsyncIterator[dict[str, Any] | None]:
        for ident, name, arguments in (
            ("a", "get_weather", '{"city":'),
            ("a", None, '"Paris"}'),
            ("b", "get_time", "{}"),
        ):
            function = {"arguments": arguments, **({"name": name} if name else {})}
            yield {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": ident, "function": function}]}}]}
        yield None

    stream = b"".join([piece async for piece in response_events(chunks(), {}, "m")]).decode()
    events = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in stream.strip().split("\n\n")]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [(i["call_id"], i["name"], json.loads(i["arguments"])) for i in done] == [
        ("a", "get_weather", {"city": "Paris"}),
        ("b", "get_time", {}),
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [i["call_id"] for i in events[-1]["response"]["output"]] == ["a", "b"]
