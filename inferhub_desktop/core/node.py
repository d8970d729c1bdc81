"""A node: the wiring of its parts and their lifecycle, and its state. The local and share APIs hand
requests to the dispatcher; the pool finds and follows peers; the backend is probed and the machine's
telemetry sampled; the settings come from the store."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import errno
import hashlib
import logging
import math
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from .. import __version__
from .api.feed import StatusFeed
from .api.guard import OriginPolicy
from .api.local import LocalApi
from .api.relay import CALLER_KEY, Forwarder
from .api.share import ShareApi
from .api.sites import ConnectionLimits, LimitedSite, connection_budget, who_holds
from .audit import MAX_ENTRIES, AuditLog, usage_on
from .backends.base import Backend, BackendState
from .backends.detect import open_backend
from .control import control_token
from .copying import ModelCopies
from .dispatch import Dispatcher
from .events import BackendChanged, Event, Events, PeerJoined, PeerLeft, RequestUnderway, SettingsChanged
from .health import Health, local_health
from .identity import Identity, load_identity
from .idle import Away, AwaySource, system_away_source
from .lending import Lender
from .library import Library, ModelName, models_dir
from .membership import Membership
from .metrics import CONTENT_TYPE, Gauges, NodeMetrics, PeerGauge
from .owner import OwnerGuard
from .peers import AddressState, Peer, PeerAnnouncement, PeerState, url_host
from .pool import PrivatePool, pool_info
from .router import RouterNode
from .settings import SETTINGS_FILE, SWITCHES, Settings, backend_kind, on_this_machine
from .status import Load, NodeStatus, OwnerState
from .store import SettingsStore
from .telemetry import Telemetry, TelemetrySampler
from .tls import server_context
from .views import router_node
from .wire.errors import ApiError, ConfigError, MalformedRecord, PortTaken

_log = logging.getLogger(__name__)

# The API key of an OpenAI-compatible backend started with one (llama-server --api-key, vLLM, LM Studio).
BACKEND_API_KEY_ENV = "INFERHUB_BACKEND_API_KEY"

LOCAL_API_HOST = "127.0.0.1"
# Free VRAM is advertised in steps of this size, so its small drifts do not rewrite the mDNS record.
_VRAM_STEP_MIB = 256
# Connecting is quick on a LAN; a model load may hold the first byte for minutes, so
# nothing else is timed.
_BACKEND_CONNECT_TIMEOUT_S = 10.0
# How long in-flight requests may finish after a stop is asked for.
_SHUTDOWN_GRACE_S = 5.0
# A connection to the share API that has not brought a whole request this long after it opened (or after
# its last answer) is closed: a slow client trickling headers holds nothing for long.
SHARE_IDLE_TIMEOUT_S = 15.0
_SHARE_LINGERING_S = 2.0
# How often the backend is asked what it has; sooner after a request that may change it.
_PROBE_INTERVAL_S = 5.0
# How long a starting node waits for its first word from the backend before it goes on without.
_FIRST_PROBE_WAIT_S = 1.0
_PROBE_MIN_GAP_S = 0.5
# How often the GPUs and the system are read: the owner's other work pauses sharing within two readings.
_TELEMETRY_INTERVAL_S = 1.0
# How often the owner's absence is read, where a setting needs it: it is counted in minutes.
_AWAY_INTERVAL_S = 5.0
# This node's view for the router is made again at least this often, for its learnt speeds to fade.
_OWN_VIEW_TTL_S = 1.0


class Node:
    """One InferHub node; use as `async with Node(store) as node:`."""

    def __init__(
        self,
        store: SettingsStore,
        environ: Mapping[str, str] = os.environ,
        *,
        sampler: TelemetrySampler | None = None,
        away: AwaySource | None = None,
    ) -> None:
        """`sampler` reads the GPUs and the system, `away` how long the owner has been away; by default,
        this machine's."""
        # The user's settings: read from here whenever they are needed, changed only through it.
        self.store = store
        settings = store.settings
        # What happened, for whoever watches the node (the desktop app).
        self.events = Events()
        self._origins = OriginPolicy(environ)
        self._environ = environ
        self._runners: list[web.AppRunner] = []
        self._membership: Membership | None = None
        # Set once a stop is asked for: the share API then tells peers asking for its status that it is going.
        self._stopping = False
        # This node's status, told to the peers that follow it as it changes.
        self._feed = StatusFeed(self.status)
        # Ollama's models directory on this machine: members copy models from it, and it from them.
        self._models_dir = models_dir(environ, Path.home())
        self._lender = Lender(lambda: self.settings, self._library, self._lent)
        # What the local API's control paths require; made when the node starts.
        self.control_token = ""
        # This machine's key pair, and the private pool it is a member of (None: the LAN's open pool);
        # read from the config directory when the node starts.
        self.identity: Identity | None = None
        self.pool: PrivatePool | None = None
        # The share API's certificate's fingerprint, in a private pool or with --tls; peers pin it.
        self.tls_fingerprint = ""
        self._share_runner: web.AppRunner | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.api_port = settings.api_port
        self.share_port = settings.share_port
        self._backend: Backend | None = None
        kind, url = backend_kind(settings.backend)
        self.backend_state = BackendState(kind=kind, url=url or kind, reachable=False, error="not asked yet")
        # The most model bytes the backend has held at once, from its probes: its room for models.
        self.peak_loaded_bytes = 0
        self.telemetry: Telemetry | None = None
        self._sampler = sampler or TelemetrySampler()
        self._away_source = away
        self._away = Away(None)
        self._away_read_at = -math.inf
        self._probe_wanted = asyncio.Event()
        self._probed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # This node's own view for the router: when it was made, from what, and the view.
        self._own_view: tuple[float, tuple[object, ...], RouterNode] | None = None
        self.audit_log = AuditLog(settings.config_dir)
        self.dispatcher = Dispatcher(
            lambda: self.settings,
            lambda: self.backend,
            self._router_node,
            lambda: self._membership.table if self._membership else None,
            lambda: self.pool.client_context if self.pool else None,
            events=self.events,
            audit=self.audit_log,
            backend_changed=self._probe_wanted.set,
        )
        self.copies = ModelCopies(
            lambda: self._membership.peers if self._membership else [],
            self.dispatcher.link,
            lambda: self._backend if self._backend is not None and self._backend.kind == "ollama" else None,
            lambda: f"{LOCAL_API_HOST}:{self.api_port}",
        )
        # The owner first: sharing pauses while the owner uses the machine, and peers' requests drain.
        self.guard = OwnerGuard(
            lambda: self.settings,
            self.dispatcher.admission,
            backend=lambda: self.backend,
            backend_state=lambda: self.backend_state,
            peers_only_models=self.dispatcher.peers_only_models,
            events=self.events,
            probe=self._probe_wanted.set,
            changed=self._readvertise,
        )
        self._forwarders: dict[str, Forwarder] = {}
        self.metrics = NodeMetrics(self.events, self._gauges)

    @property
    def settings(self) -> Settings:
        return self.store.settings

    @property
    def api_url(self) -> str:
        return f"http://{LOCAL_API_HOST}:{self.api_port}"

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the node is not started")
        return self._backend

    @property
    def membership(self) -> Membership:
        if self._membership is None:
            raise RuntimeError("the node is not started")
        return self._membership

    @property
    def running(self) -> bool:
        return self._membership is not None

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- lifecycle -------------------------------------------------------------------------------------

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
        config_dir = self.settings.config_dir
        self.control_token = control_token(config_dir)
        self.identity = load_identity(config_dir)
        self.pool = PrivatePool.load(config_dir, self.identity)
        local = LocalApi(
            self._forwarder("local"), self._origins, self, self.dispatcher, self.control_token, self.copies
        )
        self._forwarder("share")
        # Quiet hours and the owner's presence hold from the start: the node never offers itself to peers
        # for a moment before it looks (the GPU is looked at with its first reading).
        await self._watch_owner()
        try:
            self.api_port = await self._listen(
                local.app(), [LOCAL_API_HOST], self.settings.api_port, choose=("local API", "api")
            )
            self.share_port = await self._share(self.settings.share_port)
        except OSError:
            await self.close()
            raise
        self._membership = Membership(
            self.settings,
            self.announcement,
            pool=lambda: self.pool,
            joined=self._peer_joined,
            answered=self.dispatcher.answered,
            left=self._peer_left,
        )
        await self._membership.start()
        self._unsubscribe = self.store.events.subscribe(self._settings_changed)
        self.guard.switched()
        self._tasks.append(asyncio.create_task(self._probe_backend(), name="probe-backend"))
        self._tasks.append(asyncio.create_task(self._sample_telemetry(), name="sample-telemetry"))
        # A node that starts knowing its backend says so from its first status, rather than "down" for a
        # moment (a restart for new settings would show a model server that went and came back).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FIRST_PROBE_WAIT_S):
                await self._probed.wait()
        _log.info(
            "node %r serving the Ollama API on %s, backend %s at %s; share API on port %d (%s)",
            self.settings.name,
            self.api_url,
            self.backend.kind,
            self.backend.url,
            self.share_port,
            "sharing" if self.settings.share else "not sharing",
        )

    async def _share(self, port: int) -> int:
        """Listen with the share API, for the pool the node is in now; return its port."""
        share = ShareApi(
            self._forwarders["share"],
            self.settings.name,
            refusal=self.guard.refusal,
            pool_pull=lambda: self.settings.pool_pull,
            stopping=lambda: self._stopping,
            pool=lambda: self.pool,
            admitted=lambda member: self._roster_changed(),
            backend=lambda: self.backend_state,
            feed=self._feed,
            lender=self._lender,
            followed_by=self._followed_by,
        )
        # The share API listens on the chosen LAN interfaces, else on all of them.
        hosts = list(self.settings.interfaces) or ["0.0.0.0"]
        port = await self._listen(
            share.app(),
            hosts,
            port,
            self._share_tls(),
            choose=("share API", "share"),
            idle_timeout_s=SHARE_IDLE_TIMEOUT_S,
            limits=ConnectionLimits(connection_budget()),
            # A request answered before its body came whole (too large, too slow) gets its answer, and a
            # client that goes on trickling the body is let go soon after.
            lingering_s=_SHARE_LINGERING_S,
        )
        self._share_runner = self._runners[-1]
        return port

    async def copy_model(self, model: str) -> AsyncIterator[dict[str, Any]]:
        """Copy a model a member has into this machine's Ollama; yield Ollama's progress. Raise ApiError
        saying why where it cannot be."""
        backend = self.copies.backend()
        if backend is None:
            raise ApiError(409, "this machine's model server is not Ollama, which is what copies models in")
        try:
            name = ModelName.parse(model)
        except MalformedRecord as exc:
            raise ApiError(400, str(exc)) from None
        async for line in self.copies.pull(backend, name, None):
            yield line

    def _library(self) -> Library | None:
        """The models this machine's Ollama keeps, where that Ollama runs on this machine."""
        backend = self._backend
        if self._models_dir is None or backend is None or backend.kind != "ollama":
            return None
        if not on_this_machine(backend.url):
            return None
        return Library(self._models_dir)

    def _lent(self, name: ModelName, size: int, request: web.Request) -> None:
        """A peer started copying one of this machine's models: the audit log and the node's log say so."""
        caller = request.get(CALLER_KEY) or ""
        peer = self._membership.table.get(caller) if self._membership and caller else None
        who = peer.announcement.name if peer else None
        member = self.pool.roster.member(caller) if self.pool and caller else None
        who = who or (member.name if member else None)
        _log.info("lending %s (%d bytes) to %s", name, size, who or request.remote)
        self.audit_log.lent(str(name), size, caller, who, request.remote or "")

    def _share_tls(self) -> ssl.SSLContext | None:
        """Return the share API's TLS context: mutual TLS in a private pool, the identity's certificate
        with --tls in the open pool, else None (plain HTTP)."""
        assert self.identity is not None
        if self.pool is not None:
            self.tls_fingerprint = self.pool.fingerprint
            return self.pool.server_context
        self.tls_fingerprint = self.identity.fingerprint if self.settings.tls else ""
        return server_context(self.identity) if self.settings.tls else None

    def _forwarder(self, api: str) -> Forwarder:
        self._forwarders[api] = Forwarder(
            self.settings,
            self.dispatcher,
            api,
            status=self.status,
            metrics=lambda: (self.metrics.render(), CONTENT_TYPE),
        )
        return self._forwarders[api]

    async def _listen(
        self,
        app: web.Application,
        hosts: list[str],
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        choose: tuple[str, str],
        idle_timeout_s: float = 3630.0,  # aiohttp's own default
        limits: ConnectionLimits | None = None,
        lingering_s: float = 10.0,  # aiohttp's own default
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
            lingering_time=lingering_s,
        )
        await runner.setup()
        self._runners.append(runner)
        for host in hosts:
            site = (
                LimitedSite(runner, host, port, limits=limits, ssl_context=ssl_context)
                if limits is not None
                else web.TCPSite(runner, host, port, ssl_context=ssl_context)
            )
            try:
                await site.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                what, setting = choose
                holder = await who_holds(host, port)
                raise PortTaken(
                    f"cannot listen for the {what} on {url_host(host)}:{port}: {holder} holds that port. "
                    f"Stop it, or choose another port with --{setting}-port ({setting}_port in "
                    f"{self.settings.config_dir / SETTINGS_FILE})"
                ) from exc
            # Port 0 picks a free port; further interfaces take the same one.
            port = runner.addresses[0][1]
        return port

    async def close(self) -> None:
        """Leave the pool, stop accepting, let in-flight requests finish for a grace period, then close."""
        self._stopping = True
        # Followers of this node's status hear it stop at once, and drop it.
        self._feed.end()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._membership is not None:
            await self._membership.close()
            self._membership = None
        self.guard.close()
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
        self.dispatcher.close()

    # -- what the owner reads and changes --------------------------------------------------------------

    def switch(self, changes: Mapping[str, bool] | None = None) -> dict[str, bool]:
        """Change some of the switches (share, local_only, pool_pull) through the settings store; return
        them all. Raise SettingsNotSaved, changing nothing, if the change cannot be saved."""
        if changes:
            self.store.change(**changes)
        return {key: getattr(self.settings, key) for key in SWITCHES}

    def peers(self) -> list[PeerState]:
        """Return the live peers, each with how this node's breaker sees it."""
        # While the node stops, the local API may still answer: then it has no peers.
        peers = self._membership.peers if self._membership else []
        return [peer.state(self.dispatcher.breaker(peer.node_id)) for peer in peers]

    def health(self) -> Health:
        """Say whether this machine's requests are answered now, and why not fully where they are not."""
        return local_health(self.backend_state, self.peers(), local_only=self.settings.local_only)

    def probe_now(self) -> None:
        """Look for the model server now (the owner just started one), not at the next probe."""
        self._probe_wanted.set()

    def underway(self) -> list[RequestUnderway]:
        """Return the inference requests this node is answering now, its own and peers', oldest first."""
        return sorted((r for f in self._forwarders.values() for r in f.underway()), key=lambda r: r.at)

    def elsewhere(self) -> list[str]:
        """Return where the nodes on mDNS that belong to another pool are (HOST:PORT): seen, not used."""
        return self._membership.elsewhere() if self._membership else []

    def addresses(self) -> list[AddressState]:
        """Return the peers the owner named by address, each with how reaching it goes."""
        return self._membership.addresses() if self._membership else []

    def pool_info(self) -> dict[str, Any]:
        """Return the private pool this node is in, as JSON values: its public id, whether this machine is
        its authority, the roster's members (online or not) and the machines removed; for the open pool,
        a null id. With either, the private pools seen nearby on mDNS, whose authorities a machine asks to
        join. Never an invite code."""
        nearby = self._membership.private_pools() if self._membership else []
        online = {peer.node_id for peer in self.peers()} | {self.settings.node_id}
        return pool_info(self.pool, nearby=nearby, online=online)

    async def reload_pool(self) -> dict[str, Any]:
        """Take up the pool files as they are now (the command line or the app changed them: a pool made,
        joined, left, a member admitted or removed); return the pool. Raise ConfigError for files that
        cannot be used, keeping the pool the node was in."""
        assert self.identity is not None
        pool = PrivatePool.load(self.settings.config_dir, self.identity)
        before = self.pool
        same = (before is None and pool is None) or (
            before is not None
            and pool is not None
            and (before.pool_id, before.cert_der) == (pool.pool_id, pool.cert_der)
        )
        if same and before is not None and pool is not None:
            # The same pool: its roster (and whether this machine is its authority) may have changed.
            before.authority = pool.authority
            before.adopt(pool.roster)
            self._roster_changed()
        elif not same:
            _log.info("pool: %s", f"private pool {pool.pool_id}" if pool else "the LAN's open pool")
            self.pool = pool
            # The share API's TLS changes with the pool, which a listening socket cannot take: it listens
            # anew on the same port, and peers are forgotten until they prove they are in the pool.
            if self._share_runner is not None:
                self._feed.end()
                self._runners.remove(self._share_runner)
                await self._share_runner.cleanup()
                self.share_port = await self._share(self.share_port)
            if self._membership is not None:
                self._membership.rekey()
        return self.pool_info()

    def remove_member(self, who: str) -> dict[str, Any]:
        """Remove a machine (by node id or name) from the pool this machine is the authority of: every
        member refuses it once it has the new roster. Raise ConfigError saying why it cannot be done."""
        if self.pool is None:
            raise ConfigError("this machine is in the LAN's open pool, which has no members to remove")
        self.pool.remove(self.pool.roster.resolve(who))
        self._roster_changed()
        return self.pool_info()

    def _roster_changed(self) -> None:
        if self._membership is not None:
            self._membership.roster_changed()

    def _settings_changed(self, event: Event) -> None:
        """Apply what the owner changed that a running node takes at once: switches, the pool, peers."""
        if not isinstance(event, SettingsChanged) or self._membership is None:
            return
        settings, changed = event.settings, event.changed
        for switch in changed & set(SWITCHES):
            _log.info("%s: %s", switch.replace("_", " "), "on" if getattr(settings, switch) else "off")
        if "peers" in changed:
            self._membership.set_static_peers(settings.peers)
        if "share" in changed:
            self.guard.switched()
        if changed & set(SWITCHES):
            self._membership.readvertise()

    def explain_route(self, model: str) -> dict[str, Any]:
        """Say where a generation with `model` would go now, and why, as JSON values."""
        return self.dispatcher.explain(model)

    def usage(self) -> dict[str, Any]:
        """Say who uses this machine now (peers' requests running or waiting here, by peer) and what each
        peer had it serve today (from the audit log), as JSON values; `whole_day` is false when the log's
        last entries do not reach back to midnight."""
        names = {peer.node_id: peer.name for peer in self.peers()}
        now = collections.Counter(
            names.get(r.client) or (f"id {r.client[:8]}" if r.client else "a peer")
            for r in self.underway()
            if r.api == "share"
        )
        today, whole = usage_on(self.audit_log.entries(MAX_ENTRIES), datetime.date.today())
        return {
            "now": [{"peer": peer, "requests": n} for peer, n in now.most_common()],
            "today": [dataclasses.asdict(u) for u in today],
            "whole_day": whole,
        }

    def audit(self, limit: int = MAX_ENTRIES) -> list[dict[str, Any]]:
        """Return the last `limit` requests peers had this machine serve, newest last, as JSON values."""
        return self.audit_log.entries(limit)

    # -- state -----------------------------------------------------------------------------------------

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
            # Peers that read only the record see a paused machine as not sharing.
            share=self.guard.sharing,
            gpu=telemetry.summary() if telemetry else "",
            vram_free_mib=free,
            vram_total_mib=telemetry.vram_total_mib if telemetry else 0,
            active=self.dispatcher.admission.active,
            slots=self.settings.max_remote,
            models_hash=self.models_hash(),
            pool=self.pool.pool_id if self.pool else "",
            tls=self.tls_fingerprint,
        )

    def status(self, now: float | None = None) -> NodeStatus:
        """Return the node's state: identity, switches, load, backend, GPUs and system, learnt speeds."""
        pool = self.pool
        return NodeStatus(
            node_id=self.settings.node_id,
            name=self.settings.name,
            version=__version__,
            api_url=self.api_url,
            share=self.settings.share,
            local_only=self.settings.local_only,
            pool_pull=self.settings.pool_pull,
            pool=pool.pool_id if pool else None,
            roster=pool.roster.version if pool else None,
            # Peers pin it; in a private pool it is the certificate the authority signed.
            tls=self.tls_fingerprint or None,
            share_port=self.share_port,
            load=self._load(),
            models_hash=self.models_hash(),
            backend=self.backend_state,
            telemetry=self.telemetry,
            speeds=self.dispatcher.speeds.snapshot(time.monotonic() if now is None else now),
            peak_loaded_bytes=self.peak_loaded_bytes,
            tokens_generated=self.dispatcher.tokens_generated,
            owner=self._owner_state(),
        )

    def _owner_state(self) -> OwnerState:
        pause = self.guard.pause
        return OwnerState(
            paused=pause.reason if pause else None,
            resumes_in_s=pause.resumes_in_s if pause else None,
            reserve_mib=self.settings.reserve_vram_gib * 1024,
            watching=self.guard.watching(self.telemetry),
        )

    def _load(self) -> Load:
        admission = self.dispatcher.admission
        return Load(
            active=admission.active,
            remote=admission.active_remote,
            waiting=admission.waiting_remote,
            slots=self.settings.max_remote,
            queue_full=admission.queue_full,
            waiting_batch=admission.waiting_batch,
        )

    def _router_node(self) -> RouterNode:
        """Return this node as the router sees it, from its live state. What its models, machine and speeds
        say is made again only when they change (or a second has passed, for speeds to fade); its load
        and switches are read each time."""
        now = time.monotonic()
        basis = (self.backend_state, self.telemetry, self.dispatcher.speeds.learnt, self.settings)
        cached = self._own_view
        if (
            cached is None
            or now - cached[0] > _OWN_VIEW_TTL_S
            or any(a is not b for a, b in zip(cached[1], basis, strict=True))
        ):
            cached = self._own_view = (now, basis, router_node(self.status(now), local=True))
        load = self._load()
        return dataclasses.replace(
            cached[2],
            share=self.settings.share,
            active=load.active,
            waiting=load.waiting,
            waiting_batch=load.waiting_batch,
            slots=load.slots,
            queue_full=load.queue_full,
        )

    def _gauges(self) -> Gauges:
        """Return what a scrape of the metrics reads: the node's state now."""
        # While the node stops, a scrape may still come: then it has no peers.
        peers = self._membership.peers if self._membership else []
        load = self._load()
        return Gauges(
            streams={api: forwarder.streams for api, forwarder in self._forwarders.items()},
            backend_active=load.active,
            peers_queued=load.waiting,
            slots=load.slots,
            sharing=self.settings.share,
            backend=self.backend_state,
            peers=[
                PeerGauge(
                    peer.announcement.name,
                    peer.node_id,
                    peer.announcement.share,
                    self.dispatcher.breakers.state(peer.node_id),
                )
                for peer in peers
            ],
            telemetry=self.telemetry,
        )

    # -- what the pool, the backend and the machine tell ------------------------------------------------

    def _peer_joined(self, peer: Peer) -> None:
        self.events.emit(PeerJoined(peer.node_id, peer.announcement.name, peer.announcement.address))

    def _peer_left(self, peer: Peer, reason: str) -> None:
        self.dispatcher.left(peer, reason)
        self.events.emit(PeerLeft(peer.node_id, peer.announcement.name, reason))

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
                self.dispatcher.answered(self.settings.node_id)
                held = sum(m.size_vram or m.size for m in state.loaded)
                self.peak_loaded_bytes = max(self.peak_loaded_bytes, held)
            previous, self.backend_state = self.backend_state, state
            self._probed.set()
            if (state.reachable, state.error) != (previous.reachable, previous.error):
                self.events.emit(BackendChanged(state.url, state.reachable, state.error))
            if state.installed != previous.installed or state.reachable != previous.reachable:
                self._feed.poke()
            # A burst of requests asks for one probe, not one each: the backend serves them first.
            await asyncio.sleep(_PROBE_MIN_GAP_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PROBE_INTERVAL_S - _PROBE_MIN_GAP_S):
                    await self._probe_wanted.wait()

    async def _sample_telemetry(self) -> None:
        """Keep `telemetry` current, and let the owner guard judge each reading; the sampler never raises
        and times out a hung NVML."""
        while True:
            self.telemetry = await self._sampler.sample()
            await self._watch_owner()
            await asyncio.sleep(_TELEMETRY_INTERVAL_S)

    async def _watch_owner(self) -> None:
        """Let the owner guard judge the machine as it is now; a failure is logged, and watching goes on."""
        try:
            self.guard.observe(
                self.telemetry, await self._read_away(), time.monotonic(), datetime.datetime.now()
            )
        except Exception:
            _log.exception("watching for the owner's use of this machine failed; trying again")

    async def _read_away(self) -> Away:
        """Read how long the owner has been away, where a setting needs it and at most every few seconds
        (it may start an OS tool); off the loop."""
        if not self.settings.share_when_away_min:
            return Away(None)
        now = time.monotonic()
        if now - self._away_read_at >= _AWAY_INTERVAL_S:
            self._away_read_at = now
            if self._away_source is None:
                self._away_source = await asyncio.to_thread(system_away_source)
                _log.info("the owner's absence is read from %s", self._away_source.how)
            self._away = await asyncio.to_thread(self._away_source.away)
        return self._away

    def _followed_by(self, host: str, port: int) -> None:
        if self._membership is not None:
            self._membership.followed_by(host, port)

    def _readvertise(self) -> None:
        self._feed.poke()
        if self._membership is not None:
            self._membership.readvertise()


async def serve(store: SettingsStore, stop: asyncio.Event) -> None:
    """Run a node until `stop` is set."""
    async with Node(store):
        await stop.wait()
    _log.info("node stopped")
