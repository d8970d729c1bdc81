"""A node tells its listeners what happened: peers coming and going, its backend, and how each inference
request ended; its settings store tells of every change to the settings."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from inferhub_desktop.core import (
    BackendChanged,
    ConfigError,
    Event,
    Events,
    Node,
    PeerJoined,
    PeerLeft,
    RequestDone,
    SettingsChanged,
    read_settings_file,
)
from inferhub_desktop.core.wire.endpoints import STATUS_PATH
from tests.fakes.ollama import FakeOllama
from tests.support import eventually, node_settings


def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    events, heard = Events(), []

    def broken(event: Event) -> None:
        raise RuntimeError("boom")

    events.subscribe(broken)
    unsubscribe = events.subscribe(heard.append)
    events.emit(PeerJoined("id-1", "beta", "10.0.0.2"))
    unsubscribe()
    events.emit(PeerLeft("id-1", "beta", "gone"))
    assert heard == [PeerJoined("id-1", "beta", "10.0.0.2")]
    assert "an event listener failed on PeerJoined" in caplog.text


async def test_requests_are_reported_with_their_node_tokens_and_outcome(tmp_path: Path) -> None:
    async with FakeOllama(["llama3:latest"], tokens_per_second=200) as fake:
        node = Node(node_settings(tmp_path, fake.url, name="alpha"), environ={})
        heard: list[Event] = []
        node.events.subscribe(heard.append)
        async with node, aiohttp.ClientSession() as http:
            await eventually(lambda: node.backend_state.reachable)
            body = {"model": "llama3", "prompt": "hi", "options": {"num_predict": 5}}
            async with http.post(node.api_url + "/api/generate", json=body) as reply:
                assert reply.status == 200
                await reply.read()
            async with http.post(node.api_url + "/api/chat", data=b"{not json") as reply:
                assert reply.status == 400
            async with http.post(
                node.api_url + "/api/generate", json={"model": "nope", "prompt": "x"}
            ) as reply:
                assert reply.status == 404
            async with http.get(node.api_url + "/api/tags") as reply:
                assert reply.status == 200
            await eventually(lambda: len([e for e in heard if isinstance(e, RequestDone)]) == 3)
            assert node.status().tokens_generated == 5

    done = [e for e in heard if isinstance(e, RequestDone)]
    ok, bad_json, unknown = done
    assert (ok.api, ok.endpoint, ok.model, ok.node, ok.attempts, ok.status) == (
        "local",
        "/api/generate",
        "llama3",
        "alpha",
        1,
        200,
    )
    assert ok.ok
    assert ok.tokens == 5
    assert 100 < (ok.tokens_per_s or 0) < 400
    assert 0 < (ok.first_byte_s or 0) <= ok.duration_s
    assert (bad_json.status, bad_json.attempts, bad_json.model, bad_json.ok) == (400, 0, None, False)
    assert "invalid" in (bad_json.error or "")
    assert (unknown.status, unknown.model) == (404, "nope")
    assert "not found" in (unknown.error or "")
    # The backend was found once the node started.
    assert next(e for e in heard if isinstance(e, BackendChanged)).reachable


async def test_a_request_is_listed_as_underway_until_it_ends(tmp_path: Path) -> None:
    async with FakeOllama(["llama3:latest"], tokens_per_second=20) as fake:
        node = Node(node_settings(tmp_path, fake.url, name="alpha"), environ={})
        heard: list[Event] = []
        node.events.subscribe(heard.append)
        async with node, aiohttp.ClientSession() as http:
            await eventually(lambda: node.backend_state.reachable)
            assert node.underway() == []
            body = {"model": "llama3", "prompt": "hi", "options": {"num_predict": 20}}
            async with http.post(node.api_url + "/api/generate", json=body) as reply:
                await reply.content.readline()
                (running,) = node.underway()
                said = (running.api, running.model, running.node, running.client)
                assert said == ("local", "llama3", "alpha", "")
                assert not [e for e in heard if isinstance(e, RequestDone)]
                await reply.read()
            await eventually(lambda: any(isinstance(e, RequestDone) for e in heard))
            assert node.underway() == []
    (done,) = [e for e in heard if isinstance(e, RequestDone)]
    # Both say when it arrived, one at its start and one from its end.
    assert abs(done.at - done.duration_s - running.at) < 0.05


async def test_switches_and_the_backend_going_down_are_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inferhub_desktop.core.node._PROBE_INTERVAL_S", 0.05)
    async with FakeOllama() as fake:
        node = Node(node_settings(tmp_path, fake.url), environ={})
        heard: list[Event] = []
        node.events.subscribe(heard.append)
        node.store.events.subscribe(heard.append)
        async with node:
            await eventually(lambda: node.backend_state.reachable)
            node.switch({"share": True, "local_only": False})
            node.switch({"share": True})  # no change, nothing told
            await fake.close()
            await eventually(lambda: any(isinstance(e, BackendChanged) and not e.reachable for e in heard))
    told = [e for e in heard if isinstance(e, SettingsChanged)]
    assert [(e.changed, e.settings.share, e.before.share) for e in told] == [
        (frozenset({"share"}), True, False)
    ]
    down = [e for e in heard if isinstance(e, BackendChanged)][-1]
    assert down.url == fake.url
    assert "connection refused" in (down.error or "")


async def test_a_peer_added_by_address_joins_and_leaves_when_dropped(tmp_path: Path) -> None:
    # Beta answers status polls only, and is on no mDNS: it can be found by its address alone.
    beta = Node(node_settings(tmp_path / "b", "http://127.0.0.1:9", name="beta"), environ={})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(beta.status().to_json())

    app = web.Application()
    app.router.add_get(STATUS_PATH, status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    address = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with FakeOllama() as fake:
            alpha = Node(node_settings(tmp_path / "a", fake.url, name="alpha"), environ={})
            heard: list[Event] = []
            alpha.events.subscribe(heard.append)
            async with alpha:
                with pytest.raises(ConfigError, match="not HOST:PORT"):
                    alpha.store.change(peers=["beta.local:1/x"])
                alpha.store.change(peers=[address])
                await eventually(lambda: any(isinstance(e, PeerJoined) for e in heard))
                assert read_settings_file(alpha.settings.config_dir)["peers"] == [address]
                assert [(p.name, p.breaker) for p in alpha.peers()] == [("beta", "closed")]
                alpha.store.change(peers=[])
                await eventually(lambda: any(isinstance(e, PeerLeft) for e in heard))
                assert alpha.peers() == []
    finally:
        await runner.cleanup()
    joined = next(e for e in heard if isinstance(e, PeerJoined))
    left = next(e for e in heard if isinstance(e, PeerLeft))
    assert (joined.name, joined.address, left.name) == ("beta", "127.0.0.1", "beta")
    assert left.reason == "peer 'beta' is no longer named as a peer"


async def test_each_peer_named_by_address_says_how_reaching_it_goes(tmp_path: Path) -> None:
    async def not_inferhub(request: web.Request) -> web.Response:
        return web.Response(status=404, text="404 page not found")

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", not_inferhub)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    other_server = f"127.0.0.1:{runner.addresses[0][1]}"
    # Bound and never listening for the whole test: refused, and no other socket can take its port.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    nobody = f"127.0.0.1:{closed.getsockname()[1]}"
    try:
        async with (
            FakeOllama() as fake,
            Node(node_settings(tmp_path / "b", fake.url, name="beta"), environ={}) as beta,
            Node(node_settings(tmp_path / "a", fake.url, name="alpha"), environ={}) as alpha,
        ):
            reachable = f"127.0.0.1:{beta.share_port}"
            alpha.store.change(peers=[reachable, nobody, other_server])
            assert [(a.address, a.state) for a in alpha.addresses()] == [
                (reachable, "reaching"),
                (nobody, "reaching"),
                (other_server, "reaching"),
            ]
            await eventually(lambda: "reaching" not in {a.state for a in alpha.addresses()})
            states = {a.address: (a.state, a.detail) for a in alpha.addresses()}
            assert states[reachable] == ("reached", "beta")
            assert states[nobody][0] == "unreachable"
            assert states[nobody][1].startswith("nothing listens there (connection refused)")
            assert states[other_server] == ("unreachable", "/_inferhub/v1/status answered HTTP 404")
            # Removed, it is no longer said.
            alpha.store.change(peers=[reachable])
            assert [a.address for a in alpha.addresses()] == [reachable]
    finally:
        closed.close()
        await runner.cleanup()
