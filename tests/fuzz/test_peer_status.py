"""Random peer statuses: fed to the readers a node takes them through, and served to a running node by a
peer it polls.

A node reads each peer's status (`GET /_inferhub/v1/status`) every second: `NodeStatus.from_bytes` parses
it once, `announcement_from_status` says what the peer announces and `router_node` how the router sees it.
Whatever a peer answers, parsing must give a status whose announcement and view are sound, or raise
MalformedRecord; and a node polling such a peer must go on polling, routing and answering its local API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from inferhub_desktop.core import CONTROL_HEADER
from inferhub_desktop.core.membership import announcement_from_status
from inferhub_desktop.core.peers import PeerAnnouncement
from inferhub_desktop.core.status import NodeStatus
from inferhub_desktop.core.views import router_node
from inferhub_desktop.core.wire.errors import MalformedRecord
from tests.fuzz.test_apis import Answer, Malformed, Rig, exchange, running, where
from tests.fuzz.test_records import fuzz

PARSER_EXAMPLES = 1000
POLLED_EXAMPLES = 150
FUZZ = settings(
    max_examples=PARSER_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

_SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
TEXT = st.text(st.one_of(st.characters(), _SURROGATES), max_size=16)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(-5, 5),
    st.sampled_from([2**63, 2**64, 10**30, -(10**30), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 0.5]),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(TEXT, kids, max_size=4)),
    max_leaves=10,
)


@st.composite
def valid_statuses(draw: st.DrawFn) -> dict[str, Any]:
    """A status a node would send, with a model installed and perhaps loaded, and speeds learnt."""
    slots = draw(st.integers(1, 8))
    total = draw(st.integers(0, 1 << 20))
    figure = st.tuples(st.floats(0, 1e3), st.floats(0.01, 10)).map(list)
    return {
        "id": str(draw(st.uuids())),
        "name": draw(st.text(min_size=1, max_size=12).filter(str.strip)),
        "version": "0.1.0",
        "api_url": "http://127.0.0.1:11435",
        "share": draw(st.booleans()),
        "local_only": False,
        "pool_pull": False,
        "pool": None,
        "share_port": 11436,
        "load": {
            "active": draw(st.integers(0, slots)),
            "remote": 0,
            "waiting": draw(st.integers(0, 3)),
            "slots": slots,
            "queue_full": False,
            "waiting_batch": draw(st.integers(0, 3)),
        },
        "models_hash": "0123456789ab",
        "backend": {
            "kind": "ollama",
            "url": "http://127.0.0.1:11434",
            "reachable": draw(st.booleans()),
            "version": "0.12.10",
            "installed": [{"name": "llama3:latest", "size": draw(st.integers(0, 1 << 34)), "digest": "x"}],
            "loaded": draw(
                st.sampled_from([[], [{"name": "llama3:latest", "size": 1 << 32, "size_vram": 1 << 32}]])
            ),
            "error": None,
        },
        "telemetry": draw(st.one_of(st.none(), st.builds(telemetry, st.just(total), st.integers(0, total)))),
        "speeds": {
            "models": draw(
                st.sampled_from([{}, {"registry.ollama.ai/library/llama3:latest": {"tokens_per_s": [50, 1]}}])
            ),
            "busy_s": draw(st.one_of(st.none(), figure)),
        },
        "peak_loaded_bytes": 0,
        "tokens_generated": 0,
        "owner": draw(
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {
                        "paused": st.one_of(st.none(), st.text(max_size=40)),
                        "resumes_in_s": st.one_of(st.none(), st.floats(0, 100)),
                        "reserve_mib": st.integers(0, 1 << 20),
                        "watching": st.text(max_size=20),
                    }
                ),
            )
        ),
    }


def telemetry(total: int, free: int) -> dict[str, Any]:
    """A reading of one GPU with `total` MiB, `free` of them free."""
    gpu = {
        "index": 0,
        "uuid": "GPU-0",
        "name": "NVIDIA GeForce RTX 4090",
        "total_mib": total,
        "used_mib": total - free,
        "free_mib": free,
        "utilization_pct": 10,
        "temperature_c": 50,
        "processes": [{"pid": 1234, "name": "ollama", "used_mib": 100}],
    }
    system = {
        "cpu_pct": 5.0,
        "cpu_count": 8,
        "ram_total_mib": 32768,
        "ram_used_mib": 8192,
        "ram_free_mib": 24576,
        "unified_memory": False,
    }
    return {"gpus": [gpu], "system": system, "nvml_error": None, "taken_at": 0.0}


# Where a value may be replaced in a status, as paths of keys (an int indexes a list).
PLACES: list[tuple[str | int, ...]] = [
    *[
        (key,)
        for key in ("id", "name", "share", "load", "models_hash", "backend", "telemetry", "speeds", "v")
    ],
    *[("load", key) for key in ("active", "slots", "waiting", "queue_full")],
    *[("telemetry", key) for key in ("gpus", "system", "nvml_error")],
    *[
        ("telemetry", "gpus", 0, key)
        for key in ("name", "total_mib", "free_mib", "utilization_pct", "processes")
    ],
    *[("telemetry", "system", key) for key in ("cpu_pct", "ram_total_mib", "unified_memory")],
    *[("backend", key) for key in ("installed", "loaded", "reachable", "error")],
    *[("backend", "installed", 0, key) for key in ("name", "size")],
    ("speeds", "models"),
    ("speeds", "busy_s"),
    ("peak_loaded_bytes",),
]


DROP = object()


def replace(status: Any, place: tuple[str | int, ...], value: Any) -> Any:
    """Set the value at `place`, where the path exists; drop it when `value` is the marker DROP."""
    holder = status
    for step in place[:-1]:
        try:
            holder = holder[step]
        except (KeyError, IndexError, TypeError):
            return status
    last = place[-1]
    if isinstance(holder, dict) and isinstance(last, str):
        if value is DROP:
            holder.pop(last, None)
        else:
            holder[last] = value
    elif isinstance(holder, list) and isinstance(last, int) and last < len(holder) and value is not DROP:
        holder[last] = value
    return status


@st.composite
def statuses(draw: st.DrawFn) -> Any:
    """A status with a few values replaced by other JSON values (or dropped), or any JSON value at all."""
    if draw(st.integers(0, 9)) == 9:
        return draw(VALUES)
    status = draw(valid_statuses())
    for _ in range(draw(st.integers(1, 3))):
        value = draw(st.one_of(NUMBERS, VALUES, st.just(DROP)))
        status = replace(status, draw(st.sampled_from(PLACES)), value)
    return status


NUMERIC_PLACES = [
    *[("load", key) for key in ("active", "slots", "waiting")],
    *[("telemetry", "gpus", 0, key) for key in ("free_mib", "total_mib", "used_mib", "temperature_c")],
    ("telemetry", "system", "cpu_pct"),
    ("backend", "installed", 0, "size"),
    ("peak_loaded_bytes",),
]


@st.composite
def numeric_statuses(draw: st.DrawFn) -> Any:
    """A valid status with one of its numbers replaced by another number: huge, negative, not finite."""
    status = draw(valid_statuses())
    if status["telemetry"] is None:
        status["telemetry"] = telemetry(0, 0)
    return replace(status, draw(st.sampled_from(NUMERIC_PLACES)), draw(NUMBERS))


def check_announcement(announcement: PeerAnnouncement) -> None:
    """Assert what announcement_from_status promises of what it accepts."""
    assert isinstance(announcement.node_id, str)
    assert isinstance(announcement.name, str)
    assert announcement.name
    assert isinstance(announcement.share, bool)
    assert isinstance(announcement.models_hash, str)
    assert isinstance(announcement.gpu, str)
    for number in (announcement.vram_free_mib, announcement.vram_total_mib, announcement.active):
        assert type(number) is int
    assert type(announcement.slots) is int
    assert announcement.slots >= 1
    assert announcement.vram_free_mib <= announcement.vram_total_mib


def test_random_statuses_are_peers_or_malformed() -> None:
    def check(status: Any) -> None:
        try:
            parsed = NodeStatus.from_json(status)
        except MalformedRecord:
            return
        check_announcement(announcement_from_status(parsed, "192.168.1.20", 11436))
        # What a node parsed, it can send on as it came.
        assert NodeStatus.from_json(json.loads(json.dumps(parsed.to_json()))) == parsed

    cases = st.tuples(st.one_of(statuses(), numeric_statuses()))
    fuzz("statuses read as announcements", cases, check, PARSER_EXAMPLES)


def test_random_statuses_are_routable_views_or_refused() -> None:
    def check(status: Any) -> None:
        try:
            view = router_node(NodeStatus.from_json(status), local=False)
        except MalformedRecord:
            return
        assert view.slots >= 1
        assert all(type(size) is int for size in (*view.installed.values(), *view.loaded.values()))
        assert all(math.isfinite(f.mean) for m in view.figures.values() for f in vars(m).values() if f)

    cases = st.tuples(st.one_of(statuses(), numeric_statuses()))
    fuzz("statuses read as routing views", cases, check, PARSER_EXAMPLES)


# -- served to a running node -----------------------------------------------------------------------------


def body_of(status: Any, ascii_only: bool) -> bytes:
    return json.dumps(status, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


STATUS_BODIES = st.one_of(
    st.builds(body_of, statuses(), st.booleans()),
    st.builds(body_of, statuses(), st.booleans()),
    st.builds(body_of, statuses(), st.booleans()),
    st.builds(body_of, valid_statuses(), st.booleans()),
    st.builds(body_of, numeric_statuses(), st.booleans()),
    st.builds(body_of, numeric_statuses(), st.booleans()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(4000, 6000).map(lambda n: b'{"id": ' + b"1" * n + b"}"),
    st.binary(max_size=200),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'{"id": 1e400}', b"NaN"]),
)


def seed_status(**changes: Any) -> bytes:
    """A peer's status with llama3 installed, with some values changed."""
    status: dict[str, Any] = {
        "id": "5a3c1a52-0d0e-4c55-9d6c-0f2b8c4c1e11",
        "name": "peer",
        "share": True,
        "load": {"active": 0, "slots": 1, "waiting": 0},
        "models_hash": "ab",
        "backend": {
            "kind": "ollama",
            "url": "http://127.0.0.1:11434",
            "reachable": True,
            "installed": [{"name": "llama3:latest", "size": 1000}],
            "loaded": [],
        },
        "telemetry": None,
        "speeds": {"models": {}, "busy_s": None},
    }
    for place, value in changes.items():
        status = replace(status, tuple(place.split("__")), value)
    return json.dumps(status).encode()


# Statuses that found bugs once, tried before the random ones so that they are always tried.
SEEDS = [
    b"[" * 5000 + b"]" * 5000,
    seed_status(load__active=float("inf")),
    seed_status(load__waiting=float("inf")),
    seed_status(backend__installed=[{"name": "llama3:latest", "size": float("inf")}]),
    seed_status(name="\ud800"),
]


def draw_bodies(examples: int) -> list[bytes]:
    """Draw the bodies before any server runs (Hypothesis checks that drawing leaves `random` alone)."""
    drawn: list[bytes] = []

    @settings(FUZZ, max_examples=examples, phases=(Phase.explicit, Phase.generate))
    @given(STATUS_BODIES)
    def draw(body: bytes) -> None:
        drawn.append(body)

    draw()
    return drawn


class FakePeer:
    """A peer that answers its status with whatever body it is given, and is too busy for anything else."""

    def __init__(self) -> None:
        self.body = b"{}"
        self.polls = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == "/_inferhub/v1/status":
            self.polls += 1
            return web.Response(body=self.body, content_type="application/json")
        return web.json_response({"error": "server busy, please try again."}, status=503)


def get(port: int, path: str, body: bytes | None = None, token: str = "") -> Answer:
    method = "GET" if body is None else "POST"
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if token:
        head += f"{CONTROL_HEADER}: {token}\r\n"
    data = head.encode() + (b"Content-Length: %d\r\n\r\n%s" % (len(body), body) if body else b"\r\n")
    return exchange(port, data, method, 10.0)


def still_working(rig: Rig) -> str | None:
    """Say what the node no longer does well, with this peer in its table, or None."""
    port = rig.node.api_port
    generate = b'{"model":"llama3","prompt":"hi","stream":false}'
    for path, body in [
        ("/api/version", None),
        ("/metrics", None),
        ("/_inferhub/v1/status", None),
        ("/_inferhub/v1/peers", None),
        ("/_inferhub/v1/route?model=llama3", None),
        ("/api/tags", None),
        ("/api/generate", generate),
    ]:
        try:
            answer = get(port, path, body, rig.node.control_token)
        except (OSError, EOFError, TimeoutError, Malformed) as exc:
            return f"{path}: {type(exc).__name__}"
        if answer.status != 200:
            return f"{path} answered {answer.status}: {answer.body[:120]!r}"
    return None


async def _poll_task_alive() -> bool:
    return any(t.get_name() == "poll-peers" and not t.done() for t in asyncio.all_tasks())


async def _poll_now(rig: Rig, endpoint: list[str]) -> None:
    rig.node.membership.set_static_peers(endpoint)


def poll_once(rig: Rig, peer: FakePeer, body: bytes) -> str | None:
    """Have the node poll the peer, which answers `body`; say what the node no longer does, or None."""
    polls = peer.polls
    peer.body = body
    rig.node_loop.run(_poll_now(rig, [f"127.0.0.1:{peer.port}"]))
    deadline = time.monotonic() + 3.0
    while peer.polls == polls and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.02)  # the node reads the status it got
    if not rig.node_loop.run(_poll_task_alive()):
        return "the node stopped polling its peers"
    if peer.polls == polls:
        return "the node did not poll its peer within 3 s"
    return still_working(rig)


# A node broken by a status is started again, this many times at most.
_MAX_RESTARTS = 10


def test_a_node_polling_a_peer_with_random_statuses_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    drawn = SEEDS + draw_bodies(POLLED_EXAMPLES)
    # Each kind of failure, with the shortest status that showed it.
    failures: dict[str, bytes] = {}
    tried = restarts = 0
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        rig, peer = start(stack, tmp_path, caplog)
        for body in drawn:
            tried += 1
            mark = len(caplog.records)
            problem = poll_once(rig, peer, body)
            kinds = [f"logged: {where(r)}" for r in rig.errors(mark, rig.node_thread)]
            if problem:
                kinds.append(problem)
            for kind in kinds:
                if kind not in failures or len(body) < len(failures[kind]):
                    failures[kind] = body
            if problem:
                # The node keeps what broke it (a dead task, a peer in its table): start afresh.
                restarts += 1
                stack.close()
                if restarts > _MAX_RESTARTS:
                    break
                rig, peer = start(stack, tmp_path, caplog)
    print(
        f"peer statuses polled: {tried} cases tried in {time.monotonic() - started:.1f} s, "
        f"{restarts} restarts of a broken node"
    )
    assert not failures, "\n".join(f"- {kind}\n    status: {body[:400]!r}" for kind, body in failures.items())


def start(
    stack: contextlib.ExitStack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> tuple[Rig, FakePeer]:
    """Start a node and a peer it polls, to be stopped with `stack`."""
    rig = stack.enter_context(running(tmp_path, caplog))
    peer = FakePeer()
    rig.fake_loop.run(peer.start())
    stack.callback(lambda: rig.fake_loop.run(peer.close()))
    return rig, peer
