"""The share API on the LAN (port 11436): what peers call, relayed to this machine's backend while its
owner shares it."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from aiohttp import web

from ..trust import PoolKey
from ..wire.endpoints import METRICS_PATH, PULL_PATH, STATUS_PATH, Kind
from ..wire.errors import ApiError, Unauthorized
from ..wire.headers import AUTH_HEADER
from ..wire.responses import error_response
from .relay import BODY_KEY, SIGNER_KEY, Forwarder, endpoint_of

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
# Requests one source address may make: a sustained rate, and a burst above it. A peer polls the status
# once a second and sends a few requests at a time; a flood past this is refused with 429.
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
        sharing: Callable[[], bool],
        pool_pull: Callable[[], bool],
        stopping: Callable[[], bool] = lambda: False,
        key: Callable[[], PoolKey | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._forwarder = forwarder
        self._name = name
        self._sharing = sharing
        self._pool_pull = pool_pull
        # A node that is stopping says so to status polls: peers that heard its goodbye drop it at once.
        self._stopping = stopping
        # The private pool's keys: with them every request must be signed by a member; without them the
        # pool is the LAN's open one and only local-network sources are served.
        self._key = key
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._refusals_logged: dict[str, float] = {}

    def app(self) -> web.Application:
        """Build the application; the node runs it with an AppRunner."""
        return self._forwarder.app(self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Answer peers: status always, inference and reads while sharing, nothing else; in a private pool
        only to members."""
        source = request.remote or ""
        if not self._allowed(source):
            raise ApiError(429, "too many requests from this address; slow down")
        key = self._key()
        nonce = ""
        if key is None and not is_lan_address(source):
            raise ApiError(403, "InferHub shares only with machines on the local network")
        # In either pool a body arrives whole within the deadline, or the connection is let go.
        try:
            async with asyncio.timeout(_BODY_TIMEOUT_S):
                body = await self._forwarder.read_body(request)
        except TimeoutError:
            late = error_response(
                408,
                f"the request's body did not arrive within {_BODY_TIMEOUT_S:g} s",
                openai=request.path.startswith("/v1/"),
            )
            late.force_close()  # the rest of the body is not waited for
            return late
        request[BODY_KEY] = body
        if key is not None:
            try:
                signer, nonce = key.check_request(
                    request.headers.get(AUTH_HEADER), request.method, request.raw_path, body
                )
            except Unauthorized as exc:
                self._log_refusal(source, str(exc))
                # Ollama's word for it, and nothing that would help a caller who is not a member.
                raise ApiError(401, "unauthorized") from None
            request[SIGNER_KEY] = signer
        if request.path == STATUS_PATH:
            if self._stopping():
                raise ApiError(503, f"{self._name} is stopping")
            reply = self._forwarder.status_reply(request)
            if key is not None and isinstance(reply.body, bytes):
                reply.headers[AUTH_HEADER] = key.sign_status(nonce, reply.body)
            return reply
        if request.path == METRICS_PATH:
            return self._forwarder.metrics_reply(request)
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
        if not self._sharing():
            raise ApiError(
                503, f"{self._name} is not sharing its GPU right now; its owner can turn sharing on"
            )
        return await self._forwarder.forward(request, endpoint)

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
