"""Models as real files in Ollama's layout, and Ollama's pull from a registry, for a fake given a models
directory.

Follows Ollama's server (manifest/manifest.go, server/images.go, server/download.go): a model is a
manifest, `manifests/<host>/<namespace>/<model>/<tag>`, naming a config blob and layers kept once each as
`blobs/sha256-<hex>`; its digest in listings is the sha256 of the manifest's bytes. A pull GETs the
manifest (`Accept: application/vnd.docker.distribution.manifest.v2+json`), then for each blob it lacks,
in order, HEADs it for its length, GETs it for the URL to download from (a `Location` header, on a 200 or
a 307), and fetches it in parts (total/16, from 100 MB to 1000 MB, up to 16 at once) with `Range`,
each part retried from where it stopped after 1, 2, 4… seconds, six times at most, into
`sha256-<hex>-partial`; the whole is then checked against its digest, and removed if it does not match.
`"insecure": true` pulls over plain HTTP. Copy writes the manifest under the new name (blobs are
shared); delete removes the manifest and the blobs no other manifest names.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import aiohttp
from yarl import URL

from tests.fakes.base import Json

from .models import FakeModel, _Name
from .wire import _ApiError

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
_LAYER_PREFIX = "application/vnd.ollama.image."
# server/download.go's constants (a megabyte there is 1000 kB).
_PARTS = 16
_MIN_PART = 100 * 1000 * 1000
_MAX_PART = 1000 * 1000 * 1000
_MAX_RETRIES = 6
_PROGRESS_S = 0.06
_CHUNK = 1 << 20


class ModelFiles:
    """An Ollama models directory: manifests and blobs on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "manifests").mkdir(parents=True, exist_ok=True)
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    def manifest_path(self, name: _Name) -> Path:
        return self.root / "manifests" / name.host / name.namespace / name.model / name.tag

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-", 1)

    def models(self) -> list[FakeModel]:
        """Return the models the directory holds, as Ollama lists them."""
        found = []
        for path in sorted((self.root / "manifests").glob("*/*/*/*")):
            host, namespace, model, tag = path.relative_to(self.root / "manifests").parts
            name = _Name(host, namespace, model, tag)
            found.append(self._model(name, path.read_bytes()))
        return found

    def seed(self, model: FakeModel) -> FakeModel:
        """Write a model whose weights are `model.size` bytes that follow from its name, so two fakes
        seeded with the same model hold the same blobs; return it with its manifest's digest."""
        rng = random.Random(model.ref.key)
        weights = self._write_blob(
            rng.randbytes(min(_CHUNK, model.size - i)) for i in range(0, model.size, _CHUNK)
        )
        return self.create(model, [weights])

    def create(self, model: FakeModel, weights: list[tuple[str, int]]) -> FakeModel:
        """Write a model of these weights (blobs the directory has: digest and size), with the fake's
        template, parameters and licence, under `model`'s name; return it with its manifest's digest."""
        config = {
            "model_format": "gguf",
            "model_family": model.family,
            "model_type": model.parameter_size,
            "file_type": model.quantization_level,
            "capabilities": list(model.capabilities),
        }
        layers = [
            *(("model", blob) for blob in weights),
            ("template", self._write_blob([b"{{ .Prompt }}"])),
            ("params", self._write_blob([b'{"stop":["<|eot_id|>"]}'])),
            ("license", self._write_blob([b"FAKE MODEL LICENSE"])),
        ]
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": _layer(_CONFIG_TYPE, self._write_blob([json.dumps(config).encode()])),
            "layers": [_layer(_LAYER_PREFIX + kind, blob) for kind, blob in layers],
        }
        raw = json.dumps(manifest).encode()
        self.write_manifest(model.ref, raw)
        return self._model(model.ref, raw)

    def write_manifest(self, name: _Name, raw: bytes) -> None:
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)

    def copy(self, source: FakeModel, destination: _Name) -> None:
        self.write_manifest(destination, self.manifest_path(source.ref).read_bytes())

    def has(self, name: _Name) -> bool:
        return self.manifest_path(name).is_file()

    def model(self, name: _Name) -> FakeModel:
        """Return the model a manifest in the directory describes."""
        return self._model(name, self.manifest_path(name).read_bytes())

    def remove(self, model: FakeModel) -> None:
        """Remove a model's manifest, then each of its blobs that no other manifest names."""
        path = self.manifest_path(model.ref)
        digests = _digests(path.read_bytes())
        path.unlink()
        for parent in path.parents:
            if parent == self.root / "manifests" or any(parent.iterdir()):
                break
            parent.rmdir()
        kept = {
            d for other in (self.root / "manifests").glob("*/*/*/*") for d in _digests(other.read_bytes())
        }
        for digest in digests - kept:
            self.blob_path(digest).unlink(missing_ok=True)

    def _model(self, name: _Name, raw: bytes) -> FakeModel:
        manifest = json.loads(raw)
        config = json.loads(self.blob_path(manifest["config"]["digest"]).read_bytes())
        size = manifest["config"]["size"] + sum(layer["size"] for layer in manifest["layers"])
        return FakeModel(
            name.short,
            size=size,
            family=config.get("model_family", "llama"),
            parameter_size=config.get("model_type", ""),
            quantization_level=config.get("file_type", ""),
            capabilities=tuple(config.get("capabilities", ("completion",))),
            manifest_digest=hashlib.sha256(raw).hexdigest(),
        )

    async def receive_blob(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Keep an uploaded blob under the digest of what came (as Ollama does, whatever it was sent as)."""
        blob = _Blob(self, "upload")
        async for chunk in chunks:
            blob.write(chunk)
        return blob.keep()

    def _write_blob(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        blob = _Blob(self, "seed")
        for chunk in chunks:
            blob.write(chunk)
        return blob.keep()

    async def pull(self, name: _Name, *, insecure: bool) -> AsyncIterator[Json]:
        """Pull a model from the registry its name names, as Ollama's PullModel does; yield its progress."""
        yield {"status": "pulling manifest"}
        scheme = "http" if insecure else "https"
        base = f"{scheme}://{name.host}/v2/{name.namespace}/{name.model}"
        async with aiohttp.ClientSession() as http:
            url = f"{base}/manifests/{name.tag}"
            try:
                async with http.get(url, headers={"Accept": MANIFEST_TYPE}) as reply:
                    raw = await reply.read()
                    if reply.status == 404:
                        raise _ApiError(500, "pull model manifest: file does not exist")
                    if reply.status >= 400:
                        raise _ApiError(
                            500, f"pull model manifest: {reply.status}: {raw.decode(errors='replace')}"
                        )
            except aiohttp.ClientError as exc:
                raise _ApiError(500, f'pull model manifest: Get "{url}": {exc}') from None
            manifest = json.loads(raw)
            layers = [*manifest["layers"], manifest["config"]]
            # A blob the directory had already is not verified again.
            fetched = [layer for layer in layers if not self.blob_path(layer["digest"]).exists()]
            for layer in layers:
                async for line in self._download(http, base, layer["digest"]):
                    yield line
        yield {"status": "verifying sha256 digest"}
        for layer in fetched:
            path = self.blob_path(layer["digest"])
            got = f"sha256:{await asyncio.to_thread(_sha256, path)}"
            if got != layer["digest"]:
                path.unlink()
                raise _ApiError(
                    500, f"digest mismatch, file must be downloaded again: want {layer['digest']}, got {got}"
                )
        yield {"status": "writing manifest"}
        self.write_manifest(name, raw)
        yield {"status": "success"}

    async def _download(self, http: aiohttp.ClientSession, base: str, digest: str) -> AsyncIterator[Json]:
        status = f"pulling {digest[7:19]}"
        path = self.blob_path(digest)
        if path.exists():
            size = path.stat().st_size
            yield {"status": status, "digest": digest, "total": size, "completed": size}
            return
        url = f"{base}/blobs/{digest}"
        async with http.head(url) as reply:
            if reply.status == 404:
                raise _ApiError(500, "file does not exist")
            total = int(reply.headers["Content-Length"])
        async with http.get(url, allow_redirects=False) as reply:
            if reply.status not in (200, 307):
                raise _ApiError(500, f"unexpected status code {reply.status}")
            if "Location" not in reply.headers:
                raise _ApiError(500, "http: no Location header in response")
            direct = str(reply.url.join(URL(reply.headers["Location"])))
        part_size = min(max(total // _PARTS, _MIN_PART), _MAX_PART)
        parts = [(start, min(start + part_size, total)) for start in range(0, total, part_size)]
        done = [0] * len(parts)
        partial = path.with_name(path.name + "-partial")
        with partial.open("wb") as file:
            file.truncate(total)

        async def fetch(index: int) -> None:
            start, stop = parts[index]
            for attempt in range(_MAX_RETRIES):
                try:
                    headers = {"Range": f"bytes={start + done[index]}-{stop - 1}"}
                    async with http.get(direct, headers=headers) as reply:
                        with partial.open("r+b") as file:
                            file.seek(start + done[index])
                            async for chunk in reply.content.iter_chunked(_CHUNK):
                                chunk = chunk[: stop - start - done[index]]
                                file.write(chunk)
                                done[index] += len(chunk)
                    if done[index] == stop - start:
                        return
                    raise aiohttp.ClientPayloadError("short read")
                except (aiohttp.ClientError, OSError) as exc:
                    if attempt == _MAX_RETRIES - 1:
                        raise _ApiError(500, f"max retries exceeded: {exc}") from None
                    await asyncio.sleep(2**attempt)

        tasks = [asyncio.create_task(fetch(i)) for i in range(len(parts))]
        try:
            while not all(task.done() for task in tasks):
                await asyncio.wait(tasks, timeout=_PROGRESS_S)
                yield {"status": status, "digest": digest, "total": total, "completed": sum(done)}
            for task in tasks:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
        partial.replace(path)


class _Blob:
    """A blob being written: to a partial file, then kept under the digest of what was written."""

    def __init__(self, files: ModelFiles, why: str) -> None:
        self._files = files
        self._hasher = hashlib.sha256()
        self._size = 0
        self._partial = files.root / "blobs" / f"{why}-{os.getpid()}-{id(self)}-partial"
        self._file = self._partial.open("wb")

    def write(self, chunk: bytes) -> None:
        self._hasher.update(chunk)
        self._size += len(chunk)
        self._file.write(chunk)

    def keep(self) -> tuple[str, int]:
        """Close it, name it by its digest; return the digest and the size."""
        self._file.close()
        digest = f"sha256:{self._hasher.hexdigest()}"
        self._partial.replace(self._files.blob_path(digest))
        return digest, self._size


def _layer(media_type: str, blob: tuple[str, int]) -> Json:
    digest, size = blob
    return {"mediaType": media_type, "digest": digest, "size": size}


def _digests(raw: bytes) -> set[str]:
    manifest = json.loads(raw)
    return {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()
