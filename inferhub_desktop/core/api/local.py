"""The local API on 127.0.0.1:11435: Ollama's API, answered by the pool's nodes, and the node's own
control paths for the tray, the dashboard and the CLI."""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from ..audit import MAX_ENTRIES
from ..copying import FROM_HEADER, ModelCopies, pull_lines
from ..health import HEALTH_PATH, Health
from ..library import ModelName
from ..peers import AddressState, PeerState
from ..settings import SWITCHES
from ..wire.endpoints import (
    ADDRESSES_PATH,
    AUDIT_PATH,
    CONTROL_PREFIX,
    METRICS_PATH,
    PEERS_PATH,
    POOL_PATH,
    PULL_PATH,
    ROUTE_PATH,
    STATUS_PATH,
    SWITCHES_PATH,
    USAGE_PATH,
)
from ..wire.errors import ApiError, ConfigError, MalformedRecord, SettingsNotSaved
from ..wire.headers import CONTROL_HEADER, NODE_HEADER
from ..wire.payload import parse_body
from ..wire.responses import json_response, text_response
from .guard import OriginPolicy, host_allowed, host_name_allowed, is_cors_request
from .pooled import POOLED_PATHS, pooled_listing
from .relay import BODY_KEY, Forwarder, Target, endpoint_of

_CORS_KEY = web.RequestKey("cors_headers", dict)
VERSION_PATH = "/api/version"
# Management calls on one model that the pool's listings may show from a peer: what the owner does, and
# the body's field that names the model.
_MANAGED_HERE = {"/api/delete": ("Delete", "model"), "/api/copy": ("Copy", "source")}


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

    def health(self) -> Health:
        """Say whether this machine's requests are answered now."""
        ...

    def audit(self, limit: int) -> list[dict[str, Any]]:
        """Return the last `limit` requests peers had this machine serve, newest last, as JSON values."""
        ...

    def usage(self) -> dict[str, Any]:
        """Say who uses this machine now and what each peer had it serve today, as JSON values."""
        ...


class Routes(Protocol):
    """What the pool-wide answers read of the dispatcher."""

    def listing_sources(self) -> Sequence[Target]:
        """Return the nodes that answer pool-wide listings: this one first, then the peers it may use."""
        ...

    def explain(self, model: str) -> dict[str, Any]:
        """Say where a request for a model would go now, and why, as JSON values."""
        ...

    def where(self, model: str) -> tuple[bool, list[str]]:
        """Say whether this machine has `model` installed, and which sharing peers have it."""
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
        copies: ModelCopies | None = None,
    ) -> None:
        self._forwarder = forwarder
        # Models copied from pool members: the pulls, and the registry this machine's Ollama reads them from.
        self._copies = copies
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
        if request.path.startswith("/v2/") and self._copies is not None:
            return await self._copies.registry(request)
        pool_wide = request.method in ("GET", "HEAD") and request.path in (HEALTH_PATH, "/", VERSION_PATH)
        if pool_wide and (answer := self._pool_answer(request.path)):
            return answer
        endpoint = endpoint_of(request)
        if isinstance(endpoint, web.Response):
            return endpoint
        if request.method == "GET" and endpoint.pattern in POOLED_PATHS:
            return await pooled_listing(request, endpoint, self._routes.listing_sources())
        if endpoint.pattern in _MANAGED_HERE:
            await self._refuse_a_peers_model(request, endpoint.pattern)
        if endpoint.pattern == PULL_PATH and (pulled := await self._pull(request)):
            return pulled
        return await self._forwarder.forward(request, endpoint)

    async def _pull(self, request: web.Request) -> web.StreamResponse | None:
        """Pull a model a member has from the pool, with Ollama's progress; None to pull it as Ollama does
        (from its registry): no member has it, the user asked for the registry, or the request is not
        this machine's Ollama's to answer."""
        copies, source = self._copies, request.headers.get(FROM_HEADER)
        backend = copies.backend() if copies else None
        if copies is None or backend is None or source == "registry" or NODE_HEADER in request.headers:
            return None
        body = request[BODY_KEY] = await self._forwarder.read_body(request)
        try:
            fields = json.loads(body)
            name = ModelName.parse(str(fields.get("model") or fields.get("name") or ""))
        except (ValueError, AttributeError, MalformedRecord):
            return None  # Ollama words the error
        if source is None and not copies.members_with(name):
            return None
        lines = copies.pull(backend, name, source)
        if fields.get("stream") is False:
            last: dict[str, Any] = {}
            try:
                async for line in lines:
                    last = line
            except ApiError:
                if source is not None:
                    raise
                return None  # the registry, as Ollama would
            return json_response(last)
        try:
            first = await anext(lines)  # a refusal before any progress is the answer's status
        except ApiError:
            if source is not None:
                raise
            return None
        reply = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await reply.prepare(request)
        await reply.write(_line(first))
        try:
            async for line in lines:
                await reply.write(_line(line))
        except ApiError as exc:
            if source is not None:
                await reply.write(_line({"error": exc.message}))
            else:
                # The pool could not give it: the registry, the last resort, as Ollama pulls it.
                await reply.write(_line({"status": f"{exc.message}; pulling from the registry"}))
                try:
                    async for line in pull_lines(backend, body):
                        await reply.write(_line(line))
                except ApiError as failed:
                    await reply.write(_line({"error": failed.message}))
        await reply.write_eof()
        return reply

    def _pool_answer(self, path: str) -> web.Response | None:
        """Answer for the pool what a single Ollama answers for itself: whether it is healthy, whether
        it runs, and its version while this machine's backend is down but a peer serves; None to relay."""
        health = self._controls.health()
        if path == HEALTH_PATH:
            return json_response(health.to_json(self._forwarder.name), health.http_status)
        if path == "/" and health.status == "unhealthy":
            return text_response(503, f"InferHub is running, but {'; '.join(health.reasons)}")
        if path == VERSION_PATH and not health.local and health.version:
            return json_response({"version": health.version})
        return None

    async def _refuse_a_peers_model(self, request: web.Request, pattern: str) -> None:
        """Copy and delete act on this machine's models only; for a model the listing shows from a peer,
        say where it is and how to act there, not a bare "not found"."""
        body = request[BODY_KEY] = await self._forwarder.read_body(request)
        try:
            fields = json.loads(body)
        except ValueError:
            return  # the backend words the error
        verb, key = _MANAGED_HERE[pattern]
        name = fields.get(key) or fields.get("name") if isinstance(fields, dict) else None
        if not isinstance(name, str) or not name:
            return
        here, peers = self._routes.where(name)
        if here or not peers:
            return
        where = ", ".join(peers)
        command = "ollama rm" if pattern == "/api/delete" else "ollama cp"
        raise ApiError(
            404,
            f"model '{name}' is not on this machine: the pool lists it from {where}. {verb} it there "
            f"(`{command} {name}{' NEW-NAME' if command == 'ollama cp' else ''}` on {peers[0]}); "
            "InferHub lets no machine manage another's models",
        )

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
            return json_response([peer.to_json() for peer in self._controls.peers()])
        if request.path == ADDRESSES_PATH and reading:
            return json_response([entry.to_json() for entry in self._controls.addresses()])
        if request.path == ROUTE_PATH and reading:
            model = request.query.get("model", "").strip()
            if not model:
                raise ApiError(400, "name a model: ?model=NAME")
            return json_response(self._routes.explain(model))
        if request.path == SWITCHES_PATH and reading:
            return json_response(self._controls.switch())
        if request.path == SWITCHES_PATH and request.method == "POST":
            fields = parse_body(await request.read(), "inferhub.Switches", openai=False)
            if not fields or any(k not in SWITCHES or not isinstance(v, bool) for k, v in fields.items()):
                raise ApiError(400, "send an object of true/false values for any of: " + ", ".join(SWITCHES))
            return json_response(self._controls.switch(fields))
        if request.path == AUDIT_PATH and reading:
            limit = request.query.get("limit", "100")
            if not (limit.isascii() and limit.isdigit()):
                raise ApiError(400, f"?limit= takes a number of entries (at most {MAX_ENTRIES} are sent)")
            return json_response(self._controls.audit(min(int(limit), MAX_ENTRIES)))
        if request.path == USAGE_PATH and reading:
            return json_response(self._controls.usage())
        if request.path == POOL_PATH and reading:
            return json_response(self._controls.pool_info())
        if request.path == POOL_PATH and request.method == "POST":
            fields = parse_body(await request.read(), "inferhub.Pool", openai=False) or {}
            if fields == {}:
                return json_response(await self._controls.reload_pool())
            who = fields.get("remove")
            if set(fields) != {"remove"} or not isinstance(who, str):
                raise ApiError(
                    400,
                    'send {} to take up the pool files as they are now, {"remove": "NODE"} to remove one',
                )
            return json_response(self._controls.remove_member(who))
        if request.path in (
            ADDRESSES_PATH,
            AUDIT_PATH,
            PEERS_PATH,
            POOL_PATH,
            ROUTE_PATH,
            SWITCHES_PATH,
            USAGE_PATH,
        ):
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


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
