"""FakeRegistry: a model registry that speaks the part of the registry v2 API Ollama's pull uses, serving
the models of an Ollama models directory.

As registry.ollama.ai answers Ollama (server/images.go, server/download.go): `GET
/v2/<namespace>/<model>/manifests/<tag>` gives the manifest's bytes (404 for a model it lacks); `HEAD
/v2/<namespace>/<model>/blobs/<digest>` gives the blob's length; a `GET` of it without `Range` answers
where to download it from (`Location`; a real registry redirects to its CDN, which Ollama does not
follow to another host, so a registry on the same host answers 200 with the header); a `GET` with
`Range: bytes=A-B` sends those bytes (206). Knobs: serve a blob's bytes wrong, or cut the next part
transfers midway.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from tests.fakes.base import FakeServer

_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
_CHUNK = 1 << 20


class FakeRegistry(FakeServer):
    """Serve the models under `root` (an Ollama models directory) as registry `host`."""

    def __init__(self, root: Path, *, registry_host: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.root = root
        # The registry host the manifests are filed under (models pulled as HOST/namespace/model:tag).
        self.registry_host = registry_host
        self.corrupt: set[str] = set()
        # Part transfers still to cut after this many bytes.
        self.cuts: list[int] = []

    def build(self, app: web.Application) -> None:
        app.router.add_get("/v2/{namespace}/{model}/manifests/{tag}", self._manifest)
        app.router.add_route("*", "/v2/{namespace}/{model}/blobs/{digest}", self._blob)

    async def dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request)

    async def _manifest(self, request: web.Request) -> web.Response:
        m = request.match_info
        path = self.root / "manifests" / self.registry_host / m["namespace"] / m["model"] / m["tag"]
        if not path.is_file():
            return web.json_response(
                {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}, status=404
            )
        return web.Response(body=path.read_bytes(), content_type=_MANIFEST_TYPE)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        path = self.root / "blobs" / digest.replace(":", "-", 1)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest) or not path.is_file():
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        size = path.stat().st_size
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(size)})
        wanted = _RANGE.fullmatch(request.headers.get("Range", ""))
        if wanted is None:
            return web.Response(headers={"Location": str(request.url)})
        start, stop = int(wanted[1]), min(int(wanted[2]) + 1, size)
        reply = web.StreamResponse(
            status=206,
            headers={
                "Content-Range": f"bytes {start}-{stop - 1}/{size}",
                "Content-Length": str(stop - start),
            },
        )
        await reply.prepare(request)
        cut = self.cuts.pop(0) if self.cuts else None
        sent = 0
        with path.open("rb") as file:
            file.seek(start)
            while sent < stop - start:
                chunk = file.read(min(_CHUNK, stop - start - sent))
                if digest in self.corrupt:
                    chunk = bytes(b ^ 0xFF for b in chunk[:1]) + chunk[1:]
                if cut is not None and sent + len(chunk) > cut:
                    await reply.write(chunk[: cut - sent])
                    assert request.transport is not None
                    request.transport.abort()
                    return reply
                await reply.write(chunk)
                sent += len(chunk)
        return reply
