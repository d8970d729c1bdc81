"""The share API on the LAN (port 11436): what peers call, relayed to this machine's backend while its
owner shares it."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from aiohttp import web

from ..errors import ApiError
from .endpoints import METRICS_PATH, STATUS_PATH, Kind
from .relay import Forwarder, route

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
PULL_PATH = "/api/pull"


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
    ) -> None:
        self._forwarder = forwarder
        self._name = name
        self._sharing = sharing
        self._pool_pull = pool_pull

    def app(self) -> web.Application:
        """Build the application; the node runs it with an AppRunner."""
        return self._forwarder.app(self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Answer peers on the LAN: status always, inference and reads while sharing, nothing else."""
        if not is_lan_address(request.remote):
            raise ApiError(403, "InferHub shares only with machines on the local network")
        if request.path == STATUS_PATH:
            return self._forwarder.status_reply(request)
        if request.path == METRICS_PATH:
            return self._forwarder.metrics_reply(request)
        routed = route(request)
        if isinstance(routed, web.Response):
            return routed
        if routed.pattern == PULL_PATH and not self._pool_pull():
            raise ApiError(
                403, f"{self._name} does not let the pool pull models onto it; its owner can allow that"
            )
        if routed.kind not in _OPEN_TO_PEERS and routed.pattern != PULL_PATH:
            raise ApiError(
                403, f"{request.path} is not open to peers: model management stays with this machine's owner"
            )
        if not self._sharing():
            raise ApiError(
                503, f"{self._name} is not sharing its GPU right now; its owner can turn sharing on"
            )
        return await self._forwarder.forward(request, routed)
