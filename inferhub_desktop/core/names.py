"""Model names as Ollama matches them: `llama3` is `registry.ollama.ai/library/llama3:latest`."""

from __future__ import annotations

_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"
_DEFAULT_TAG = "latest"


def model_key(name: str) -> str:
    """Return the identity Ollama matches a model name on: every default filled in, case-folded.

    Names that are not valid model names still get a stable key (their own text, case-folded), so a
    request naming one reaches a backend that words the error.
    """
    rest, tag = name.strip(), _DEFAULT_TAG
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag = rest.rpartition(":")
    pieces = rest.rsplit("/", 2)
    if not all(pieces) or not tag:
        return name.strip().lower()
    host = pieces[0].split("://", 1)[-1] if len(pieces) == 3 else _DEFAULT_HOST
    namespace = pieces[-2] if len(pieces) >= 2 else _DEFAULT_NAMESPACE
    return f"{host}/{namespace}/{pieces[-1]}:{tag}".lower()


def short_name(key: str) -> str:
    """Return the display form listings use for a key: `llama3:latest`, `user/model:tag`."""
    default_prefix = f"{_DEFAULT_HOST}/{_DEFAULT_NAMESPACE}/"
    if key.startswith(default_prefix):
        return key[len(default_prefix) :]
    if key.startswith(f"{_DEFAULT_HOST}/"):
        return key[len(_DEFAULT_HOST) + 1 :]
    return key
