"""Ollama as a backend: requests pass through unchanged."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from ..wire.errors import BackendUnavailable
from .base import BackendState, InstalledModel, LoadedModel
from .http1 import HttpBackend

# A probe asks three cheap questions; a backend slower than this is reported as not answering.
_PROBE_TIMEOUT_S = 3.0


class OllamaBackend(HttpBackend):
    """A server that speaks Ollama's API, reached over kept-alive HTTP/1.1 connections: the machine's
    Ollama, or a peer's share API. Requests pass through unchanged."""

    kind = "ollama"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        name: str = "the backend",
        hint: str = "Start Ollama (`ollama serve`), or point InferHub at another server with --backend",
        pin: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(url, connect_timeout_s=connect_timeout_s, name=name, hint=hint, pin=pin, tls=tls)

    async def probe(self) -> BackendState:
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                version, tags, ps = await asyncio.gather(
                    self._get_json("/api/version"), self._get_json("/api/tags"), self._get_json("/api/ps")
                )
            return BackendState(
                kind=self.kind,
                url=self.url,
                reachable=True,
                version=str(version["version"]),
                installed=tuple(_installed(m) for m in tags["models"] or ()),
                loaded=tuple(_loaded(m) for m in ps["models"] or ()),
            )
        except TimeoutError:
            error = f"{self.name} at {self.url} did not answer within {_PROBE_TIMEOUT_S:g} s"
        except BackendUnavailable as exc:
            error = str(exc)
        except (KeyError, TypeError, ValueError) as exc:
            error = f"{self.name} at {self.url} does not answer like Ollama ({type(exc).__name__}: {exc})"
        return BackendState(kind=self.kind, url=self.url, reachable=False, error=error)

    async def _get_json(self, path: str) -> dict[str, Any]:
        async with self.request("GET", path, {"Accept": "application/json"}, None) as upstream:
            body = await upstream.read()
            if upstream.status != 200:
                raise BackendUnavailable(
                    f"{self.name} at {self.url} answered {path} with HTTP {upstream.status}"
                )
        value = json.loads(body)
        if not isinstance(value, dict):
            raise TypeError(f"{path} answered {type(value).__name__}, not an object")
        return value


def _installed(entry: dict[str, Any]) -> InstalledModel:
    details = entry.get("details") or {}
    return InstalledModel(
        name=str(entry.get("model") or entry["name"]),
        size=int(entry.get("size") or 0),
        digest=str(entry.get("digest") or ""),
        family=str(details.get("family") or ""),
        parameter_size=str(details.get("parameter_size") or ""),
        quantization_level=str(details.get("quantization_level") or ""),
    )


def _loaded(entry: dict[str, Any]) -> LoadedModel:
    context_length = entry.get("context_length")
    return LoadedModel(
        name=str(entry.get("model") or entry["name"]),
        size=int(entry.get("size") or 0),
        size_vram=int(entry.get("size_vram") or 0),
        expires_at=str(entry.get("expires_at") or ""),
        context_length=int(context_length) if context_length is not None else None,
    )
