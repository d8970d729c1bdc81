"""The backend a setting names, and finding the model server on this machine when none is named."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from ..settings import AUTO_BACKEND, backend_kind
from ..wire.errors import BackendUnavailable
from .base import Backend, BackendState, Body, UpstreamResponse
from .ollama import OllamaBackend
from .openai import OpenAIBackend

_log = logging.getLogger(__name__)

# Where the usual local servers listen by default, in the order they are preferred.
CANDIDATES = (
    ("ollama", 11434, "Ollama"),
    ("openai", 1234, "LM Studio"),
    ("openai", 8080, "llama.cpp"),
    ("openai", 8000, "vLLM"),
)


def open_backend(
    spec: str, *, connect_timeout_s: float, name: str, api_port: int, api_key: str | None = None
) -> Backend:
    """Return the backend a `backend` setting names: `auto`, an Ollama URL, or `openai:URL`; `api_key` is
    for an OpenAI-compatible server started with one."""
    kind, url = backend_kind(spec)
    if kind == "auto":
        return AutoBackend(connect_timeout_s=connect_timeout_s, name=name, api_port=api_port, api_key=api_key)
    return _server(kind, url, connect_timeout_s=connect_timeout_s, name=name, api_key=api_key)


def _server(kind: str, url: str, *, connect_timeout_s: float, name: str, api_key: str | None) -> Backend:
    """Return the adapter for one server: Ollama's, or an OpenAI-compatible one's."""
    if kind == "openai":
        return OpenAIBackend(url, connect_timeout_s=connect_timeout_s, name=name, api_key=api_key)
    return OllamaBackend(url, connect_timeout_s=connect_timeout_s, name=name)


class AutoBackend:
    """Whichever usual local server answers: Ollama on 11434, else LM Studio, llama.cpp or vLLM on their
    default ports. Each probe keeps the server found while it answers, and looks again when it does not,
    so a server started after the node is found within a probe interval."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        name: str,
        api_port: int,
        candidates: tuple[tuple[str, int, str], ...] = CANDIDATES,
        api_key: str | None = None,
    ) -> None:
        self._name = name
        self._candidates: list[tuple[str, Backend]] = [
            (
                label,
                _server(
                    kind,
                    f"http://127.0.0.1:{port}",
                    connect_timeout_s=connect_timeout_s,
                    name=f"{name} ({label})",
                    api_key=api_key,
                ),
            )
            for kind, port, label in candidates
            # The node's own API, moved onto one of these ports, is no backend.
            if port != api_port
        ]
        self._found: Backend | None = None

    @property
    def kind(self) -> str:
        return self._found.kind if self._found else AUTO_BACKEND

    @property
    def url(self) -> str:
        return self._found.url if self._found else AUTO_BACKEND

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: Body
    ) -> AsyncIterator[UpstreamResponse]:
        if self._found is None:
            raise BackendUnavailable(self._nothing_found())
        async with self._found.request(method, path_qs, headers, body) as upstream:
            yield upstream

    async def probe(self) -> BackendState:
        if self._found is not None:
            state = await self._found.probe()
            if state.reachable:
                return state
            _log.info("%s at %s stopped answering; looking for another model server", self._name, self.url)
            self._found = None
        states = await asyncio.gather(*(backend.probe() for _, backend in self._candidates))
        for (label, backend), state in zip(self._candidates, states, strict=True):
            if state.reachable:
                _log.info("found %s at %s", label, backend.url)
                self._found = backend
                return state
        return BackendState(kind=AUTO_BACKEND, url=AUTO_BACKEND, reachable=False, error=self._nothing_found())

    def close(self) -> None:
        for _, backend in self._candidates:
            backend.close()

    def _nothing_found(self) -> str:
        where = ", ".join(f"{label} on {backend.url}" for label, backend in self._candidates)
        return (
            f"no model server answers on this machine (looked for {where}); start one, or name it with "
            "--backend URL (Ollama) or --backend openai:URL"
        )
