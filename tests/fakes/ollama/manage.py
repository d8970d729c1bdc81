"""Model management: pull, push, create, copy, delete and blobs, with Ollama's progress streams."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator
from dataclasses import replace

from aiohttp import web

from tests.fakes.base import Json, Pacer

from .files import ModelFiles
from .models import (
    _DEFAULT_HOST,
    _DELETE_NAMES,
    _DIGEST,
    MODELS_DIR,
    FakeModel,
    _blob_key,
    _check_digest,
    _find,
    _Name,
    _parse_or_fail,
    _transfer_lines,
    _valid_path,
)
from .wire import (
    _NDJSON_FRAMING,
    JSON_PLAIN,
    _ApiError,
    _go_kind,
    _json,
    _local_now,
    _quote,
    _read_json,
    _string,
)


class Management:
    """The model management endpoints of FakeOllama."""

    # Where models are kept as files in Ollama's layout, if the fake was given a models directory.
    files: ModelFiles | None

    def _has_blob(self, digest: str) -> bool:
        """Tell whether a blob with this digest was uploaded (or, with a models directory, is there)."""
        if not _DIGEST.fullmatch(digest):
            return False
        if self.files is not None:
            return self.files.blob_path(_blob_key(digest)).is_file()
        return _blob_key(digest) in self.blobs

    def _by_recency(self) -> list[FakeModel]:
        """Return the local models, most recently modified first."""
        return sorted(self.models.values(), key=lambda model: model.modified_at, reverse=True)

    async def _progress_reply(
        self, request: web.Request, body: Json, lines: Iterator[Json] | AsyncIterator[Json]
    ) -> web.StreamResponse:
        """Stream progress lines, or with `stream` false answer only the last one (errors as status).
        Lines made up are paced like a transfer; those of a real transfer come as it goes."""
        objects = self._paced(lines) if isinstance(lines, Iterator) else _as_generator(lines)
        if body.get("stream") is not False:
            return await self._stream(request, _NDJSON_FRAMING, objects)
        last: Json = {}
        try:
            async for line in objects:
                last = line  # Ollama's waitForStream keeps only the latest
        except _ApiError as error:
            raise _ApiError(error.status, error.message, JSON_PLAIN) from error
        return _json(last, JSON_PLAIN)

    async def _paced(self, lines: Iterable[Json]) -> AsyncGenerator[Json, None]:
        """Release progress lines one per token interval, like a transfer in progress."""
        pacer = Pacer(self.tokens_per_second)
        for line in lines:
            await pacer.wait()
            yield line

    async def _handle_pull(self, request: web.Request) -> web.StreamResponse:
        """POST /api/pull: from `registry`, or a re-pull of a local model."""
        body = await _read_json(request)
        name = _parse_or_fail(_string(body, "model") or _string(body, "name"))
        if self.files is not None and name.host.lower() != _DEFAULT_HOST:
            return await self._progress_reply(
                request, body, self._pull_files(name, body.get("insecure") is True)
            )
        return await self._progress_reply(request, body, self._pull_lines(name))

    async def _pull_files(self, name: _Name, insecure: bool) -> AsyncIterator[Json]:
        """Pull from the registry the name names, into the models directory, and list the model."""
        assert self.files is not None
        async for line in self.files.pull(name, insecure=insecure):
            if line == {"status": "success"}:
                self._install(replace(self.files.model(name), modified_at=_local_now()))
            yield line

    def _pull_lines(self, name: _Name) -> Generator[Json, None, FakeModel]:
        """Yield Ollama's pull progress, install the model, and return it."""
        yield {"status": "pulling manifest"}
        local = _find(self.models.values(), name)
        source = _find(self.registry.values(), name) or local
        if source is None:
            raise _ApiError(500, "pull model manifest: file does not exist")
        yield from _transfer_lines("pulling", source)
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        model = replace(source, name=local.name if local else name.short, modified_at=_local_now())
        self._install(model)
        yield {"status": "success"}
        return model

    async def _handle_push(self, request: web.Request) -> web.StreamResponse:
        """POST /api/push: copies a local model into `registry`."""
        body = await _read_json(request)
        raw = _string(body, "model") or _string(body, "name")
        if not raw:
            raise _ApiError(400, "model is required")
        return await self._progress_reply(request, body, self._push_lines(_parse_or_fail(raw)))

    def _push_lines(self, name: _Name) -> Iterator[Json]:
        """Yield Ollama's push progress and publish the model."""
        yield {"status": "retrieving manifest"}
        model = _find(self.models.values(), name)
        if model is None:
            yield {"status": "couldn't retrieve manifest"}
            path = f"{MODELS_DIR}/manifests/{name.host}/{name.namespace}/{name.model}/{name.tag}"
            raise _ApiError(500, f"open {path}: no such file or directory")
        yield from _transfer_lines("pushing", model)
        yield {"status": "pushing manifest"}
        self._forget(self.registry, model.ref)
        self.registry[model.name] = model
        yield {"status": "success"}

    async def _handle_create(self, request: web.Request) -> web.StreamResponse:
        """POST /api/create from a local model (`from`) or uploaded blobs (`files`)."""
        body = await _read_json(request)
        files = body.get("files") or {}
        if not isinstance(files, dict):
            raise _ApiError(
                400, f"json: cannot unmarshal {_go_kind(files)} into Go struct field files of type map"
            )
        for path, digest in files.items():
            if not _valid_path(path):
                raise _ApiError(400, "file path must be relative")
            if not digest:
                raise _ApiError(400, "invalid digest format")
        name = _parse_or_fail(_string(body, "model") or _string(body, "name"))
        return await self._progress_reply(request, body, self._create_lines(name, body, files))

    def _create_lines(self, name: _Name, body: Json, files: dict[str, str]) -> Iterator[Json]:
        """Yield Ollama's create progress and install the new model."""
        base = _string(body, "from")
        if base:
            model = yield from self._layers_from_model(_parse_or_fail(base))
            if self.files is not None:
                self.files.copy(model, name)  # the base's layers, under the new name
        elif files:
            model = yield from self._layers_from_files(name, files)
        else:
            raise _ApiError(400, "neither 'from' or 'files' was specified")
        quantize = _string(body, "quantize").upper() or model.quantization_level
        yield {"status": "writing manifest"}
        self._install(replace(model, name=name.short, quantization_level=quantize, modified_at=_local_now()))
        yield {"status": "success"}

    def _layers_from_model(self, base: _Name) -> Generator[Json, None, FakeModel]:
        """Reuse a local model's layers, pulling it first when missing (as Ollama does)."""
        model = _find(self.models.values(), base)
        if model is None:
            model = yield from self._pull_lines(base)
        yield {"status": f"using existing layer sha256:{model.digest}"}
        return model

    def _layers_from_files(self, name: _Name, files: dict[str, str]) -> Generator[Json, None, FakeModel]:
        """Build a model from uploaded blobs; each digest must have been uploaded first."""
        yield {"status": "parsing GGUF"}
        for digest in files.values():
            if not self._has_blob(digest):
                blob = f"sha256-{digest[7:]}" if _DIGEST.fullmatch(digest) else digest
                raise _ApiError(500, f"open {MODELS_DIR}/blobs/{blob}: no such file or directory")
            yield {"status": f"using existing layer {_blob_key(digest)}"}
        if self.files is not None:
            # A manifest naming the uploaded files as the model's weights.
            weights = [
                (_blob_key(d), self.files.blob_path(_blob_key(d)).stat().st_size) for d in files.values()
            ]
            return self.files.create(FakeModel(name.short), weights)
        return FakeModel(name.short, size=sum(self.blobs[_blob_key(digest)] for digest in files.values()))

    async def _handle_copy(self, request: web.Request) -> web.StreamResponse:
        """POST /api/copy: 200 with an empty body."""
        body = await _read_json(request)
        source, destination = _string(body, "source"), _string(body, "destination")
        source_name = _parse_or_fail(source, message=f"source {_quote(source)} is invalid")
        target = _parse_or_fail(destination, message=f"destination {_quote(destination)} is invalid")
        model = _find(self.models.values(), source_name)
        if model is None:
            raise _ApiError(404, f"model {_quote(source)} not found")
        if self.files is not None:
            self.files.copy(model, target)  # the manifest, under the new name; the blobs are shared
        self._install(replace(model, name=target.short, modified_at=_local_now()))
        return web.Response()

    async def _handle_delete(self, request: web.Request) -> web.StreamResponse:
        """DELETE /api/delete: 200 with an empty body."""
        body = await _read_json(request)
        model = self._lookup(_string(body, "model") or _string(body, "name"), _DELETE_NAMES)
        if self.files is not None:
            self.files.remove(model)
        self._forget(self.models, model.ref)
        self._unload(model)
        return web.Response()

    async def _handle_blob_head(self, request: web.Request) -> web.StreamResponse:
        """HEAD /api/blobs/{digest}: 200 when uploaded, else 404."""
        digest = _check_digest(request.match_info["digest"])
        if not self._has_blob(digest):
            raise _ApiError(404, f"blob {_quote(digest)} not found")
        return web.Response()

    async def _handle_blob_post(self, request: web.Request) -> web.StreamResponse:
        """POST /api/blobs/{digest}: read the body in chunks and verify its sha256."""
        digest = _check_digest(request.match_info["digest"])
        if self._has_blob(digest):
            return web.Response()  # like Ollama, answers without reading the body
        if self.files is not None:
            actual, size = await self.files.receive_blob(request.content.iter_chunked(1 << 20))
        else:
            hasher, size = hashlib.sha256(), 0
            async for chunk in request.content.iter_chunked(1 << 20):
                hasher.update(chunk)
                size += len(chunk)
            actual = f"sha256:{hasher.hexdigest()}"
        self.blobs[actual] = size  # Ollama keeps the blob under its real digest even on a mismatch
        if actual != digest:
            raise _ApiError(400, f"digest mismatch, expected {_quote(digest)}, got {_quote(actual)}")
        return web.Response(status=201)


async def _as_generator(lines: AsyncIterator[Json]) -> AsyncGenerator[Json, None]:
    async for line in lines:
        yield line
