"""Models as Ollama names, stores and lists them: names parsed as its model/name package does, the fake's
models, how each endpoint words a bad name, and the listing and `show` entries."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from tests.fakes.base import Json

from .wire import _ApiError, _local_now, _quote, _rfc3339

CONTEXT_LENGTH = 4096


MODELS_DIR = "/usr/share/ollama/.ollama/models"  # only used to word "file not found" errors


_DEFAULT_HOST = "registry.ollama.ai"


_DEFAULT_NAMESPACE = "library"


_DEFAULT_TAG = "latest"


_INVALID_NAME = "invalid model name"


_HOST_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")


_NAMESPACE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")


_MODEL_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


@dataclass(frozen=True)
class _Name:
    """A model name split like Ollama's types/model.Name, with the defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, raw: str) -> _Name:
        """Parse `[host/][namespace/]model[:tag]`; raise ValueError when a part is empty or malformed."""
        rest, tag = raw.strip(), _DEFAULT_TAG
        if rest.rfind(":") > rest.rfind("/"):
            rest, _, tag = rest.rpartition(":")
        pieces = rest.rsplit("/", 2)
        host = pieces[0].split("://", 1)[-1] if len(pieces) == 3 else _DEFAULT_HOST
        namespace = pieces[-2] if len(pieces) >= 2 else _DEFAULT_NAMESPACE
        name = cls(host, namespace, pieces[-1], tag)
        parts = (
            (_HOST_PART, host),
            (_NAMESPACE_PART, namespace),
            (_MODEL_PART, name.model),
            (_MODEL_PART, tag),
        )
        if not all(pattern.fullmatch(part) for pattern, part in parts):
            raise ValueError(f"invalid model name: {raw!r}")
        return name

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Return the identity Ollama matches on: the full name, case-folded."""
        return str(self).lower()

    @property
    def short(self) -> str:
        """Return the shortest display form, as listings show it (`llama3:latest`, `user/m:tag`)."""
        if self.host.lower() != _DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != _DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


@dataclass(frozen=True)
class FakeModel:
    """One model the fake has on disk; `name` is normalised to its shortest form on construction."""

    name: str
    size: int = 4_661_224_676
    family: str = "llama"
    parameter_size: str = "8.0B"
    quantization_level: str = "Q4_0"
    capabilities: tuple[str, ...] = ("completion", "tools")
    modified_at: datetime = field(default_factory=_local_now, compare=False)
    # The sha256 of its manifest's bytes, for a model kept as files; else one derived from the name.
    manifest_digest: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _Name.parse(self.name).short)
        object.__setattr__(self, "capabilities", tuple(self.capabilities))

    @property
    def ref(self) -> _Name:
        """Return the parsed name."""
        return _Name.parse(self.name)

    @property
    def digest(self) -> str:
        """Return the manifest digest (sha256 hex) that listings show."""
        return self.manifest_digest or hashlib.sha256(self.ref.key.encode()).hexdigest()


@dataclass(frozen=True)
class _NameErrors:
    """How one endpoint words errors for an empty, malformed or unknown model name.

    Templates may use {raw} (the name as sent), {q} (Go-quoted) and {short} (normalised).
    """

    empty: tuple[int, str]
    invalid: tuple[int, str]
    missing: tuple[int, str]


_GENERATE_NAMES = _NameErrors(
    (404, "model '{raw}' not found"), (400, _INVALID_NAME), (404, "model '{raw}' not found")
)


_CHAT_NAMES = _NameErrors((400, "model is required"), (400, _INVALID_NAME), (404, "model '{raw}' not found"))


_EMBED_NAMES = _NameErrors(
    (404, "model '{raw}' not found"), (400, _INVALID_NAME), (404, "model {q} not found, try pulling it first")
)


_EMBEDDINGS_NAMES = _NameErrors(
    (400, "model is required"), (400, _INVALID_NAME), (404, "model {q} not found, try pulling it first")
)


_SHOW_NAMES = _NameErrors(
    (400, "model is required"), (400, _INVALID_NAME), (404, "model '{short}' not found")
)


_DELETE_NAMES = _NameErrors(
    (400, "model is required"), (400, "name {q} is invalid"), (404, "model '{raw}' not found")
)


def _as_model(model: str | FakeModel) -> FakeModel:
    """Accept a model or a bare name."""
    return model if isinstance(model, FakeModel) else FakeModel(model)


def _find(models: Iterable[FakeModel], name: _Name) -> FakeModel | None:
    """Return the model with this name (case-insensitive, defaults applied), if any."""
    return next((model for model in models if model.ref.key == name.key), None)


def _name_error(template: tuple[int, str], raw: str, short: str = "") -> _ApiError:
    """Word a model-name error from an endpoint's template."""
    status, text = template
    return _ApiError(status, text.format(raw=raw, q=_quote(raw), short=short))


def _parse_or_fail(raw: str, *, message: str = _INVALID_NAME) -> _Name:
    """Parse a model name or raise Ollama's 400 for a bad one."""
    try:
        return _Name.parse(raw)
    except ValueError:
        raise _ApiError(400, message) from None


def _check_digest(digest: str) -> str:
    """Accept only `sha256:<64 hex>` (or `sha256-`), as Ollama's blob store does."""
    if not _DIGEST.fullmatch(digest):
        raise _ApiError(400, "invalid digest format")
    return digest


def _blob_key(digest: str) -> str:
    """File a digest the way the blob store does, whichever separator it was sent with."""
    return f"sha256:{digest[7:]}"


def _valid_path(path: str) -> bool:
    """Tell whether a `files` key is a relative, clean path (Go's fs.ValidPath)."""
    return path == "." or all(part not in ("", ".", "..") for part in path.split("/"))


def _transfer_lines(verb: str, model: FakeModel) -> list[Json]:
    """Return Ollama's per-layer progress for a pull or push of the model's one layer."""
    status = f"{verb} {model.digest[:12]}"
    line: Json = {"status": status, "digest": f"sha256:{model.digest}", "total": model.size}
    return [line, *({**line, "completed": model.size * step // 4} for step in range(1, 5))]


def _details(model: FakeModel) -> Json:
    """Return the `details` object of listings, show and ps."""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def _tag_entry(model: FakeModel) -> Json:
    """Return one /api/tags entry."""
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": _rfc3339(model.modified_at),
        "size": model.size,
        "digest": model.digest,
        "details": _details(model),
    }


def _ps_entry(model: FakeModel, expires: datetime) -> Json:
    """Return one /api/ps entry; the fake runs everything fully on the GPU (size_vram == size)."""
    return {
        "name": model.name,
        "model": model.name,
        "size": model.size,
        "digest": model.digest,
        "details": _details(model),
        "expires_at": _rfc3339(expires.astimezone()),
        "size_vram": model.size,
        "context_length": CONTEXT_LENGTH,
    }


def _show(model: FakeModel, embedding_dim: int) -> Json:
    """Return /api/show's reply."""
    blob = f"{MODELS_DIR}/blobs/sha256-{model.digest}"
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f'# FROM {model.name}\n\nFROM {blob}\nTEMPLATE """{{{{ .Prompt }}}}"""\nPARAMETER stop <|eot_id|>\n'
    )
    return {
        "license": "FAKE MODEL LICENSE",
        "modelfile": modelfile,
        "parameters": f"{'stop':<30} " + '"<|eot_id|>"',
        "template": "{{ .Prompt }}",
        "details": _details(model),
        "model_info": {
            "general.architecture": model.family,
            f"{model.family}.context_length": 8192,
            f"{model.family}.embedding_length": embedding_dim,
        },
        "capabilities": list(model.capabilities),
        "modified_at": _rfc3339(model.modified_at),
    }
