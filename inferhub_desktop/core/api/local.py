"""The local API on 127.0.0.1:11435: Ollama's API, answered by the pool's nodes, and the node's own
control paths for the tray, the dashboard and the CLI."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from ..audit import MAX_ENTRIES
from ..peers import AddressState, PeerState
from ..settings import SWITCHES
from ..wire.endpoints import (
    ADDRESSES_PATH,
    AUDIT_PATH,
    CONTROL_PREFIX,
    METRICS_PATH,
    PEERS_PATH,
    POOL_PATH,
    ROUTE_PATH,
    STATUS_PATH,
    SWITCHES_PATH,
)
from ..wire.errors import ApiError, ConfigError, SettingsNotSaved
from ..wire.headers import CONTROL_HEADER
from ..wire.payload import parse_body
from ..wire.responses import go_json, text_response
from .guard import OriginPolicy, host_allowed, host_name_allowed, is_cors_request
from .pooled import POOLED_PATHS, pooled_listing
from .relay import Forwarder, Target, endpoint_of

_CORS_KEY = web.RequestKey("cors_headers", dict)


class Control(Protocol):
    """What the control paths read of the node and change in it."""

    def peers(self) -> list[PeerState]:
        """Return the live peers."""
        ...

    def addresses(self) -> list[AddressState]:
        """Return the peers the owner named by address, each with how reaching it goes."""
        ...

    def switch(self, changes: Mapping[str, bool] | None = None) -> dict[str, bool]:
        """Change some switches (none: read them); return them all."""
        ...

    def pool_info(self) -> dict[str, Any]:
        """Return the private pool this node is in and its members (a null id: the open pool)."""
        ...

    async def reload_pool(self) -> dict[str, Any]:
        """Take up the pool files as they are now; return the pool."""
        ...

    def remove_member(self, who: str) -> dict[str, Any]:
        """Remove a machine from the pool this machine is the authority of; return the pool."""
        ...

    def audit(self, limit: int) -> list[dict[str, Any]]:
        """Return the last `limit` requests peers had this machine serve, newest last, as JSON values."""
        ...


class Routes(Protocol):
    """What the pool-wide answers read of the dispatcher."""

    def listing_sources(self) -> Sequence[Target]:
        """Return the nodes that answer pool-wide listings: this one first, then the peers it may use."""
        ...

    def explain(self, model: str) -> dict[str, Any]:
        """Say where a request for a model would go now, and why, as JSON values."""
        ...


class LocalApi:
    """The aiohttp application behind the local API."""

    def __init__(
        self,
        forwarder: Forwarder,
        origins: OriginPolicy,
        control: Control,
        routes: Routes,
        token: str,
    ) -> None:
        self._forwarder = forwarder
        self._origins = origins
        # What the control paths require of a request: the owner's control token.
        self._token = token
        self._controls = control
        self._routes = routes

    def app(self) -> web.Application:
        """Build the application; the node runs it with an AppRunner."""
        app = self._forwarder.app(self._handle)
        app.on_response_prepare.append(self._add_cors_headers)
        return app

    async def _add_cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(request.get(_CORS_KEY, {}))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Check the request as Ollama does, then answer it: listings pool-wide, the rest where routed."""
        if request.path.startswith(CONTROL_PREFIX):
            # The owner's alone: never a web page's, whatever Ollama's Origin rules let through.
            if "Origin" in request.headers:
                raise ApiError(403, "the node's control paths do not answer web pages")
            if not hmac.compare_digest(request.headers.get(CONTROL_HEADER, ""), self._token):
                raise ApiError(
                    401,
                    "this path needs the node's control token: the owner's `inferhub` commands send it "
                    "from the config directory's control.token",
                )
        if refusal := self._guard(request):
            return refusal
        if request.path.startswith(CONTROL_PREFIX):
            return await self._control(request)
        if request.path == METRICS_PATH:
            return self._forwarder.metrics_reply(request)
        endpoint = endpoint_of(request)
        if isinstance(endpoint, web.Response):
            return endpoint
        if request.method == "GET" and endpoint.pattern in POOLED_PATHS:
            return await pooled_listing(request, endpoint, self._routes.listing_sources())
        return await self._forwarder.forward(request, endpoint)

    async def _control(self, request: web.Request) -> web.StreamResponse:
        """Answer the tray, the dashboard and the CLI: status, peers, routes and switches."""
        try:
            return await self._answer_control(request)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        except SettingsNotSaved as exc:
            # Nothing changed: the answer says so, and why.
            raise ApiError(500, str(exc)) from None

    async def _answer_control(self, request: web.Request) -> web.StreamResponse:
        reading = request.method in ("GET", "HEAD")
        if request.path == STATUS_PATH:
            return self._forwarder.status_reply(request)
        if request.path == PEERS_PATH and reading:
            return _json([peer.to_json() for peer in self._controls.peers()])
        if request.path == ADDRESSES_PATH and reading:
            return _json([entry.to_json() for entry in self._controls.addresses()])
        if request.path == ROUTE_PATH and reading:
            model = request.query.get("model", "").strip()
            if not model:
                raise ApiError(400, "name a model: ?model=NAME")
            return _json(self._routes.explain(model))
        if request.path == SWITCHES_PATH and reading:
            return _json(self._controls.switch())
        if request.path == SWITCHES_PATH and request.method == "POST":
            fields = parse_body(await request.read(), "inferhub.Switches", openai=False)
            if not fields or any(k not in SWITCHES or not isinstance(v, bool) for k, v in fields.items()):
                raise ApiError(400, "send an object of true/false values for any of: " + ", ".join(SWITCHES))
            return _json(self._controls.switch(fields))
        if request.path == AUDIT_PATH and reading:
            limit = request.query.get("limit", "100")
            if not (limit.isascii() and limit.isdigit()):
                raise ApiError(400, f"?limit= takes a number of entries (at most {MAX_ENTRIES} are sent)")
            return _json(self._controls.audit(min(int(limit), MAX_ENTRIES)))
        if request.path == POOL_PATH and reading:
            return _json(self._controls.pool_info())
        if request.path == POOL_PATH and request.method == "POST":
            fields = parse_body(await request.read(), "inferhub.Pool", openai=False) or {}
            if fields == {}:
                return _json(await self._controls.reload_pool())
            who = fields.get("remove")
            if set(fields) != {"remove"} or not isinstance(who, str):
                raise ApiError(
                    400,
                    'send {} to take up the pool files as they are now, {"remove": "NODE"} to remove one',
                )
            return _json(self._controls.remove_member(who))
        if request.path in (ADDRESSES_PATH, AUDIT_PATH, PEERS_PATH, POOL_PATH, ROUTE_PATH, SWITCHES_PATH):
            return text_response(405, "405 method not allowed")
        return text_response(404, "404 page not found")

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


def _json(value: Any) -> web.Response:
    return web.Response(body=go_json(value), content_type="application/json")
