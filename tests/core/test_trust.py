"""Private pools: join codes, derived ids, request and status signatures, and nodes keeping to their pool."""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from inferhub_desktop.core import ConfigError, Node, PoolKey, join_code, new_secret, read_join_code
from inferhub_desktop.core import node as node_module
from inferhub_desktop.core.api import share as share_module
from inferhub_desktop.core.api.sites import PER_ADDRESS
from inferhub_desktop.core.settings import read_settings_file
from inferhub_desktop.core.trust import _ALPHABET, WINDOW_S
from inferhub_desktop.core.wire.endpoints import STATUS_PATH
from inferhub_desktop.core.wire.errors import Unauthorized
from inferhub_desktop.core.wire.headers import AUTH_HEADER
from tests.fakes.ollama import FakeOllama
from tests.support import control, eventually, node_settings

SECRET = bytes.fromhex("0123456789abcdef0123")
NOW = 1_800_000_000.0


# -- join codes ---------------------------------------------------------------------------------------


def test_a_code_carries_its_secret_and_forgives_case_spaces_and_look_alikes() -> None:
    code = join_code(SECRET)
    assert len(code) == 21
    assert code.count("-") == 4
    assert read_join_code(code) == SECRET
    assert read_join_code(f"  {code.lower().replace('-', ' ')} ") == SECRET
    assert read_join_code(code.replace("0", "o").replace("1", "l")) == SECRET
    for _ in range(50):
        secret = new_secret()
        assert read_join_code(join_code(secret)) == secret


def test_every_single_typo_and_every_swap_of_neighbours_is_caught() -> None:
    code = join_code(SECRET).replace("-", "")
    for position in range(len(code) - 1):
        for symbol in _ALPHABET:
            if symbol != code[position]:
                with pytest.raises(ConfigError, match="typo"):
                    read_join_code(code[:position] + symbol + code[position + 1 :])
        if code[position] != code[position + 1] and position < len(code) - 2:
            swapped = code[:position] + code[position + 1] + code[position] + code[position + 2 :]
            with pytest.raises(ConfigError, match="typo"):
                read_join_code(swapped)


@pytest.mark.parametrize(("code", "message"), [("ABCD-EFGH", "has 8"), ("UUUU-UUUU-UUUU-UUUU-0", "has no U")])
def test_a_code_that_cannot_be_one_says_why(code: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_join_code(code)


def test_the_pool_id_is_public_stable_and_reveals_nothing() -> None:
    key = PoolKey(SECRET)
    assert key.pool_id == PoolKey(SECRET).pool_id
    assert key.pool_id != PoolKey(new_secret()).pool_id
    assert len(key.pool_id) == 16
    assert SECRET.hex()[:8] not in key.pool_id
    assert key.code == join_code(SECRET)


# -- signatures ---------------------------------------------------------------------------------------


def test_a_signed_request_is_accepted_once() -> None:
    key = PoolKey(SECRET)
    header = key.sign_request("node-a", "POST", "/api/chat", b'{"model":"x"}', now=NOW)
    node_id, nonce = key.check_request(header, "POST", "/api/chat", b'{"model":"x"}', now=NOW + 1)
    assert node_id == "node-a"
    assert len(nonce) == 24
    with pytest.raises(Unauthorized, match="replayed"):
        key.check_request(header, "POST", "/api/chat", b'{"model":"x"}', now=NOW + 2)


@pytest.mark.parametrize(
    ("method", "target", "body", "change"),
    [
        ("GET", "/api/chat", b'{"model":"x"}', ""),
        ("POST", "/api/generate", b'{"model":"x"}', ""),
        ("POST", "/api/chat", b'{"model":"y"}', ""),
        ("POST", "/api/chat", b'{"model":"x"}', "id"),
        ("POST", "/api/chat", b'{"model":"x"}', "t"),
        ("POST", "/api/chat", b'{"model":"x"}', "n"),
    ],
)
def test_a_request_changed_in_any_part_is_refused(method: str, target: str, body: bytes, change: str) -> None:
    key = PoolKey(SECRET)
    header = key.sign_request("node-a", "POST", "/api/chat", b'{"model":"x"}', now=NOW)
    if change:
        fields = dict(part.split("=", 1) for part in header.split(";"))
        fields[change] = {"id": "node-b", "t": str(int(NOW) + 1), "n": "0" * 24}[change]
        header = ";".join(f"{k}={v}" for k, v in fields.items())
    with pytest.raises(Unauthorized, match="wrong signature"):
        key.check_request(header, method, target, body, now=NOW)


def test_stale_missing_and_foreign_signatures_are_refused() -> None:
    key = PoolKey(SECRET)
    stale = key.sign_request("node-a", "GET", STATUS_PATH, b"", now=NOW - WINDOW_S - 1)
    with pytest.raises(Unauthorized, match="from this node's clock"):
        key.check_request(stale, "GET", STATUS_PATH, b"", now=NOW)
    future = key.sign_request("node-a", "GET", STATUS_PATH, b"", now=NOW + WINDOW_S + 1)
    with pytest.raises(Unauthorized, match="from this node's clock"):
        key.check_request(future, "GET", STATUS_PATH, b"", now=NOW)
    for header in (None, "", "garbage", "id=a;t=x;n=1;s=2"):
        with pytest.raises(Unauthorized, match="no signature"):
            key.check_request(header, "GET", STATUS_PATH, b"", now=NOW)
    other = PoolKey(new_secret()).sign_request("node-a", "GET", STATUS_PATH, b"", now=NOW)
    with pytest.raises(Unauthorized, match="wrong signature"):
        key.check_request(other, "GET", STATUS_PATH, b"", now=NOW)


def test_a_status_answer_is_signed_for_the_poll_it_answers() -> None:
    key = PoolKey(SECRET)
    signed = key.sign_status("nonce-1", b'{"id":"a"}')
    key.check_status(signed, "nonce-1", b'{"id":"a"}')
    for header, nonce, body in (
        (signed, "nonce-2", b'{"id":"a"}'),
        (signed, "nonce-1", b'{"id":"b"}'),
        (None, "nonce-1", b'{"id":"a"}'),
        (PoolKey(new_secret()).sign_status("nonce-1", b'{"id":"a"}'), "nonce-1", b'{"id":"a"}'),
    ):
        with pytest.raises(Unauthorized):
            key.check_status(header, nonce, body)


# -- nodes ----------------------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _names(node: Node) -> set[str]:
    return {peer.announcement.name for peer in node.membership.peers}


async def test_members_see_each_other_and_nobody_else(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    code, other_code = join_code(new_secret()), join_code(new_secret())
    async with (
        FakeOllama(["llama3:latest"], loaded=["llama3:latest"]) as theirs,
        FakeOllama([]) as mine,
    ):
        settings = functools.partial(node_settings, backend=theirs.url, share=True)
        nodes = [
            Node(settings(tmp_path / "a", name="member-a", pool_code=code), environ={}),
            Node(settings(tmp_path / "b", name="member-b", pool_code=code, backend=mine.url), environ={}),
            Node(settings(tmp_path / "c", name="open-c"), environ={}),
            Node(settings(tmp_path / "d", name="stranger-d", pool_code=other_code), environ={}),
        ]
        async with nodes[0] as a, nodes[1] as b, nodes[2] as c, nodes[3] as d:
            await eventually(lambda: _names(b) == {"member-a"} and _names(a) == {"member-b"})
            # Long enough for every node to have polled every other a few times.
            await asyncio.sleep(2.5)
            assert (_names(a), _names(b), _names(c), _names(d)) == ({"member-b"}, {"member-a"}, set(), set())

            # member-b has no model of its own: its request goes to member-a, signed.
            body = {"model": "llama3", "prompt": "hi", "stream": False}
            async with http.post(b.api_url + "/api/generate", json=body) as reply:
                assert (reply.status, reply.headers["X-InferHub-Node"]) == (200, "member-a")

            # Anyone else gets Ollama's 401 from the share API, and nothing more.
            share = f"http://127.0.0.1:{a.share_port}"
            for path, method in ((STATUS_PATH, "GET"), ("/api/tags", "GET"), ("/api/generate", "POST")):
                async with http.request(method, share + path, json=body) as reply:
                    assert (reply.status, await reply.json()) == (401, {"error": "unauthorized"})
            assert b.status().pool == PoolKey(read_join_code(code)).pool_id
            assert c.status().pool is None


async def test_a_captured_request_replayed_is_refused(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    code = join_code(new_secret())
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(
            node_settings(tmp_path, fake.url, name="member", share=True, pool_code=code), environ={}
        ) as node,
    ):
        body = b'{"model":"llama3","prompt":"hi","stream":false}'
        signed = PoolKey(read_join_code(code)).sign_request("someone", "POST", "/api/generate", body)
        url = f"http://127.0.0.1:{node.share_port}/api/generate"
        headers = {AUTH_HEADER: signed, "Content-Type": "application/json"}
        async with http.post(url, data=body, headers=headers) as reply:
            assert reply.status == 200
        async with http.post(url, data=body, headers=headers) as reply:
            assert (reply.status, await reply.json()) == (401, {"error": "unauthorized"})
        generated = [r for r in fake.requests if r.path == "/api/generate"]
        assert len(generated) == 1


async def test_joining_and_leaving_while_running_is_remembered(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    code = join_code(new_secret())
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path / "a", fake.url, name="a", share=True), environ={}) as a,
        Node(node_settings(tmp_path / "b", fake.url, name="b", share=True), environ={}) as b,
    ):
        await eventually(lambda: _names(a) == {"b"} and _names(b) == {"a"})
        async with http.post(
            a.api_url + "/_inferhub/v1/pool", json={"code": code.lower()}, headers=control(a)
        ) as reply:
            assert (reply.status, await reply.json()) == (
                200,
                {"pool": PoolKey(read_join_code(code)).pool_id},
            )
        assert read_settings_file(tmp_path / "a")["pool_code"] == code
        await eventually(lambda: _names(a) == set() and _names(b) == set())

        b.set_pool(code)
        await eventually(lambda: _names(a) == {"b"} and _names(b) == {"a"})

        async with http.post(
            a.api_url + "/_inferhub/v1/pool", json={"code": "NOPE"}, headers=control(a)
        ) as reply:
            assert reply.status == 400
            assert "join code" in (await reply.json())["error"]
        async with http.post(
            a.api_url + "/_inferhub/v1/pool", json={"code": None}, headers=control(a)
        ) as reply:
            assert (await reply.json()) == {"pool": None}
        assert read_settings_file(tmp_path / "a")["pool_code"] == ""
        await eventually(lambda: _names(a) == set() and _names(b) == set())


async def test_a_slow_client_is_cut_off_and_a_flood_is_refused(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "SHARE_IDLE_TIMEOUT_S", 0.5)
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, name="box", share=True), environ={}) as box,
    ):
        # Headers trickling in, never finished: the connection is closed, not held.
        reader, writer = await asyncio.open_connection("127.0.0.1", box.share_port)
        writer.write(b"GET /api/tags HTTP/1.1\r\nHost: box\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()

        url = f"http://127.0.0.1:{box.share_port}/api/version"

        async def ask() -> tuple[int, dict[str, str]]:
            try:
                async with http.get(url) as reply:
                    return reply.status, await reply.json()
            except aiohttp.ServerDisconnectedError:
                return 0, {}  # over the connections one address may hold: closed at once

        # 150 at once: a burst of 60 goes through (plus 20 a second), the rest are refused.
        answers = await asyncio.gather(*(ask() for _ in range(150)))
        statuses = [status for status, _ in answers]
        assert statuses.count(200) >= 60
        assert statuses.count(429) + statuses.count(0) >= 30
        assert {body["error"] for status, body in answers if status == 429} == {
            "too many requests from this address; slow down"
        }
        async with http.get(box.api_url + "/api/version") as reply:
            assert reply.status == 200  # the local API has no such limit


async def test_one_address_cannot_hold_the_nodes_connections(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, name="box", share=True), environ={}) as box,
    ):
        held = []
        for _ in range(PER_ADDRESS):
            held.append(await asyncio.open_connection("127.0.0.1", box.share_port))
        # One more from the same address is closed at once, without a byte read.
        reader, writer = await asyncio.open_connection("127.0.0.1", box.share_port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        # Another address of the LAN is served, and so is the owner.
        reply = await asyncio.to_thread(
            exchange_from, "127.0.0.2", box.share_port, b"GET /api/version HTTP/1.1\r\nHost: box\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 200")
        async with http.get(box.api_url + "/api/version") as answer:
            assert answer.status == 200
        for _, held_writer in held:
            held_writer.close()


def exchange_from(source: str, port: int, request: bytes) -> bytes:
    """Send a request from a source address of the loopback network; return the reply's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(request)
        return sock.recv(64)


@pytest.mark.parametrize("private", [False, True], ids=["open pool", "private pool"])
async def test_a_body_that_trickles_in_is_cut_at_its_deadline_in_either_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private: bool
) -> None:
    monkeypatch.setattr(share_module, "_BODY_TIMEOUT_S", 0.5)
    code = join_code(new_secret()) if private else ""
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, name="box", share=True, pool_code=code), environ={}) as box,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", box.share_port)
        writer.write(b'POST /api/generate HTTP/1.1\r\nHost: box\r\nContent-Length: 1000\r\n\r\n{"model"')
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"did not arrive within 0.5 s" in answer
    assert [r for r in fake.requests if r.path == "/api/generate"] == []
