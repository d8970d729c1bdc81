"""The local API on 127.0.0.1:11435: Ollama's API, answered by the backend each request is sent to."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from aiohttp import StreamReader, web

from ..backends.base import Backend, Body
from ..errors import ApiError, BackendUnavailable
from ..settings import SETTINGS_FILE, Settings
from .endpoints import Endpoint, Kind, match
from .guard import OriginPolicy, host_allowed, host_name_allowed, is_cors_request
from .payload import parse_body, string_field
from .relay import relay, upstream_headers
from .responses import error_response, go_json, text_response

_log = logging.getLogger(__name__)

NODE_HEADER = "X-InferHub-Node"
# Node ids a request has passed through; a node that sees its own id is its own backend.
VIA_HEADER = "X-InferHub-Via"

_CORS_KEY = web.RequestKey("cors_headers", dict)
_STARTED_KEY = web.RequestKey("response_started", bool)

# Picks the backend for a request to `endpoint` naming `model` (None when the body names none).
BackendChooser = Callable[[Endpoint, str | None], Backend]
# Told of each request relayed, so the node can look again at what may have changed.
RelayedHook = Callable[[Endpoint], None]
# The node's full state as JSON values.
StatusSource = Callable[[], dict[str, Any]]

# What the tray, the dashboard and the CLI read; not part of Ollama's API.
STATUS_PATH = "/_inferhub/v1/status"


class LocalApi:
    """The aiohttp application behind the local API."""

    def __init__(
        self,
        settings: Settings,
        choose_backend: BackendChooser,
        origins: OriginPolicy,
        *,
        status: StatusSource,
        relayed: RelayedHook,
    ) -> None:
        self._settings = settings
        self._choose_backend = choose_backend
        self._origins = origins
        self._status = status
        self._relayed = relayed
        self._node_header = quote(settings.name, safe=" !#$&'()*+,/:;=?@[]~")

    def app(self) -> web.Application:
        """Build the application; the node runs it with an AppRunner."""
        app = web.Application(handler_args={"max_field_size": 65536})
        app.router.add_route("*", "/{path:.*}", self._handle)
        app.on_response_prepare.append(self._on_prepare)
        return app

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        request[_STARTED_KEY] = True
        response.headers[NODE_HEADER] = self._node_header
        response.headers.update(request.get(_CORS_KEY, {}))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Check the request as Ollama does, then answer it; failures become Ollama-format errors."""
        if refusal := self._guard(request):
            return refusal
        openai = request.path.startswith("/v1/")
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, openai=openai)
        except BackendUnavailable as exc:
            return error_response(502, str(exc), openai=openai)
        except Exception:
            if request.get(_STARTED_KEY):
                raise  # the status line is out; aiohttp drops the connection
            # Never a traceback to the client: the log has it.
            _log.exception("internal error answering %s %s", request.method, request.path)
            return error_response(500, "internal error in the InferHub node; see its log", openai=openai)

    def _guard(self, request: web.Request) -> web.Response | None:
        """Apply Ollama's CORS, then Host, checks; both refuse with an empty 403."""
        origin = request.headers.get("Origin")
        host = request.headers.get("Host", "")
        if origin and is_cors_request(origin, host):
            if not self._origins.allows(origin):
                return web.Response(status=403)
            if request.method == "OPTIONS":
                return web.Response(status=204, headers=self._origins.preflight_headers(origin))
            request[_CORS_KEY] = self._origins.response_headers(origin)
        if not host_allowed(host):
            return web.Response(status=403)
        if request.method == "OPTIONS" and host_name_allowed(host):
            return web.Response(status=204)
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.path == STATUS_PATH:
            if request.method not in ("GET", "HEAD"):
                return text_response(405, "405 method not allowed")
            return web.Response(body=go_json(self._status()), content_type="application/json")
        found = match(request.method, request.path)
        if found.endpoint is None:
            if found.method_not_allowed:
                return text_response(405, "405 method not allowed")
            return text_response(404, "404 page not found")
        endpoint = found.endpoint
        if endpoint.kind is Kind.ROOT:
            return text_response(200, "Ollama is running")

        via = [v.strip() for v in request.headers.get(VIA_HEADER, "").split(",") if v.strip()]
        if self._settings.node_id in via:
            raise ApiError(
                508,
                f"request loop: the backend {self._settings.backend} leads back to this InferHub node; "
                "point --backend at Ollama itself (default http://127.0.0.1:11434)",
            )
        body = await self._body(request, endpoint)
        model = None
        if endpoint.request_type is not None and isinstance(body, bytes):
            fields = parse_body(body, endpoint.request_type, openai=endpoint.openai)
            model = string_field(fields, "model", endpoint.request_type)
        backend = self._choose_backend(endpoint, model)

        headers = upstream_headers(request, keep_length=isinstance(body, StreamReader))
        headers[VIA_HEADER] = ",".join([*via, self._settings.node_id])
        async with backend.request(request.method, request.raw_path, headers, body) as upstream:
            response = await relay(request, upstream)
        self._relayed(endpoint)
        return response

    async def _body(self, request: web.Request, endpoint: Endpoint) -> Body:
        """Read the body within the size limit; blob uploads stream through unread and unlimited."""
        if not request.body_exists:
            return None
        if endpoint.kind is Kind.BLOB:
            return request.content
        limit = self._settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"request body is larger than the {self._settings.max_body_mib} MiB limit; raise it with "
            f"--max-body-mib or max_body_mib in {self._settings.config_dir / SETTINGS_FILE}",
        )
