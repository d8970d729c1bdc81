"""A real model through the local API: SmolLM2-135M served by llama.cpp's OpenAI-compatible server, used
with the official ollama and openai clients, unchanged.

Greedy decoding (temperature 0) makes the model's text a function of the request, so what comes through
the node, whole or streamed, is compared with what the server says directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import ollama
import openai
import pytest

from tests.support import SMOLLM2, start_llama_server, start_node_process, stop_process

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]
GREEDY = {"temperature": 0, "num_predict": 24, "seed": 1}


@pytest.fixture(scope="module")
def llama() -> Iterator[str]:
    proc, url = start_llama_server()
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def node(llama: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = tmp_path_factory.mktemp("node")
    proc, url = start_node_process(config, f"openai:{llama}/v1", "--share-port", "0")
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def client(node: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=node) as client:
        yield client


def direct_chat(llama: str, messages: list[dict[str, str]]) -> str:
    """Ask llama.cpp's server itself, with the same greedy settings."""
    with openai.OpenAI(base_url=f"{llama}/v1", api_key="none") as sdk:
        reply = sdk.chat.completions.create(
            model=SMOLLM2, messages=messages, temperature=0, max_tokens=GREEDY["num_predict"], seed=1
        )
    return reply.choices[0].message.content or ""


def test_the_model_is_listed_and_shown_under_its_ollama_name(client: ollama.Client) -> None:
    assert [m.model for m in client.list().models] == ["smollm2:latest"]
    shown = client.show(SMOLLM2)
    assert "FROM smollm2" in (shown.modelfile or "")
    assert shown.capabilities == ["completion"]
    assert [m.model for m in client.ps().models] == ["smollm2:latest"]


def test_chat_whole_and_streamed_says_what_the_server_says(client: ollama.Client, llama: str) -> None:
    expected = direct_chat(llama, QUESTION)
    assert expected.strip()

    whole = client.chat(model=SMOLLM2, messages=QUESTION, options=GREEDY)
    assert whole.message.content == expected
    assert whole.done_reason in ("stop", "length")
    # A whole reply carries the server's own token counts.
    assert 0 < (whole.eval_count or 0) <= GREEDY["num_predict"]
    assert (whole.prompt_eval_count or 0) > len(QUESTION[0]["content"].split())
    assert whole.total_duration
    assert whole.eval_duration

    parts = list(client.chat(model=SMOLLM2, messages=QUESTION, options=GREEDY, stream=True))
    *pieces, final = parts
    assert "".join(p.message.content or "" for p in parts) == expected
    assert len(pieces) > 3
    assert not any(p.done for p in pieces)
    assert final.done
    assert final.done_reason == whole.done_reason
    assert final.eval_count == whole.eval_count
    assert final.total_duration
    assert final.prompt_eval_duration
    assert final.eval_duration


def test_generate_whole_and_streamed(client: ollama.Client, llama: str) -> None:
    prompt = "Write the word blue."
    expected = direct_chat(llama, [{"role": "user", "content": prompt}])

    whole = client.generate(model=SMOLLM2, prompt=prompt, options=GREEDY)
    assert whole.response == expected
    assert whole.eval_count
    assert whole.prompt_eval_count

    parts = list(client.generate(model=SMOLLM2, prompt=prompt, options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == expected
    assert parts[-1].done
    assert parts[-1].eval_count == whole.eval_count

    # A raw prompt skips the chat template: the model continues the text as it is.
    raw = client.generate(model=SMOLLM2, prompt="The sky is", raw=True, options=GREEDY)
    assert raw.response.strip()
    assert raw.response != whole.response


def test_an_unknown_model_is_refused_as_ollama_does(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="llama3", messages=QUESTION)
    assert (refused.value.status_code, refused.value.error) == (404, "model 'llama3' not found")


def test_the_openai_api_passes_through_with_the_pool_name(node: str, llama: str) -> None:
    with openai.OpenAI(base_url=f"{node}/v1", api_key="ollama") as sdk:
        assert [m.id for m in sdk.models.list()] == ["smollm2:latest"]
        reply = sdk.chat.completions.create(
            model="smollm2:latest", messages=QUESTION, temperature=0, max_tokens=GREEDY["num_predict"], seed=1
        )
    assert reply.model == "smollm2:latest"
    assert reply.choices[0].message.content == direct_chat(llama, QUESTION)
    assert reply.usage
    assert reply.usage.completion_tokens > 0


def test_the_anthropic_sdk_gets_what_the_server_says_though_it_has_no_messages_api(
    node: str, llama: str
) -> None:
    """What Claude Code does with ANTHROPIC_BASE_URL: llama.cpp's server has no /v1/messages; the node asks
    it as a chat completion."""
    expected = direct_chat(llama, QUESTION)
    greedy = {"temperature": 0, "seed": 1}
    with anthropic.Anthropic(base_url=node, api_key="unused", max_retries=0) as sdk:
        whole = sdk.messages.create(
            model=SMOLLM2, max_tokens=GREEDY["num_predict"], messages=QUESTION, extra_body=greedy
        )
        with sdk.messages.stream(
            model=SMOLLM2, max_tokens=GREEDY["num_predict"], messages=QUESTION, extra_body=greedy
        ) as stream:
            streamed = stream.get_final_message()
    for message in (whole, streamed):
        assert [block.type for block in message.content] == ["text"]
        assert message.content[0].text == expected  # type: ignore[union-attr]
        assert message.stop_reason in ("end_turn", "max_tokens")
        assert 0 < message.usage.output_tokens <= GREEDY["num_predict"]


def test_the_responses_api_gets_what_the_server_says_though_it_has_none(node: str, llama: str) -> None:
    expected = direct_chat(llama, QUESTION)
    greedy = {"seed": 1}
    with openai.OpenAI(base_url=f"{node}/v1", api_key="ollama") as sdk:
        whole = sdk.responses.create(
            model=SMOLLM2,
            input=QUESTION,
            temperature=0,
            max_output_tokens=GREEDY["num_predict"],
            extra_body=greedy,
        )
        events = list(
            sdk.responses.create(
                model=SMOLLM2,
                input=QUESTION,
                temperature=0,
                max_output_tokens=GREEDY["num_predict"],
                extra_body=greedy,
                stream=True,
            )
        )
    assert whole.output_text == expected
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == expected  # type: ignore[union-attr]


WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_both_sdks_get_a_tool_call_from_the_real_model(node: str) -> None:
    """The call is forced by name: llama-cpp-python then constrains the model's output to the tool's
    arguments, which a 135M model follows."""
    with anthropic.Anthropic(base_url=node, api_key="unused", max_retries=0) as claude:
        asked = {
            "model": SMOLLM2,
            "max_tokens": 40,
            "messages": WEATHER_QUESTION,
            "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "extra_body": {"temperature": 0},
        }
        whole = claude.messages.create(**asked)  # type: ignore[call-overload]
        with claude.messages.stream(**asked) as stream:  # type: ignore[arg-type]
            streamed = stream.get_final_message()
    for message in (whole, streamed):
        [call] = [block for block in message.content if block.type == "tool_use"]
        assert (call.name, call.input, message.stop_reason) == ("get_weather", {"city": "Paris"}, "tool_use")
    with openai.OpenAI(base_url=f"{node}/v1", api_key="ollama") as sdk:
        asked = {
            "model": SMOLLM2,
            "input": WEATHER_QUESTION,
            "tools": [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "temperature": 0,
            "max_output_tokens": 40,
        }
        response = sdk.responses.create(**asked)  # type: ignore[call-overload]
        events = list(sdk.responses.create(**asked, stream=True))  # type: ignore[call-overload]
    for output in (response.output, events[-1].response.output):
        [call] = output
        assert (call.type, call.name, json.loads(call.arguments)) == (
            "function_call",
            "get_weather",
            {"city": "Paris"},
        )
