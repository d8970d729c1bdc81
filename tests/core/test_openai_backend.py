"""A node whose backend is an OpenAI-compatible server (the fake llama.cpp, vLLM and LM Studio): Ollama's
native API translated, /v1 passed through, names mapped, errors in Ollama's words."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest

from inferhub_desktop.core import Node
from inferhub_desktop.core.backends.detect import AutoBackend
from inferhub_desktop.core.backends.openai import OLLAMA_VERSION, ollama_name, served_models
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeModel, FakeOpenAI
from tests.support import eventually, node_settings

LLAMA = "llama-3.1-8b-instruct"
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI([FakeModel(LLAMA, context_length=8192, n_params=8_030_261_248)]) as fake:
        yield fake


@pytest.fixture
async def node(server: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Node]:
    async with Node(node_settings(tmp_path, f"openai:{server.url}/v1", name="desk"), environ={}) as node:
        await eventually(lambda: node.backend_state.reachable)
        yield node


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, str, list[Any]]:
    """POST and return the status, the content type and the body's JSON values (one per NDJSON line)."""
    async with http.post(url, json=body) as reply:
        text = await reply.text()
        content_type = reply.headers.get("Content-Type", "")
    if content_type.startswith("application/x-ndjson"):
        return reply.status, content_type, [json.loads(line) for line in text.splitlines()]
    return reply.status, content_type, [json.loads(text)] if text.startswith("{") else [text]


async def direct_text(
    http: aiohttp.ClientSession, server: FakeOpenAI, body: dict[str, Any]
) -> dict[str, Any]:
    """Ask the server itself, as the node would, for the reply to compare with."""
    async with http.post(server.url + "/v1/chat/completions", json={**body, "stream": False}) as reply:
        assert reply.status == 200
        return dict(await reply.json())


def upstream(server: FakeOpenAI, path: str) -> list[dict[str, Any]]:
    return [r.json for r in server.requests if r.path == path]


# -- names and listings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("smollm2", "smollm2:latest"),
        ("llama3:8b", "llama3:8b"),
        ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct:latest"),
        ("/models/Meta-Llama-3-8B.Q4_K_M.gguf", "Meta-Llama-3-8B.Q4_K_M:latest"),
        ("C:\\models\\phi-3.gguf", "phi-3:latest"),
        ("lmstudio-community/Qwen2.5-GGUF/qwen2.5-7b-q4.gguf", "qwen2.5-7b-q4:latest"),
        ("org/team/model", "team/model:latest"),
        ("my model (v2)", "my-model-v2:latest"),
    ],
)
def test_an_openai_id_gets_an_ollama_name_from_the_id_alone(model_id: str, name: str) -> None:
    assert ollama_name(model_id) == name


def test_ids_that_would_share_a_name_keep_different_ones() -> None:
    listing = {"data": [{"id": "b/x/model"}, {"id": "a/x/model"}, {"id": "smollm2"}]}
    names = {m.id: m.name for m in served_models(listing).values()}
    # The same names whatever order the server lists its models in.
    assert names == {m.id: m.name for m in served_models({"data": listing["data"][::-1]}).values()}
    assert names["smollm2"] == "smollm2:latest"
    assert names["a/x/model"] == "x/model:latest"
    assert names["b/x/model"].startswith("x/model-")
    assert names["b/x/model"].endswith(":latest")
    with pytest.raises(ValueError, match="data"):
        served_models({"models": []})


async def test_listings_show_the_servers_models_under_ollama_names(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    async with ollama.AsyncClient(host=node.api_url) as client:
        listed = (await client.list()).models
        running = (await client.ps()).models
        shown = await client.show(LLAMA)
        version = await (await http.get(node.api_url + "/api/version")).json()
    assert [m.model for m in listed] == [f"{LLAMA}:latest"]
    # llama-server's listing says how big the file is and how many parameters the model has.
    assert (listed[0].size, listed[0].details.parameter_size) == (4_920_734_016, "8.0B")
    assert [(m.model, m.context_length) for m in running] == [(f"{LLAMA}:latest", 8192)]
    assert shown.modelinfo == {
        "general.architecture": "unknown",
        "general.parameter_count": 8_030_261_248,
        "unknown.context_length": 8192,
    }
    assert shown.capabilities == ["completion"]
    assert version == {"version": OLLAMA_VERSION}
    state = node.backend_state
    assert (state.kind, state.url, state.version) == ("openai", server.url, "llamacpp")


async def test_the_openai_listing_uses_ollama_names_too(node: Node, http: aiohttp.ClientSession) -> None:
    async with http.get(node.api_url + "/v1/models") as reply:
        listing = await reply.json()
    assert [m["id"] for m in listing["data"]] == [f"{LLAMA}:latest"]
    async with http.get(node.api_url + f"/v1/models/{LLAMA}") as reply:
        assert (reply.status, (await reply.json())["id"]) == (200, LLAMA)
    async with http.get(node.api_url + "/v1/models/nope") as reply:
        assert reply.status == 404
        assert (await reply.json())["error"]["message"] == "model 'nope:latest' not found"


# -- chat and generate ---------------------------------------------------------------------------------


async def test_a_streamed_chat_is_ollamas_ndjson_with_the_servers_counts(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    server.tokens_per_second = 100
    body = {
        "model": LLAMA,
        "messages": QUESTION,
        "options": {"num_predict": 12, "temperature": 0.2, "top_k": 5},
    }
    status, content_type, chunks = await post(http, node.api_url + "/api/chat", body)
    sent = upstream(server, "/v1/chat/completions")[-1]
    expected = await direct_text(http, server, {k: v for k, v in sent.items() if k != "stream_options"})

    assert (status, content_type) == (200, "application/x-ndjson")
    *pieces, final = chunks
    assert all(c["done"] is False and c["model"] == LLAMA for c in pieces)
    assert "".join(c["message"]["content"] for c in pieces) == expected["choices"][0]["message"]["content"]
    assert final["done"] is True
    assert final["done_reason"] == "length"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert (final["eval_count"], final["prompt_eval_count"]) == (
        expected["usage"]["completion_tokens"],
        expected["usage"]["prompt_tokens"],
    )
    # Twelve tokens at 100 tokens/s: generation took at least the eleven gaps between them.
    assert final["eval_duration"] >= 0.11e9
    assert final["total_duration"] >= final["eval_duration"] + final["prompt_eval_duration"] - 1e6
    # What the server was asked: the model's own id, a stream with its usage, Ollama's options.
    assert sent["model"] == LLAMA
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert (sent["max_tokens"], sent["temperature"], sent["top_k"]) == (12, 0.2, 5)
    assert sent["messages"] == QUESTION


async def test_a_whole_chat_is_asked_whole_and_answered_as_ollama_does(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {"model": f"{LLAMA}:latest", "messages": QUESTION, "stream": False}
    status, content_type, [reply] = await post(http, node.api_url + "/api/chat", body)
    sent = upstream(server, "/v1/chat/completions")[-1]
    expected = await direct_text(http, server, sent)

    assert (status, content_type) == (200, "application/json; charset=utf-8")
    assert sent["stream"] is False
    assert "stream_options" not in sent
    assert reply["model"] == f"{LLAMA}:latest"  # the name as the client sent it
    assert reply["message"] == {"role": "assistant", "content": expected["choices"][0]["message"]["content"]}
    assert (reply["done"], reply["done_reason"]) == (True, "stop")
    assert reply["eval_count"] == expected["usage"]["completion_tokens"]
    assert reply["prompt_eval_count"] == expected["usage"]["prompt_tokens"]


async def test_generate_uses_the_chat_template_unless_raw(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {"model": LLAMA, "prompt": "Tell a joke", "system": "Be brief", "stream": False}
    status, _, [templated] = await post(http, node.api_url + "/api/generate", body)
    assert status == 200
    assert upstream(server, "/v1/chat/completions")[-1]["messages"] == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Tell a joke"},
    ]
    assert templated["response"]
    assert templated["done"] is True

    status, _, chunks = await post(
        http, node.api_url + "/api/generate", {"model": LLAMA, "prompt": "Once", "raw": True}
    )
    assert status == 200
    assert upstream(server, "/v1/completions")[-1]["prompt"] == "Once"
    assert "".join(c["response"] for c in chunks)
    assert chunks[-1]["done"] is True
    assert chunks[-1]["eval_count"] == server.reply_tokens


async def test_an_empty_request_loads_or_unloads_without_asking_the_server(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    asked = len(server.requests)
    _, content_type, [loaded] = await post(http, node.api_url + "/api/generate", {"model": LLAMA})
    _, _, [unloaded] = await post(
        http, node.api_url + "/api/chat", {"model": LLAMA, "messages": [], "keep_alive": 0}
    )
    assert content_type == "application/json; charset=utf-8"
    assert (loaded["done_reason"], loaded["response"]) == ("load", "")
    assert unloaded["done_reason"] == "unload"
    assert [r.path for r in server.requests[asked:] if r.path != "/v1/models"] == []


async def test_tool_calls_come_back_whole_with_arguments_as_objects(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    body = {"model": LLAMA, "messages": question, "tools": [WEATHER_TOOL]}
    _, _, chunks = await post(http, node.api_url + "/api/chat", body)
    calls = [c["message"]["tool_calls"] for c in chunks if c["message"].get("tool_calls")]
    assert len(calls) == 1
    [[call]] = calls
    assert call["function"]["name"] == "get_weather"
    assert set(call["function"]["arguments"]) == {"city"}
    assert isinstance(call["function"]["arguments"]["city"], str)
    assert chunks[-1]["done"] is True

    _, _, [whole] = await post(http, node.api_url + "/api/chat", {**body, "stream": False})
    assert whole["message"]["tool_calls"][0]["function"] == call["function"]
    assert upstream(server, "/v1/chat/completions")[-1]["tools"] == [WEATHER_TOOL]

    # The tool's result goes back paired with the call it answers.
    followup = [
        *question,
        {"role": "assistant", "content": "", "tool_calls": [{"function": call["function"]}]},
        {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
    ]
    status, _, _ = await post(
        http, node.api_url + "/api/chat", {"model": LLAMA, "messages": followup, "stream": False}
    )
    assert status == 200
    assistant, tool = upstream(server, "/v1/chat/completions")[-1]["messages"][1:]
    [sent_call] = assistant["tool_calls"]
    assert sent_call["type"] == "function"
    assert json.loads(sent_call["function"]["arguments"]) == call["function"]["arguments"]
    assert tool == {"role": "tool", "content": "18 degrees", "tool_call_id": sent_call["id"]}


async def test_reasoning_arrives_as_thinking(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with (
        FakeOpenAI([LLAMA], flavour="vllm", reasoning=True, reply_tokens=10) as server,
        Node(node_settings(tmp_path, f"openai:{server.url}", name="desk"), environ={}) as node,
    ):
        await eventually(lambda: node.backend_state.reachable)
        _, _, chunks = await post(http, node.api_url + "/api/chat", {"model": LLAMA, "messages": QUESTION})
        _, _, [whole] = await post(
            http, node.api_url + "/api/chat", {"model": LLAMA, "messages": QUESTION, "stream": False}
        )
    thinking = "".join(c["message"].get("thinking", "") for c in chunks)
    content = "".join(c["message"]["content"] for c in chunks)
    assert thinking
    assert content
    assert (whole["message"]["thinking"], whole["message"]["content"]) == (thinking, content)


async def test_formats_and_images_are_translated(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    _, _, [reply] = await post(
        http,
        node.api_url + "/api/chat",
        {"model": LLAMA, "messages": QUESTION, "format": schema, "stream": False},
    )
    assert set(json.loads(reply["message"]["content"])) == {"colour"}
    assert upstream(server, "/v1/chat/completions")[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema},
    }
    await post(
        http,
        node.api_url + "/api/generate",
        {"model": LLAMA, "prompt": "List", "format": "json", "stream": False},
    )
    assert upstream(server, "/v1/chat/completions")[-1]["response_format"] == {"type": "json_object"}

    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(16)).decode()
    await post(
        http,
        node.api_url + "/api/generate",
        {"model": LLAMA, "prompt": "What is this?", "images": [png], "stream": False},
    )
    [message] = upstream(server, "/v1/chat/completions")[-1]["messages"]
    assert message["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]


# -- embeddings ----------------------------------------------------------------------------------------


async def test_embeddings_old_and_new(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    embedder = FakeModel("nomic-embed-text-v1.5", kind="embedding", dimensions=6)
    async with (
        FakeOpenAI([LLAMA, embedder], flavour="lmstudio") as server,
        Node(node_settings(tmp_path, f"openai:{server.url}", name="desk"), environ={}) as node,
    ):
        await eventually(lambda: node.backend_state.reachable)
        async with ollama.AsyncClient(host=node.api_url) as client:
            new = await client.embed(model="nomic-embed-text-v1.5", input=["one", "two words"])
            old = await client.embeddings(model="nomic-embed-text-v1.5", prompt="one")
            empty = await client.embed(model="nomic-embed-text-v1.5", input=[])
    assert len(new.embeddings) == 2
    assert all(len(vector) == 6 for vector in new.embeddings)
    assert new.embeddings[0] != new.embeddings[1]
    assert list(old.embedding) == list(new.embeddings[0])
    assert (new.prompt_eval_count or 0) >= 3
    assert empty.embeddings == []
    assert upstream(server, "/v1/embeddings")[0]["input"] == ["one", "two words"]


async def test_a_model_that_cannot_embed_says_so(node: Node, http: aiohttp.ClientSession) -> None:
    # llama-server started without --embeddings refuses; its words reach the client as Ollama's error.
    status, _, [reply] = await post(http, node.api_url + "/api/embed", {"model": LLAMA, "input": "hi"})
    assert status >= 400
    assert set(reply) == {"error"}
    assert "embedding" in reply["error"].lower()


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/chat", {"model": "nope", "messages": QUESTION}, 404, "model 'nope' not found"),
        ("/api/chat", {"messages": QUESTION}, 400, "model is required"),
        ("/api/generate", {"model": "nope", "prompt": "hi"}, 404, "model 'nope' not found"),
        ("/api/embed", {"model": "nope", "input": "hi"}, 404, 'model "nope" not found, try pulling it first'),
        ("/api/show", {"model": "nope"}, 404, "model 'nope:latest' not found"),
        (
            "/api/chat",
            {"model": LLAMA, "messages": "hi"},
            400,
            "messages must be a list of {role, content} objects",
        ),
        (
            "/api/chat",
            {"model": LLAMA, "messages": [{"role": "user", "content": 3}]},
            400,
            "a message's content must be a string",
        ),
    ],
)
async def test_bad_requests_get_ollamas_errors(
    node: Node,
    server: FakeOpenAI,
    http: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any],
    status: int,
    error: str,
) -> None:
    asked = len([r for r in server.requests if r.path != "/v1/models"])
    assert await post(http, node.api_url + path, body) == (
        status,
        "application/json; charset=utf-8",
        [{"error": error}],
    )
    assert len([r for r in server.requests if r.path != "/v1/models"]) == asked


async def test_model_management_is_refused_with_a_reason(node: Node, http: aiohttp.ClientSession) -> None:
    status, _, [reply] = await post(http, node.api_url + "/api/pull", {"model": LLAMA})
    assert status == 501
    assert "cannot ask to pull" in reply["error"]


@pytest.mark.parametrize("flavour", ["llama.cpp", "vllm", "lmstudio"])
async def test_the_servers_errors_keep_their_status_and_words(
    flavour: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        FakeOpenAI([LLAMA], flavour=flavour) as server,  # type: ignore[arg-type]
        Node(node_settings(tmp_path, f"openai:{server.url}", name="desk"), environ={}) as node,
    ):
        await eventually(lambda: node.backend_state.reachable)
        server.fail_next(500, "the GPU caught fire", paths=["/v1/chat/completions"])
        result = await post(http, node.api_url + "/api/chat", {"model": LLAMA, "messages": QUESTION})
    assert result == (500, "application/json; charset=utf-8", [{"error": "the GPU caught fire"}])


async def test_a_server_that_fails_mid_stream_ends_it_with_an_error_line(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    server.error_after(3, "the KV cache is full", paths=["/v1/chat/completions"])
    status, _, chunks = await post(http, node.api_url + "/api/chat", {"model": LLAMA, "messages": QUESTION})
    assert status == 200
    assert [c.get("error") for c in chunks[-1:]] == ["the KV cache is full"]
    assert len(chunks) == 4

    server.break_after(3, paths=["/v1/chat/completions"])
    status, _, chunks = await post(http, node.api_url + "/api/chat", {"model": LLAMA, "messages": QUESTION})
    assert status == 200
    assert len(chunks) == 4
    assert "broke off its reply" in chunks[-1]["error"]


async def test_a_server_that_is_gone_is_a_502_that_says_so(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    await server.close()
    status, _, [reply] = await post(http, node.api_url + "/api/chat", {"model": LLAMA, "messages": QUESTION})
    assert status == 502
    assert reply["error"].startswith(f"cannot reach desk's backend at {server.url}")


# -- /v1 passes through --------------------------------------------------------------------------------


async def test_v1_requests_pass_through_with_the_name_mapped_both_ways(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    body = {"model": f"{LLAMA}:latest", "messages": QUESTION, "max_tokens": 5}
    async with http.post(node.api_url + "/v1/chat/completions", json=body) as reply:
        whole = await reply.json()
    async with http.post(node.api_url + "/v1/chat/completions", json={**body, "stream": True}) as reply:
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in (await reply.text()).split("\n\n") if line.startswith("data: {")]
    assert [r["model"] for r in upstream(server, "/v1/chat/completions")[-2:]] == [LLAMA, LLAMA]
    assert whole["model"] == f"{LLAMA}:latest"
    assert whole["usage"]["completion_tokens"] == 5
    assert {json.loads(e.removeprefix("data: "))["model"] for e in events} == {f"{LLAMA}:latest"}

    async with http.post(node.api_url + "/v1/chat/completions", json={**body, "model": "nope"}) as reply:
        assert reply.status == 404
        assert (await reply.json())["error"]["message"] == "model 'nope' not found"


# -- what the node asks of the server ------------------------------------------------------------------


async def test_no_listing_is_asked_for_while_the_server_works_for_the_node(
    node: Node, server: FakeOpenAI, http: aiohttp.ClientSession
) -> None:
    # llama-cpp-python's server ends a stream when any other request arrives.
    server.tokens_per_second = 40
    body = {"model": LLAMA, "messages": QUESTION, "options": {"num_predict": 20}}
    async with http.post(node.api_url + "/api/chat", json=body) as reply:
        await reply.content.readline()
        listed_before = len(upstream(server, "/v1/models"))
        async with http.get(node.api_url + "/api/tags") as tags:
            assert [m["name"] for m in (await tags.json())["models"]] == [f"{LLAMA}:latest"]
        await node.backend.probe()
        listed_during = len(upstream(server, "/v1/models"))
        lines = [line async for line in reply.content]
    assert json.loads(lines[-1])["done"] is True
    assert listed_during == listed_before


async def test_auto_finds_the_first_usual_server_that_answers(unused_tcp_port_factory: Any) -> None:
    ollama_port, lmstudio_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    candidates = (("ollama", ollama_port, "Ollama"), ("openai", lmstudio_port, "LM Studio"))
    backend = AutoBackend(connect_timeout_s=2.0, name="desk's backend", api_port=11435, candidates=candidates)
    lmstudio = FakeOpenAI([LLAMA], flavour="lmstudio", port=lmstudio_port)
    local_ollama = FakeOllama(["llama3:latest"], port=ollama_port)
    try:
        nothing = await backend.probe()
        assert (nothing.reachable, nothing.kind, backend.kind) == (False, "auto", "auto")
        assert f"Ollama on http://127.0.0.1:{ollama_port}" in (nothing.error or "")
        assert f"LM Studio on http://127.0.0.1:{lmstudio_port}" in (nothing.error or "")

        await lmstudio.start()
        found = await backend.probe()
        assert (found.reachable, found.kind, found.url) == (True, "openai", lmstudio.url)
        assert [m.name for m in found.installed] == [f"{LLAMA}:latest"]
        # Ollama coming up later does not displace the server in use while that one answers.
        await local_ollama.start()
        assert (await backend.probe()).kind == "openai"

        await lmstudio.close()
        moved = await backend.probe()
        assert (moved.reachable, moved.kind, moved.url) == (True, "ollama", local_ollama.url)
        async with backend.request("GET", "/api/tags", {}, None) as reply:
            assert reply.status == 200
            assert [m["name"] for m in json.loads(await reply.read())["models"]] == ["llama3:latest"]
    finally:
        await lmstudio.close()
        await local_ollama.close()
        backend.close()


async def test_a_server_with_an_api_key_is_used_with_the_key_the_node_was_given(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with FakeOpenAI([LLAMA], flavour="vllm", api_key="s3cret") as server:
        settings = node_settings(tmp_path, f"openai:{server.url}", name="desk")
        async with Node(settings, environ={}) as keyless:
            # Without it, the node says what the server wants and where to give it.
            await eventually(lambda: "INFERHUB_BACKEND_API_KEY" in (keyless.backend_state.error or ""))
        async with Node(settings, environ={"INFERHUB_BACKEND_API_KEY": "s3cret"}) as node:
            await eventually(lambda: node.backend_state.reachable)
            status, _, [reply] = await post(
                http, node.api_url + "/api/chat", {"model": LLAMA, "messages": QUESTION, "stream": False}
            )
            assert status == 200
            assert reply["done"] is True
            # A client's own bearer token (the OpenAI SDK sends one) gives way to the server's key.
            headers = {"Authorization": "Bearer ollama"}
            body = {"model": LLAMA, "messages": QUESTION, "max_tokens": 3}
            async with http.post(node.api_url + "/v1/chat/completions", json=body, headers=headers) as answer:
                assert answer.status == 200
    sent = {r.headers.get("Authorization") for r in server.requests if r.path != "/v1/models"}
    assert sent == {"Bearer s3cret"}
