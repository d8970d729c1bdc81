"""Pool-wide listings: `/api/tags` and `/v1/models` list every model of the pool once, `/api/ps` every
loaded model with the node it is loaded on.

Each entry keeps the fields its node's Ollama wrote and gains one the official clients ignore:
`inferhub_nodes` (the nodes that have the model) in listings, `inferhub_node` in `/api/ps`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from ..names import model_key
from ..wire.endpoints import Endpoint
from ..wire.errors import BackendUnavailable
from ..wire.responses import go_json
from .relay import Target, fetch, upstream_headers

_log = logging.getLogger(__name__)

# A peer's listing that takes longer is left out rather than holding up the answer.
_PEER_LISTING_TIMEOUT_S = 2.0

# The paths answered pool-wide, to GET, with the list key and the field that names a model.
POOLED_PATHS = {
    "/api/tags": ("models", "model"),
    "/api/ps": ("models", "model"),
    "/v1/models": ("data", "id"),
}


async def pooled_listing(request: web.Request, endpoint: Endpoint, sources: Sequence[Target]) -> web.Response:
    """Ask every source for the listing at `request.path` at once and merge what they answer.

    Sources that fail are left out (and logged); when all fail, the first one's error is the answer.
    """
    list_key, name_key = POOLED_PATHS[request.path]
    headers = upstream_headers(request, keep_length=False)
    # This machine's backend is given its usual time; a slow peer is left out.
    timeouts = [None] + [_PEER_LISTING_TIMEOUT_S] * (len(sources) - 1)
    results = await asyncio.gather(
        *(_fetch(s, request, endpoint, headers, timeout_s=t) for s, t in zip(sources, timeouts, strict=True)),
        return_exceptions=True,
    )
    answered: list[tuple[Target, str, list[dict[str, Any]], dict[str, Any]]] = []
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, BaseException):
            _log.info("leaving %s out of %s: %s", source.name, request.path, result)
            continue
        content_type, value = result
        entries = value.get(list_key)
        if not isinstance(entries, list):
            _log.info("leaving %s out of %s: its reply has no %r list", source.name, request.path, list_key)
            continue
        answered.append((source, content_type, [e for e in entries if isinstance(e, dict)], value))
    if not answered:
        error = results[0]
        raise error if isinstance(error, BackendUnavailable) else BackendUnavailable(str(error))

    merge: Callable[[list[tuple[str, list[dict[str, Any]]]], str], list[dict[str, Any]]]
    merge = _per_node if request.path == "/api/ps" else _union
    merged = merge([(source.name, entries) for source, _, entries, _ in answered], name_key)
    _, content_type, _, first = answered[0]
    body = {**first, list_key: merged}
    return web.Response(body=go_json(body), headers={"Content-Type": content_type})


async def _fetch(
    source: Target,
    request: web.Request,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    *,
    timeout_s: float | None,
) -> tuple[str, dict[str, Any]]:
    _, reply_headers, body = await fetch(
        source, endpoint, "GET", request.path, headers, None, timeout_s=timeout_s, only_ok=True
    )
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError(f"{source.name} answered {request.path} with a JSON {type(value).__name__}")
    return reply_headers.get("Content-Type", "application/json; charset=utf-8"), value


def _union(listings: list[tuple[str, list[dict[str, Any]]]], name_key: str) -> list[dict[str, Any]]:
    """List each model once, in the order first seen, with every node that has it."""
    merged: dict[str, dict[str, Any]] = {}
    for node, entries in listings:
        for entry in entries:
            name = entry.get(name_key) or entry.get("name")
            if not isinstance(name, str):
                continue
            key = model_key(name)
            if key in merged:
                merged[key]["inferhub_nodes"].append(node)
            else:
                merged[key] = {**entry, "inferhub_nodes": [node]}
    return list(merged.values())


def _per_node(listings: list[tuple[str, list[dict[str, Any]]]], name_key: str) -> list[dict[str, Any]]:
    """List each loaded model on each node: sizes and expiry differ from node to node."""
    return [{**entry, "inferhub_node": node} for node, entries in listings for entry in entries]
