"""Lending this machine's models to the pool: their manifests and blobs, read from Ollama's models
directory and served on the share API, to the members of this machine's private pool (or, where the owner
lets it, to the whole LAN), at no more than the rate the owner allows.

    GET|HEAD MODELS_PREFIX + "manifests/<host>/<namespace>/<model>/<tag>"   the manifest's bytes
    GET|HEAD MODELS_PREFIX + "blobs/sha256:<hex>"                          a blob, with Range

A peer copying a model reads its manifest first: that read is the copy, as the audit log records it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from .library import MANIFEST_TYPE, Library, ModelName
from .settings import Settings
from .wire.endpoints import MODELS_PREFIX
from .wire.errors import ApiError, MalformedRecord

_MANIFEST = re.compile(MODELS_PREFIX + r"manifests/([^/]+)/([^/]+)/([^/]+)/([^/]+)")
_BLOB = re.compile(MODELS_PREFIX + r"blobs/(sha256:[0-9a-f]{64})")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_CHUNK = 1 << 20


class Lender:
    """Answer peers' reads of this machine's models."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        library: Callable[[], Library | None],
        lent: Callable[[ModelName, int, web.Request], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._library = library
        # Told of each copy a peer starts (its manifest read), for the audit log.
        self._lent = lent
        self._throttle = _Throttle(clock)

    def refusal(self, private_pool: bool) -> str | None:
        """Say why peers may not copy models from here now, or None if they may."""
        lend = self._settings().lend_models
        if lend == "off":
            return "this machine's owner does not lend its models (lend_models is off)"
        if lend == "members" and not private_pool:
            return (
                "this machine lends its models only to the members of its private pool; its owner can let "
                'the whole LAN copy them (lend_models = "lan")'
            )
        if self._library() is None:
            return "this machine has no Ollama models directory to lend from"
        return None

    async def answer(self, request: web.Request, private_pool: bool) -> web.StreamResponse:
        """Serve a manifest or a blob; raise ApiError for what cannot be served."""
        if request.method not in ("GET", "HEAD"):
            raise ApiError(405, "models are only read here")
        if refusal := self.refusal(private_pool):
            raise ApiError(403, refusal)
        library = self._library()
        assert library is not None
        if found := _MANIFEST.fullmatch(request.path):
            try:
                name = ModelName.parse(f"{found[1]}/{found[2]}/{found[3]}:{found[4]}")
            except MalformedRecord as exc:
                raise ApiError(400, str(exc)) from None
            manifest = library.manifest(name)
            if manifest is None:
                raise ApiError(404, f"model '{name}' not found on this machine")
            if request.method == "GET":
                self._lent(name, manifest.size, request)
            return web.Response(body=manifest.raw, headers={"Content-Type": MANIFEST_TYPE})
        if found := _BLOB.fullmatch(request.path):
            path = library.blob(found[1])
            if path is None:
                raise ApiError(404, f"blob {found[1]} not found on this machine")
            return await self._send(request, path)
        raise ApiError(404, "404 page not found")

    async def _send(self, request: web.Request, path: Path) -> web.StreamResponse:
        """Send a blob, or the range of it asked for, at no more than the owner's rate."""
        rate = self._settings().lend_mib_s * 1024 * 1024
        if not rate:
            # Unthrottled, the kernel sends the file (sendfile where the connection is not TLS).
            return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
        size = (await asyncio.to_thread(path.stat)).st_size
        start, stop = 0, size
        status = 200
        if wanted := _RANGE.fullmatch(request.headers.get("Range", "")):
            start, stop = int(wanted[1]), min(int(wanted[2]) + 1 if wanted[2] else size, size)
            if start >= size or start >= stop:
                raise ApiError(416, f"range {request.headers['Range']} is not within the blob's {size} bytes")
            status = 206
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(stop - start)}
        headers["Accept-Ranges"] = "bytes"
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        reply = web.StreamResponse(status=status, headers=headers)
        await reply.prepare(request)
        if request.method == "HEAD":
            return reply
        with path.open("rb") as file:
            file.seek(start)
            left = stop - start
            while left:
                chunk = await asyncio.to_thread(file.read, min(_CHUNK, left))
                if not chunk:
                    break  # the file shrank: the peer sees a short reply, and its pull checks the digest
                await self._throttle.take(len(chunk), rate)
                await reply.write(chunk)
                left -= len(chunk)
        return reply


class _Throttle:
    """One rate for every copy at once: each chunk waits until the bytes sent stay within it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        # When the bytes taken so far may all have gone out at the rate.
        self._free_at = 0.0

    async def take(self, size: int, rate: float) -> None:
        now = self._clock()
        # A pause longer than a second earns no burst after it.
        self._free_at = max(self._free_at, now - 1.0) + size / rate
        if (wait := self._free_at - now) > 0:
            await asyncio.sleep(wait)
