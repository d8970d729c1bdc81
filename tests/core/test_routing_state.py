"""The state around routing: conversation keys and their table, requests as the router sees them, node
statuses parsed and read into router views, and the dispatcher's snapshot of the requests in flight."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inferhub_desktop.core import dispatch as dispatch_module
from inferhub_desktop.core.audit import AuditLog
from inferhub_desktop.core.backends.base import Backend, BackendState, InstalledModel, LoadedModel
from inferhub_desktop.core.dispatch import CONVERSATION_TTL_S, Conversations, Dispatcher
from inferhub_desktop.core.events import Events
from inferhub_desktop.core.names import model_key
from inferhub_desktop.core.peers import PeerAnnouncement, PeerTable
from inferhub_desktop.core.router import RouterNode, conversation_key, rates, route_request
from inferhub_desktop.core.settings import Settings
from inferhub_desktop.core.speeds import Figure, ModelFigures, Observation, SpeedBook
from inferhub_desktop.core.status import MAX_STATUS_BYTES, NodeStatus
from inferhub_desktop.core.telemetry import GpuReading, SystemReading, Telemetry
from inferhub_desktop.core.views import now_at, router_node
from inferhub_desktop.core.wire.errors import MalformedRecord

MODEL = model_key("llama3")
EMBED = model_key("someone/embed:v1")
GIB = 1 << 30
MIB = 1 << 20
NOW = 500.0

SYSTEM = {"role": "system", "content": "Be brief."}
ASK = {"role": "user", "content": "What is a GPU?"}
ANSWER = {"role": "assistant", "content": "A graphics processor."}
FOLLOW_UP = {"role": "user", "content": "And a TPU?"}


# -- conversation keys -------------------------------------------------------------------------


def test_a_conversations_turns_share_one_key() -> None:
    first = conversation_key(MODEL, {"messages": [SYSTEM, ASK]})
    second = conversation_key(MODEL, {"messages": [SYSTEM, ASK, ANSWER, FOLLOW_UP]})
    assert first is not None
    assert first == second


def test_a_conversation_without_a_system_message_keeps_its_key() -> None:
    assert conversation_key(MODEL, {"messages": [ASK]}) == conversation_key(
        MODEL, {"messages": [ASK, ANSWER, FOLLOW_UP]}
    )


def test_another_model_is_another_conversation() -> None:
    fields = {"messages": [SYSTEM, ASK]}
    assert conversation_key(MODEL, fields) != conversation_key(model_key("qwen2.5"), fields)


def test_another_opening_question_is_another_conversation() -> None:
    other = {"role": "user", "content": "What is a CPU?"}
    assert conversation_key(MODEL, {"messages": [SYSTEM, ASK]}) != conversation_key(
        MODEL, {"messages": [SYSTEM, other]}
    )


def test_another_system_prompt_is_another_conversation() -> None:
    other = {"role": "system", "content": "Be thorough."}
    assert conversation_key(MODEL, {"messages": [SYSTEM, ASK]}) != conversation_key(
        MODEL, {"messages": [other, ASK]}
    )


@pytest.mark.parametrize(
    "fields",
    [
        None,
        {},
        {"prompt": "What is a GPU?"},
        {"messages": "What is a GPU?"},
        {"messages": []},
        {"messages": [SYSTEM]},
        {"messages": [SYSTEM, ANSWER]},
        {"messages": ["user", SYSTEM]},
    ],
    ids=["no-fields", "empty", "prompt", "not-a-list", "no-messages", "system-only", "no-user", "not-dicts"],
)
def test_a_request_without_a_user_message_has_no_conversation(fields: dict[str, Any] | None) -> None:
    assert conversation_key(MODEL, fields) is None


# -- the conversation table --------------------------------------------------------------------


def test_a_conversation_is_remembered_for_its_time_to_live() -> None:
    table = Conversations()
    table.remember("c", "node-a", NOW)
    assert table.live(NOW) == {"c": ("node-a", NOW + CONVERSATION_TTL_S)}
    assert "c" in table.live(NOW + CONVERSATION_TTL_S - 0.001)


def test_a_conversation_expires_once_its_time_is_up() -> None:
    table = Conversations(ttl_s=10.0)
    table.remember("c", "node-a", NOW)
    assert table.live(NOW + 10.0) == {}
    # Dropped for good, not only hidden.
    assert table.live(NOW) == {}


def test_a_new_turn_extends_the_conversation_and_moves_it() -> None:
    table = Conversations(ttl_s=10.0)
    table.remember("c", "node-a", NOW)
    table.remember("c", "node-b", NOW + 8.0)
    assert table.live(NOW + 12.0) == {"c": ("node-b", NOW + 18.0)}


def test_the_table_keeps_only_the_most_recent_conversations() -> None:
    table = Conversations(capacity=2)
    for i, key in enumerate(("a", "b", "c")):
        table.remember(key, "node", NOW + i)
    assert set(table.live(NOW)) == {"b", "c"}


def test_a_conversation_that_took_a_turn_is_kept_over_an_older_one() -> None:
    table = Conversations(capacity=2)
    table.remember("a", "node", NOW)
    table.remember("b", "node", NOW + 1)
    table.remember("a", "node", NOW + 2)
    table.remember("c", "node", NOW + 3)
    assert set(table.live(NOW)) == {"a", "c"}


def test_live_returns_a_copy() -> None:
    table = Conversations()
    table.remember("c", "node-a", NOW)
    table.live(NOW).clear()
    assert "c" in table.live(NOW)


# -- requests as the router sees them ----------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "generates", "read"),
    [
        ("/api/generate", True, False),
        ("/api/chat", True, False),
        ("/v1/chat/completions", True, False),
        ("/v1/completions", True, False),
        ("/api/embed", False, False),
        ("/api/embeddings", False, False),
        ("/v1/embeddings", False, False),
        ("/api/show", False, True),
        ("/v1/models/:model", False, True),
    ],
)
def test_a_request_says_whether_it_generates_or_reads(pattern: str, generates: bool, read: bool) -> None:
    request = route_request(pattern, "llama3", None, None, local_only=False)
    assert (request.generates, request.read) == (generates, read)


@pytest.mark.parametrize(
    ("fields", "tokens"),
    [
        ({"options": {"num_predict": 64}}, 64),
        ({"max_tokens": 65}, 65),
        ({"max_completion_tokens": 66}, 66),
        ({"max_tokens": 67.9}, 67),
        ({"options": {"num_predict": -1}}, None),
        ({"options": {"num_predict": 0}}, None),
        ({"max_tokens": -5}, None),
        ({"options": {"num_predict": True}}, None),
        ({"max_tokens": True}, None),
        ({"max_tokens": "64"}, None),
        ({"num_predict": 64}, None),
        ({"options": "num_predict=64"}, None),
        ({"options": {"num_predict": -1}, "max_tokens": 70}, 70),
        ({}, None),
        (None, None),
    ],
)
def test_the_reply_token_limit_is_read_where_each_api_puts_it(
    fields: dict[str, Any] | None, tokens: int | None
) -> None:
    assert route_request("/api/chat", "llama3", fields, None, local_only=False).tokens == tokens


def test_a_request_names_its_model_by_key() -> None:
    request = route_request("/api/generate", "Llama3", None, None, local_only=False)
    assert request.model == MODEL


def test_a_request_without_a_model_has_no_model_and_no_conversation() -> None:
    request = route_request("/api/chat", None, {"messages": [ASK]}, None, local_only=False)
    assert request.model is None
    assert request.conversation is None


def test_a_chats_conversation_does_not_depend_on_how_the_model_is_spelled() -> None:
    first = route_request("/api/chat", "llama3", {"messages": [SYSTEM, ASK]}, None, local_only=False)
    second = route_request(
        "/api/chat",
        "library/llama3:latest",
        {"messages": [SYSTEM, ASK, ANSWER, FOLLOW_UP]},
        None,
        local_only=False,
    )
    assert first.conversation is not None
    assert first.conversation == second.conversation == conversation_key(MODEL, {"messages": [SYSTEM, ASK]})


@pytest.mark.parametrize(("pin", "expected"), [(None, None), ("", None), ("   ", None), (" box-2 ", "box-2")])
def test_a_pin_is_trimmed_and_a_blank_one_is_none(pin: str | None, expected: str | None) -> None:
    assert route_request("/api/generate", "llama3", None, pin, local_only=False).pin == expected


@pytest.mark.parametrize("local_only", [True, False])
def test_the_local_only_switch_is_carried(local_only: bool) -> None:
    assert (
        route_request("/api/generate", "llama3", None, None, local_only=local_only).local_only is local_only
    )


# -- statuses read into router views -----------------------------------------------------------

NODE_1, NODE_2 = (str(uuid.UUID(int=n)) for n in (1, 2))


def speeds() -> dict[str, Any]:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=3.0, eval_count=100, eval_s=2.0, prompt_s=0.2, load_s=1.0), NOW)
    return book.snapshot(NOW).to_json()


def telemetry(total_mib: int, free_mib: int) -> dict[str, Any]:
    """A reading of one GPU, as Telemetry.to_json writes it."""
    gpu = GpuReading(
        0, "GPU-0", "NVIDIA GeForce RTX 4090", total_mib, total_mib - free_mib, free_mib, 5, 40, ()
    )
    system = SystemReading(3.0, 16, 65536, 8000, 57536, unified_memory=False)
    return Telemetry((gpu,), system, None, 0.0).to_json()


def status(**overrides: Any) -> dict[str, Any]:
    """A status shaped like Node.status(), through JSON as a peer would send it."""
    backend = BackendState(
        kind="ollama",
        url="http://127.0.0.1:11434",
        reachable=True,
        version="0.9.0",
        installed=(
            InstalledModel("llama3:latest", 5 * GIB, "sha256:aa"),
            InstalledModel("Someone/Embed:v1", 300 * MIB, "sha256:bb"),
        ),
        loaded=(LoadedModel("llama3:latest", 6 * GIB, 5 * GIB + 7, "2030-01-01T00:00:00Z"),),
    )
    base = {
        "id": NODE_1,
        "name": "desk-7",
        "version": "0.1.0",
        "api_url": "http://127.0.0.1:11435",
        "share": True,
        "local_only": False,
        "pool_pull": False,
        "share_port": 11436,
        "load": {"active": 1, "remote": 1, "waiting": 2, "slots": 3, "queue_full": False},
        "models_hash": "0a1b2c3d4e5f",
        "backend": backend.to_json(),
        "telemetry": telemetry(24564, 17000),
        "speeds": speeds(),
    }
    base.update(overrides)
    result: dict[str, Any] = json.loads(json.dumps(base))
    return result


def view(data: dict[str, Any], **kwargs: Any) -> RouterNode:
    """The view a peer's status gives the router, brought up to now."""
    kwargs = {"rtt_s": 0.002, "breaker": None, "sent": 0, "coming": (), **kwargs}
    return now_at(router_node(NodeStatus.from_json(data), local=False), **kwargs)


def test_a_status_reads_into_a_view() -> None:
    got = view(status(), rtt_s=0.004, breaker="open after 1 failure(s): reset")
    assert (got.node_id, got.name, got.local, got.share) == (NODE_1, "desk-7", False, True)
    assert got.backend_error is None
    assert got.breaker == "open after 1 failure(s): reset"
    assert got.rtt_s == 0.004
    assert got.installed == {MODEL: 5 * GIB, model_key("someone/embed:v1"): 300 * MIB}
    assert got.loaded == {MODEL: 5 * GIB + 7}
    assert (got.vram_free_mib, got.vram_total_mib) == (17000, 24564)
    assert (got.active, got.waiting, got.slots, got.queue_full) == (1, 2, 3, False)


def test_a_status_survives_its_own_json() -> None:
    parsed = NodeStatus.from_json(status())
    assert NodeStatus.from_json(json.loads(json.dumps(parsed.to_json()))) == parsed


def test_a_statuses_speeds_read_into_figures() -> None:
    published = speeds()
    got = view(status(speeds=published))
    learnt = published["models"][MODEL]
    assert got.figures == {
        MODEL: ModelFigures(
            tokens_per_s=Figure(*learnt["tokens_per_s"]),
            tokens=Figure(*learnt["tokens"]),
            prompt_s=Figure(*learnt["prompt_s"]),
            load_s=Figure(*learnt["load_s"]),
            run_s=Figure(*learnt["run_s"]),
        )
    }
    assert got.figures[MODEL].tokens_per_s == Figure(100 / 2.0, 1.0)
    # The node-wide figure is the time the request held the backend: its compute and its load.
    assert got.busy_s == Figure(*published["busy_s"]) == Figure(2.0 + 0.2 + 1.0, 1.0)
    assert got.busy_s != got.figures[MODEL].run_s
    # What the figures say of the node's hardware is worked out once, with the view.
    assert got.rates == rates(got.figures, got.installed)
    assert got.rates.bandwidth == Figure(50.0 * 5 * GIB, 1.0)


def test_a_node_with_nothing_learnt_has_no_figures() -> None:
    got = view(status(speeds=SpeedBook().snapshot(NOW).to_json()))
    assert got.figures == {}
    assert got.busy_s is None


def test_the_most_a_node_held_at_once_is_read_as_its_peak() -> None:
    assert view(status(peak_loaded_bytes=11 * GIB + 3)).peak_loaded == 11 * GIB + 3


@pytest.mark.parametrize("peak", [None, 0], ids=["null", "zero"])
def test_an_unknown_peak_reads_as_zero(peak: int | None) -> None:
    assert view(status(peak_loaded_bytes=peak)).peak_loaded == 0


@pytest.mark.parametrize("peak", ["lots", [1], -1, 1e300], ids=["a-word", "a-list", "negative", "huge"])
def test_a_mistyped_peak_is_refused(peak: Any) -> None:
    with pytest.raises(MalformedRecord, match=r"status\.peak_loaded_bytes"):
        view(status(peak_loaded_bytes=peak))


def test_a_model_coming_to_a_node_counts_as_loaded_at_its_installed_size() -> None:
    got = view(status(), coming=[EMBED])
    assert got.loaded == {MODEL: 5 * GIB + 7, EMBED: 300 * MIB}


def test_a_model_coming_that_is_loaded_already_keeps_its_size_in_vram() -> None:
    assert view(status(), coming=[MODEL]).loaded == view(status()).loaded == {MODEL: 5 * GIB + 7}


def test_a_model_coming_that_the_node_has_not_installed_counts_with_no_size() -> None:
    other = model_key("qwen2.5")
    assert view(status(), coming=[other]).loaded == {MODEL: 5 * GIB + 7, other: 0}


def test_idle_models_make_way_for_those_coming_where_the_room_is_known() -> None:
    # No VRAM reading: the room is the most the node has held, one llama3.
    cramped = status(telemetry=None, peak_loaded_bytes=5 * GIB + 7)
    assert view(cramped, coming=[EMBED]).loaded == {EMBED: 300 * MIB}
    # With a VRAM reading, the room is what is loaded plus what is free.
    tight = status(telemetry=telemetry(8192, 100))
    assert view(tight, coming=[EMBED]).loaded == {EMBED: 300 * MIB}
    roomy = status(telemetry=telemetry(8192, 400))
    assert view(roomy, coming=[EMBED]).loaded == {MODEL: 5 * GIB + 7, EMBED: 300 * MIB}


def test_models_coming_that_cannot_all_fit_count_as_not_loaded_yet() -> None:
    # Both models have requests running on a node with room for one: it swaps them in turn, so the one
    # not loaded yet is not counted as loaded, and the one loaded stays.
    cramped = status(telemetry=None, peak_loaded_bytes=5 * GIB + 7)
    assert view(cramped, coming=[MODEL, EMBED]).loaded == {MODEL: 5 * GIB + 7}


def test_a_model_coming_changes_nothing_but_what_is_loaded() -> None:
    plain, coming = view(status()), view(status(), coming=[EMBED])
    assert {**vars(coming), "loaded": plain.loaded} == vars(plain)


def test_requests_sent_since_the_status_count_as_active() -> None:
    assert view(status(), sent=2).active == 1 + 2


def test_an_unreachable_backend_is_a_backend_error() -> None:
    down = BackendState(
        kind="ollama", url="http://127.0.0.1:11434", reachable=False, error="connection refused"
    )
    assert view(status(backend=down.to_json())).backend_error == "connection refused"
    silent = BackendState(kind="ollama", url="http://127.0.0.1:11434", reachable=False)
    assert view(status(backend=silent.to_json())).backend_error == "unreachable"


def test_missing_optional_parts_read_as_nothing() -> None:
    data = status(telemetry=None, speeds=None, backend={"kind": "ollama", "url": "x", "reachable": True})
    del data["load"]["waiting"]
    del data["load"]["queue_full"]
    assert "peak_loaded_bytes" not in data
    got = view(data)
    assert (got.vram_free_mib, got.vram_total_mib) == (0, 0)
    assert got.figures == {}
    assert got.busy_s is None
    assert got.peak_loaded == 0
    assert got.installed == {}
    assert got.loaded == {}
    assert (got.waiting, got.queue_full) == (0, False)


def remove(*path: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]

    return change


def put(value: Any, *path: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (remove("id"), "status.id is missing"),
        (put("node-1", "id"), "not a UUID"),
        (remove("name"), "status.name is missing"),
        (put(" ", "name"), "status.name"),
        (put("x" * 64, "name"), "status.name"),
        (remove("share"), "status.share is missing"),
        (remove("load"), "status.load is missing"),
        (remove("backend"), "status.backend is missing"),
        (remove("load", "active"), "status.load.active is missing"),
        (remove("load", "slots"), "status.load.slots is missing"),
        (put(0, "load", "slots"), "status.load.slots is 0"),
        (put([1, 3], "load"), "status.load is a list"),
        (put("busy", "backend"), "status.backend is a string"),
        (put(None, "load", "active"), "status.load.active is missing"),
        (put("many", "load", "active"), "status.load.active is a string"),
        (put(5, "backend", "installed"), "status.backend.installed is a number"),
        (put([{"size": 5}], "backend", "installed"), r"status.backend.installed\[0\].name is missing"),
        (put(["llama3"], "backend", "loaded"), r"status.backend.loaded\[0\] is a string"),
        (put([{"name": "m"}] * 5000, "backend", "installed"), "5000 entries, more than 4096"),
        (put("m" * 600, "backend", "installed", "0", "name"), "longer than 512"),
        (put("RTX 4090", "telemetry"), "status.telemetry is a string"),
        (put([1, 2], "speeds"), "status.speeds is a list"),
        (put({MODEL: [50.0, 1.0]}, "speeds", "models"), "is a list, not an object"),
        (put(2, "v"), "status version 2"),
        (put("ZZ", "models_hash"), "not lowercase hex"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_a_status_missing_mistyping_or_oversizing_a_part_is_refused_saying_where(
    change: Callable[[dict[str, Any]], None], where: str
) -> None:
    data = status()
    if "installed" in where or "longer than 512" in where:
        data["backend"]["installed"] = list(data["backend"]["installed"])
    try:
        change(data)
    except TypeError:  # an index into a list given as a string key
        data["backend"]["installed"][0]["name"] = "m" * 600
    with pytest.raises(MalformedRecord, match=where):
        NodeStatus.from_json(data)


@pytest.mark.parametrize(
    "figure",
    [
        [float("nan"), 1.0],
        [50.0, float("nan")],
        [float("inf"), 1.0],
        [50.0, float("inf")],
        [-1.0, 1.0],
        [50.0, 0.0],
        [50.0, -0.5],
        [50.0],
        [50.0, 1.0, 2.0],
        "fast",
        50.0,
    ],
)
@pytest.mark.parametrize("where", ["tokens_per_s", "load_s", "run_s"])
def test_a_learnt_figure_that_is_not_a_mean_and_a_positive_weight_is_refused(figure: Any, where: str) -> None:
    data = status()
    data["speeds"]["models"][MODEL][where] = figure
    with pytest.raises(MalformedRecord, match=re.escape(f"status.speeds.models[{MODEL!r}].{where}")):
        NodeStatus.from_json(data)


@pytest.mark.parametrize("figure", [[float("nan"), 1.0], [1.0, 0.0]])
def test_a_bad_busy_time_of_any_request_is_refused(figure: list[float]) -> None:
    data = status()
    data["speeds"]["busy_s"] = figure
    with pytest.raises(MalformedRecord, match=r"status\.speeds\.busy_s"):
        NodeStatus.from_json(data)


def test_a_status_past_its_size_limit_is_refused_unread() -> None:
    with pytest.raises(MalformedRecord, match=f"over {MAX_STATUS_BYTES}"):
        NodeStatus.from_bytes(b" " * (MAX_STATUS_BYTES + 1))
    with pytest.raises(MalformedRecord, match="not JSON"):
        NodeStatus.from_bytes(b"[" * 100_000)


# -- the requests in flight, as the dispatcher's snapshot shows them -------------------------------


def dispatcher(table: PeerTable | None = None) -> Dispatcher:
    """A dispatcher for this node (NODE_1) alone, or with a table of peers, having sent nothing yet."""
    own = router_node(NodeStatus.from_json(status()), local=True)
    settings = Settings(config_dir=Path("unused"), node_id=NODE_1, name="desk-7")

    def no_backend() -> Backend:
        raise AssertionError("a snapshot asks no backend")

    return Dispatcher(
        lambda: settings,
        no_backend,
        lambda: own,
        lambda: table,
        lambda: None,
        events=Events(),
        audit=AuditLog(Path("unused")),
        backend_changed=lambda: None,
    )


def own(state: Dispatcher) -> Any:
    (node,) = state.snapshot(NOW).nodes
    return node


def test_a_request_sent_for_a_model_shows_it_loaded_until_it_is_done() -> None:
    state = dispatcher()
    assert EMBED not in own(state).loaded
    state.in_flight.sent(NODE_1, NOW, EMBED)
    assert own(state).loaded == {MODEL: 5 * GIB + 7, EMBED: 300 * MIB}
    state.in_flight.done(NODE_1, NOW, EMBED)
    assert own(state).loaded == {MODEL: 5 * GIB + 7}


def test_a_model_stays_coming_while_any_request_for_it_is_in_flight() -> None:
    state = dispatcher()
    state.in_flight.sent(NODE_1, NOW, EMBED)
    state.in_flight.sent(NODE_1, NOW + 1, EMBED)
    state.in_flight.done(NODE_1, NOW, EMBED)
    assert EMBED in own(state).loaded
    state.in_flight.done(NODE_1, NOW + 1, EMBED)
    assert EMBED not in own(state).loaded


def test_done_ends_only_the_request_with_that_start_and_model() -> None:
    state = dispatcher()
    state.in_flight.sent(NODE_1, NOW, EMBED)
    state.in_flight.done(NODE_1, NOW, MODEL)
    state.in_flight.done(NODE_1, NOW + 1, EMBED)
    state.in_flight.done(NODE_2, NOW, EMBED)
    assert EMBED in own(state).loaded


def test_a_request_without_a_model_or_at_another_node_adds_nothing_here() -> None:
    state = dispatcher()
    state.in_flight.sent(NODE_1, NOW, None)
    state.in_flight.sent(NODE_2, NOW, EMBED)
    assert own(state).loaded == {MODEL: 5 * GIB + 7}


def peers_with(seen: float, **overrides: Any) -> PeerTable:
    """A table of one peer, NODE_2, last seen at `seen` with a status of these changes."""
    announcement = PeerAnnouncement(
        node_id=NODE_2,
        name="desk-8",
        address="192.0.2.8",
        port=11436,
        share=True,
        gpu="RTX 4090",
        vram_free_mib=17000,
        vram_total_mib=24564,
        active=1,
        slots=3,
        models_hash="0a1b2c3d4e5f",
    )
    table = PeerTable(NODE_1, ttl_s=2.5)
    table.seen(announcement, NodeStatus.from_json(status(id=NODE_2, name="desk-8", **overrides)), seen, 0.01)
    return table


def test_a_request_sent_to_a_peer_shows_its_model_coming_there() -> None:
    seen = NOW - 10
    table = peers_with(seen)
    state = dispatcher(table)
    state.in_flight.sent(NODE_2, seen + 1, EMBED)
    here, there = state.snapshot(NOW).nodes
    assert EMBED not in here.loaded
    assert there.loaded == {MODEL: 5 * GIB + 7, EMBED: 300 * MIB}
    peer = table.get(NODE_2)
    assert peer is not None
    assert there.active == peer.status.load.active + 1
    assert there.rtt_s == 0.01


def test_a_peers_view_is_made_once_per_status_it_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []

    def counted(status: NodeStatus, *, local: bool) -> RouterNode:
        made.append(status.name)
        return router_node(status, local=local)

    monkeypatch.setattr(dispatch_module, "router_node", counted)
    table = peers_with(NOW)
    state = dispatcher(table)
    for _ in range(3):
        assert state.snapshot(NOW).nodes[1].share
    assert made == ["desk-8"]
    changed = peers_with(NOW + 1, share=False).get(NODE_2)
    assert changed is not None
    table.seen(changed.announcement, changed.status, NOW + 1)
    assert not state.snapshot(NOW + 1).nodes[1].share
    assert made == ["desk-8", "desk-8"]


def test_this_nodes_own_requests_are_not_counted_twice_as_active() -> None:
    # Its status counts them already.
    state = dispatcher()
    state.in_flight.sent(NODE_1, NOW + 1, EMBED)
    assert own(state).active == NodeStatus.from_json(status()).load.active
