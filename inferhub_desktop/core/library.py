"""The models this machine's Ollama keeps on disk, read as Ollama lays them out, to lend to the pool.

Ollama keeps each model as a manifest, `manifests/<host>/<namespace>/<model>/<tag>` (JSON naming its
layers by digest), and its layers as content-addressed files, `blobs/sha256-<hex>`, under its models
directory: `OLLAMA_MODELS`, else `~/.ollama/models` (`%USERPROFILE%\\.ollama\\models` on Windows), or
`/usr/share/ollama/.ollama/models` where Linux's service install keeps them. Nothing here writes there:
a model copied in arrives through Ollama's own pull, which verifies every blob.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from .wire.errors import MalformedRecord
from .wire.records import Fields, read_json

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DEFAULT_HOST = "registry.ollama.ai"
# A manifest is a few hundred bytes; one past this is not one.
MAX_MANIFEST_BYTES = 1 << 20
_LINUX_SERVICE_DIR = Path("/usr/share/ollama/.ollama/models")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# As Ollama's types/model/name.go allows each part.
_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_MODEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


def models_dir(environ: Mapping[str, str], home: Path) -> Path | None:
    """Return Ollama's models directory on this machine, or None where it has none yet."""
    if configured := environ.get("OLLAMA_MODELS"):
        return Path(configured).expanduser()
    candidates = [home / ".ollama" / "models"]
    if sys.platform.startswith("linux"):
        candidates.append(_LINUX_SERVICE_DIR)
    return next((path for path in candidates if (path / "manifests").is_dir()), None)


@dataclasses.dataclass(frozen=True)
class ModelName:
    """A model's name split as Ollama splits it: `[host/][namespace/]model[:tag]`, defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, raw: str) -> ModelName:
        """Read a model name; raise MalformedRecord for one Ollama would refuse."""
        rest, tag = raw.strip(), "latest"
        if rest.rfind(":") > rest.rfind("/"):
            rest, _, tag = rest.rpartition(":")
        pieces = rest.split("://", 1)[-1].rsplit("/", 2)
        host = pieces[0] if len(pieces) == 3 else DEFAULT_HOST
        namespace = pieces[-2] if len(pieces) >= 2 else "library"
        name = cls(host, namespace, pieces[-1], tag)
        checks = ((_HOST, host), (_PART, namespace), (_MODEL, name.model), (_MODEL, tag))
        if not all(pattern.fullmatch(part) for pattern, part in checks):
            raise MalformedRecord(f"{raw[:200]!r} is not a model name")
        return name

    @property
    def path(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        """The shortest form, as Ollama lists it."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != "library":
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


@dataclasses.dataclass(frozen=True)
class Layer:
    """One file of a model, as its manifest names it."""

    media_type: str
    digest: str  # sha256:<hex>
    size: int


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A model's manifest: its bytes as Ollama wrote them (their sha256 is the model's digest) and the
    files it names, the config first."""

    raw: bytes
    layers: tuple[Layer, ...]

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Read a manifest; raise MalformedRecord saying what is wrong with it."""
        fields = Fields(read_json(raw, "manifest", MAX_MANIFEST_BYTES), "manifest")
        config = fields.record("config")
        layers = [_layer(config)] + [
            _layer(Fields(item, "manifest.layers[]")) for item in fields.raw("layers")
        ]
        return cls(raw, tuple(layers))

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


def _layer(fields: Fields) -> Layer:
    digest = fields.text("digest", 71)
    if not _DIGEST.fullmatch(digest):
        raise MalformedRecord(f"manifest layer digest {digest!r} is not sha256:<hex>")
    return Layer(fields.text("mediaType", 128), digest, fields.integer("size", 0, 1 << 50))


class Library:
    """Read models from an Ollama models directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def manifest(self, name: ModelName) -> Manifest | None:
        """Return a model's manifest, or None where this machine does not have it (or it is unreadable)."""
        # Ollama matches names without regard to case; the directory may be on a case-sensitive disk.
        path = self.root / "manifests"
        for part in name.path:
            if not path.is_dir():
                return None
            exact = path / part
            path = (
                exact
                if exact.exists()
                else next((entry for entry in path.iterdir() if entry.name.lower() == part.lower()), exact)
            )
        try:
            with path.open("rb") as file:
                return Manifest.from_bytes(file.read(MAX_MANIFEST_BYTES + 1))
        except (OSError, MalformedRecord):
            return None

    def blob(self, digest: str) -> Path | None:
        """Return the file of a blob this machine has whole, or None."""
        if not _DIGEST.fullmatch(digest):
            return None
        path = self.root / "blobs" / digest.replace(":", "-", 1)
        return path if path.is_file() else None
