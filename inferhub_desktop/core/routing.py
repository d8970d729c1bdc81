"""The state around routing decisions: the pool snapshot the router reads, the conversations it keeps
in place, the circuit breakers, and the requests this node has in flight at each peer."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from .breaker import CircuitBreakers
from .names import model_key
from .peers import Peer
from .router import RouteDecision, RouteRequest, RouterNode, Snapshot, choose_route, rates
from .status import NodeStatus

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


def router_node(status: NodeStatus, *, local: bool) -> RouterNode:
    """Read what the router needs of a node's status: done once per status, not per decision."""
    backend = status.backend
    installed = {model_key(m.name): m.size for m in backend.installed}
    loaded = {model_key(m.name): m.size_vram for m in backend.loaded}
    telemetry = status.telemetry
    figures = status.speeds.models
    return RouterNode(
        node_id=status.node_id,
        name=status.name,
        local=local,
        share=status.share,
        backend_error=None if backend.reachable else (backend.error or "unreachable"),
        breaker=None,
        installed=installed,
        loaded=loaded,
        vram_free_mib=telemetry.vram_free_mib if telemetry else 0,
        vram_total_mib=telemetry.vram_total_mib if telemetry else 0,
        active=status.load.active,
        waiting=status.load.waiting,
        slots=status.load.slots,
        queue_full=status.load.queue_full,
        rtt_s=0.0,
        figures=figures,
        busy_s=status.speeds.busy_s,
        peak_loaded=status.peak_loaded_bytes,
        rates=rates(figures, installed),
    )


def now_at(
    node: RouterNode, *, rtt_s: float, breaker: str | None, sent: int, coming: Collection[str]
) -> RouterNode:
    """Bring a node's view up to now: its round trip and breaker, the requests this node sent there since
    its status was taken (which the status cannot show yet), and the models of those running there."""
    if not (rtt_s or breaker or sent or coming):
        return node
    return dataclasses.replace(
        node,
        rtt_s=rtt_s,
        breaker=breaker,
        active=node.active + sent,
        loaded=_expect_loads(node, coming) if coming else node.loaded,
    )


def _expect_loads(node: RouterNode, coming: Collection[str]) -> dict[str, int]:
    """Foresee what a node holds once the requests running there have their models, which a status taken
    before them cannot show: their models, less the idle ones pushed out to fit (when the room is known).
    Where their models cannot all fit, the node swaps them in turn: those not loaded yet count as not
    loaded, so more requests for them are weighed with a load."""
    loaded = dict(node.loaded)
    # The room for models: what is loaded plus measured free VRAM, else the most the node has held.
    capacity = sum(loaded.values()) + node.vram_free_mib * _MIB if node.vram_total_mib else node.peak_loaded
    for model in coming:
        loaded.setdefault(model, node.installed.get(model, 0))
    if not capacity:
        return loaded
    idle = sorted(m for m in loaded if m not in coming)
    swapped = sorted(m for m in coming if m not in node.loaded)
    for model in idle + swapped:
        if sum(loaded.values()) <= capacity:
            break
        del loaded[model]
    return loaded


class Routing:
    """Decide where the local API's requests go, from this node's live state and its peers' statuses."""

    def __init__(self, own: Callable[[], RouterNode], peers: Callable[[], Sequence[Peer]]) -> None:
        # This node as the router sees it, made from its live state.
        self._own = own
        self._peers = peers
        self.breakers = CircuitBreakers()
        self.conversations = Conversations()
        # Start times and models of the requests this node has in flight at each node, itself included.
        self._sent: dict[str, list[tuple[float, str | None]]] = {}
        # Each peer's view, made once from the status it came with.
        self._views: dict[str, tuple[NodeStatus, RouterNode]] = {}

    def snapshot(self, now: float) -> Snapshot:
        """Return the pool as the router sees it now."""
        own = self._own()
        # This node counts its own requests exactly.
        nodes = [
            now_at(
                own, rtt_s=0.0, breaker=self._breaker(own.node_id), sent=0, coming=self._coming(own.node_id)
            )
        ]
        views: dict[str, tuple[NodeStatus, RouterNode]] = {}
        for peer in self._peers():
            cached = self._views.get(peer.node_id)
            if cached is None or cached[0] is not peer.status:
                cached = (peer.status, router_node(peer.status, local=False))
            views[peer.node_id] = cached
            sent = sum(1 for started, _ in self._sent.get(peer.node_id, ()) if started > peer.last_seen)
            nodes.append(
                now_at(
                    cached[1],
                    rtt_s=peer.rtt_s,
                    breaker=self._breaker(peer.node_id),
                    sent=sent,
                    coming=self._coming(peer.node_id),
                )
            )
        # Peers gone since are forgotten with their statuses.
        self._views = views
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
