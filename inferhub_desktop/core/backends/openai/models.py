"""The server's models under Ollama's names, and the listings Ollama's clients read: pure functions of
what `/v1/models` answers."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ...names import model_key
from ...wire.payload import count

# An OpenAI server keeps its models loaded while it runs: Ollama says so with the longest expiry it has.
FOREVER = timedelta(days=365 * 292)
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:/-]+")


def ollama_name(model_id: str) -> str:
    """Return the Ollama name an OpenAI model id is listed under."""
    name = model_id.strip()
    if name.lower().endswith(".gguf") or name.startswith(("/", ".")) or "\\" in name:
        # A server started with a model file lists it under the file's path: the file name says more.
        name = re.split(r"[\\/]", name)[-1]
        name = name[:-5] if name.lower().endswith(".gguf") else name
    name = _UNSAFE_NAME_CHARS.sub("-", name).strip("-./:")
    # Ollama's names have a namespace and a model (a host aside): deeper ids keep their last two parts.
    name = "/".join(name.split("/")[-2:]) or "model"
    if name.rfind(":") <= name.rfind("/"):
        name += ":latest"
    return name


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A model the server lists, with what its listing says about it."""

    id: str
    name: str
    created: int = 0
    owned_by: str = ""
    size: int = 0
    parameters: int | None = None
    context_length: int | None = None

    @property
    def digest(self) -> str:
        # Stable for an id, as Ollama's digest is for a model's content.
        return hashlib.sha256(self.id.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf" if self.id.lower().endswith(".gguf") else "",
            "family": "",
            "families": None,
            "parameter_size": humancount(self.parameters) if self.parameters else "",
            "quantization_level": "",
        }

    def modified_at(self) -> str:
        return rfc3339(datetime.fromtimestamp(self.created, UTC))


def served_models(listing: Any) -> dict[str, ServedModel]:
    """Read a /v1/models reply into the models it lists, keyed by model_key of their Ollama names.

    Two ids that would get the same name (`a/x` and `b/x`... differ only in dropped parts) are told apart
    by a short hash of the later id, in id order, so each keeps its name while both are served.
    """
    if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
        raise ValueError("/v1/models answered without a `data` list")
    entries = [e for e in listing["data"] if isinstance(e, dict) and isinstance(e.get("id"), str)]
    table: dict[str, ServedModel] = {}
    for entry in sorted(entries, key=lambda e: str(e["id"])):
        model_id = str(entry["id"])
        name = ollama_name(model_id)
        if model_key(name) in table:
            stem, _, tag = name.rpartition(":")
            name = f"{stem}-{hashlib.sha256(model_id.encode()).hexdigest()[:6]}:{tag}"
        meta = as_object(entry.get("meta"))
        table[model_key(name)] = ServedModel(
            id=model_id,
            name=name,
            created=count(entry.get("created")) or 0,
            owned_by=str(entry.get("owned_by") or ""),
            # llama-server's `meta` has the file's size, its parameters and trained context; vLLM says
            # how long a context it serves.
            size=count(meta.get("size")) or 0,
            parameters=count(meta.get("n_params")),
            context_length=count(entry.get("max_model_len")) or count(meta.get("n_ctx_train")),
        )
    return table


def tags_entry(model: ServedModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "model": model.name,
        "modified_at": model.modified_at(),
        "size": model.size,
        "digest": model.digest,
        "details": model.details(),
    }


def ps_entry(model: ServedModel, expires_at: str) -> dict[str, Any]:
    return {
        "name": model.name,
        "model": model.name,
        "size": model.size,
        "digest": model.digest,
        "details": model.details(),
        "expires_at": expires_at,
        # Whether the server holds the model in VRAM is not in its listing.
        "size_vram": 0,
        "context_length": model.context_length or 0,
    }


def openai_entry(model: ServedModel) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by or "library",
    }


def lookup(models: Mapping[str, ServedModel], requested: str) -> ServedModel | None:
    found = models.get(model_key(requested))
    if found is None:
        found = next((m for m in models.values() if m.id == requested.strip()), None)
    return found


def humancount(count: int) -> str:
    """Write a parameter count as Ollama's listings do: 135M, 7.6B."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(count)


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def as_object(value: Any) -> dict[str, Any]:
    """Return a JSON value that is an object, else an empty one."""
    return value if isinstance(value, dict) else {}
