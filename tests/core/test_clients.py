"""The official clients work unchanged through a node: every call is run direct and through it.

Each test runs twice, against the fake Ollama itself ("direct") and against a node relaying to
it ("node"), so the node is held to exactly what the clients see from Ollama.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from inferhub_desktop.core import Node
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.support import LoopThread, node_settings

MODELS = (
    FakeModel("llama3:latest"),
    FakeModel(
        "nomic-embed-text:latest", family="nomic-bert", parameter_size="137M", capabilities=("embedding",)
    ),
)


@dataclasses.dataclass
class Servers:
    fake: FakeOllama
    node: Node


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with LoopThread() as loop:
        fake = FakeOllama(MODELS, loaded=["llama3:latest"])
        loop.run(fake.start())
        node = Node(node_settings(tmp_path, fake.url), environ={})
        loop.run(node.start())
        try:
            yield Servers(fake, node)
        finally:
            loop.run(node.close())
            loop.run(fake.close())


@pytest.fixture(params=["direct", "node"])
def url(request: pytest.FixtureRequest, servers: Servers) -> str:
    return servers.fake.url if request.param == "direct" else servers.node.api_url


@pytest.fixture
def client(url: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=url) as c:
        yield c


@pytest.fixture
def oai(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="ollama", max_retries=0) as c:
        yield c


# --- the ollama client ---------------------------------------------------------------------------


def test_generate(client: ollama.Client) -> None:
    reply = client.generate(model="llama3", prompt="why is the sky blue?", stream=False)
    assert (reply.model, reply.done) == ("llama3", True)
    assert reply.response
    assert reply.eval_count
    assert reply.eval_count > 0
    assert reply.done_reason in ("stop", "length")


def test_generate_streamed(client: ollama.Client) -> None:
    parts = list(client.generate(model="llama3", prompt="why is the sky blue?", stream=True))
    assert len(parts) >= 3
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.response for p in parts).strip()
    assert parts[-1].eval_count == sum(1 for p in parts[:-1] if p.response)


def test_chat(client: ollama.Client) -> None:
    reply = client.chat(model="llama3", messages=[{"role": "user", "content": "hello"}], stream=False)
    assert reply.message.role == "assistant"
    assert reply.message.content
    assert reply.done
    assert reply.prompt_eval_count


def test_chat_streamed(client: ollama.Client) -> None:
    parts = list(client.chat(model="llama3", messages=[{"role": "user", "content": "hello"}], stream=True))
    assert all(p.message.role == "assistant" for p in parts)
    assert parts[-1].done
    assert not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts).strip()


def test_embed(client: ollama.Client) -> None:
    reply = client.embed(model="nomic-embed-text", input=["first", "second"])
    assert len(reply.embeddings) == 2
    assert len(reply.embeddings[0]) == 8
    assert reply.embeddings[0] != reply.embeddings[1]


def test_embeddings(client: ollama.Client) -> None:
    reply = client.embeddings(model="nomic-embed-text", prompt="first")
    assert len(reply.embedding) == 8


def test_list_show_ps(client: ollama.Client) -> None:
    assert {m.model for m in client.list().models} == {"llama3:latest", "nomic-embed-text:latest"}
    shown = client.show("llama3")
    assert shown.details
    assert shown.details.family == "llama"
    assert shown.capabilities
    assert "completion" in shown.capabilities
    assert [m.model for m in client.ps().models] == ["llama3:latest"]


@pytest.mark.parametrize("stream", [False, True])
def test_pull_and_push(client: ollama.Client, stream: bool) -> None:
    pulled = client.pull("llama3", stream=stream)
    statuses = [p.status for p in pulled] if stream else [pulled.status]
    assert statuses[-1] == "success"
    if stream:
        assert statuses[0] == "pulling manifest"
        assert len(statuses) > 2
    pushed = client.push("llama3", stream=stream)
    assert (list(pushed)[-1] if stream else pushed).status == "success"


def test_pull_of_an_unknown_model_fails(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("no-such-model", stream=False)
    assert caught.value.status_code == 500
    with pytest.raises(ollama.ResponseError) as caught:
        list(client.pull("no-such-model", stream=True))
    assert caught.value.status_code == -1
    assert "file does not exist" in caught.value.error


@pytest.mark.parametrize("stream", [False, True])
def test_create_copy_delete(client: ollama.Client, stream: bool) -> None:
    created = client.create(model="terse", from_="llama3", system="Answer in one word.", stream=stream)
    assert (list(created)[-1] if stream else created).status == "success"
    assert client.copy("terse", "terse-copy").status == "success"
    assert {"terse:latest", "terse-copy:latest"} <= {m.model for m in client.list().models}
    assert client.delete("terse-copy").status == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete("terse-copy")
    assert caught.value.status_code == 404


def test_create_from_an_uploaded_blob(client: ollama.Client, tmp_path: Path) -> None:
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF" + bytes(range(256)) * 4096)
    digest = client.create_blob(weights)
    assert digest.startswith("sha256:")
    created = client.create(model="from-blob", files={"model.gguf": digest}, stream=False)
    assert created.status == "success"
    assert "from-blob:latest" in {m.model for m in client.list().models}


def test_unknown_model_is_404_and_raised_lazily_when_streaming(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.generate(model="no-such-model", prompt="hi", stream=False)
    assert caught.value.status_code == 404
    assert "no-such-model" in caught.value.error
    parts = client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(ollama.ResponseError) as caught:
        next(parts)
    assert caught.value.status_code == 404


def test_an_error_after_streaming_began_has_status_minus_1(client: ollama.Client, servers: Servers) -> None:
    servers.fake.error_after(2, "an error was encountered while running the model")
    parts = client.generate(model="llama3", prompt="hi", stream=True)
    assert not next(parts).done
    assert not next(parts).done
    with pytest.raises(ollama.ResponseError) as caught:
        next(parts)
    assert (caught.value.status_code, caught.value.error) == (
        -1,
        "an error was encountered while running the model",
    )


def test_bad_json_head_and_foreign_origin(url: str) -> None:
    bad = httpx.post(url + "/api/generate", content=b"{bad")
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("invalid character 'b' looking for beginning of ")
    head = httpx.head(url + "/")
    assert (head.status_code, head.content) == (200, b"")
    foreign = httpx.get(url + "/api/tags", headers={"Origin": "https://evil.example"})
    assert (foreign.status_code, foreign.content) == (403, b"")


# --- the OpenAI SDK ------------------------------------------------------------------------------


def test_openai_chat_completion(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "hello"}])
    assert reply.object == "chat.completion"
    assert reply.model == "llama3"
    assert reply.choices[0].message.content
    assert reply.usage
    assert reply.usage.completion_tokens > 0


def test_openai_chat_completion_streamed(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="llama3",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == []
    assert chunks[-1].usage
    assert chunks[-1].usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_openai_completion_embeddings_and_models(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="llama3", prompt="once upon a time")
    assert completion.object == "text_completion"
    assert completion.choices[0].text
    vectors = oai.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert [d.index for d in vectors.data] == [0, 1]
    assert len(vectors.data[0].embedding) == 8
    assert {m.id for m in oai.models.list()} == {"llama3:latest", "nomic-embed-text:latest"}
    assert oai.models.retrieve("llama3").id == "llama3"


def test_openai_unknown_model(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
