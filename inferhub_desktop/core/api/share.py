"""The share API on the LAN (port 11436): what peers call, relayed to this machine's backend while its
owner shares it."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..backends.base import BackendState
from ..health import HEALTH_PATH, share_health
from ..lending import Lender
from ..pool import Member, PrivatePool
from ..wire.endpoints import JOIN_PATH, METRICS_PATH, MODELS_PREFIX, PULL_PATH, ROSTER_PATH, STATUS_PATH, Kind
from ..wire.errors import ApiError, MalformedRecord, Unauthorized
from ..wire.headers import SHARE_PORT_HEADER
from ..wire.responses import error_response, json_response
from .feed import FEED_TYPE, StatusFeed
from .relay import BODY_KEY, CALLER_KEY, Forwarder, endpoint_of

_log = logging.getLogger(__name__)

# Sources on the local network: private, link-local and loopback addresses, plus the shared space
# VPN meshes such as Tailscale hand out (100.64/10) and the range labs use for test networks (198.18/15).
_LAN_NETWORKS = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "100.64.0.0/10",
        "198.18.0.0/15",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)
# What peers may ask for; model management, blobs and unknown paths stay with the owner, but for pulls
# where the owner allows them.
_OPEN_TO_PEERS = frozenset({Kind.INFERENCE, Kind.READ})
# A body that takes longer than this to arrive is a slow client holding a connection open.
_BODY_TIMEOUT_S = 30.0
# A request to join a private pool: a name, a certificate and a proof.
_MAX_JOIN_BYTES = 16 * 1024
# Requests one source address may make: a sustained rate, and a burst above it. A peer follows the status
# with one request and sends a few requests at a time; a flood past this is refused with 429.
_RATE_PER_S = 20.0
_BURST = 60.0
# Sources whose rate is tracked at once; the least recently seen are forgotten past this.
_MAX_SOURCES = 4096
# A refused source is logged at most this often.
_REFUSAL_LOG_GAP_S = 60.0


def is_lan_address(address: str | None) -> bool:
    """Whether a peer's address is on the local network (private, link-local or loopback)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(ip in network for network in _LAN_NETWORKS)


class ShareApi:
    """The aiohttp application behind the share API."""

    def __init__(
        self,
        forwarder: Forwarder,
        name: str,
        *,
        refusal: Callable[[], str | None],
        pool_pull: Callable[[], bool],
        stopping: Callable[[], bool] = lambda: False,
        pool: Callable[[], PrivatePool | None] = lambda: None,
        admitted: Callable[[Member], None] = lambda member: None,
        backend: Callable[[], BackendState] | None = None,
        feed: StatusFeed | None = None,
        lender: Lender | None = None,
        followed_by: Callable[[str, int], None] = lambda host, port: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._forwarder = forwarder
        self._backend = backend
        self._name = name
        # Why peers' requests are refused now (sharing off, or paused for the owner); None while sharing.
        self._refusal = refusal
        self._pool_pull = pool_pull
        # A stopping node ends its status streams and answers 503 to peers asking again: they drop it at once.
        self._stopping = stopping
        # The private pool: in one, the share API speaks mutual TLS and serves members only (and, on the
        # pool's authority, machines that bring an invite); without one the pool is the LAN's open one and
        # only local-network sources are served.
        self._pool = pool
        self._admitted = admitted
        # Peers that ask for the status as a stream follow it here, instead of asking every second.
        self._feed = feed
        # Peers copying this machine's models read their files here.
        self._lender = lender
        # A peer that follows the status, at its address and the share port it names.
        self._followed_by = followed_by
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._refusals_logged: dict[str, float] = {}

    def _still_let_in(self, request: web.Request, pool: PrivatePool | None) -> Callable[[], bool]:
        """Return whether a follower of the status is still let in: the node goes on, in the same pool, and
        in a private one the follower is still on its roster (a removed member's stream ends at once)."""
        shown = request.transport.get_extra_info("ssl_object") if request.transport else None
        if pool is None:
            return lambda: not self._stopping() and self._pool() is None
        return lambda: not self._stopping() and self._pool() is pool and pool.member_shown(shown) is not None

    def app(self) -> web.Application:
        """Build the application; the node runs it with an AppRunner."""
        return self._forwarder.app(self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Answer peers: status always, inference and reads while sharing, nothing else; in a private pool
        only to members, known by their certificates before anything of a request's body is read."""
        source = request.remote or ""
        if not self._allowed(source):
            raise ApiError(429, "too many requests from this address; slow down")
        pool = self._pool()
        if pool is not None:
            transport = request.transport
            member = pool.member_shown(transport.get_extra_info("ssl_object") if transport else None)
            if member is None:
                if request.path == JOIN_PATH and pool.authority is not None:
                    return await self._join(request, pool)
                self._log_refusal(source, "it showed no certificate of a member")
                # Ollama's word for it, and nothing that would help a caller who is not a member.
                raise ApiError(401, "unauthorized")
            request[CALLER_KEY] = member.node_id
        elif not is_lan_address(source):
            raise ApiError(403, "InferHub shares only with machines on the local network")
        if request.path.startswith(MODELS_PREFIX) and self._lender is not None:
            return await self._lender.answer(request, private_pool=pool is not None)
        body = await _read_within_deadline(request, self._forwarder.read_body(request))
        if isinstance(body, web.Response):
            return body
        request[BODY_KEY] = body
        if request.path == STATUS_PATH:
            if self._stopping():
                raise ApiError(503, f"{self._name} is stopping")
            if (
                self._feed is not None
                and request.method == "GET"
                and FEED_TYPE in request.headers.get("Accept", "")
            ):
                if (port := _port(request.headers.get(SHARE_PORT_HEADER, ""))) and source:
                    self._followed_by(source, port)
                return await self._feed.reply(request, self._still_let_in(request, pool))
            return self._forwarder.status_reply(request)
        if request.path == METRICS_PATH:
            return self._forwarder.metrics_reply(request)
        if request.path == HEALTH_PATH and request.method in ("GET", "HEAD") and self._backend is not None:
            health = share_health(self._backend(), sharing=self._refusal() is None, name=self._name)
            return json_response(health.to_json(self._name), health.http_status)
        if request.path == ROSTER_PATH and pool is not None:
            return web.json_response(pool.roster.to_json())
        endpoint = endpoint_of(request)
        if isinstance(endpoint, web.Response):
            return endpoint
        if endpoint.pattern == PULL_PATH and not self._pool_pull():
            raise ApiError(
                403, f"{self._name} does not let the pool pull models onto it; its owner can allow that"
            )
        if endpoint.kind not in _OPEN_TO_PEERS and endpoint.pattern != PULL_PATH:
            raise ApiError(
                403, f"{request.path} is not open to peers: model management stays with this machine's owner"
            )
        if (refused := self._refusal()) is not None:
            raise ApiError(503, refused)
        return await self._forwarder.forward(request, endpoint)

    async def _join(self, request: web.Request, pool: PrivatePool) -> web.StreamResponse:
        """Admit the machine that asks, if it proves an invite (pool.py); it has no certificate yet."""
        source = request.remote or ""
        if request.method != "POST":
            raise ApiError(405, "ask to join with POST")
        if request.content_length is None or request.content_length > _MAX_JOIN_BYTES:
            raise ApiError(413, f"a request to join is at most {_MAX_JOIN_BYTES} bytes, with its length said")
        try:
            body = await _read_within_deadline(request, request.content.readexactly(request.content_length))
        except asyncio.IncompleteReadError:
            raise ApiError(400, "the request to join was cut off before its end") from None
        if isinstance(body, web.Response):
            return body
        try:
            admission, proof = pool.admit(json.loads(body), pool.fingerprint)
        except (ValueError, MalformedRecord) as exc:
            raise ApiError(400, f"not a request to join: {exc}") from None
        except Unauthorized as exc:
            self._log_refusal(source, str(exc))
            raise ApiError(401, "unauthorized") from None
        member = admission.roster.members[-1]
        _log.info("admitted %r (%s) from %s to the pool", member.name, member.node_id, source)
        self._admitted(member)
        return web.json_response({"pool": admission.to_json(), "proof": proof.hex()})

    def _allowed(self, source: str) -> bool:
        """Take a token from the source's bucket; False when it has none left."""
        now = self._clock()
        tokens, last = self._buckets.pop(source, (_BURST, now))
        tokens = min(_BURST, tokens + (now - last) * _RATE_PER_S)
        allowed = tokens >= 1
        self._buckets[source] = (tokens - 1 if allowed else tokens, now)
        if len(self._buckets) > _MAX_SOURCES:
            self._buckets.popitem(last=False)
        return allowed

    def _log_refusal(self, source: str, reason: str) -> None:
        now = self._clock()
        if now - self._refusals_logged.get(source, -_REFUSAL_LOG_GAP_S) >= _REFUSAL_LOG_GAP_S:
            self._refusals_logged[source] = now
            if len(self._refusals_logged) > _MAX_SOURCES:
                self._refusals_logged.clear()
            _log.info("refused a request from %s, which is not a member of this pool: %s", source, reason)


async def _read_within_deadline(request: web.Request, reading: Awaitable[bytes]) -> bytes | web.Response:
    """Return a body that came whole within the deadline, or the answer for one that did not."""
    try:
        async with asyncio.timeout(_BODY_TIMEOUT_S):
            return await reading
    except TimeoutError:
        late = error_response(
            408,
            f"the request's body did not arrive within {_BODY_TIMEOUT_S:g} s",
            openai=request.path.startswith("/v1/"),
        )
        late.force_close()  # the rest of the body is not waited for
        return late


def _port(value: str) -> int | None:
    """Read a TCP port a peer names; None for anything else."""
    return int(value) if value.isascii() and value.isdigit() and 0 < int(value) < 65536 else None
