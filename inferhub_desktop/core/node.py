"""A node: the local and share APIs, the backend they relay to, telemetry, the pool and the routing of
requests across it, run together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from .. import __version__
from .api.admission import Admission
from .api.guard import OriginPolicy
from .api.local import LocalApi
from .api.relay import Admit, Forwarder, Outcome, Plan, Query, Target
from .api.share import PULL_PATH, ShareApi
from .audit import MAX_ENTRIES, AuditLog
from .backends.base import Backend, BackendState
from .backends.detect import open_backend
from .backends.ollama import OllamaBackend
from .events import BackendChanged, Event, Events, PeerJoined, PeerLeft, RequestDone, SettingsChanged
from .metrics import CONTENT_TYPE, Gauges, NodeMetrics, PeerGauge
from .names import model_key, short_name
from .peers import Peer, PeerAnnouncement, PeerState, url_host
from .pool import Pool
from .router import RouteDecision, RouterNode, choose_route
from .routing import Routing, route_request, router_node
from .settings import SWITCHES, Settings, backend_kind
from .speeds import SpeedBook
from .status import Load, NodeStatus
from .store import SettingsStore
from .telemetry import Telemetry, TelemetrySampler
from .tls import node_certificate, server_context
from .trust import PoolKey, pool_key
from .wire.endpoints import Endpoint, Kind
from .wire.errors import ApiError
from .wire.headers import NODE_HEADER
from .wire.payload import unloads_now

_log = logging.getLogger(__name__)

# The API key of an OpenAI-compatible backend started with one (llama-server --api-key, vLLM, LM Studio).
BACKEND_API_KEY_ENV = "INFERHUB_BACKEND_API_KEY"

LOCAL_API_HOST = "127.0.0.1"
# Free VRAM is advertised in steps of this size, so its small drifts do not rewrite the mDNS record.
_VRAM_STEP_MIB = 256
# Connecting is quick on a LAN; a model load may hold the first byte for minutes, so
# nothing else is timed.
_BACKEND_CONNECT_TIMEOUT_S = 10.0
# A peer on the LAN that does not accept a connection this soon is passed over for the next node.
_PEER_CONNECT_TIMEOUT_S = 2.0
# How long in-flight requests may finish after a stop is asked for.
_SHUTDOWN_GRACE_S = 5.0
# A connection to the share API that has not brought a whole request this long after it opened (or after
# its last answer) is closed: a slow client trickling headers holds nothing for long.
SHARE_IDLE_TIMEOUT_S = 15.0
# How often the backend is asked what it has; sooner after a request that may change it.
_PROBE_INTERVAL_S = 5.0
_PROBE_MIN_GAP_S = 0.5
# How often the GPUs and the system are read.
_TELEMETRY_INTERVAL_S = 2.0
# Requests after which installed or loaded models may differ.
_CHANGING_KINDS = frozenset({Kind.INFERENCE, Kind.MANAGE, Kind.BLOB, Kind.PASSTHROUGH})
# Reads that name a model and go to a node that has it; other reads are this machine's.
_ROUTED_READS = frozenset({"/api/show", "/v1/models/:model"})
# This node's view for the router is made again at least this often, for its learnt speeds to fade.
_OWN_VIEW_TTL_S = 1.0
# Failures that say a node is broken; 404 (a stale model list) and 503 (busy, not sharing) do not.
_NOT_BROKEN_STATUSES = frozenset({404, 503})


class Node:
    """One InferHub node; use as `async with Node(settings) as node:`."""

    def __init__(self, store: SettingsStore, environ: Mapping[str, str] = os.environ) -> None:
        # The user's settings: read from here whenever they are needed, changed only through it.
        self.store = store
        settings = store.settings
        # What happened, for whoever watches the node (the desktop app).
        self.events = Events()
        self._origins = OriginPolicy(environ)
        self._environ = environ
        self._runners: list[web.AppRunner] = []
        self._pool: Pool | None = None
        self.admission = Admission(slots=settings.max_remote, max_remote=settings.max_remote)
        # The share API's certificate's fingerprint, with --tls; peers pin it.
        self.tls_fingerprint = ""
        # The keys of the pool the settings name, made once per join code: they remember the nonces seen.
        self._pool_key = pool_key(settings.pool_code)
        self._unsubscribe: Callable[[], None] | None = None
        self.share_port = settings.share_port
        self.speeds = SpeedBook()
        # The most model bytes the backend has held at once, from its probes: its room for models.
        self.peak_loaded_bytes = 0
        # Tokens this machine's backend has generated through the node since it started; peers sum
        # each other's to chart the pool's throughput.
        self.tokens_generated = 0
        self.routing = Routing(self._router_node, lambda: self._pool.peers if self._pool else [])
        # This node's own view for the router: when it was made, from what, and the view.
        self._own_view: tuple[float, tuple[object, ...], RouterNode] | None = None
        self._peer_backends: dict[str, OllamaBackend] = {}
        self._backend: Backend | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._probe_wanted = asyncio.Event()
        self._sampler = TelemetrySampler()
        self.telemetry: Telemetry | None = None
        self.api_port = settings.api_port
        self._forwarders: dict[str, Forwarder] = {}
        self.metrics = NodeMetrics(self.events, self._gauges)
        self.audit_log = AuditLog(settings.config_dir)
        kind, url = backend_kind(settings.backend)
        self.backend_state = BackendState(kind=kind, url=url or kind, reachable=False, error="not asked yet")

    @property
    def settings(self) -> Settings:
        return self.store.settings

    @property
    def pool_key(self) -> PoolKey | None:
        """The keys of the private pool the settings name, or None in the LAN's open pool."""
        code = self.settings.pool_code
        if (self._pool_key.code if self._pool_key else "") != code:
            self._pool_key = pool_key(code)
        return self._pool_key

    @property
    def api_url(self) -> str:
        return f"http://{LOCAL_API_HOST}:{self.api_port}"

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the node is not started")
        return self._backend

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        return self._pool is not None

    def _gauges(self) -> Gauges:
        """Return what a scrape of the metrics reads: the node's state now."""
        # While the node stops, a scrape may still come: then it has no peers.
        peers = self._pool.peers if self._pool else []
        return Gauges(
            streams={api: forwarder.streams for api, forwarder in self._forwarders.items()},
            backend_active=self.admission.active,
            peers_queued=self.admission.waiting_remote,
            slots=self.settings.max_remote,
            sharing=self.settings.share,
            backend=self.backend_state,
            peers=[
                PeerGauge(
                    peer.announcement.name,
                    peer.node_id,
                    peer.announcement.share,
                    self.routing.breakers.state(peer.node_id),
                )
                for peer in peers
            ],
            telemetry=self.telemetry,
        )

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the node is not started")
        return self._pool

    async def start(self) -> None:
        """Listen on the local and share APIs, then join the LAN pool."""
        # Errors name the node, so a peer's user reading one relayed knows where it happened.
        self._backend = open_backend(
            self.settings.backend,
            connect_timeout_s=_BACKEND_CONNECT_TIMEOUT_S,
            name=f"{self.settings.name}'s backend",
            api_port=self.settings.api_port,
            # Kept out of the settings file and the command line, where other users could read it.
            api_key=self._environ.get(BACKEND_API_KEY_ENV) or None,
        )
        local = LocalApi(
            self._forwarder(self._plan, "local"),
            self._origins,
            listing_sources=self._listing_sources,
            peers=self.peers,
            explain_route=self.explain_route,
            switches=self.switch,
            pool=(self.pool_info, self.set_pool),
            audit=self.audit,
        )
        share = ShareApi(
            self._forwarder(self._plan_here, "share"),
            self.settings.name,
            sharing=lambda: self.settings.share,
            pool_pull=lambda: self.settings.pool_pull,
            key=lambda: self.pool_key,
        )
        # The share API listens on the chosen LAN interfaces, else on all of them.
        share_hosts = list(self.settings.interfaces) or ["0.0.0.0"]
        try:
            self.api_port = await self._listen(local.app(), [LOCAL_API_HOST], self.settings.api_port)
            self.share_port = await self._listen(
                share.app(),
                share_hosts,
                self.settings.share_port,
                self._share_tls(),
                idle_timeout_s=SHARE_IDLE_TIMEOUT_S,
            )
        except OSError:
            await self.close()
            raise
        self._pool = Pool(
            self.settings,
            self.announcement,
            key=lambda: self.pool_key,
            joined=self._peer_joined,
            answered=self._peer_answered,
            left=self._peer_left,
        )
        await self._pool.start()
        self._unsubscribe = self.store.events.subscribe(self._settings_changed)
        self._tasks.append(asyncio.create_task(self._probe_backend(), name="probe-backend"))
        self._tasks.append(asyncio.create_task(self._sample_telemetry(), name="sample-telemetry"))
        _log.info(
            "node %r serving the Ollama API on %s, backend %s at %s; share API on port %d (%s)",
            self.settings.name,
            self.api_url,
            self.backend.kind,
            self.backend.url,
            self.share_port,
            "sharing" if self.settings.share else "not sharing",
        )

    def _share_tls(self) -> ssl.SSLContext | None:
        """Return the share API's TLS context with --tls (its certificate made on first use), else None."""
        if not self.settings.tls:
            return None
        cert, key, self.tls_fingerprint = node_certificate(self.settings.config_dir, self.settings.name)
        return server_context(cert, key)

    def _forwarder(self, planner: Callable[[Query], Plan], api: str) -> Forwarder:
        self._forwarders[api] = Forwarder(
            self.settings,
            planner,
            status=self.status,
            metrics=lambda: (self.metrics.render(), CONTENT_TYPE),
            relayed=self._relayed,
            api=api,
            done=self._request_done,
        )
        return self._forwarders[api]

    async def _listen(
        self,
        app: web.Application,
        hosts: list[str],
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout_s: float = 3630.0,  # aiohttp's own default
    ) -> int:
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=_SHUTDOWN_GRACE_S,
            # aiohttp's keep-alive timeout counts from a connection's opening, and from each answer.
            keepalive_timeout=idle_timeout_s,
            # Bodies pass as they came, as Ollama takes them: one whose Content-Encoding does not decode
            # is the backend's to refuse, and one that does reaches it still encoded, as its header says.
            auto_decompress=False,
        )
        await runner.setup()
        self._runners.append(runner)
        for host in hosts:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
            # Port 0 picks a free port; further interfaces take the same one.
            port = runner.addresses[0][1]
        return port

    async def close(self) -> None:
        """Leave the pool, stop accepting, let in-flight requests finish for a grace period, then close."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._sampler.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._backend is not None:
            self._backend.close()
        for backend in self._peer_backends.values():
            backend.close()
        self._peer_backends.clear()

    def switch(self, changes: Mapping[str, bool] | None = None) -> dict[str, bool]:
        """Change some of the switches (share, local_only, pool_pull) through the settings store; return
        them all. Raise SettingsNotSaved, changing nothing, if the change cannot be saved."""
        if changes:
            self.store.change(**changes)
        return {key: getattr(self.settings, key) for key in SWITCHES}

    def peers(self) -> list[PeerState]:
        """Return the live peers, each with how this node's breaker sees it."""
        # While the node stops, the local API may still answer: then it has no peers.
        peers = self._pool.peers if self._pool else []
        return [peer.state(self.routing.breakers.describe(peer.node_id)) for peer in peers]

    def pool_info(self) -> dict[str, Any]:
        """Return the private pool this node is in (its id and join code), or nulls for the open pool."""
        key = self.pool_key
        return {"pool": key.pool_id if key else None, "code": key.code if key else None}

    def set_pool(self, code: str | None) -> dict[str, Any]:
        """Join the private pool of a join code, or with None go back to the LAN's open pool, through the
        settings store; peers are forgotten until they prove, by signing, that they are in the same pool."""
        self.store.change(pool_code=code or "")
        return self.pool_info()

    def _settings_changed(self, event: Event) -> None:
        """Apply what the owner changed that a running node takes at once: switches, the pool, peers."""
        if not isinstance(event, SettingsChanged) or self._pool is None:
            return
        settings, changed = event.settings, event.changed
        for switch in changed & set(SWITCHES):
            _log.info("%s: %s", switch.replace("_", " "), "on" if getattr(settings, switch) else "off")
        if "pool_code" in changed:
            key = self.pool_key
            _log.info("pool: %s", f"private pool {key.pool_id}" if key else "the LAN's open pool")
            self._pool.rekey()
        if "peers" in changed:
            self._pool.set_static_peers(settings.peers)
        if changed & {*SWITCHES, "pool_code"}:
            self._pool.readvertise()

    def audit(self, limit: int = MAX_ENTRIES) -> list[dict[str, Any]]:
        """Return the last `limit` requests peers had this machine serve, newest last, as JSON values."""
        return self.audit_log.entries(limit)

    def models_hash(self) -> str:
        """Return a short hash of the installed and loaded models, so peers see when they change."""
        state = self.backend_state
        text = (
            "\n".join(sorted(m.name for m in state.installed))
            + "|"
            + ",".join(sorted(m.name for m in state.loaded))
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def announcement(self) -> PeerAnnouncement:
        """Return what this node says about itself on mDNS."""
        telemetry = self.telemetry
        free = telemetry.vram_free_mib // _VRAM_STEP_MIB * _VRAM_STEP_MIB if telemetry else 0
        return PeerAnnouncement(
            node_id=self.settings.node_id,
            name=self.settings.name,
            address="",
            port=self.share_port,
            share=self.settings.share,
            gpu=telemetry.summary() if telemetry else "",
            vram_free_mib=free,
            vram_total_mib=telemetry.vram_total_mib if telemetry else 0,
            active=self.admission.active,
            slots=self.settings.max_remote,
            models_hash=self.models_hash(),
            pool=self.pool_key.pool_id if self.pool_key else "",
            tls=self.tls_fingerprint,
        )

    def status(self, now: float | None = None) -> NodeStatus:
        """Return the node's state: identity, switches, load, backend, GPUs and system, learnt speeds."""
        key = self.pool_key
        return NodeStatus(
            node_id=self.settings.node_id,
            name=self.settings.name,
            version=__version__,
            api_url=self.api_url,
            share=self.settings.share,
            local_only=self.settings.local_only,
            pool_pull=self.settings.pool_pull,
            pool=key.pool_id if key else None,
            # Peers pin it; a private pool's members sign it with the status.
            tls=self.tls_fingerprint or None,
            share_port=self.share_port,
            load=Load(
                active=self.admission.active,
                remote=self.admission.active_remote,
                waiting=self.admission.waiting_remote,
                slots=self.settings.max_remote,
                queue_full=self.admission.queue_full,
            ),
            models_hash=self.models_hash(),
            backend=self.backend_state,
            telemetry=self.telemetry,
            speeds=self.speeds.snapshot(time.monotonic() if now is None else now),
            peak_loaded_bytes=self.peak_loaded_bytes,
            tokens_generated=self.tokens_generated,
        )

    def _router_node(self) -> RouterNode:
        """Return this node as the router sees it, from its live state. What its models, machine and speeds
        say is made again only when they change (or a second has passed, for speeds to fade); its load
        and switches are read each time."""
        now = time.monotonic()
        basis = (self.backend_state, self.telemetry, self.speeds.learnt)
        cached = self._own_view
        if (
            cached is None
            or now - cached[0] > _OWN_VIEW_TTL_S
            or any(a is not b for a, b in zip(cached[1], basis, strict=True))
        ):
            cached = self._own_view = (now, basis, router_node(self.status(now), local=True))
        return dataclasses.replace(
            cached[2],
            share=self.settings.share,
            active=self.admission.active,
            waiting=self.admission.waiting_remote,
            slots=self.settings.max_remote,
            queue_full=self.admission.queue_full,
        )

    # -- routing -----------------------------------------------------------------------------------

    def explain_route(self, model: str) -> dict[str, Any]:
        """Say where a generation with `model` would go now, and why, as JSON values."""
        request = route_request("/api/generate", model, None, None, local_only=self.settings.local_only)
        return self.routing.decide(request, time.monotonic()).to_json()

    def _plan(self, query: Query) -> Plan:
        """Choose the nodes for a request to the local API, best first."""
        endpoint = query.endpoint
        pin = query.headers.get(NODE_HEADER)
        routed = endpoint.kind is Kind.INFERENCE or endpoint.pattern in _ROUTED_READS
        alone = self._pool is None or not len(self._pool.table)
        # Alone there is nothing to choose from, and a request is answered without a decision's cost.
        if (not routed or alone) and not (pin and (routed or endpoint.pattern == PULL_PATH)):
            return Plan([self._local_target(query.model, remote=False)])
        model = query.model
        if endpoint.pattern == "/v1/models/:model":
            model = unquote(query.path.rsplit("/", 1)[-1])
        now = time.monotonic()
        request = route_request(
            endpoint.pattern, model, query.fields, pin, local_only=self.settings.local_only
        )
        snapshot = self.routing.snapshot(now)
        if request.model and request.pin is None and _is_unload(endpoint.pattern, query.fields):
            holders = [
                n.node_id
                for n in snapshot.nodes
                if request.model in n.loaded and (n.local or (n.share and not self.settings.local_only))
            ]
            if holders:
                return Plan([self._target(node_id, request.model) for node_id in holders], broadcast=True)
        decision = choose_route(request, snapshot, now)
        _log.debug("route for %s: %s", request.model, decision.choice)
        if not decision.ranked:
            return self._no_route(query, decision, pin)
        if request.conversation:
            self.routing.conversations.remember(request.conversation, decision.ranked[0].node.node_id, now)
        return Plan([self._target(r.node.node_id, model) for r in decision.ranked])

    def _no_route(self, query: Query, decision: RouteDecision, pin: str | None) -> Plan:
        """Explain why no node can take the request; a model nobody has is this machine's to refuse."""
        if pin is not None:
            names = ", ".join(repr(x.node.name) for x in decision.left_out)
            raise ApiError(404, f"no node of the pool is named {pin!r} (it has {names})")
        holders = [f"{x.node.name}: {x.reason}" for x in decision.left_out if x.has_model]
        if holders:
            model = short_name(decision.model or "")
            return Plan([], unavailable=f"no node can serve {model} now ({'; '.join(holders)})")
        # Nobody has the model: this machine's backend refuses it in Ollama's own words.
        return Plan([self._local_target(query.model, remote=False)])

    def _plan_here(self, query: Query) -> Plan:
        """Send a peer's request to this machine's backend: the share API never routes further."""
        return Plan([self._local_target(query.model, remote=True)])

    def _listing_sources(self) -> list[Target]:
        """Return this node, then the peers whose models this node may use, for pool-wide listings."""
        sources = [self._local_target(None, remote=False)]
        if not self.settings.local_only and self._pool is not None:
            sources += [
                self._target(peer.node_id, None)
                for peer in self._pool.peers
                if peer.announcement.share and self.routing.breakers.allows(peer.node_id)
            ]
        return sources

    def _target(self, node_id: str, model: str | None) -> Target:
        """Return the target for a node of the snapshot: this machine's backend, or a peer's share API."""
        peer = self._pool.table.get(node_id) if self._pool is not None else None
        if peer is None:
            return self._local_target(model, remote=False)
        return Target(
            name=peer.announcement.name,
            backend=self._peer_backend(peer),
            admit=self._admitter(node_id, model, slot=None),
            report=self._reporter(node_id, model, learn=False),
        )

    def _local_target(self, model: str | None, *, remote: bool) -> Target:
        """Return the target for this machine's backend; a peer's inference waits for its turn."""
        return Target(
            name=self.settings.name,
            backend=self.backend,
            admit=self._admitter(
                self.settings.node_id, model, slot=self.admission.remote if remote else self.admission.local
            ),
            report=self._reporter(self.settings.node_id, model, learn=True),
        )

    def _admitter(
        self, node_id: str, model: str | None, *, slot: Callable[[], AbstractAsyncContextManager[None]] | None
    ) -> Admit:
        """Return how a request enters a node: inference takes a `slot` of this machine's backend, if given,
        and counts at the node until it ends; reads and the rest just go."""

        @contextlib.asynccontextmanager
        async def admit(endpoint: Endpoint) -> AsyncIterator[None]:
            if endpoint.kind is not Kind.INFERENCE:
                yield
                return
            async with slot() if slot else contextlib.nullcontext(), self._sent_to(node_id, model):
                yield

        return admit

    @contextlib.asynccontextmanager
    async def _sent_to(self, node_id: str, model: str | None) -> AsyncIterator[None]:
        """Count a request at a node until it ends, so routing sees it, and its model, before the node's
        status does."""
        started, key = time.monotonic(), model_key(model) if model else None
        self.routing.sent(node_id, started, key)
        try:
            yield
        finally:
            self.routing.done(node_id, started, key)

    def _reporter(self, node_id: str, model: str | None, *, learn: bool) -> Callable[[Outcome], None]:
        """Return what hears how an attempt at a node went: its breaker, and what its backend showed."""
        key = model_key(model) if model else None

        def report(outcome: Outcome) -> None:
            now = time.monotonic()
            if outcome.cancelled:
                return
            if outcome.failure is None:
                self.routing.breakers.succeeded(node_id)
                if learn and outcome.seen is not None and outcome.status == 200:
                    self.tokens_generated += outcome.seen.eval_count or 0
                    if key:
                        self.speeds.observe(key, outcome.seen, now)
            elif outcome.status not in _NOT_BROKEN_STATUSES:
                self.routing.breakers.failed(node_id, outcome.failure, now)
                if node_id == self.settings.node_id:
                    self._probe_wanted.set()

        return report

    def _peer_backend(self, peer: Peer) -> OllamaBackend:
        """Return the connections kept to a peer's share API, made anew if it moved."""
        pin = peer.announcement.tls or None
        scheme = "https" if pin else "http"
        url = f"{scheme}://{url_host(peer.announcement.address)}:{peer.announcement.port}"
        backend = self._peer_backends.get(peer.node_id)
        if backend is None or (backend.url, backend.pin) != (url, pin):
            if backend is not None:
                backend.close()
            backend = OllamaBackend(
                url,
                connect_timeout_s=_PEER_CONNECT_TIMEOUT_S,
                name=f"peer {peer.announcement.name!r}",
                hint="",
                sign=self._sign,
                pin=pin,
            )
            self._peer_backends[peer.node_id] = backend
        return backend

    def _sign(self, method: str, target: str, body: bytes) -> str | None:
        """Sign a request to a peer, in a private pool."""
        key = self.pool_key
        return key.sign_request(self.settings.node_id, method, target, body) if key else None

    def _peer_joined(self, peer: Peer) -> None:
        self.events.emit(PeerJoined(peer.node_id, peer.announcement.name, peer.announcement.address))

    def _peer_answered(self, node_id: str) -> None:
        self.routing.breakers.probed(node_id, time.monotonic())

    def _peer_left(self, peer: Peer, reason: str) -> None:
        """Cut the requests still at a peer that left: they end with an error instead of hanging."""
        self.routing.breakers.forget(peer.node_id)
        if backend := self._peer_backends.pop(peer.node_id, None):
            backend.abort(reason)
        self.events.emit(PeerLeft(peer.node_id, peer.announcement.name, reason))

    def _request_done(self, done: RequestDone) -> None:
        """Pass on how a request ended, with the peer it came from by name."""
        peer = self._pool.table.get(done.client) if self._pool and done.client else None
        if done.api == "share":
            self.audit_log.record(done, peer.announcement.name if peer else None)
        self.events.emit(dataclasses.replace(done, client=peer.announcement.name) if peer else done)

    def _relayed(self, endpoint: Endpoint) -> None:
        if endpoint.kind in _CHANGING_KINDS:
            self._probe_wanted.set()

    async def _probe_backend(self) -> None:
        """Keep backend_state current: every few seconds, and soon after requests that change it."""
        while True:
            self._probe_wanted.clear()
            state = await self.backend.probe()
            if state.reachable and not self.backend_state.reachable:
                _log.info(
                    "backend %s at %s is up: version %s, %d models installed, %d loaded",
                    state.kind,
                    state.url,
                    state.version,
                    len(state.installed),
                    len(state.loaded),
                )
            elif not state.reachable and state.error != self.backend_state.error:
                _log.warning("%s", state.error)
            if state.reachable:
                self.routing.breakers.probed(self.settings.node_id, time.monotonic())
                held = sum(m.size_vram or m.size for m in state.loaded)
                self.peak_loaded_bytes = max(self.peak_loaded_bytes, held)
            previous, self.backend_state = self.backend_state, state
            if (state.reachable, state.error) != (previous.reachable, previous.error):
                self.events.emit(BackendChanged(state.url, state.reachable, state.error))
            # A burst of requests asks for one probe, not one each: the backend serves them first.
            await asyncio.sleep(_PROBE_MIN_GAP_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PROBE_INTERVAL_S - _PROBE_MIN_GAP_S):
                    await self._probe_wanted.wait()

    async def _sample_telemetry(self) -> None:
        """Keep `telemetry` current; the sampler never raises and times out a hung NVML."""
        while True:
            self.telemetry = await self._sampler.sample()
            await asyncio.sleep(_TELEMETRY_INTERVAL_S)


def _is_unload(pattern: str, fields: Mapping[str, Any] | None) -> bool:
    """Tell a request to unload a model (keep_alive 0 and nothing to answer) from one to run it."""
    if pattern not in ("/api/generate", "/api/chat") or not fields:
        return False
    return unloads_now(fields.get("keep_alive")) and not fields.get("prompt") and not fields.get("messages")


async def serve(store: SettingsStore, stop: asyncio.Event) -> None:
    """Run a node until `stop` is set."""
    async with Node(store):
        await stop.wait()
    _log.info("node stopped")
