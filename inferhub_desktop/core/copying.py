"""Copying a model from pool members into this machine's Ollama, with Ollama's own downloader.

A pull of a model some member has is turned into a pull from a registry this node serves on its local API
for that copy alone: `127.0.0.1:PORT/inferhub-<random>/<model>:<tag>`, with `"insecure": true`. Ollama
fetches the manifest and each blob from it as from any registry (in parts, with `Range`, resuming a part
from where it stopped, verifying every digest, writing nothing it has not verified); the node fetches each
from the members that have the model (lending.py): the manifest from the first that answers, each part of
a blob from the members in turn, and from the next one when a member fails or leaves. When the pull is
done, the node names the model as the user asked (`/api/copy`, which shares the blobs) and drops the
temporary name. A blob that does not match its digest is refused by Ollama: the pull is made again
without the member that sent it. When no member has the model, or none could give it, the pull goes to
the model's registry as before (unless the user named a member to copy from).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from aiohttp import web

from .backends.base import Backend
from .library import MANIFEST_TYPE, Manifest, ModelName
from .peers import Peer
from .wire.endpoints import MODELS_PREFIX
from .wire.errors import ApiError, BackendUnavailable, MalformedRecord

_log = logging.getLogger(__name__)

# A header of the local API's /api/pull: the node (name or id) to copy from, or "registry".
FROM_HEADER = "X-InferHub-From"
_SESSION_PREFIX = "inferhub-"
_REGISTRY = re.compile(r"/v2/(inferhub-[0-9a-f]{16})/([^/]+)/(manifests/[^/]+|blobs/sha256:[0-9a-f]{64})")
_MISMATCH = re.compile(r"digest mismatch.*want (sha256:[0-9a-f]{64})")


@dataclasses.dataclass
class _Copy:
    """One copy under way: the model, the members it may come from, and which served each blob."""

    name: ModelName
    digest: str  # the manifest's sha256, as the members list the model
    sources: list[Peer]
    manifest: Manifest | None = None
    # The members each blob's parts came from, and the one member a blob comes from once Ollama refused
    # it as sent by several: if that one sends it wrong too, it is the one left out.
    served: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    pinned: dict[str, Peer] = dataclasses.field(default_factory=dict)
    turn: itertools.count[int] = dataclasses.field(default_factory=itertools.count)

    def refused(self, digest: str) -> Peer | None:
        """Ollama refused a blob: leave out the member that sent it wrong, where that is known (else send
        it from one member only, next time); return the member left out."""
        suspects = [p for p in self.sources if p.node_id in self.served.pop(digest, set())]
        bad = self.pinned.pop(digest, None) or (suspects[0] if len(suspects) == 1 else None)
        if bad is not None and bad in self.sources:
            self.sources.remove(bad)
        elif suspects:
            self.pinned[digest] = suspects[0]
        return bad

    def senders(self, digest: str) -> list[Peer]:
        """The members a part of a blob may come from, the next one first."""
        if (pinned := self.pinned.get(digest)) is not None:
            return [pinned]
        start = next(self.turn)
        return [self.sources[(start + i) % len(self.sources)] for i in range(len(self.sources))]


class ModelCopies:
    """The copies under way, and the registry this node serves Ollama for them."""

    def __init__(
        self,
        peers: Callable[[], list[Peer]],
        link: Callable[[Peer], Backend],
        backend: Callable[[], Backend | None],
        local_host: Callable[[], str],
    ) -> None:
        self._peers = peers
        self._link = link
        # This machine's Ollama (None while its backend is another kind of server, which has no pull).
        self.backend = backend
        # HOST:PORT of the local API, as this machine's Ollama reaches it.
        self._local_host = local_host
        self._copies: dict[str, _Copy] = {}

    def members_with(self, name: ModelName) -> list[tuple[Peer, str]]:
        """Return the members that have the model, with its digest on each."""
        found = []
        for peer in self._peers():
            for model in peer.status.backend.installed:
                with contextlib.suppress(MalformedRecord):
                    if ModelName.parse(model.name) == name:
                        found.append((peer, model.digest))
        return found

    async def pull(
        self, backend: Backend, name: ModelName, source: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        """Copy a model from the members that have it; yield Ollama's progress lines. `source` names the
        one member to copy from (else: any that has it). Raise ApiError where no member can give it."""
        having = self.members_with(name)
        if source is not None:
            having = [(p, d) for p, d in having if source in (p.node_id, p.announcement.name)]
            if not having:
                raise ApiError(
                    404, f"no member named {source!r} has {name}: `inferhub models` lists who has what"
                )
        if not having:
            raise ApiError(404, f"no member of the pool has {name}")
        # The version most members have: each part may come from any of them.
        digest = max({d for _, d in having}, key=lambda d: sum(1 for _, other in having if other == d))
        copy = _Copy(name, digest, [p for p, d in having if d == digest])
        session = _SESSION_PREFIX + secrets.token_hex(8)
        temporary = f"{self._local_host()}/{session}/{name.model}:{name.tag}"
        self._copies[session] = copy
        try:
            while True:
                failed = None
                body = json.dumps({"model": temporary, "insecure": True, "stream": True}).encode()
                async with contextlib.aclosing(pull_lines(backend, body)) as lines:
                    async for line in lines:
                        if "error" in line:
                            failed = str(line["error"])
                            break
                        if line.get("status") != "success":
                            yield line
                if failed is None:
                    break
                refused = _MISMATCH.search(failed)
                if refused is None or not copy.sources:
                    raise ApiError(502, f"copying {name} from the pool failed: {failed}")
                bad = copy.refused(refused[1])
                who = f"{bad.announcement.name} sent" if bad else "a member sent"
                _log.warning("%s a damaged blob of %s: %s", who, name, failed)
                if not copy.sources:
                    raise ApiError(502, f"copying {name} from the pool failed: {failed}")
                yield {"status": f"{who} a damaged file; fetching it again from another member"}
            await _call(backend, "POST", "/api/copy", {"source": temporary, "destination": str(name)})
            yield {"status": "success"}
        finally:
            del self._copies[session]
            with contextlib.suppress(BackendUnavailable, ApiError):
                await _call(backend, "DELETE", "/api/delete", {"model": temporary})

    async def registry(self, request: web.Request) -> web.StreamResponse:
        """Answer this machine's Ollama as a registry does, for a copy under way."""
        found = _REGISTRY.fullmatch(request.path)
        copy = self._copies.get(found[1]) if found else None
        if found is None or copy is None or found[2] != copy.name.model:
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)
        if found[3].startswith("manifests/"):
            return await self._manifest(copy)
        digest = found[3].removeprefix("blobs/")
        layer = (
            next((layer for layer in copy.manifest.layers if layer.digest == digest), None)
            if copy.manifest
            else None
        )
        if layer is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(layer.size)})
        wanted = request.headers.get("Range")
        if wanted is None:
            # Where to download it from: here, in parts (Ollama's downloader asks for a Location).
            return web.Response(headers={"Location": str(request.url)})
        return await self._part(request, copy, digest, wanted)

    async def _manifest(self, copy: _Copy) -> web.Response:
        """The model's manifest, read from every member that has it: those that give the one the pool
        listed send the parts, and each lender's audit log has the copy."""
        name = copy.name
        path = f"{MODELS_PREFIX}manifests/{name.host}/{name.namespace}/{name.model}/{name.tag}"

        async def read(peer: Peer) -> bytes | None:
            try:
                async with self._link(peer).request("GET", path, {}, None) as reply:
                    raw = await reply.read()
                    if reply.status != 200:
                        raise MalformedRecord(f"HTTP {reply.status}: {raw[:200].decode(errors='replace')}")
                if hashlib.sha256(raw).hexdigest() != copy.digest:
                    raise MalformedRecord("its manifest is not the one its status lists")
                return raw
            except (BackendUnavailable, MalformedRecord) as exc:
                _log.warning("cannot read %s's manifest from %r: %s", name, peer.announcement.name, exc)
                return None

        answers = await asyncio.gather(*(read(peer) for peer in copy.sources))
        copy.sources = [peer for peer, raw in zip(copy.sources, answers, strict=True) if raw is not None]
        raw = next((raw for raw in answers if raw is not None), None)
        if raw is None:
            return web.json_response(
                {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no member gave it"}]}, status=404
            )
        copy.manifest = Manifest.from_bytes(raw)
        return web.Response(body=raw, headers={"Content-Type": MANIFEST_TYPE})

    async def _part(self, request: web.Request, copy: _Copy, digest: str, wanted: str) -> web.StreamResponse:
        """A part of a blob, from the members in turn: the next one where a member fails before its first
        byte; a member that fails midway cuts the part, and Ollama asks for the rest."""
        path = f"{MODELS_PREFIX}blobs/{digest}"
        for peer in copy.senders(digest):
            try:
                async with self._link(peer).request("GET", path, {"Range": wanted}, None) as reply:
                    if reply.status != 206:
                        raise MalformedRecord(f"HTTP {reply.status} for a part of {digest}")
                    copy.served.setdefault(digest, set()).add(peer.node_id)
                    answer = web.StreamResponse(
                        status=206,
                        headers={
                            "Content-Length": reply.headers.get("Content-Length", "0"),
                            "Content-Range": reply.headers.get("Content-Range", ""),
                        },
                    )
                    await answer.prepare(request)
                    try:
                        async for chunk in reply.iter_chunks():
                            await answer.write(chunk)
                    except BackendUnavailable as exc:
                        _log.info("%r broke off a part of %s: %s", peer.announcement.name, digest[:19], exc)
                        if request.transport is not None:
                            request.transport.abort()
                    return answer
            except (BackendUnavailable, MalformedRecord) as exc:
                _log.info("%r could not send a part of %s: %s", peer.announcement.name, digest[:19], exc)
        raise ApiError(502, f"no member could send {digest}")


async def pull_lines(backend: Backend, body: bytes) -> AsyncGenerator[dict[str, Any], None]:
    """Have this machine's Ollama pull a model (`body`: /api/pull's); yield its progress lines."""
    async with backend.request("POST", "/api/pull", {"Content-Type": "application/json"}, body) as reply:
        if reply.status != 200:
            raise ApiError(reply.status, _error_of(await reply.read()))
        pending = b""
        async for chunk in reply.iter_chunks():
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)


async def _call(backend: Backend, method: str, path: str, fields: dict[str, str]) -> None:
    body = json.dumps(fields).encode()
    async with backend.request(method, path, {"Content-Type": "application/json"}, body) as reply:
        answer = await reply.read()
        if reply.status != 200:
            raise ApiError(reply.status, _error_of(answer))


def _error_of(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body)["error"])
    return body[:300].decode(errors="replace")
