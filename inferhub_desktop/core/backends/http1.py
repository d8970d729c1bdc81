"""A small keep-alive HTTP/1.1 client for relaying to a backend, bytes untouched.

A relay needs little of a general HTTP client: send a request as it came, hand back the status,
the headers and the body as it arrives. Doing only that takes about a quarter off the time a node adds
to each request compared with aiohttp's client (see bench/proxy_overhead.py).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from aiohttp import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy

from ..tls import peer_fingerprint, pinning_context
from ..wire.errors import BackendUnavailable, InferhubError
from ..wire.keepalive import keep_alive

# Header blocks and chunk-size lines longer than this are not HTTP a backend would send.
_LINE_LIMIT = 1 << 20
_READ_SIZE = 1 << 16
# Statuses whose replies never have a body (RFC 9110 6.4.1).
_NO_BODY_STATUSES = frozenset({204, 304})
# TCP keepalive: a machine that vanished (power lost, link down) is noticed within 4 s even while a
# reply is awaited, where a model load may rightly hold the first byte for minutes, and a peer's status
# stream stays quiet between heartbeats.
VANISHED_S = 4
_KEEPALIVE_IDLE_S = 2
_KEEPALIVE_INTERVAL_S = 1


class HttpError(InferhubError):
    """The backend's connection failed, or what it sent is not HTTP/1.1."""


class Connection:
    """One TCP (or TLS) connection to the backend."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # Why the connection was cut from this side, which then is the error to report.
        self.aborted: str | None = None

    def close(self) -> None:
        self.writer.close()

    def abort(self, reason: str) -> None:
        self.aborted = reason
        self.writer.transport.abort()

    def error(self, exc: BaseException) -> HttpError:
        return HttpError(self.aborted or _describe(exc))


class Response:
    """A reply whose head has been read; its body is read on demand, once."""

    def __init__(
        self, connection: Connection, status: int, headers: CIMultiDict[str], *, has_body: bool
    ) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(headers)
        self._connection = connection
        self._has_body = has_body
        self.complete = not has_body
        self.reusable = headers.get("Connection", "").lower() != "close"

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives: each chunk of a chunked body as soon as it is whole."""
        if self.complete:
            return
        reader = self._connection.reader
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
                    yield await reader.readexactly(size)
                    await reader.readexactly(2)
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
                    pass
            elif (length := self.headers.get("Content-Length")) is not None:
                remaining = int(length)
                while remaining:
                    data = await reader.read(min(remaining, _READ_SIZE))
                    if not data:
                        raise HttpError(f"the reply ended {remaining} bytes short of its length")
                    remaining -= len(data)
                    yield data
            else:
                self.reusable = False  # the body runs to the end of the connection
                while data := await reader.read(_READ_SIZE):
                    yield data
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise self._connection.error(exc) from exc
        self.complete = True

    async def read(self) -> bytes:
        """Return the whole body."""
        return b"".join([chunk async for chunk in self.iter_chunks()])


class Http1Client:
    """Keep-alive connections to one backend URL, opened as needed and reused when a reply is done."""

    def __init__(
        self, url: str, *, connect_timeout_s: float, pin: str | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        # A peer's certificate is the one its fingerprint names: self-signed in the open pool, and in a
        # private pool signed by the pool's authority (checked by `tls`, the pool's mutual-TLS context).
        self._pin = pin
        self._ssl = (
            (tls or (pinning_context() if pin else ssl.create_default_context()))
            if parts.scheme == "https"
            else None
        )
        self._prefix = parts.path.rstrip("/")
        netloc_host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = f"{netloc_host}:{self._port}"
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | StreamReader | None
    ) -> tuple[Connection, Response]:
        """Send a request and read the reply's head; raise HttpError if that fails."""
        # A streamed body cannot be sent twice, so it never risks a kept-alive connection gone stale.
        if self._idle and not isinstance(body, StreamReader):
            connection = self._idle.pop()
            try:
                return connection, await self._exchange(connection, method, target, headers, body)
            except HttpError:
                # A kept-alive connection the backend closed meanwhile (it restarted, say) fails before
                # any reply; the request is sent once more on a new connection. A backend that died
                # while handling it may so see it twice; Ollama's requests bear that.
                connection.close()
                self._busy.discard(connection)
                if connection.aborted:
                    raise
        connection = await self._connect()
        try:
            return connection, await self._exchange(connection, method, target, headers, body)
        except BaseException:
            connection.close()
            self._busy.discard(connection)
            raise

    def release(self, connection: Connection, response: Response) -> None:
        """Keep the connection for the next request if its reply was read to the end, else close it."""
        self._busy.discard(connection)
        if response.complete and response.reusable:
            self._idle.append(connection)
        else:
            # Closing is also how the backend learns that a client left mid-reply.
            connection.close()

    async def connect(self) -> None:
        """Open a connection and close it again; raise HttpError if none can be opened."""
        (await self._connect()).close()

    def close(self) -> None:
        """Close the idle connections."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    def abort(self, reason: str) -> None:
        """Cut every connection, those awaiting or reading a reply too; their requests fail with `reason`."""
        self.close()
        for connection in self._busy:
            connection.abort(reason)
        self._busy.clear()

    async def _connect(self) -> Connection:
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl, limit=_LINE_LIMIT
                )
        except TimeoutError as exc:
            raise HttpError("timed out connecting") from exc
        except OSError as exc:
            raise HttpError(_describe(exc)) from exc
        if self._pin and (shown := peer_fingerprint(writer.get_extra_info("ssl_object"))) != self._pin:
            writer.close()
            raise HttpError(
                f"its TLS certificate {shown[:16]}… is not the one its record pins, {self._pin[:16]}…"
            )
        keep_alive(
            writer.get_extra_info("socket"),
            idle_s=_KEEPALIVE_IDLE_S,
            interval_s=_KEEPALIVE_INTERVAL_S,
            probes=(VANISHED_S - _KEEPALIVE_IDLE_S) // _KEEPALIVE_INTERVAL_S,
        )
        return Connection(reader, writer)

    async def _exchange(
        self,
        connection: Connection,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | StreamReader | None,
    ) -> Response:
        lines = [f"{method} {self._prefix}{target} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        streamed = isinstance(body, StreamReader)
        if streamed and "Content-Length" not in headers:
            lines.append("Transfer-Encoding: chunked")
        elif isinstance(body, bytes) or (body is None and method in ("POST", "PUT", "PATCH")):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
        writer = connection.writer
        self._busy.add(connection)
        try:
            if isinstance(body, bytes):
                writer.write(head + body)
            else:
                writer.write(head)
                if isinstance(body, StreamReader):
                    await _send_stream(writer, body, chunked="Content-Length" not in headers)
            await writer.drain()
            return await _read_head(connection, method)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise connection.error(exc) from exc


async def _send_stream(writer: asyncio.StreamWriter, body: StreamReader, *, chunked: bool) -> None:
    async for data in body.iter_any():
        writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")


async def _read_head(connection: Connection, method: str) -> Response:
    while True:
        block = await connection.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = block[:-4].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise HttpError(f"the backend did not answer in HTTP/1.1: {status_line[:80]!r}")
        status = int(rest[:3])
        if status >= 200 or status == 101:
            break  # 1xx replies (100 Continue, 103 Early Hints) come before the real one
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise HttpError(f"the backend sent a malformed header line: {line[:80]!r}")
        headers.add(name.strip(), value.strip())
    has_body = method != "HEAD" and status not in _NO_BODY_STATUSES and status >= 200
    response = Response(connection, status, headers, has_body=has_body)
    if version == "HTTP/1.0" and headers.get("Connection", "").lower() != "keep-alive":
        response.reusable = False
    return response


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the backend closed the connection mid-reply"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class _Upstream:
    """A reply as the API layer reads it: HttpError becomes BackendUnavailable, naming the server."""

    def __init__(self, response: Response, who: str) -> None:
        self._response = response
        self._who = who

    @property
    def status(self) -> int:
        return self._response.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._response.headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.iter_chunks():
                yield chunk
        except HttpError as exc:
            raise self._broken(exc) from exc

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except HttpError as exc:
            raise self._broken(exc) from exc

    def _broken(self, exc: HttpError) -> BackendUnavailable:
        return BackendUnavailable(f"{self._who} broke off its reply ({exc})")


class HttpBackend:
    """A model server reached over kept-alive HTTP/1.1 connections, requests sent as they are; its
    failures are BackendUnavailable errors that name it and say what to do (`hint`)."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float,
        name: str,
        hint: str,
        pin: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self.pin = pin
        self.tls = tls
        self._hint = hint
        self._client = Http1Client(url, connect_timeout_s=connect_timeout_s, pin=pin, tls=tls)

    @asynccontextmanager
    async def request(
        self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes | StreamReader | None
    ) -> AsyncIterator[_Upstream]:
        try:
            connection, response = await self._client.request(method, path_qs, headers, body)
        except HttpError as exc:
            raise self._unreachable(exc) from exc
        try:
            yield _Upstream(response, f"{self.name} at {self.url}")
        finally:
            self._client.release(connection, response)

    async def check(self) -> None:
        """Raise BackendUnavailable unless the server accepts a connection; no request is sent."""
        try:
            await self._client.connect()
        except HttpError as exc:
            raise self._unreachable(exc) from exc

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._client.close()

    def abort(self, reason: str) -> None:
        """Cut every connection, replies in progress too: the server is known to be gone."""
        self._client.abort(reason)

    def _unreachable(self, exc: HttpError) -> BackendUnavailable:
        hint = f". {self._hint}" if self._hint else ""
        return BackendUnavailable(f"cannot reach {self.name} at {self.url} ({exc}){hint}")
