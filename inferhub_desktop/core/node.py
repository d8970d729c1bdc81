"""A node: the local API and the backend it relays to, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from .. import __version__
from .api.endpoints import Endpoint, Kind
from .api.guard import OriginPolicy
from .api.local import LocalApi
from .backends.base import Backend, BackendState
from .backends.ollama import OllamaBackend
from .settings import Settings
from .telemetry import Telemetry, TelemetrySampler

_log = logging.getLogger(__name__)

LOCAL_API_HOST = "127.0.0.1"
# Connecting is quick on a LAN; a model load may hold the first byte for minutes, so
# nothing else is timed.
_BACKEND_CONNECT_TIMEOUT_S = 10.0
# How long in-flight requests may finish after a stop is asked for.
_SHUTDOWN_GRACE_S = 5.0
# How often the backend is asked what it has; sooner after a request that may change it.
_PROBE_INTERVAL_S = 5.0
# How often the GPUs and the system are read.
_TELEMETRY_INTERVAL_S = 2.0
# Requests after which installed or loaded models may differ.
_CHANGING_KINDS = frozenset({Kind.INFERENCE, Kind.MANAGE, Kind.BLOB, Kind.PASSTHROUGH})


class Node:
    """One InferHub node; use as `async with Node(settings) as node:`."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
        self.settings = settings
        self._origins = OriginPolicy(environ)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
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

    async def start(self) -> None:
        """Open the backend connection pool and start listening on the local API port."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=_BACKEND_CONNECT_TIMEOUT_S),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._backend = OllamaBackend(self.settings.backend, self._session)
        api = LocalApi(
            self.settings, self._choose_backend, self._origins, status=self.status, relayed=self._relayed
        )
        self._runner = web.AppRunner(
            api.app(), handler_cancellation=True, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOCAL_API_HOST, self.settings.api_port)
        try:
            await site.start()
        except OSError:
            await self.close()
            raise
        self.api_port = self._runner.addresses[0][1]
        self._tasks.append(asyncio.create_task(self._probe_backend(), name="probe-backend"))
        self._tasks.append(asyncio.create_task(self._sample_telemetry(), name="sample-telemetry"))
        _log.info(
            "node %r serving the Ollama API on %s, backend %s at %s",
            self.settings.name,
            self.api_url,
            self.backend.kind,
            self.backend.url,
        )

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish for a grace period, then close."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._sampler.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def status(self) -> dict[str, Any]:
        """Return the node's state as JSON values: identity, API, backend, GPUs and system."""
        return {
            "id": self.settings.node_id,
            "name": self.settings.name,
            "version": __version__,
            "api_url": self.api_url,
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
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PROBE_INTERVAL_S):
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
