"""Check that the fake Ollama's knobs work and that it answers the way Ollama does."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.ollama import FakeModel, FakeOllama
from tests.fakes.ollama.__main__ import _fake, _parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = {"model": "llama3", "prompt": "why is the sky blue"}
LONG = {**PROMPT, "options": {"num_predict": 1000}}  # streams until its client leaves
BUSY = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    """Serve a fake with a chat model and an embedding model."""
    models: list[str | FakeModel] = [
        "llama3:latest",
        FakeModel("nomic-embed-text", capabilities=("embedding",)),
    ]
    async with FakeOllama(models) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """Open a raw HTTP client."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as client:
        yield client


async def read_lines(response: aiohttp.ClientResponse) -> list[Any]:
    """Read an NDJSON body to the end."""
    return [json.loads(line) async for line in response.content]


async def collect_lines(response: aiohttp.ClientResponse, sink: list[bytes]) -> None:
    """Append raw body lines to sink as they arrive, so they survive a broken stream."""
    async for line in response.content:
        sink.append(line)


async def stream_events(
    session: aiohttp.ClientSession, url: str, body: Any, tag: str, events: list[tuple[str, bool]]
) -> Any:
    """Stream a generate, appending (tag, done) to events as each line arrives; return the last line."""
    async with session.post(f"{url}/api/generate", json=body) as response:
        async for raw in response.content:
            line = json.loads(raw)
            events.append((tag, line["done"]))
    return line


async def generate(session: aiohttp.ClientSession, url: str, body: Any) -> Any:
    """Post a non-streamed generate and return its reply."""
    async with session.post(f"{url}/api/generate", json={**body, "stream": False}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def ps_names(session: aiohttp.ClientSession, url: str) -> list[str]:
    """Return the names /api/ps lists, sorted."""
    async with session.get(f"{url}/api/ps") as response:
        return sorted(entry["name"] for entry in (await response.json())["models"])


async def wait_for(condition: Any, limit_s: float = 3.0) -> None:
    """Poll until condition() is true."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- knobs ------------------------------------------------------------------------------------------


async def test_tokens_per_second_paces_the_stream(fake: FakeOllama, session: aiohttp.ClientSession) -> None:
    fake.tokens_per_second = 50.0
    started = time.monotonic()
    body = {**PROMPT, "options": {"num_predict": 10}}
    async with session.post(f"{fake.url}/api/generate", json=body) as response:
        lines = await read_lines(response)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.15  # 10 tokens at 50/s take 0.2 s
    assert [line["done"] for line in lines] == [False] * 10 + [True]
    assert lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 10
    assert lines[-1]["eval_duration"] >= 0.1e9


async def test_load_delay_applies_once_then_model_is_loaded(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.load_delay_s = 0.3
    async with session.get(f"{fake.url}/api/ps") as response:
        assert (await response.json())["models"] == []
    first_started = time.monotonic()
    async with session.post(f"{fake.url}/api/generate", json={**PROMPT, "stream": False}) as response:
        first = await response.json()
    assert time.monotonic() - first_started >= 0.3
    assert first["load_duration"] >= 0.3e9
    async with session.get(f"{fake.url}/api/ps") as response:
        ps = (await response.json())["models"]
    assert [entry["name"] for entry in ps] == ["llama3:latest"]
    assert ps[0]["size_vram"] == ps[0]["size"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", ps[0]["expires_at"])
    async with session.post(f"{fake.url}/api/generate", json={**PROMPT, "stream": False}) as response:
        second = await response.json()
    assert second["load_duration"] < 0.1e9


async def test_fail_next_answers_ollama_errors_before_any_byte(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.fail_next(503, "server busy", count=2)
    for _ in range(2):
        async with session.post(f"{fake.url}/api/generate", json=PROMPT) as response:
            assert response.status == 503
            assert response.content_type == "application/json"
            assert await response.json() == {"error": "server busy"}
    async with session.post(f"{fake.url}/api/generate", json=PROMPT) as response:
        assert response.status == 200
        assert (await read_lines(response))[-1]["done"] is True


async def test_fail_next_spares_liveness_and_speaks_openai_on_v1(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.fail_next(500, "llama runner process has terminated")
    async with session.get(f"{fake.url}/api/version") as response:
        assert response.status == 200
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(f"{fake.url}/v1/chat/completions", json=body) as response:
        assert response.status == 500
        error = (await response.json())["error"]
    assert error == {
        "message": "llama runner process has terminated",
        "type": "api_error",
        "param": None,
        "code": None,
    }


async def test_fail_next_can_target_paths(fake: FakeOllama, session: aiohttp.ClientSession) -> None:
    fake.fail_next(500, "boom", paths=["/api/chat"])
    async with session.get(f"{fake.url}/api/tags") as response:
        assert response.status == 200
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    async with session.post(f"{fake.url}/api/chat", json=body) as response:
        assert response.status == 500


async def test_drop_after_aborts_the_connection_mid_stream(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.drop_after(3)
    received: list[bytes] = []
    async with session.post(f"{fake.url}/api/generate", json=PROMPT) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await collect_lines(response, received)
    assert len(received) == 3
    assert all(json.loads(line)["done"] is False for line in received)
    assert fake.cancelled == 0  # the server cut the stream; no client went away
    async with session.post(f"{fake.url}/api/generate", json=PROMPT) as response:
        assert (await read_lines(response))[-1]["done"] is True


async def test_drop_after_zero_closes_before_the_status_line(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.drop_after(0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with session.post(f"{fake.url}/api/chat", json={**PROMPT, "messages": [{"content": "x"}]}):
            pass


async def test_error_after_writes_an_error_line_without_done(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.error_after(2, "CUDA error: out of memory")
    async with session.post(f"{fake.url}/api/generate", json=PROMPT) as response:
        assert response.status == 200
        lines = await read_lines(response)
    assert len(lines) == 3
    assert [line.get("done") for line in lines[:2]] == [False, False]
    assert lines[2] == {"error": "CUDA error: out of memory"}


async def test_error_after_ends_an_sse_stream_without_done_marker(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.error_after(1)
    body = {"model": "llama3", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(f"{fake.url}/v1/chat/completions", json=body) as response:
        text = (await response.read()).decode()
    events = [event for event in text.split("\n\n") if event]
    assert len(events) == 1
    assert "[DONE]" not in text


async def test_cancelled_counts_a_client_that_leaves_mid_stream(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.tokens_per_second = 20.0
    body = {**PROMPT, "options": {"num_predict": 100}}
    async with session.post(f"{fake.url}/api/generate", json=body) as response:
        first = json.loads(await response.content.readline())
        assert first["done"] is False
        assert fake.active == 1
        response.close()
    await wait_for(lambda: fake.cancelled == 1)
    await wait_for(lambda: fake.active == 0)


async def test_cancelled_counts_a_client_that_leaves_while_loading(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.load_delay_s = 0.5
    request = asyncio.ensure_future(session.post(f"{fake.url}/api/generate", json=PROMPT))
    await wait_for(lambda: fake.active == 1)
    request.cancel()
    await wait_for(lambda: fake.cancelled == 1)
    # The load itself carries on, as Ollama's scheduler does.
    await wait_for(lambda: "llama3:latest" in fake.loaded)


async def test_requests_are_recorded_as_received(fake: FakeOllama, session: aiohttp.ClientSession) -> None:
    headers = {"Authorization": "Bearer ollama", "User-Agent": "ollama-python/0.6.3"}
    async with session.post(f"{fake.url}/api/show?verbose=1", json={"name": "llama3"}, headers=headers):
        pass
    recorded = fake.requests[-1]
    assert (recorded.method, recorded.path, recorded.query_string) == ("POST", "/api/show", "verbose=1")
    assert recorded.headers["Authorization"] == "Bearer ollama"
    assert json.loads(recorded.body) == {"name": "llama3"}


# -- scheduler limits -------------------------------------------------------------------------------


async def test_num_parallel_makes_a_request_wait_for_the_slot(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(num_parallel=1, tokens_per_second=20.0) as fake:
        events: list[tuple[str, bool]] = []
        body = {**PROMPT, "options": {"num_predict": 4}}
        first = asyncio.ensure_future(stream_events(session, fake.url, body, "first", events))
        await wait_for(lambda: events)
        second = asyncio.ensure_future(stream_events(session, fake.url, body, "second", events))
        await wait_for(lambda: fake.waiting == 1)
        assert fake.active == 2
        _, final = await asyncio.gather(first, second)
    expected = [(tag, done) for tag in ("first", "second") for done in (False, False, False, False, True)]
    assert events == expected
    # As in Ollama, the wait for a slot shows in total_duration alone.
    spent = final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    assert final["total_duration"] > spent


async def test_num_parallel_limits_each_model_on_its_own(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(["llama3", "mistral"], num_parallel=1, tokens_per_second=20.0) as fake:
        url = f"{fake.url}/api/generate"
        async with (
            session.post(url, json=LONG) as llama3,
            session.post(url, json={**LONG, "model": "mistral"}) as mistral,
        ):
            for response in (llama3, mistral):
                assert json.loads(await response.content.readline())["done"] is False
            assert (fake.active, fake.waiting) == (2, 0)
            llama3.close()
            mistral.close()


async def test_clients_that_leave_free_their_slot_or_place_in_line(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOllama(num_parallel=1, tokens_per_second=20.0) as fake:
        async with session.post(f"{fake.url}/api/generate", json=LONG) as response:
            assert json.loads(await response.content.readline())["done"] is False
            gone = asyncio.ensure_future(generate(session, fake.url, PROMPT))
            await wait_for(lambda: fake.waiting == 1)
            last = asyncio.ensure_future(
                generate(session, fake.url, {**PROMPT, "options": {"num_predict": 1}})
            )
            await wait_for(lambda: fake.waiting == 2)
            gone.cancel()
            await wait_for(lambda: fake.cancelled == 1 and fake.waiting == 1)
            response.close()
        assert (await last)["done"] is True
        assert fake.cancelled == 2
        await wait_for(lambda: fake.active == 0)
        assert fake.waiting == 0


async def test_max_loaded_models_unloads_the_least_recently_used_idle_model(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOllama(["llama3", "mistral", "qwen3"], max_loaded_models=2) as fake:
        for name in ("llama3", "mistral", "llama3", "qwen3"):
            async with session.post(f"{fake.url}/api/generate", json={"model": name}) as response:
                assert (await response.json())["done_reason"] == "load"
        assert await ps_names(session, fake.url) == ["llama3:latest", "qwen3:latest"]


async def test_a_load_waits_while_every_loaded_model_is_busy_and_the_queue_is_bounded(
    session: aiohttp.ClientSession,
) -> None:
    models = ["llama3", "mistral", "qwen3", "phi3"]
    async with FakeOllama(models, max_loaded_models=1, max_queue=1, tokens_per_second=20.0) as fake:
        quick = {"prompt": "hi", "options": {"num_predict": 1}}
        async with session.post(f"{fake.url}/api/generate", json=LONG) as response:
            assert json.loads(await response.content.readline())["done"] is False
            # One pending load is in the scheduler's hands and max_queue more wait behind it.
            queued = []
            for name in ("mistral", "qwen3"):
                queued.append(asyncio.ensure_future(generate(session, fake.url, {**quick, "model": name})))
                await wait_for(lambda: fake.waiting == len(queued))
            queued_ns = time.perf_counter_ns()
            async with session.post(f"{fake.url}/api/generate", json={**quick, "model": "phi3"}) as refused:
                assert refused.status == 503
                assert refused.headers["Content-Type"] == "application/json; charset=utf-8"
                assert await refused.read() == BUSY
            assert await ps_names(session, fake.url) == ["llama3:latest"]
            left_ns = time.perf_counter_ns()
            response.close()
        mistral, qwen3 = await asyncio.gather(*queued)
        # The time queued for room to load counts in load_duration, as Ollama's does.
        assert mistral["load_duration"] >= left_ns - queued_ns
        assert qwen3["done"] is True
        assert await ps_names(session, fake.url) == ["qwen3:latest"]


# -- protocol fidelity ------------------------------------------------------------------------------


async def test_each_line_leaves_as_its_own_http_chunk(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    chunks: list[bytes] = []
    pending = b""
    async with session.post(
        f"{fake.url}/api/chat", json={**PROMPT, "messages": [{"content": "x"}]}
    ) as response:
        assert response.headers["Content-Type"] == "application/x-ndjson"
        async for data, end_of_chunk in response.content.iter_chunks():
            pending += data
            if end_of_chunk:
                chunks.append(pending)
                pending = b""
    assert len(chunks) == 9  # 8 tokens (default_num_predict) and the done line
    assert all(chunk.endswith(b"\n") and chunk.count(b"\n") == 1 for chunk in chunks)
    assert all(json.loads(chunk)["message"]["role"] == "assistant" for chunk in chunks)


async def test_unknown_path_and_wrong_method_answer_like_gin(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{fake.url}/api/nope") as response:
        assert (response.status, response.headers["Content-Type"]) == (404, "text/plain")
        assert await response.text() == "404 page not found"
    async with session.get(f"{fake.url}/api/generate") as response:
        assert (response.status, response.headers["Content-Type"]) == (405, "text/plain")
        assert await response.text() == "405 method not allowed"
    async with session.get(f"{fake.url}/v1/models/library/llama3") as response:
        assert response.status == 404


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example.com", 403),
        ("8.8.8.8:11434", 403),
        ("localhost:11434", 200),
        ("ollama.internal", 200),
        ("box.local:11434", 200),
        ("192.168.1.20:11434", 200),
        ("[::1]:11434", 200),
    ],
)
async def test_host_check_on_loopback(
    fake: FakeOllama, session: aiohttp.ClientSession, host: str, status: int
) -> None:
    async with session.get(f"{fake.url}/api/tags", headers={"Host": host}) as response:
        assert response.status == status
        if status == 403:
            assert await response.read() == b""


async def test_cors_rejects_foreign_origins_and_answers_preflight(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    async with session.get(
        f"{fake.url}/api/tags", headers={"Origin": "https://evil.example.com"}
    ) as response:
        assert response.status == 403
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    async with session.options(f"{fake.url}/api/chat", headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert "POST" in response.headers["Access-Control-Allow-Methods"]


async def test_root_and_version(fake: FakeOllama, session: aiohttp.ClientSession) -> None:
    async with session.head(f"{fake.url}/") as response:
        assert (response.status, response.headers["Content-Type"]) == (200, "text/plain; charset=utf-8")
    async with session.get(f"{fake.url}/api/version") as response:
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await response.json() == {"version": "0.12.10"}


async def test_load_and_unload_reply_with_one_json_object(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    async with session.post(f"{fake.url}/api/generate", json={"model": "LLAMA3:Latest"}) as response:
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        loaded = await response.json()
    assert (loaded["model"], loaded["done"], loaded["done_reason"]) == ("LLAMA3:Latest", True, "load")
    assert "llama3:latest" in fake.loaded
    unload = {"model": "llama3", "messages": [], "keep_alive": 0}
    async with session.post(f"{fake.url}/api/chat", json=unload) as response:
        reply = await response.json()
    assert (reply["done_reason"], reply["message"]) == ("unload", {"role": "assistant", "content": ""})
    assert fake.loaded == {}


async def test_errors_are_worded_per_endpoint(fake: FakeOllama, session: aiohttp.ClientSession) -> None:
    embedder, llama = {"model": "nomic-embed-text"}, {"model": "llama3"}
    cases = [
        ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
        ("/api/chat", {"model": "", "messages": []}, 400, "model is required"),
        ("/api/embed", {"model": "nope", "input": "x"}, 404, 'model "nope" not found, try pulling it first'),
        ("/api/show", {"model": "nope"}, 404, "model 'nope:latest' not found"),
        ("/api/generate", {**embedder, "prompt": "x"}, 400, '"nomic-embed-text" does not support generate'),
        ("/api/chat", {**llama, "think": True, "messages": []}, 400, '"llama3" does not support thinking'),
        ("/api/generate", {**llama, "keep_alive": "-1"}, 400, 'time: missing unit in duration "-1"'),
    ]
    for path, body, status, message in cases:
        async with session.post(f"{fake.url}{path}", json=body) as response:
            assert (response.status, await response.json()) == (status, {"error": message}), path


async def test_pull_of_unknown_model_streams_then_fails(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    async with session.post(f"{fake.url}/api/pull", json={"model": "nope"}) as response:
        assert response.status == 200
        lines = await read_lines(response)
    assert lines == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    async with session.post(f"{fake.url}/api/pull", json={"model": "nope", "stream": False}) as response:
        assert response.status == 500


async def test_pull_from_registry_installs_the_model(session: aiohttp.ClientSession) -> None:
    async with FakeOllama(registry=["mistral:7b"]) as fake:
        async with session.post(f"{fake.url}/api/pull", json={"model": "mistral:7b"}) as response:
            lines = await read_lines(response)
        assert lines[0] == {"status": "pulling manifest"}
        assert lines[-1] == {"status": "success"}
        assert "mistral:7b" in fake.models


async def test_blob_upload_verifies_the_digest(fake: FakeOllama, session: aiohttp.ClientSession) -> None:
    data = b"gguf" * 300_000

    async def upload() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    async with session.head(f"{fake.url}/api/blobs/{digest}") as response:
        assert response.status == 404
    async with session.post(f"{fake.url}/api/blobs/{digest}", data=upload()) as response:
        assert response.status == 201
    assert fake.blobs[digest] == len(data)
    async with session.post(f"{fake.url}/api/blobs/{digest}", data=b"already there") as response:
        assert response.status == 200
    wrong = "sha256:" + "0" * 64
    async with session.post(f"{fake.url}/api/blobs/{wrong}", data=b"other") as response:
        assert response.status == 400
        assert (await response.json())["error"].startswith(
            f'digest mismatch, expected "{wrong}", got "sha256:'
        )
    create = {"model": "mine", "files": {"model.gguf": digest}, "stream": False}
    async with session.post(f"{fake.url}/api/create", json=create) as response:
        assert await response.json() == {"status": "success"}
    assert fake.models["mine:latest"].size == len(data)


async def test_openai_stream_order(fake: FakeOllama, session: aiohttp.ClientSession) -> None:
    body = {
        "model": "llama3",
        "stream": True,
        "max_tokens": 3,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with session.post(f"{fake.url}/v1/chat/completions", json=body) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [event for event in (await response.read()).decode().split("\n\n") if event]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[:4]] == [None, None, None, "length"]
    assert chunks[3]["choices"][0]["delta"] == {}
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"]["completion_tokens"] == 3


# -- CLI --------------------------------------------------------------------------------------------


def test_cli_flags_set_the_scheduler_limits() -> None:
    limited = _fake(_parse_args(["--parallel", "2", "--max-loaded", "1", "--max-queue", "3"]))
    assert (limited.num_parallel, limited.max_loaded_models, limited.max_queue) == (2, 1, 3)
    default = _fake(_parse_args([]))
    assert (default.num_parallel, default.max_loaded_models, default.max_queue) == (None, None, 512)


async def test_cli_prints_listening_and_exits_cleanly_on_sigterm(session: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.ollama",
        "--port",
        "0",
        "--model",
        "llama3:latest",
        "--model",
        "nomic-embed-text:latest=embedding",
        "--loaded",
        "llama3:latest",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        # Without PYTHONUNBUFFERED a piped stdout is block-buffered: the fake must flush LISTENING itself.
        env={name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"},
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=15)).decode()
        match = re.fullmatch(r"LISTENING (http://127\.0\.0\.1:\d+)\n", line)
        assert match is not None, line
        async with session.get(f"{match.group(1)}/api/ps") as response:
            assert [m["name"] for m in (await response.json())["models"]] == ["llama3:latest"]
        async with session.post(f"{match.group(1)}/api/show", json={"model": "nomic-embed-text"}) as response:
            assert (await response.json())["capabilities"] == ["embedding"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        assert await process.stdout.read() == b""
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_messages_answer_as_ollamas_anthropic_api_does(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    body = {
        "model": "llama3",
        "max_tokens": 5,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with session.post(fake.url + "/v1/messages", json=body) as reply:
        whole = await reply.json()
    assert whole["type"] == "message"
    assert whole["model"] == "llama3"
    assert whole["stop_reason"] == "max_tokens"
    assert whole["usage"]["output_tokens"] == 5
    [text] = whole["content"]
    assert text["type"] == "text"
    async with session.post(fake.url + "/v1/messages", json={**body, "stream": True}) as reply:
        assert reply.headers["Content-Type"] == "text/event-stream"
        frames = (await reply.text()).strip().split("\n\n")
    events = [
        (f.split("\n")[0].removeprefix("event: "), json.loads(f.split("\n")[1].removeprefix("data: ")))
        for f in frames
    ]
    assert [name for name, _ in events][:2] == ["message_start", "content_block_start"]
    assert [name for name, _ in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    streamed = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert streamed == text["text"]
    # The native chat it went through: system first, max_tokens as num_predict.
    native = [r.json for r in fake.requests if r.path == "/v1/messages"][-1]
    assert native["max_tokens"] == 5
    async with session.post(fake.url + "/v1/messages/count_tokens", json=body) as reply:
        assert await reply.json() == {"input_tokens": (len("Be brief.") + len("user") + 2) // 4}
    async with session.post(fake.url + "/v1/messages", json={**body, "model": "nope"}) as reply:
        error = (reply.status, await reply.json())
    assert error[0] == 404
    assert error[1]["type"] == "error"
    assert error[1]["error"] == {"type": "not_found_error", "message": "model 'nope' not found"}
    assert error[1]["request_id"].startswith("req_")


async def test_responses_answer_as_ollamas_responses_api_does(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    body = {"model": "llama3", "instructions": "Be brief.", "input": "hi", "max_output_tokens": 5}
    async with session.post(fake.url + "/v1/responses", json=body) as reply:
        whole = await reply.json()
    # Completed whatever stopped it, as Ollama answers.
    assert (whole["object"], whole["status"], whole["model"]) == ("response", "completed", "llama3")
    [message] = whole["output"]
    assert message["type"] == "message"
    assert whole["usage"]["output_tokens"] == 5
    async with session.post(fake.url + "/v1/responses", json={**body, "stream": True}) as reply:
        frames = (await reply.text()).strip().split("\n\n")
    events = [json.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]
    kinds = [e["type"] for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == message["content"][0]["text"] == events[-1]["response"]["output"][0]["content"][0]["text"]
    async with session.post(
        fake.url + "/v1/responses", json={**body, "input": [{"type": "web_search_call"}]}
    ) as reply:
        assert (reply.status, await reply.json()) == (
            400,
            {
                "error": {
                    "message": 'input[0]: unknown input item type: "web_search_call"',
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )


async def test_a_question_about_the_weather_with_tools_gets_a_tool_call(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    body = {
        "model": "llama3",
        "messages": [{"role": "user", "content": "The weather in Paris?"}],
        "tools": [tool],
    }
    async with session.post(fake.url + "/api/chat", json={**body, "stream": False}) as reply:
        whole = await reply.json()
    [call] = whole["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert (whole["message"]["content"], whole["done_reason"]) == ("", "stop")
    async with session.post(fake.url + "/v1/chat/completions", json=body) as reply:
        completion = await reply.json()
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    # Without tools, or about something else, it answers in words.
    async with session.post(fake.url + "/api/chat", json={**body, "tools": [], "stream": False}) as reply:
        assert "tool_calls" not in (await reply.json())["message"]
