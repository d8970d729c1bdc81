"""The state around routing decisions: the pool snapshot the router reads, the conversations it keeps
in place, the circuit breakers, and the requests this node has in flight at each peer."""

from __future__ import annotations

import collections
import hashlib
import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from .breaker import CircuitBreakers
from .names import model_key
from .peers import Peer
from .router import Figure, ModelFigures, NodeView, RouteDecision, RouteRequest, Snapshot, choose_route

# A conversation stays with its node this long after its last turn: Ollama's default keep-alive.
CONVERSATION_TTL_S = 300.0
_MAX_CONVERSATIONS = 4096
# Endpoints that produce tokens, and those that only embed, and reads that name a model.
_EMBEDDINGS = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
_READS = frozenset({"/api/show", "/v1/models/:model"})
_MIB = 1 << 20
# Where each API puts a reply's token limit.
_TOKEN_LIMITS = (("options", "num_predict"), (None, "max_tokens"), (None, "max_completion_tokens"))


class Conversations:
    """Which node each ongoing conversation runs on, for a while after its last turn; bounded."""

    def __init__(self, ttl_s: float = CONVERSATION_TTL_S, capacity: int = _MAX_CONVERSATIONS) -> None:
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._entries: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()

    def remember(self, key: str, node_id: str, now: float) -> None:
        self._entries[key] = (node_id, now + self._ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def live(self, now: float) -> dict[str, tuple[str, float]]:
        """Return the conversations not yet expired, dropping the others."""
        for key in [k for k, (_, until) in self._entries.items() if until <= now]:
            del self._entries[key]
        return dict(self._entries)


def conversation_key(model: str, fields: Mapping[str, Any] | None) -> str | None:
    """Name a chat by its model and its messages up to the first user turn, which every later turn repeats."""
    messages = fields.get("messages") if fields else None
    if not isinstance(messages, list):
        return None
    opening = next(
        (
            messages[: i + 1]
            for i, m in enumerate(messages)
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        None,
    )
    if opening is None:
        return None
    text = json.dumps([model, opening], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def route_request(
    pattern: str, model: str | None, fields: Mapping[str, Any] | None, pin: str | None, *, local_only: bool
) -> RouteRequest:
    """Describe a request to the router: its model key, what it costs, its token limit and pin."""
    key = model_key(model) if model else None
    return RouteRequest(
        model=key,
        generates=pattern not in _EMBEDDINGS and pattern not in _READS,
        read=pattern in _READS,
        tokens=_token_limit(fields),
        pin=(pin or "").strip() or None,
        local_only=local_only,
        conversation=conversation_key(key, fields) if key else None,
    )


def _token_limit(fields: Mapping[str, Any] | None) -> int | None:
    for holder, name in _TOKEN_LIMITS:
        source = fields.get(holder) if holder and fields else fields
        value = source.get(name) if isinstance(source, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
            return int(value)
    return None


def view_from_status(
    status: Mapping[str, Any],
    *,
    local: bool,
    rtt_s: float,
    breaker: str | None,
    sent: int,
    coming: Collection[str] = (),
) -> NodeView:
    """Read a node's status as the router sees it; raise ValueError if it does not add up.

    `sent` counts requests this node sent there since that status was taken, which it cannot show yet;
    `coming` names the models of requests running there, which are loaded by now or soon.
    """
    try:
        load = status["load"]
        backend = status["backend"]
        telemetry = status.get("telemetry") or {}
        speeds = status.get("speeds") or {}
        installed = {
            model_key(str(m["name"])): int(m.get("size") or 0) for m in backend.get("installed") or ()
        }
        loaded = {
            model_key(str(m["name"])): int(m.get("size_vram") or 0) for m in backend.get("loaded") or ()
        }
        vram_free_mib = int(telemetry.get("vram_free_mib") or 0)
        vram_total_mib = int(telemetry.get("vram_total_mib") or 0)
        peak_loaded = int(status.get("peak_loaded_bytes") or 0)
        # The room for models: what is loaded plus measured free VRAM, else the most the node has held.
        capacity = sum(loaded.values()) + vram_free_mib * _MIB if vram_total_mib else peak_loaded
        _expect_loads(loaded, installed, coming, capacity)
        return NodeView(
            node_id=str(status["id"]),
            name=str(status["name"]),
            local=local,
            share=bool(status["share"]),
            backend_error=None if backend.get("reachable") else str(backend.get("error") or "unreachable"),
            breaker=breaker,
            installed=installed,
            loaded=loaded,
            vram_free_mib=vram_free_mib,
            vram_total_mib=vram_total_mib,
            active=int(load["active"]) + sent,
            waiting=int(load.get("waiting") or 0),
            slots=max(1, int(load["slots"])),
            queue_full=bool(load.get("queue_full")),
            rtt_s=rtt_s,
            figures={str(k): _model_figures(v) for k, v in (speeds.get("models") or {}).items()},
            busy_s=_figure(speeds.get("busy_s")),
            peak_loaded=peak_loaded,
        )
    except (KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise ValueError(f"status is missing or mistypes {exc}") from exc


def _expect_loads(
    loaded: dict[str, int], installed: Mapping[str, int], coming: Collection[str], capacity: int
) -> None:
    """Foresee what a node holds once the requests running there have their models, which a status taken
    before them cannot show: their models, less the idle ones pushed out to fit (when the room is known).
    Where their models cannot all fit, the node swaps them in turn: those not loaded yet count as not
    loaded, so more requests for them are weighed with a load."""
    reported = set(loaded)
    for model in coming:
        loaded.setdefault(model, installed.get(model, 0))
    if not capacity:
        return
    idle = sorted(m for m in loaded if m not in coming)
    swapped = sorted(m for m in coming if m not in reported)
    for model in idle + swapped:
        if sum(loaded.values()) <= capacity:
            break
        del loaded[model]


def _model_figures(value: Mapping[str, Any]) -> ModelFigures:
    return ModelFigures(
        tokens_per_s=_figure(value.get("tokens_per_s")),
        tokens=_figure(value.get("tokens")),
        prompt_s=_figure(value.get("prompt_s")),
        load_s=_figure(value.get("load_s")),
        run_s=_figure(value.get("run_s")),
    )


def _figure(value: Any) -> Figure | None:
    if value is None:
        return None
    mean, weight = (float(x) for x in value)
    if not (math.isfinite(mean) and math.isfinite(weight)) or mean < 0 or weight <= 0:
        raise ValueError(f"learnt figure {value!r} is not a mean and a positive weight")
    return Figure(mean, weight)


class Routing:
    """Decide where the local API's requests go, from this node's status and its peers'."""

    def __init__(
        self,
        own_status: Callable[[], Mapping[str, Any]],
        peers: Callable[[], Sequence[Peer]],
    ) -> None:
        self._own_status = own_status
        self._peers = peers
        self.breakers = CircuitBreakers()
        self.conversations = Conversations()
        # Start times and models of the requests this node has in flight at each node, itself included.
        self._sent: dict[str, list[tuple[float, str | None]]] = {}

    def snapshot(self, now: float) -> Snapshot:
        """Return the pool as the router sees it now; peers whose status makes no sense are left out."""
        own = self._own_status()
        own_id = str(own["id"])
        # This node counts its own requests exactly.
        nodes = [
            view_from_status(
                own, local=True, rtt_s=0.0, breaker=self._breaker(own_id), sent=0, coming=self._coming(own_id)
            )
        ]
        for peer in self._peers():
            sent = sum(1 for started, _ in self._sent.get(peer.node_id, ()) if started > peer.last_seen)
            try:
                nodes.append(
                    view_from_status(
                        peer.status,
                        local=False,
                        rtt_s=peer.rtt_s,
                        breaker=self._breaker(peer.node_id),
                        sent=sent,
                        coming=self._coming(peer.node_id),
                    )
                )
            except ValueError:
                continue  # the pool validated it when it came; a status this broken is not routed to
        return Snapshot(tuple(nodes), self.conversations.live(now))

    def decide(self, request: RouteRequest, now: float) -> RouteDecision:
        return choose_route(request, self.snapshot(now), now)

    def sent(self, node_id: str, now: float, model: str | None) -> None:
        """Note a request for `model` (a key) sent to a node, until `done` says it ended."""
        self._sent.setdefault(node_id, []).append((now, model))
        self.breakers.sent(node_id)

    def done(self, node_id: str, started: float, model: str | None) -> None:
        if (sent := self._sent.get(node_id)) and (started, model) in sent:
            sent.remove((started, model))
            if not sent:
                del self._sent[node_id]

    def _coming(self, node_id: str) -> set[str]:
        return {model for _, model in self._sent.get(node_id, ()) if model}

    def _breaker(self, node_id: str) -> str | None:
        return None if self.breakers.allows(node_id) else self.breakers.describe(node_id)
