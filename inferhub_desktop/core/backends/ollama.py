"""Ollama as a backend: requests pass through unchanged."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

from ..errors import BackendUnavailable
from .base import Body

# Headers aiohttp would otherwise add on its own: the client's are forwarded instead, or none.
_NO_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type", "Accept")


class _Upstream:
    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        self._response = response
        self._url = url

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._broken(exc) from exc

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._broken(exc) from exc

    def _broken(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"the backend at {self._url} broke off its reply ({_reason(exc)})")


class OllamaBackend:
    """The machine's Ollama server, reached over HTTP with a shared connection pool."""

    kind = "ollama"

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session

    @asynccontextmanager
    async def request(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: Body
    ) -> AsyncIterator[_Upstream]:
        try:
            response = await self._session.request(
                method,
                # Already encoded as the client sent it; parsing it again would re-quote it.
                URL(self.url + path_qs, encoded=True),
                headers=headers,
                data=_payload(body),
                allow_redirects=False,
                skip_auto_headers=_NO_AUTO_HEADERS,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BackendUnavailable(
                f"cannot reach the Ollama backend at {self.url} ({_reason(exc)}). "
                "Start Ollama (`ollama serve`), or point InferHub at another server with --backend URL"
            ) from exc
        try:
            yield _Upstream(response, self.url)
        finally:
            # An unfinished body closes the connection, which is how Ollama learns the client left.
            response.release()


def _payload(body: Body) -> aiohttp.payload.Payload | StreamReader | None:
    if isinstance(body, bytes):
        # The body is in memory already; aiohttp's advice to wrap a large one in a BytesIO
        # would only add a copy and a thread.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            return aiohttp.payload.BytesPayload(body)
    return body


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connection refused"
        return exc.os_error.strerror or str(exc.os_error)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
