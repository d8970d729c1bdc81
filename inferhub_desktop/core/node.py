"""A node: the local and share APIs, the backend they relay to, telemetry and the pool, run together."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from .. import __version__
from .api.admission import Admission
from .api.endpoints import Endpoint, Kind
from .api.guard import OriginPolicy
from .api.local import LocalApi
from .api.share import ShareApi
from .backends.base import Backend, BackendState
from .backends.ollama import OllamaBackend
from .peers import PeerAnnouncement
from .pool import Pool
from .settings import Settings, update_settings_file
from .telemetry import Telemetry, TelemetrySampler

_log = logging.getLogger(__name__)

LOCAL_API_HOST = "127.0.0.1"
# Free VRAM is advertised in steps of this size, so its small drifts do not rewrite the mDNS record.
_VRAM_STEP_MIB = 256
# Connecting is quick on a LAN; a model load may hold the first byte for minutes, so
# nothing else is timed.
_BACKEND_CONNECT_TIMEOUT_S = 10.0
# How long in-flight requests may finish after a stop is asked for.
_SHUTDOWN_GRACE_S = 5.0
# How often the backend is asked what it has; sooner after a request that may change it.
_PROBE_INTERVAL_S = 5.0
_PROBE_MIN_GAP_S = 0.5
# How often the GPUs and the system are read.
_TELEMETRY_INTERVAL_S = 2.0
# Requests after which installed or loaded models may differ.
_CHANGING_KINDS = frozenset({Kind.INFERENCE, Kind.MANAGE, Kind.BLOB, Kind.PASSTHROUGH})


class Node:
    """One InferHub node; use as `async with Node(settings) as node:`."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
        self.settings = settings
        self._origins = OriginPolicy(environ)
        self._runners: list[web.AppRunner] = []
        self._pool: Pool | None = None
        self.admission = Admission(slots=settings.max_remote, max_remote=settings.max_remote)
        self.sharing = settings.share
        self.share_port = settings.share_port
        self._backend: Backend | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._probe_wanted = asyncio.Event()
        self._sampler = TelemetrySampler()
        self.telemetry: Telemetry | None = None
        self.api_port = settings.api_port
        self.backend_state = BackendState(
            kind="ollama", url=settings.backend, reachable=False, error="not asked yet"
        )

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
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the node is not started")
        return self._pool

    async def start(self) -> None:
        """Listen on the local and share APIs, then join the LAN pool."""
        self._backend = OllamaBackend(self.settings.backend, connect_timeout_s=_BACKEND_CONNECT_TIMEOUT_S)
        local = LocalApi(
            self.settings,
            self._choose_backend,
            self._origins,
            admission=self.admission,
            status=self.status,
            relayed=self._relayed,
            # While the node stops, the local API may still answer: then it has no peers.
            peers=lambda: [peer.to_json() for peer in self._pool.peers] if self._pool else [],
            set_sharing=self.set_sharing,
        )
        share = ShareApi(
            self.settings,
            self._choose_backend,
            self.admission,
            sharing=lambda: self.sharing,
            status=self.status,
            relayed=self._relayed,
        )
        # The share API listens on the chosen LAN interfaces, else on all of them.
        share_hosts = list(self.settings.interfaces) or ["0.0.0.0"]
        try:
            self.api_port = await self._listen(local.app(), [LOCAL_API_HOST], self.settings.api_port)
            self.share_port = await self._listen(share.app(), share_hosts, self.settings.share_port)
        except OSError:
            await self.close()
            raise
        self._pool = Pool(self.settings, self.announcement)
        await self._pool.start()
        self._tasks.append(asyncio.create_task(self._probe_backend(), name="probe-backend"))
        self._tasks.append(asyncio.create_task(self._sample_telemetry(), name="sample-telemetry"))
        _log.info(
            "node %r serving the Ollama API on %s, backend %s at %s; share API on port %d (%s)",
            self.settings.name,
            self.api_url,
            self.backend.kind,
            self.backend.url,
            self.share_port,
            "sharing" if self.sharing else "not sharing",
        )

    async def _listen(self, app: web.Application, hosts: list[str], port: int) -> int:
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S
        )
        await runner.setup()
        self._runners.append(runner)
        for host in hosts:
            await web.TCPSite(runner, host, port).start()
            # Port 0 picks a free port; further interfaces take the same one.
            port = runner.addresses[0][1]
        return port

    async def close(self) -> None:
        """Leave the pool, stop accepting, let in-flight requests finish for a grace period, then close."""
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

    def set_sharing(self, share: bool) -> None:
        """Share this GPU with the pool, or stop; remembered in the settings file."""
        if share != self.sharing:
            self.sharing = share
            update_settings_file(self.settings.config_dir, share=share)
            if self._pool is not None:
                self._pool.readvertise()
            _log.info("sharing this GPU with the pool: %s", "on" if share else "off")

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
            share=self.sharing,
            gpu=telemetry.summary() if telemetry else "",
            vram_free_mib=free,
            vram_total_mib=telemetry.vram_total_mib if telemetry else 0,
            active=self.admission.active,
            slots=self.settings.max_remote,
            models_hash=self.models_hash(),
        )

    def status(self) -> dict[str, Any]:
        """Return the node's state as JSON values: identity, API, backend, GPUs and system."""
        return {
            "id": self.settings.node_id,
            "name": self.settings.name,
            "version": __version__,
            "api_url": self.api_url,
            "share": self.sharing,
            "share_port": self.share_port,
            "load": {
                "active": self.admission.active,
                "remote": self.admission.active_remote,
                "waiting": self.admission.waiting_remote,
                "slots": self.settings.max_remote,
            },
            "models_hash": self.models_hash(),
            "backend": self.backend_state.to_json(),
            "telemetry": self.telemetry.to_json() if self.telemetry else None,
        }

    def _choose_backend(self, endpoint: Endpoint, model: str | None) -> Backend:
        return self.backend

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
            self.backend_state = state
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


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run a node until `stop` is set."""
    async with Node(settings):
        await stop.wait()
    _log.info("node stopped")
