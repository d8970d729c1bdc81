"""Dispatch: where each request goes and how it gets there.

The local and share APIs hand every request they relay to the dispatcher. It plans it (the router's
ranking of this node and its peers, kept current with what only this node knows: the requests it has
in flight at each node, the conversations it keeps in place, its circuit breakers), admits it to this
machine's backend (the owner's requests first), sends it over the link kept to each peer (signed in a
private pool), and learns from how each attempt went (breakers, this backend's speeds, the audit log).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from collections.abc import Set as AbstractSet
from contextlib import AbstractAsyncContextManager
from typing import Any, NamedTuple
from urllib.parse import unquote

from .api.admission import DEFAULT_COST, Admission, Turn
from .api.relay import MAX_ATTEMPTS, Admit, Outcome, Plan, Query, Target
from .audit import AuditLog
from .backends.base import Backend
from .backends.ollama import OllamaBackend
from .breaker import CircuitBreakers
from .events import Events, RequestDone
from .names import model_key, short_name
from .peers import Peer, PeerTable, url_host
from .router import (
    RouteDecision,
    RouteRequest,
    RouterNode,
    Snapshot,
    choose_route,
    reserve_refusal,
    route_request,
)
from .settings import Settings
from .speeds import SpeedBook
from .status import NodeStatus
from .views import now_at, router_node
from .wire.endpoints import PULL_PATH, Endpoint, Kind
from .wire.errors import ApiError
from .wire.headers import NODE_HEADER
from .wire.payload import unloads_now

_log = logging.getLogger(__name__)

# A conversation stays with its node this long after its last turn: Ollama's default keep-alive.
CONVERSATION_TTL_S = 300.0
_MAX_CONVERSATIONS = 4096
# A peer on the LAN that does not accept a connection this soon is passed over for the next node.
_PEER_CONNECT_TIMEOUT_S = 2.0
# Reads that name a model and go to a node that has it; other reads are this machine's.
_ROUTED_READS = frozenset({"/api/show", "/v1/models/:model"})
# Requests after which installed or loaded models may differ.
_CHANGING_KINDS = frozenset({Kind.INFERENCE, Kind.MANAGE, Kind.BLOB, Kind.PASSTHROUGH})
# Failures that say a node is broken; 404 (a stale model list) and 503 (busy, not sharing) do not.
_NOT_BROKEN_STATUSES = frozenset({404, 503})


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


_NONE: frozenset[str] = frozenset()


class InFlight:
    """The requests this node has in flight at each node, with their models, until each ends: routing sees
    them, and their models as loaded, before the node's status can."""

    def __init__(self) -> None:
        self._sent: dict[str, list[tuple[float, str | None]]] = {}

    def sent(self, node_id: str, started: float, model: str | None) -> None:
        """Note a request for `model` (a key, or None) sent to a node, until `done` says it ended."""
        self._sent.setdefault(node_id, []).append((started, model))

    def done(self, node_id: str, started: float, model: str | None) -> None:
        if (sent := self._sent.get(node_id)) and (started, model) in sent:
            sent.remove((started, model))
            if not sent:
                del self._sent[node_id]

    def since(self, node_id: str, moment: float) -> int:
        """Count the requests at a node sent after `moment` (when its status was taken)."""
        return sum(1 for started, _ in self._sent.get(node_id, ()) if started > moment)

    def models(self, node_id: str) -> set[str]:
        """Return the models of the requests at a node."""
        return {model for _, model in self._sent.get(node_id, ()) if model}

    def at(self, node_id: str, moment: float) -> tuple[int, AbstractSet[str]]:
        """Return `since(node_id, moment)` and `models(node_id)` at once."""
        if node_id not in self._sent:  # most nodes, most of the time
            return 0, _NONE
        return self.since(node_id, moment), self.models(node_id)


class _Lately(NamedTuple):
    """What the router knows of a peer beyond its status: its round trip, its breaker, and the requests
    this node sent it since the status was taken, with their models."""

    rtt_s: float
    breaker: str | None
    sent: int
    coming: AbstractSet[str]


class _View(NamedTuple):
    """A peer as the last decision saw it: its status, read once (`base`), and brought up to then."""

    status: NodeStatus
    base: RouterNode
    lately: _Lately
    now: RouterNode


class Dispatcher:
    """Plan and send the requests of one node's local and share APIs."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        backend: Callable[[], Backend],
        own: Callable[[], RouterNode],
        peers: Callable[[], PeerTable | None],
        pool_tls: Callable[[], ssl.SSLContext | None],
        *,
        events: Events,
        audit: AuditLog,
        backend_changed: Callable[[], None],
    ) -> None:
        """`own` is this node as the router sees it, from its live state; `peers` the table of live peers
        (None while the node is not in the pool); `backend_changed` is told when this machine's backend
        may have other models now, or has failed."""
        self._settings = settings
        self._backend = backend
        self._own = own
        self._peers = peers
        # The private pool's mutual-TLS context for calling its members; None in the open pool.
        self._pool_tls = pool_tls
        self._events = events
        self._audit = audit
        self._backend_changed = backend_changed
        slots = settings().max_remote
        self.admission = Admission(slots=slots, max_remote=slots)
        # What this machine's backend has shown of its speed, and the tokens it generated through the node
        # since it started (peers sum each other's to chart the pool's throughput).
        self.speeds = SpeedBook()
        self.tokens_generated = 0
        self.breakers = CircuitBreakers()
        self.conversations = Conversations()
        self.in_flight = InFlight()
        # Each peer's view, made once from the status it came with.
        self._views: dict[str, _View] = {}
        # The connections kept to each peer's share API.
        self._links: dict[str, OllamaBackend] = {}
        # The models a peer's request loaded on this machine's backend, which the owner has not used since.
        self._for_peers: set[str] = set()

    # -- what the APIs ask ---------------------------------------------------------------------------

    def plan(self, query: Query, api: str) -> Plan:
        """Choose the nodes for a request, best first: across the pool for the local API; this machine's
        backend for the share API, which never routes further."""
        if api == "share":
            self._within_reserve(query)
            tokens = route_request(query.endpoint.pattern, None, query.fields, None, local_only=True).tokens
            turn = functools.partial(
                self.admission.remote, query.caller, batch=query.batch, cost=tokens or DEFAULT_COST
            )
            return Plan([self._local_target(query.model, turn=turn)])
        endpoint = query.endpoint
        pin = query.headers.get(NODE_HEADER)
        routed = endpoint.kind is Kind.INFERENCE or endpoint.pattern in _ROUTED_READS
        table = self._peers()
        # Alone there is nothing to choose from, and a request is answered without a decision's cost.
        if (not routed or not table) and not (pin and (routed or endpoint.pattern == PULL_PATH)):
            return Plan([self._local_target(query.model)])
        model = query.model
        if endpoint.pattern == "/v1/models/:model":
            model = unquote(query.path.rsplit("/", 1)[-1])
        now = time.monotonic()
        local_only = self._settings().local_only
        request = route_request(
            endpoint.pattern, model, query.fields, pin, local_only=local_only, batch=query.batch
        )
        snapshot = self.snapshot(now)
        if request.model and request.pin is None and _is_unload(endpoint.pattern, query.fields):
            holders = [
                n.node_id
                for n in snapshot.nodes
                if request.model in n.loaded and (n.local or (n.share and not local_only))
            ]
            if holders:
                return Plan([self._target(node_id, request.model) for node_id in holders], broadcast=True)
        decision = choose_route(request, snapshot, now)
        _log.debug("route for %s: %s", request.model, decision.choice)
        if not decision.ranked:
            return self._no_route(query, decision, pin)
        if request.conversation:
            self.conversations.remember(request.conversation, decision.ranked[0].node.node_id, now)
        # Only the nodes a request may be tried on: a pool of hundreds costs no more than a few.
        return Plan([self._target(r.node.node_id, model) for r in decision.ranked[:MAX_ATTEMPTS]])

    def peers_only_models(self) -> set[str]:
        """Return the models loaded on this machine for peers alone: a peer's request loaded each (it
        was not loaded when the request came), and no request of the owner's has used it since or runs
        now. Models no longer loaded are forgotten."""
        own = self._own()
        self._for_peers &= set(own.loaded)
        return self._for_peers - self.in_flight.models(own.node_id)

    def relayed(self, endpoint: Endpoint) -> None:
        """Hear that a request was relayed: one that may change the backend's models has it probed."""
        if endpoint.kind in _CHANGING_KINDS:
            self._backend_changed()

    def done(self, done: RequestDone) -> None:
        """Pass on how a request ended, with the peer it came from by name; log a peer's in the audit log."""
        table = self._peers()
        peer = table.get(done.client) if table is not None and done.client else None
        if done.api == "share":
            self._audit.record(done, peer.announcement.name if peer else None)
        self._events.emit(dataclasses.replace(done, client=peer.announcement.name) if peer else done)

    def listing_sources(self) -> list[Target]:
        """Return this node, then the peers whose models this node may use, for pool-wide listings."""
        sources = [self._local_target(None)]
        table = self._peers()
        if not self._settings().local_only and table is not None:
            sources += [
                self._target(peer.node_id, None)
                for peer in table
                if peer.announcement.share and self.breakers.allows(peer.node_id)
            ]
        return sources

    def where(self, model: str) -> tuple[bool, list[str]]:
        """Say whether this machine has `model` installed, and which sharing peers have it."""
        key = model_key(model)
        nodes = self.snapshot(time.monotonic()).nodes
        here = any(n.local and key in n.installed for n in nodes)
        return here, sorted(n.name for n in nodes if not n.local and n.share and key in n.installed)

    def explain(self, model: str) -> dict[str, Any]:
        """Say where a generation with `model` would go now, and why, as JSON values."""
        request = route_request("/api/generate", model, None, None, local_only=self._settings().local_only)
        return self.decide(request, time.monotonic()).to_json()

    # -- the pool as the router sees it ---------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        """Return the pool as the router sees it now."""
        own = self._own()
        # This node counts its own requests exactly: its live state has them.
        nodes = [
            now_at(
                own,
                rtt_s=0.0,
                breaker=self._breaker(own.node_id),
                sent=0,
                coming=self.in_flight.models(own.node_id),
            )
        ]
        views: dict[str, _View] = {}
        for peer in self._peers() or ():
            node_id = peer.announcement.node_id
            cached = self._views.get(node_id)
            lately = _Lately(peer.rtt_s, self._breaker(node_id), *self.in_flight.at(node_id, peer.last_seen))
            if cached is None or cached.status is not peer.status:
                base = router_node(peer.status, local=False)
                cached = _View(peer.status, base, lately, now_at(base, **lately._asdict()))
            elif cached.lately != lately:
                cached = _View(peer.status, cached.base, lately, now_at(cached.base, **lately._asdict()))
            views[node_id] = cached
            nodes.append(cached.now)
        # Peers gone since are forgotten with their statuses.
        self._views = views
        return Snapshot(tuple(nodes), self.conversations.live(now))

    def decide(self, request: RouteRequest, now: float) -> RouteDecision:
        return choose_route(request, self.snapshot(now), now)

    def breaker(self, node_id: str) -> str:
        """Say how this node's circuit breaker holds a node: "closed", or why it is open."""
        return self.breakers.describe(node_id)

    # -- what the pool tells ---------------------------------------------------------------------------

    def answered(self, node_id: str) -> None:
        """A node answered a probe (a peer its status poll, this machine's backend its probe)."""
        self.breakers.probed(node_id, time.monotonic())

    def left(self, peer: Peer, reason: str) -> None:
        """Cut the requests still at a peer that left: they end with an error instead of hanging."""
        self.breakers.forget(peer.node_id)
        if link := self._links.pop(peer.node_id, None):
            link.abort(reason)

    def close(self) -> None:
        """Release the connections kept to peers."""
        for link in self._links.values():
            link.close()
        self._links.clear()

    # -- targets ---------------------------------------------------------------------------------------

    def _no_route(self, query: Query, decision: RouteDecision, pin: str | None) -> Plan:
        """Explain why no node can take the request; a model nobody has is this machine's to refuse."""
        if pin is not None:
            names = ", ".join(repr(x.node.name) for x in decision.left_out)
            raise ApiError(404, f"no node of the pool is named {pin!r} (it has {names})")
        holders = [f"{x.node.name}: {x.reason}" for x in decision.left_out if x.has_model]
        if holders:
            model = short_name(decision.model or "")
            return Plan([], unavailable=f"no node can serve {model} now ({'; '.join(holders)})")
        if self._settings().local_only and decision.model:
            # A peer has it, but the owner keeps this machine's requests here: say so, not a bare 404.
            elsewhere = sorted({x.node.name for x in decision.left_out if decision.model in x.node.installed})
            if elsewhere:
                raise ApiError(
                    404,
                    f"model '{query.model}' not found on this machine, which is set to use only itself "
                    f"('Use only this machine' is on); {', '.join(elsewhere)} "
                    f"{'has' if len(elsewhere) == 1 else 'have'} it: turn that off in the tray or with "
                    "`inferhub local-only off` to use the pool",
                )
        # Nobody has the model: this machine's backend refuses it in Ollama's own words.
        return Plan([self._local_target(query.model)])

    def _within_reserve(self, query: Query) -> None:
        """Refuse, as busy, a peer's request that would load a model into the VRAM the owner keeps."""
        if query.endpoint.kind is not Kind.INFERENCE or not query.model:
            return
        own = self._own()
        if refusal := reserve_refusal(own, model_key(query.model)):
            raise ApiError(503, f"{own.name} {refusal}; another node of the pool can take it")

    def _target(self, node_id: str, model: str | None) -> Target:
        """Return the target for a node of the snapshot: this machine's backend, or a peer's share API."""
        table = self._peers()
        peer = table.get(node_id) if table is not None else None
        if peer is None:
            return self._local_target(model)
        return Target(
            name=peer.announcement.name,
            backend=self.link(peer),
            admit=self._admitter(node_id, model, slot=None),
            report=self._reporter(node_id, model, learn=False),
        )

    def _local_target(
        self, model: str | None, *, turn: Callable[[], AbstractAsyncContextManager[Turn]] | None = None
    ) -> Target:
        """Return the target for this machine's backend: the owner's requests go at once, a peer's wait for
        its `turn`."""
        settings = self._settings()
        return Target(
            name=settings.name,
            backend=self._backend(),
            admit=self._admitter(
                settings.node_id, model, slot=turn or self.admission.local, owner=turn is None
            ),
            report=self._reporter(settings.node_id, model, learn=True),
        )

    def _admitter(
        self,
        node_id: str,
        model: str | None,
        *,
        slot: Callable[[], AbstractAsyncContextManager[Turn | None]] | None,
        owner: bool | None = None,
    ) -> Admit:
        """Return how a request enters a node: inference takes a `slot` of this machine's backend, if given,
        and counts at the node until it ends; reads and the rest just go. On this machine's backend
        (`owner` said), a peer's request that loads its model marks it as loaded for peers, and the
        owner's use of a model unmarks it."""
        key = model_key(model) if model else None

        @contextlib.asynccontextmanager
        async def admit(endpoint: Endpoint) -> AsyncIterator[Turn | None]:
            if endpoint.kind is not Kind.INFERENCE:
                yield None
                return
            async with (
                slot() if slot else contextlib.nullcontext(None) as turn,
                self._sent_to(node_id, model),
            ):
                if key and owner:
                    self._for_peers.discard(key)
                elif key and owner is False and key not in self._own().loaded:
                    self._for_peers.add(key)
                yield turn

        return admit

    @contextlib.asynccontextmanager
    async def _sent_to(self, node_id: str, model: str | None) -> AsyncIterator[None]:
        """Count a request at a node until it ends, so routing sees it, and its model, before the node's
        status does."""
        started, key = time.monotonic(), model_key(model) if model else None
        self.in_flight.sent(node_id, started, key)
        self.breakers.sent(node_id)
        try:
            yield
        finally:
            self.in_flight.done(node_id, started, key)

    def _reporter(self, node_id: str, model: str | None, *, learn: bool) -> Callable[[Outcome], None]:
        """Return what hears how an attempt at a node went: its breaker, and what its backend showed."""
        key = model_key(model) if model else None

        def report(outcome: Outcome) -> None:
            now = time.monotonic()
            if outcome.cancelled:
                return
            if outcome.failure is None:
                self.breakers.succeeded(node_id)
                if learn and outcome.seen is not None and outcome.status == 200:
                    self.tokens_generated += outcome.seen.eval_count or 0
                    if key:
                        self.speeds.observe(key, outcome.seen, now)
            elif outcome.status not in _NOT_BROKEN_STATUSES:
                self.breakers.failed(node_id, outcome.failure, now)
                if learn:
                    self._backend_changed()

        return report

    def link(self, peer: Peer) -> OllamaBackend:
        """Return the connections kept to a peer's share API, made anew if it moved."""
        pin = peer.announcement.tls or None
        tls = self._pool_tls()
        scheme = "https" if pin else "http"
        url = f"{scheme}://{url_host(peer.announcement.address)}:{peer.announcement.port}"
        link = self._links.get(peer.node_id)
        if link is None or (link.url, link.pin, link.tls) != (url, pin, tls):
            if link is not None:
                link.close()
            link = OllamaBackend(
                url,
                connect_timeout_s=_PEER_CONNECT_TIMEOUT_S,
                name=f"peer {peer.announcement.name!r}",
                hint="",
                pin=pin,
                tls=tls,
            )
            self._links[peer.node_id] = link
        return link

    def _breaker(self, node_id: str) -> str | None:
        return None if self.breakers.allows(node_id) else self.breakers.describe(node_id)


def _is_unload(pattern: str, fields: Mapping[str, Any] | None) -> bool:
    """Tell a request to unload a model (keep_alive 0 and nothing to answer) from one to run it."""
    if pattern not in ("/api/generate", "/api/chat") or not fields:
        return False
    return unloads_now(fields.get("keep_alive")) and not fields.get("prompt") and not fields.get("messages")
