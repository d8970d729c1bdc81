"""What the API layer needs from a backend: send a request, get a status, headers and body."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from aiohttp import StreamReader
from multidict import CIMultiDictProxy

# A request body: read in full, streamed from the client, or absent.
Body = bytes | StreamReader | None


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
