"""What the API layer needs from a backend: send a request, get a status, headers and body."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from aiohttp import StreamReader
from multidict import CIMultiDictProxy

from ..wire.records import Fields

# A request body: read in full, streamed from the client, or absent.
Body = bytes | StreamReader | None
# Bounds on what a peer's status may say of its backend.
_MAX_INSTALLED = 4096
_MAX_LOADED = 1024
_MAX_NAME_CHARS = 512


@dataclasses.dataclass(frozen=True)
class InstalledModel:
    """A model the backend has on disk, as /api/tags lists it."""

    name: str
    size: int
    digest: str
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""

    @classmethod
    def from_json(cls, fields: Fields) -> InstalledModel:
        return cls(
            name=fields.text("name", _MAX_NAME_CHARS),
            size=fields.integer("size", default=0),
            digest=fields.text("digest", 128, default=""),
            family=fields.text("family", 64, default=""),
            parameter_size=fields.text("parameter_size", 32, default=""),
            quantization_level=fields.text("quantization_level", 32, default=""),
        )


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model the backend holds in memory, as /api/ps lists it."""

    name: str
    size: int
    size_vram: int
    expires_at: str
    context_length: int | None = None

    @classmethod
    def from_json(cls, fields: Fields) -> LoadedModel:
        return cls(
            name=fields.text("name", _MAX_NAME_CHARS),
            size=fields.integer("size", default=0),
            size_vram=fields.integer("size_vram", default=0),
            expires_at=fields.text("expires_at", 64, default=""),
            context_length=fields.optional_integer("context_length", 0, 1 << 40),
        )


@dataclasses.dataclass(frozen=True)
class BackendState:
    """What a probe of the backend found; `error` says why it is unreachable or misbehaving."""

    kind: str
    url: str
    reachable: bool
    version: str | None = None
    installed: tuple[InstalledModel, ...] = ()
    loaded: tuple[LoadedModel, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the state as plain JSON values, for the status API."""
        return {
            **dataclasses.asdict(self),
            "installed": [dataclasses.asdict(m) for m in self.installed],
            "loaded": [dataclasses.asdict(m) for m in self.loaded],
        }

    @classmethod
    def from_json(cls, fields: Fields) -> BackendState:
        return cls(
            kind=fields.text("kind", 16),
            url=fields.text("url", 512),
            reachable=fields.flag("reachable"),
            version=fields.optional_text("version", 64),
            installed=tuple(InstalledModel.from_json(m) for m in fields.records("installed", _MAX_INSTALLED)),
            loaded=tuple(LoadedModel.from_json(m) for m in fields.records("loaded", _MAX_LOADED)),
            error=fields.optional_text("error", 4096),
        )


class UpstreamResponse(Protocol):
    """A backend's answer whose headers have arrived; the body is read on demand."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Yield body bytes as they arrive; raise BackendUnavailable if the connection breaks."""
        ...

    async def read(self) -> bytes:
        """Return the whole body; raise BackendUnavailable if the connection breaks."""
        ...


class Backend(Protocol):
    """A model server reachable over HTTP."""

    @property
    def kind(self) -> str: ...

    @property
    def url(self) -> str: ...

    def request(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: Body
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send a request; raise BackendUnavailable if no answer's headers arrive."""
        ...

    async def probe(self) -> BackendState:
        """Ask the backend for its version, installed and loaded models; never raise."""
        ...

    def close(self) -> None:
        """Release the connections kept to the backend."""
        ...
