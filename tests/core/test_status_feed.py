"""Peers follow each other's status as a stream instead of asking for it every second: the status whole
once, each change as it happens, a heartbeat while nothing changes, and a clean end when the node stops.
A follower drops a peer whose stream goes quiet after two missed heartbeats, and one whose stream is cut
at once when it cannot be asked again (one whose machine vanished is cut by TCP keepalive: tests/lan)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from inferhub_desktop.core import STATUS_PATH, Node, NodeStatus, membership
from inferhub_desktop.core.api import feed
from inferhub_desktop.core.api.feed import FEED_TYPE, apply_change, changed
from inferhub_desktop.core.events import PeerLeft
from inferhub_desktop.core.status import MAX_STATUS_BYTES
from inferhub_desktop.core.wire.headers import SHARE_PORT_HEADER
from tests.core.test_status_tags import STATUS
from tests.fakes.ollama import FakeOllama
from tests.support import eventually, node_settings

FOLLOW = {"Accept": FEED_TYPE}
# Heartbeats every 1.5 s instead of every 10, so that what they do is seen in seconds.
HEARTBEAT_S = 1.5
QUIET_S = 2 * HEARTBEAT_S + 1.0


@pytest.fixture(autouse=True)
def quick_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "HEARTBEAT_S", HEARTBEAT_S)
    monkeypatch.setattr(membership, "_STREAM_QUIET_S", QUIET_S)


def test_a_change_turns_the_status_before_into_the_one_after_and_tells_only_what_moved() -> None:
    before = copy.deepcopy(STATUS)
    after = copy.deepcopy(STATUS)
    after["load"]["active"] = 2
    after["telemetry"]["gpus"][0]["temperature_c"] = 71
    after["telemetry"]["taken_at"] = 1030.5
    after["backend"]["error"] = None
    change = changed(before, after)
    assert change == {
        "load": {"active": 2},
        # A list is told whole.
        "telemetry": {"gpus": after["telemetry"]["gpus"], "taken_at": 1030.5},
    }
    assert apply_change(before, change) == after
    assert len(json.dumps(change)) < len(json.dumps(after)) / 3
    assert before == STATUS  # applying a change leaves the status it was applied to as it was
    after["backend"]["error"] = "gone"
    after["pool"] = {"id": "5e1f0c2a"}
    assert apply_change(before, changed(before, after) or {}) == after


def test_a_key_dropped_is_told_by_the_whole_status() -> None:
    after = copy.deepcopy(STATUS)
    del after["backend"]["version"]
    assert changed(STATUS, after) is None
    assert changed(STATUS, copy.deepcopy(STATUS)) == {}


async def next_line(reply: aiohttp.ClientResponse) -> bytes:
    async with asyncio.timeout(HEARTBEAT_S + 2.0):
        return await reply.content.readline()


async def test_a_follower_hears_the_status_whole_then_heartbeats_then_each_change_then_a_clean_end(
    tmp_path: Path,
) -> None:
    async with FakeOllama(["llama3:latest"]) as fake, aiohttp.ClientSession() as http:
        node = Node(node_settings(tmp_path, fake.url, name="beta", share=True), environ={})
        await node.start()
        try:
            url = f"http://127.0.0.1:{node.share_port}{STATUS_PATH}"
            async with http.get(url, headers=FOLLOW) as reply:
                assert reply.status == 200
                assert reply.headers["Content-Type"] == FEED_TYPE
                whole = json.loads(await next_line(reply))
                first = NodeStatus.from_json(whole)
                assert (first.name, first.share) == ("beta", True)
                # Once the starting node's state settles, nothing changes: a heartbeat.
                while (line := await next_line(reply)) != b"\n":
                    whole = apply_change(whole, json.loads(line)["change"])
                node.switch({"share": False})
                while (line := await next_line(reply)) == b"\n":
                    pass
                # What changed, not the whole status again.
                change = json.loads(line)["change"]
                assert "backend" not in change
                assert NodeStatus.from_json(apply_change(whole, change)).share is False
                await node.close()
                # The stream ends cleanly (its last chunk, not a cut connection), with nothing after.
                async with asyncio.timeout(2.0):
                    rest = await reply.content.read()
                assert rest.strip(b"\n") == b""
                assert reply.content.at_eof()
        finally:
            await node.close()


class CountingProxy:
    """A TCP relay in front of a share API that counts the HTTP requests passing through it."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await source.read(65536):
                    if count:
                        self.requests += data.count(b"GET " + STATUS_PATH.encode())
                    sink.write(data)
                    await sink.drain()
            except ConnectionError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_a_node_follows_a_peer_with_one_request_and_hears_its_change_without_asking(
    tmp_path: Path,
) -> None:
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path / "beta", fake.url, name="beta", share=True), environ={}) as beta,
    ):
        proxy = CountingProxy(beta.share_port)
        port = await proxy.start()
        try:
            settings = node_settings(tmp_path / "alpha", fake.url, name="alpha", peers=[f"127.0.0.1:{port}"])
            async with Node(settings, environ={}) as alpha:

                def seen_sharing() -> bool | None:
                    peer = next((p for p in alpha.membership.peers if p.announcement.name == "beta"), None)
                    return peer.status.share if peer else None

                await eventually(lambda: seen_sharing() is True)
                # Three heartbeats' time: a node that polled would have asked three times more.
                await asyncio.sleep(3 * HEARTBEAT_S)
                assert seen_sharing() is True
                assert (proxy.requests, proxy.connections) == (1, 1)
                beta.switch({"share": False})
                await eventually(lambda: seen_sharing() is False)
                assert proxy.requests == 1
        finally:
            await proxy.close()


def bob(node: Node) -> object:
    """The streaming peer as `node` has it, if it does (other nodes on the LAN are not this test's)."""
    return next((p for p in node.membership.peers if p.announcement.name == "ws-bob"), None)


class StreamingPeer:
    """A peer's share API that streams its status and heartbeats until told to go quiet or to die."""

    def __init__(self) -> None:
        self.status = copy.deepcopy(STATUS)
        self.quiet = asyncio.Event()
        self.transports: list[asyncio.BaseTransport] = []
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get(STATUS_PATH, self.answer)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"127.0.0.1:{self.runner.addresses[0][1]}"

    async def answer(self, request: web.Request) -> web.StreamResponse:
        assert FEED_TYPE in request.headers["Accept"]
        reply = web.StreamResponse(headers={"Content-Type": FEED_TYPE})
        await reply.prepare(request)
        assert request.transport is not None
        self.transports.append(request.transport)
        if self.quiet.is_set():
            await asyncio.sleep(3600)  # answers, then says nothing: as a machine whose cable was pulled
        await reply.write(json.dumps(self.status).encode() + b"\n")
        while not self.quiet.is_set():
            await asyncio.sleep(HEARTBEAT_S)
            await reply.write(b"\n")
        await asyncio.sleep(3600)
        return reply

    def die(self) -> None:
        """Die as a killed process does: the port closes and the stream is cut."""
        assert self.runner is not None
        for site in self.runner.sites:
            assert isinstance(site, web.TCPSite)
            assert site._server is not None
            site._server.close()
        for transport in self.transports:
            assert isinstance(transport, asyncio.Transport)
            transport.abort()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@contextlib.asynccontextmanager
async def following(tmp_path: Path, peer: StreamingPeer) -> AsyncIterator[tuple[Node, list[str]]]:
    """A node that knows the streaming peer by address, and why the peer left it, each time it did."""
    address = await peer.start()
    left: list[str] = []
    try:
        async with (
            FakeOllama(["llama3:latest"]) as fake,
            Node(node_settings(tmp_path, fake.url, name="alpha", peers=[address]), environ={}) as alpha,
        ):
            alpha.events.subscribe(
                lambda event: (
                    left.append(event.reason)
                    if isinstance(event, PeerLeft) and event.name == "ws-bob"
                    else None
                )
            )
            await eventually(lambda: bob(alpha) is not None)
            yield alpha, left
    finally:
        await peer.close()


async def test_heartbeats_keep_a_quiet_peer_and_a_silent_stream_loses_it_after_two_missed(
    tmp_path: Path,
) -> None:
    peer = StreamingPeer()
    async with following(tmp_path, peer) as (alpha, left):
        # Twice as long as a peer may stay silent, with nothing but heartbeats: still a peer.
        await asyncio.sleep(2 * QUIET_S)
        assert bob(alpha) is not None
        peer.quiet.set()
        quiet_at = time.monotonic()
        async with asyncio.timeout(2 * QUIET_S):
            while bob(alpha):  # noqa: ASYNC110 - the table has no event to wait on
                await asyncio.sleep(0.05)
        print(f"a silent peer left after {time.monotonic() - quiet_at:.2f} s")
        assert left == ["peer 'ws-bob' stopped answering"]


async def test_a_peer_whose_stream_is_cut_and_that_cannot_be_asked_again_leaves_at_once(
    tmp_path: Path,
) -> None:
    peer = StreamingPeer()
    async with following(tmp_path, peer) as (alpha, left):
        peer.die()
        await eventually(lambda: bob(alpha) is None)
        # Not waited out: it left when asking again found nothing there.
        assert left == ["peer 'ws-bob' stopped answering (its connection was cut)"]


class LyingPeer(StreamingPeer):
    """A peer whose stream says what no node says: `lines`, then silence."""

    def __init__(self, lines: list[bytes]) -> None:
        super().__init__()
        self.lines = lines

    async def answer(self, request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": FEED_TYPE})
        await reply.prepare(request)
        for line in self.lines:
            await reply.write(line)
        await asyncio.sleep(3600)
        return reply


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        ([b'{"change": {"share": false}}\n'], "a change told before the status it changes"),
        ([b"x" * (MAX_STATUS_BYTES + 1)], f"a status of over {MAX_STATUS_BYTES} bytes"),
        ([b"[1, 2]\n"], "a status that is not a JSON object"),
        ([json.dumps(STATUS).encode() + b"\n", b'{"change": {"load": 7}}\n'], "status.load"),
    ],
    ids=["change-first", "endless-line", "not-an-object", "bad-change"],
)
async def test_a_peer_whose_stream_lies_is_ignored_and_says_why(
    tmp_path: Path, lines: list[bytes], why: str
) -> None:
    peer = LyingPeer(lines)
    address = await peer.start()
    endpoint = ("127.0.0.1", int(address.rsplit(":", 1)[1]))
    try:
        async with (
            FakeOllama(["llama3:latest"]) as fake,
            Node(node_settings(tmp_path, fake.url, name="alpha", peers=[address]), environ={}) as alpha,
        ):
            await eventually(lambda: why in alpha.membership._ignored.get(endpoint, ""))
            # Taken as a peer only from a status that added up, until it goes quiet.
            assert (bob(alpha) is None) == (len(lines) == 1)
    finally:
        await peer.close()


async def test_a_node_whose_mdns_cannot_start_says_so_and_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from inferhub_desktop.core.discovery import Discovery

    started: list[bool] = []
    real_start = Discovery.start

    async def start(self: Discovery, announcement: object) -> None:
        started.append(True)
        if len(started) == 1:
            raise OSError(19, "No such device")
        await real_start(self, announcement)  # type: ignore[arg-type]

    monkeypatch.setattr(Discovery, "start", start)
    monkeypatch.setattr(membership, "_MDNS_RETRY_S", 0.05)
    async with (
        FakeOllama(["llama3:latest"]) as fake,
        Node(node_settings(tmp_path, fake.url, name="alpha"), environ={}),
    ):
        await eventually(lambda: len(started) == 2)
    assert "cannot join mDNS ([Errno 19] No such device); trying again in 0 s" in caplog.text


async def test_a_share_port_a_follower_names_that_is_no_node_is_asked_once_and_forgotten(
    tmp_path: Path,
) -> None:
    # Where a follower says its share API is: a port that accepts and hangs up, as no node would.
    knocks: list[str] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        knocks.append(writer.get_extra_info("peername")[0])
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            FakeOllama(["llama3:latest"]) as fake,
            Node(node_settings(tmp_path, fake.url, name="beta", share=True), environ={}) as beta,
            aiohttp.ClientSession() as http,
        ):
            url = f"http://127.0.0.1:{beta.share_port}{STATUS_PATH}"
            async with http.get(url, headers={**FOLLOW, SHARE_PORT_HEADER: str(port)}) as reply:
                assert reply.status == 200
                await eventually(lambda: knocks == ["127.0.0.1"])
                # Asked once, found to be no node, and forgotten: not asked at every poll.
                await asyncio.sleep(3.0)
                assert knocks == ["127.0.0.1"]
                assert beta.membership.peers == []
    finally:
        server.close()
        await server.wait_closed()
