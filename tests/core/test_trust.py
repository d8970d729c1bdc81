"""A private pool between running nodes: mutual TLS, members known by their certificates before anything
is read, joining over the network with an invite, removal that reaches every member, and the attacks on
it failing: outsiders, other pools, a member claiming another's id, a relay, a replay. Then the share
API's limits in either pool: slow clients, floods, connections held, bodies that trickle."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from inferhub_desktop.core import Node, PrivatePool, Unauthorized, create_pool, join_pool, load_identity
from inferhub_desktop.core import membership as membership_module
from inferhub_desktop.core import node as node_module
from inferhub_desktop.core.api import share as share_module
from inferhub_desktop.core.api.sites import PER_ADDRESS
from inferhub_desktop.core.wire.endpoints import POOL_PATH, ROSTER_PATH, STATUS_PATH
from tests.fakes.ollama import FakeOllama
from tests.support import control, eventually, node_settings, private_pool

GENERATE = {"model": "llama3", "prompt": "the secret plans", "stream": False}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _names(node: Node) -> set[str]:
    return {peer.announcement.name for peer in node.membership.peers}


def _member(config_dir: Path) -> PrivatePool:
    pool = PrivatePool.load(config_dir, load_identity(config_dir))
    assert pool is not None
    return pool


def _nodes(tmp_path: Path, backend: str, *names: str, **overrides: object) -> list[Node]:
    return [
        Node(node_settings(tmp_path / name, backend, name=name, share=True, **overrides), environ={})
        for name in names
    ]


async def _outsider_answers(http: aiohttp.ClientSession, port: int) -> list[int]:
    """What a machine without a member's certificate gets from a member's share API, path by path."""
    share = f"https://127.0.0.1:{port}"
    answers = []
    for method, path in (
        ("GET", STATUS_PATH),
        ("GET", "/metrics"),
        ("GET", ROSTER_PATH),
        ("GET", "/api/tags"),
        ("POST", "/api/generate"),
    ):
        async with http.request(method, share + path, json=GENERATE, ssl=False) as reply:
            assert await reply.json() == {"error": "unauthorized"}
            answers.append(reply.status)
    return answers


async def test_members_see_each_other_and_outsiders_get_nothing(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with (
        FakeOllama(["llama3:latest"], loaded=["llama3:latest"]) as theirs,
        FakeOllama([]) as mine,
    ):
        a, b, c, d, e = _nodes(tmp_path, theirs.url, "a", "b", "open-c", "other-d", "other-e")
        b = Node(node_settings(tmp_path / "b", mine.url, name="b", share=True), environ={})
        private_pool(tmp_path / "a", tmp_path / "b")
        private_pool(tmp_path / "other-d", tmp_path / "other-e")
        async with a, b, c, d, e:
            await eventually(lambda: _names(b) == {"a"} and _names(a) == {"b"} and _names(d) == {"other-e"})
            # Long enough for every node to have polled every other a few times.
            await asyncio.sleep(2.5)
            assert [_names(n) for n in (a, b, c, d, e)] == [{"b"}, {"a"}, set(), {"other-e"}, {"other-d"}]

            # b has no model of its own: its request goes to a, which knows b by its certificate.
            async with http.post(b.api_url + "/api/generate", json=GENERATE) as reply:
                assert (reply.status, reply.headers["X-InferHub-Node"]) == (200, "a")
            (entry,) = a.audit(1)
            assert (entry["peer_id"], entry["verified"]) == (b.settings.node_id, True)

            # A machine without a member's certificate: Ollama's 401 on every path, /metrics too.
            assert await _outsider_answers(http, a.share_port) == [401] * 5
            # A member of another pool: its certificate is not this pool's, and the handshake fails.
            other = _member(tmp_path / "other-d").client_context
            with pytest.raises(aiohttp.ClientConnectorError):
                await http.get(f"https://127.0.0.1:{a.share_port}{STATUS_PATH}", ssl=other)
            assert [r.path for r in theirs.requests if r.path == "/api/generate"] == ["/api/generate"]
            assert (a.status().pool, b.status().pool) == (_member(tmp_path / "a").pool_id,) * 2
            assert c.status().pool is None


async def test_a_machine_joins_over_the_network_with_an_invite_good_once(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with FakeOllama(["llama3:latest"]) as fake:
        box, desk, laptop = _nodes(tmp_path, fake.url, "box", "desk", "laptop")
        async with box, desk, laptop:
            await eventually(lambda: _names(box) == {"desk", "laptop"})
            pool = create_pool(tmp_path / "box", load_identity(tmp_path / "box"), "box")
            await box.reload_pool()
            code = pool.invite()
            at = ("127.0.0.1", box.share_port)
            with pytest.raises(Unauthorized, match="did not admit"):
                await join_pool(
                    tmp_path / "laptop",
                    load_identity(tmp_path / "laptop"),
                    "laptop",
                    "7K3M-9QXD-2HWA-PZ4T-9",
                    [at],
                )
            joined = await join_pool(tmp_path / "desk", load_identity(tmp_path / "desk"), "desk", code, [at])
            assert joined.pool_id == pool.pool_id
            # The code is spent: a second machine that learnt it gets nothing.
            with pytest.raises(Unauthorized, match="did not admit"):
                await join_pool(tmp_path / "laptop", load_identity(tmp_path / "laptop"), "laptop", code, [at])
            async with http.post(desk.api_url + POOL_PATH, json={}, headers=control(desk)) as reply:
                info = await reply.json()
            assert {m["name"] for m in info["members"]} == {"box", "desk"}
            await eventually(lambda: _names(box) == {"desk"} and _names(desk) == {"box"})
            await eventually(lambda: _names(laptop) == set())
            # The laptop saw the pool on mDNS: where to ask, not a way in.
            assert [n["pool"] for n in laptop.pool_info()["nearby"]] == [pool.pool_id] * 2
            # Each side is told of the nodes of the other pool it does not use.
            assert laptop.elsewhere() == sorted(n["address"] for n in laptop.pool_info()["nearby"])
            assert [a.rsplit(":", 1)[1] for a in box.elsewhere()] == [str(laptop.share_port)]


async def test_a_removed_member_is_refused_by_every_member_within_5_s(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with FakeOllama(["llama3:latest"], loaded=["llama3:latest"]) as fake:
        a, b, c = _nodes(tmp_path, fake.url, "a", "b", "c")
        private_pool(*(tmp_path / n for n in ("a", "b", "c")))
        c_heard: list[str] = []
        c.events.subscribe(lambda event: c_heard.append(getattr(event, "reason", "")))
        async with a, b, c:
            await eventually(lambda: all(len(_names(n)) == 2 for n in (a, b, c)))
            removed_at = time.monotonic()
            async with http.post(a.api_url + POOL_PATH, json={"remove": "c"}, headers=control(a)) as reply:
                assert reply.status == 200
                assert "c" not in {m["name"] for m in (await reply.json())["members"]}
            c_id = c.settings.node_id
            async with asyncio.timeout(5):
                await eventually(
                    lambda: (
                        _names(a) == {"b"}
                        and _names(b) == {"a"}
                        and b.pool is not None
                        and b.pool.roster.member(c_id) is None
                    )
                )
            print(f"removal reached every member in {time.monotonic() - removed_at:.2f} s")
            # c, refused by every member, drops them at once rather than waiting them out.
            await eventually(lambda: _names(c) == set())
            assert {why for why in c_heard if "refuses this machine" in why} != set()
            # c's certificate still verifies against the pool's authority; the roster refuses it.
            assert await _as_member(http, tmp_path / "c", b.share_port, STATUS_PATH) == 401
            assert await _as_member(http, tmp_path / "c", a.share_port, "/api/tags") == 401
            assert await _as_member(http, tmp_path / "a", b.share_port, "/api/tags") == 200
            # a and b saved the roster: a restart does not bring c back.
            assert c_id in _member(tmp_path / "b").roster.removed


async def _as_member(http: aiohttp.ClientSession, config_dir: Path, port: int, path: str) -> int:
    """Call a share API with the certificate of the machine of `config_dir`; return the status."""
    context = _member(config_dir).client_context
    async with http.get(f"https://127.0.0.1:{port}{path}", ssl=context) as reply:
        return reply.status


async def test_a_member_removed_while_offline_is_refused_when_it_returns_and_a_restart_keeps_the_rest(
    tmp_path: Path,
) -> None:
    async with FakeOllama(["llama3:latest"]) as fake:
        a, b, c = _nodes(tmp_path, fake.url, "a", "b", "c")
        private_pool(*(tmp_path / n for n in ("a", "b", "c")))
        async with a, b:
            await eventually(lambda: _names(a) == {"b"} and _names(b) == {"a"})
            a.remove_member(c.settings.node_id)
            assert b.pool is not None
            await eventually(lambda: b.pool is not None and b.pool.roster.version == 4)
        # Everyone comes back, c too, which never heard of its removal.
        a, b, c = _nodes(tmp_path, fake.url, "a", "b", "c")
        async with a, b, c:
            await eventually(lambda: _names(a) == {"b"} and _names(b) == {"a"})
            await asyncio.sleep(2.5)  # c polls and is polled for a while
            assert (_names(a), _names(b), _names(c)) == ({"b"}, {"a"}, set())
            assert c.pool is not None
            assert c.pool.roster.version == 3
            # The members kept their identities and their pool across the restart.
            assert a.pool is not None
            assert a.pool.authority is not None
            assert {m["name"] for m in a.pool_info()["members"]} == {"a", "b"}


async def test_a_member_that_claims_another_members_id_is_not_listed(tmp_path: Path) -> None:
    async with FakeOllama(["llama3:latest"]) as fake:
        private_pool(*(tmp_path / n for n in ("a", "liar", "victim")))
        (a,) = _nodes(tmp_path, fake.url, "a")
        victim_id = load_identity(tmp_path / "victim").node_id
        liar = _member(tmp_path / "liar")
        async with a, _serve_status(liar.server_context, victim_id) as port:
            a.store.change(peers=[f"127.0.0.1:{port}"])
            await eventually(
                lambda: "claims the node id" in a.membership._ignored.get(("127.0.0.1", port), "")
            )
            assert _names(a) == set()


@contextlib.asynccontextmanager
async def _serve_status(context: ssl.SSLContext, node_id: str) -> AsyncIterator[int]:
    """Serve a well-formed status that names `node_id`, over TLS with `context`."""

    async def status(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "id": node_id,
                "name": "victim",
                "share": True,
                "load": {"active": 0, "remote": 0, "waiting": 0, "slots": 1},
                "models_hash": "00",
                "backend": {"kind": "ollama", "url": "x", "reachable": True},
                "speeds": {},
            }
        )

    app = web.Application()
    app.router.add_get(STATUS_PATH, status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


class Unheard:
    """Discovery on a network where multicast does not pass: nothing is heard or said."""

    def __init__(self, *args: object) -> None:
        pass

    async def start(self, announcement: object) -> None:
        pass

    async def update(self, announcement: object) -> None:
        pass

    async def close(self) -> None:
        pass


class Relay:
    """A host in the middle: it relays TCP to a member and keeps every byte that passes."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.seen = bytearray()
        self.first_client_bytes = b""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        first = True

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: Callable[[bytes], None]
        ) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    keep(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        def from_client(data: bytes) -> None:
            nonlocal first
            self.seen.extend(data)
            if first:
                self.first_client_bytes, first = data, False

        await asyncio.gather(pipe(reader, up_writer, from_client), pipe(up_reader, writer, self.seen.extend))


async def test_a_relay_reads_no_prompt_and_cannot_replay_what_it_saw(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No mDNS here: the user knows the member only at the relay's address (tests/lan does it with mDNS).
    monkeypatch.setattr(membership_module, "Discovery", Unheard)
    async with (
        FakeOllama(["llama3:latest"], loaded=["llama3:latest"]) as theirs,
        FakeOllama([]) as mine,
    ):
        private_pool(*(tmp_path / n for n in ("member", "user", "other")))
        member, other = _nodes(tmp_path, theirs.url, "member", "other")
        user = Node(node_settings(tmp_path / "user", mine.url, name="user", share=True), environ={})
        relay = Relay(0)
        async with member, other:
            relay.target_port = member.share_port
            async with relay as relay_port:
                # The user reaches the member only through the relay, by address (no mDNS between them).
                user.store.change(peers=[f"127.0.0.1:{relay_port}"])
                async with user:
                    await eventually(lambda: "member" in _names(user))
                    async with http.post(
                        user.api_url + "/api/generate", json=GENERATE, headers={"X-InferHub-Node": "member"}
                    ) as reply:
                        assert reply.status == 200
            # Everything passed through the relay, as TLS records (0x16: a handshake to begin with).
            assert relay.first_client_bytes[:1] == b"\x16"
            assert b"the secret plans" not in relay.seen
            assert b"the secret plans" in b"".join(r.body for r in theirs.requests)
            (entry,) = [e for e in member.audit(10) if e["endpoint"] == "/api/generate"]
            assert (entry["peer_id"], entry["verified"]) == (user.settings.node_id, True)
            # What the relay saw, sent to another member, is a TLS handshake that cannot complete.
            served = len(theirs.requests)
            reader, writer = await asyncio.open_connection("127.0.0.1", other.share_port)
            writer.write(bytes(relay.seen))
            await writer.drain()
            async with asyncio.timeout(5):
                while await reader.read(65536):
                    pass
            writer.close()
            assert len(theirs.requests) == served


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
    if private:
        # The trickling client is a member: in a private pool nobody else gets as far as sending a body.
        private_pool(tmp_path / "box", tmp_path / "member")
    context = _member(tmp_path / "member").client_context if private else None
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path / "box", fake.url, name="box", share=True), environ={}) as box,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", box.share_port, ssl=context)
        writer.write(b'POST /api/generate HTTP/1.1\r\nHost: box\r\nContent-Length: 1000\r\n\r\n{"model"')
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"did not arrive within 0.5 s" in answer
    assert [r for r in fake.requests if r.path == "/api/generate"] == []
