"""The local API on 127.0.0.1:11435: Ollama's API, answered by the backend each request is sent to."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web

from ..errors import ApiError
from ..settings import Settings
from .admission import Admission
from .endpoints import CONTROL_PREFIX, PEERS_PATH, SHARE_PATH, STATUS_PATH, Endpoint, Kind
from .guard import OriginPolicy, host_allowed, host_name_allowed, is_cors_request
from .payload import parse_body
from .relay import BackendChooser, Forwarder, RelayedHook, StatusSource, route
from .responses import go_json, text_response

_CORS_KEY = web.RequestKey("cors_headers", dict)

# The peer list, as JSON values, and the switch for sharing this GPU.
PeersSource = Callable[[], list[dict[str, Any]]]
SharingSwitch = Callable[[bool], None]


class LocalApi:
    """The aiohttp application behind the local API."""

    def __init__(
        self,
        settings: Settings,
        choose_backend: BackendChooser,
        origins: OriginPolicy,
        *,
        admission: Admission,
        status: StatusSource,
        relayed: RelayedHook,
        peers: PeersSource,
        set_sharing: SharingSwitch,
    ) -> None:
        self._origins = origins
        self._admission = admission
        self._peers = peers
        self._set_sharing = set_sharing
        self._forwarder = Forwarder(settings, choose_backend, status=status, relayed=relayed)

    def app(self) -> web.Application:
        """Build the application; the node runs it with an AppRunner."""
        app = self._forwarder.app(self._handle)
        app.on_response_prepare.append(self._add_cors_headers)
        return app

    async def _add_cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(request.get(_CORS_KEY, {}))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Check the request as Ollama does, then answer it."""
        if refusal := self._guard(request):
            return refusal
        if request.path.startswith(CONTROL_PREFIX):
            return await self._control(request)
        routed = route(request)
        if isinstance(routed, web.Response):
            return routed
        return await self._forwarder.forward(request, routed, self._admit)

    async def _control(self, request: web.Request) -> web.StreamResponse:
        """Answer the tray, the dashboard and the CLI: status, peers, and the sharing switch."""
        if request.path == STATUS_PATH:
            return self._forwarder.status_reply(request)
        if request.path == PEERS_PATH and request.method in ("GET", "HEAD"):
            return web.Response(body=go_json(self._peers()), content_type="application/json")
        if request.path == SHARE_PATH and request.method == "POST":
            body = await request.read()
            share = parse_body(body, "inferhub.ShareRequest", openai=False).get("share")
            if not isinstance(share, bool):
                raise ApiError(400, 'send {"share": true} or {"share": false}')
            self._set_sharing(share)
            return web.Response(body=go_json({"share": share}), content_type="application/json")
        if request.path in (PEERS_PATH, SHARE_PATH):
            return text_response(405, "405 method not allowed")
        return text_response(404, "404 page not found")

    def _admit(self, endpoint: Endpoint) -> AbstractAsyncContextManager[None]:
        """Count the owner's inference on the backend, so peers' requests wait for a free slot."""
        if endpoint.kind is Kind.INFERENCE:
            return self._admission.local()
        return contextlib.nullcontext()

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
