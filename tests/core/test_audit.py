"""The audit log: every request a peer had this machine serve, kept in a bounded file its owner reads."""

from __future__ import annotations

import datetime
import json
import logging
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferhub_desktop.core import AUDIT_PATH, Node, RequestDone, audit_row, read_audit
from inferhub_desktop.core import audit as audit_module
from inferhub_desktop.core.audit import AUDIT_FILE, MAX_ENTRIES, ROTATED_FILE, AuditLog, usage_on
from inferhub_desktop.core.wire.headers import VIA_HEADER
from tests.fakes.ollama import FakeOllama
from tests.support import control, eventually, node_settings

PEER_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def ask(
    http: aiohttp.ClientSession, url: str, model: str = "llama3", *, via: str | None = PEER_ID
) -> tuple[int, dict[str, Any]]:
    """Ask for a whole generation, as a peer does when `via` names it."""
    headers = {VIA_HEADER: via} if via else {}
    body = {"model": model, "prompt": "hello", "stream": False}
    async with http.post(url + "/api/generate", json=body, headers=headers) as reply:
        return reply.status, await reply.json()


def share_url(node: Node) -> str:
    return f"http://127.0.0.1:{node.share_port}"


def done(n: int = 0, **changes: Any) -> RequestDone:
    values: dict[str, Any] = {
        "at": 1_700_000_000.0 + n,
        "api": "share",
        "endpoint": "/api/chat",
        "model": f"model-{n}",
        "node": "desk",
        "client": PEER_ID,
        "attempts": 1,
        "status": 200,
        "duration_s": 1.0,
        "first_byte_s": 0.1,
        "tokens": n,
        "tokens_per_s": 10.0,
    }
    return RequestDone(**(values | changes))


async def test_a_peers_request_is_logged_and_this_machines_own_are_not(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        FakeOllama(["llama3:latest"], default_num_predict=6) as fake,
        Node(node_settings(tmp_path, fake.url, share=True), environ={}) as node,
    ):
        before = time.time()
        assert (await ask(http, share_url(node)))[0] == 200
        assert (await ask(http, node.api_url, via=None))[0] == 200
        assert (await ask(http, share_url(node), "nope"))[0] == 404
        # Reads are not inference: nobody used the GPU for them.
        async with http.get(share_url(node) + "/api/tags") as reply:
            assert reply.status == 200
        served = node.audit(10)
        async with http.get(node.api_url + AUDIT_PATH + "?limit=10", headers=control(node)) as reply:
            assert reply.status == 200
            answered = await reply.json()

    assert [(e["model"], e["outcome"], e["status"]) for e in served] == [
        ("llama3", "ok", 200),
        ("nope", "error", 404),
    ]
    ok, failed = served
    when = datetime.datetime.fromisoformat(ok["at"])
    assert when.tzinfo == datetime.UTC
    assert before - 1 <= when.timestamp() <= time.time()
    assert ok["peer_id"] == PEER_ID
    assert ok["peer"] is None  # no peer of the pool has that id
    assert (ok["endpoint"], ok["tokens"], ok["error"]) == ("/api/generate", 6, None)
    assert 0 < ok["duration_s"] < 5
    assert "model 'nope' not found" in failed["error"]
    assert answered == served
    assert read_audit(tmp_path) == served
    assert stat.S_IMODE((tmp_path / AUDIT_FILE).stat().st_mode) == 0o600


async def test_a_peer_of_the_pool_is_logged_by_name_and_id(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    # llama3 is loaded only on the peer, so the desk's request goes there.
    async with (
        FakeOllama(["llama3:latest"]) as mine,
        FakeOllama(["llama3:latest"], loaded=["llama3:latest"], default_num_predict=4) as theirs,
        Node(node_settings(tmp_path / "desk", mine.url, name="desk"), environ={}) as desk,
        Node(node_settings(tmp_path / "peer", theirs.url, name="peer", share=True), environ={}) as peer,
    ):
        await eventually(lambda: any(p.status.backend.installed for p in desk.membership.peers))
        await eventually(lambda: peer.membership.table.get(desk.settings.node_id) is not None)
        status, answer = await ask(http, desk.api_url, via=None)
        assert status == 200
        served = peer.audit(10)
        assert desk.audit(10) == []

    assert len([r for r in theirs.requests if r.path == "/api/generate"]) == 1
    assert answer["eval_count"] == 4
    assert [(e["peer"], e["peer_id"], e["tokens"], e["outcome"]) for e in served] == [
        ("desk", desk.settings.node_id, 4, "ok")
    ]


async def test_a_peer_that_leaves_mid_stream_is_logged_as_cancelled(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        FakeOllama(["llama3:latest"], tokens_per_second=20.0, default_num_predict=200) as fake,
        Node(node_settings(tmp_path, fake.url, share=True), environ={}) as node,
    ):
        body = {"model": "llama3", "prompt": "hello"}
        async with http.post(share_url(node) + "/api/generate", json=body) as reply:
            await reply.content.readline()
        await eventually(lambda: len(node.audit(10)) == 1)
        [entry] = node.audit(10)

    assert (entry["outcome"], entry["peer_id"], entry["address"]) == ("cancelled", None, "127.0.0.1")
    assert audit_row(entry)[1:2] == ("127.0.0.1 (unverified)",)
    assert audit_row(entry)[5] == "cancelled by the peer"


async def test_an_unwritable_log_is_warned_of_once_and_the_node_serves_on(
    tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    # A directory where the file should be: writing fails even for root.
    (tmp_path / AUDIT_FILE).mkdir()
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, share=True), environ={}) as node,
    ):
        with caplog.at_level(logging.WARNING, logger=audit_module.__name__):
            for _ in range(3):
                assert (await ask(http, share_url(node)))[0] == 200
        writes = [r for r in caplog.records if "cannot write the audit log" in r.getMessage()]
        assert node.audit(10) == []
        async with http.get(node.api_url + AUDIT_PATH, headers=control(node)) as reply:
            assert (reply.status, await reply.json()) == (200, [])
        assert len([r for r in fake.requests if r.path == "/api/generate"]) == 3

    assert len(writes) == 1
    assert str(tmp_path) in writes[0].getMessage()


def test_a_log_that_recovers_is_written_again_and_warned_of_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / AUDIT_FILE
    blocker.mkdir()
    log = AuditLog(tmp_path)
    with caplog.at_level(logging.WARNING, logger=audit_module.__name__):
        log.record(done(1), None)
        blocker.rmdir()
        log.record(done(2), None)
        blocker.unlink()
        blocker.mkdir()
        log.record(done(3), None)
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 2


def test_the_log_is_rotated_once_past_its_size_keeping_one_old_file(tmp_path: Path) -> None:
    line_bytes = len(json.dumps(audit_module.audit_entry(done(10), "desk"), ensure_ascii=False)) + 1
    log = AuditLog(tmp_path, max_file_bytes=5 * line_bytes)
    for n in range(10, 33):
        log.record(done(n), "desk")

    current, rotated = tmp_path / AUDIT_FILE, tmp_path / ROTATED_FILE
    # 23 lines of 5 per file: 20 went through the rotated file, the last 3 are in the current one.
    assert len(current.read_text().splitlines()) == 3
    assert len(rotated.read_text().splitlines()) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [ROTATED_FILE, AUDIT_FILE]
    assert stat.S_IMODE(rotated.stat().st_mode) == 0o600
    assert [e["tokens"] for e in read_audit(tmp_path)] == list(range(25, 33))
    assert [e["tokens"] for e in read_audit(tmp_path, 4)] == [29, 30, 31, 32]
    assert [e["tokens"] for e in log.entries(6)] == [27, 28, 29, 30, 31, 32]


def test_corrupt_lines_are_skipped_and_the_limit_counts_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny blocks, so lines are put together across many of them.
    monkeypatch.setattr(audit_module, "_READ_BLOCK_BYTES", 7)
    good = [json.dumps(audit_module.audit_entry(done(n), None)).encode() for n in range(6)]
    (tmp_path / ROTATED_FILE).write_bytes(b"\n".join([good[0], b"[1, 2]", good[1], b""]))
    lines = [
        good[2],
        b"not json at all",
        b'{"at": "yesterday", "model": "x"}',
        b"",
        good[3],
        b"\xff\xfe{}",
        b'{"model": "no time"}',
        good[4],
        good[5][:-9],  # a line torn by a crash
    ]
    (tmp_path / AUDIT_FILE).write_bytes(b"\n".join(lines))

    assert [e["tokens"] for e in read_audit(tmp_path)] == [0, 1, 2, 3, 4]
    assert [e["tokens"] for e in read_audit(tmp_path, 2)] == [3, 4]
    assert [e["tokens"] for e in read_audit(tmp_path, 4)] == [1, 2, 3, 4]
    assert read_audit(tmp_path / "nothing-here") == []


def test_an_entry_keeps_the_start_of_a_long_error_and_says_it_for_people() -> None:
    entry = audit_module.audit_entry(done(1, status=500, error="x" * 5000, tokens=None), "desk")
    assert entry["outcome"] == "error"
    assert entry["error"] == "x" * 300
    when, peer, model, tokens, duration, outcome = audit_row(entry)
    assert (peer, model, tokens, duration) == ("desk (unverified)", "model-1", "—", "1.00 s")
    assert outcome.startswith("error: HTTP 500: xxx")
    assert datetime.datetime.strptime(when, "%Y-%m-%d %H:%M:%S")
    assert audit_row(audit_module.audit_entry(done(1), None))[1] == f"id {PEER_ID[:8]} (unverified)"


async def test_the_control_endpoint_checks_its_limit(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    log = AuditLog(tmp_path)
    for n in range(MAX_ENTRIES + 5):
        log.record(done(n), None)
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url), environ={}) as node,
    ):
        url = node.api_url + AUDIT_PATH
        async with http.get(url + "?limit=3", headers=control(node)) as reply:
            assert [e["tokens"] for e in await reply.json()] == [
                MAX_ENTRIES + 2,
                MAX_ENTRIES + 3,
                MAX_ENTRIES + 4,
            ]
        async with http.get(url + "?limit=100000", headers=control(node)) as reply:
            assert len(await reply.json()) == MAX_ENTRIES
        async with http.get(url, headers=control(node)) as reply:
            assert len(await reply.json()) == 100
        for wrong in ("-1", "x", "²"):
            async with http.get(url, params={"limit": wrong}, headers=control(node)) as reply:
                assert reply.status == 400
                assert "limit" in (await reply.json())["error"]
        async with http.post(url, headers=control(node)) as reply:
            assert reply.status == 405


def entry_at(
    when: datetime.datetime, peer: str | None, *, tokens: int | None = 10, **more: Any
) -> dict[str, Any]:
    at = when.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"at": at, "peer": peer, "verified": True, "tokens": tokens, "duration_s": 2.0, **more}


def test_a_days_usage_is_summed_per_peer_most_used_first() -> None:
    noon = datetime.datetime(2026, 12, 4, 12, 0).astimezone()
    entries = [
        entry_at(noon - datetime.timedelta(days=1), "ws-bob"),  # yesterday
        entry_at(noon, "ws-bob"),
        entry_at(noon, "ws-carol", tokens=None, outcome="error"),
        entry_at(noon, "ws-carol"),
        entry_at(noon, None, peer_id="", address="192.168.1.9", verified=False),
        {"at": "not a time"},
    ]
    usage, whole = usage_on(entries, noon.date())
    assert whole
    assert [u.words() for u in usage] == [
        "ws-carol: 2 requests, 10 tokens, 4 s",
        "192.168.1.9 (unverified): 1 request, 10 tokens, 2 s",
        "ws-bob: 1 request, 10 tokens, 2 s",
    ]
    # A log read to its limit that begins within the day may not hold the whole day.
    full = [entry_at(noon, "ws-bob")] * MAX_ENTRIES
    usage, whole = usage_on(full, noon.date())
    assert (usage[0].requests, whole) == (MAX_ENTRIES, False)
    assert usage_on(full, noon.date() + datetime.timedelta(days=1)) == ([], True)
