"""DNS-SD over mDNS: advertise this node and find others. The only module that knows zeroconf."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable

import psutil
from zeroconf import BadTypeInNameException, Error, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .peers import SERVICE_TYPE, PeerAnnouncement, decode_txt, encode_txt
from .wire.errors import MalformedRecord

_log = logging.getLogger(__name__)

# How long to wait for another node's SRV, TXT and address records after it appears.
_RESOLVE_TIMEOUT_MS = 3000
# DNS-SD instance names are at most 63 bytes; the node id's head keeps same-named hosts apart.
_INSTANCE_MAX_BYTES = 63

# What python-zeroconf raises when mDNS cannot start (NotRunningException: its engine did not start in time).
DiscoveryFailed = Error

# Called with a node's endpoint (address, port) when it appears or changes, and when it says goodbye.
SeenCallback = Callable[[PeerAnnouncement], None]
GoneCallback = Callable[[tuple[str, int]], None]


def local_addresses(interfaces: tuple[str, ...]) -> list[str]:
    """Return the IPv4 addresses to advertise: the chosen interfaces, else every non-loopback one."""
    if interfaces:
        return list(interfaces)
    found = [
        addr.address
        for addrs in psutil.net_if_addrs().values()
        for addr in addrs
        if addr.family == socket.AF_INET and not ipaddress.ip_address(addr.address).is_loopback
    ]
    return found or ["127.0.0.1"]


def _local_networks() -> list[ipaddress.IPv4Network]:
    return [
        ipaddress.IPv4Network(f"{addr.address}/{addr.netmask}", strict=False)
        for addrs in psutil.net_if_addrs().values()
        for addr in addrs
        if addr.family == socket.AF_INET and addr.netmask
    ]


def pick_address(addresses: list[str], networks: list[ipaddress.IPv4Network]) -> str | None:
    """Choose the address of a peer to use: one on a network this machine is on, else the first."""
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if any(ip in network for network in networks):
            return address
    return addresses[0] if addresses else None


def instance_name(name: str, node_id: str) -> str:
    """Return the DNS-SD instance name for a node: its display name and the head of its id."""
    suffix = f" ({node_id[:8]})"
    head = name.encode()[: _INSTANCE_MAX_BYTES - len(suffix)].decode(errors="ignore").replace(".", " ")
    return f"{head}{suffix}.{SERVICE_TYPE}"


class Discovery:
    """Advertise one node's record and report other nodes' records as they come and go."""

    def __init__(
        self, own_id: str, interfaces: tuple[str, ...], seen: SeenCallback, gone: GoneCallback
    ) -> None:
        self.own_id = own_id
        self._interfaces = interfaces
        self._seen = seen
        self._gone = gone
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._endpoints: dict[str, tuple[str, int]] = {}  # instance name -> endpoint
        self._resolving: set[asyncio.Task[None]] = set()
        self._registering: asyncio.Future[object] | None = None

    async def start(self, announcement: PeerAnnouncement) -> None:
        """Join mDNS on the chosen interfaces, announce this node and start browsing."""
        addresses = local_addresses(self._interfaces)
        self._zc = AsyncZeroconf(
            interfaces=list(self._interfaces) if self._interfaces else addresses, ip_version=IPVersion.V4Only
        )
        self._info = self._service_info(announcement, addresses)
        # Browse first: registering probes the name for over a second, and peers need not wait for that.
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        # The returned task announces the record; nothing needs to wait for it.
        self._registering = asyncio.ensure_future(
            await self._zc.async_register_service(self._info, allow_name_change=True)
        )

    async def update(self, announcement: PeerAnnouncement) -> None:
        """Publish a changed record; the caller limits how often."""
        if self._zc is None or self._info is None or self._registering is None:
            return
        await self._registering
        self._info = self._service_info(announcement, [str(a) for a in self._info.parsed_addresses()])
        await (await self._zc.async_update_service(self._info))

    async def close(self) -> None:
        """Say goodbye, so peers drop this node at once, and leave mDNS."""
        for task in self._resolving:
            task.cancel()
        await asyncio.gather(*self._resolving, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            if self._registering is not None and not self._registering.done():
                # Still announcing: stop, and say goodbye to whoever heard part of it.
                self._registering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._registering
            await self._zc.async_unregister_all_services()
            await self._zc.async_close()
            self._zc = None

    def _service_info(self, announcement: PeerAnnouncement, addresses: list[str]) -> AsyncServiceInfo:
        name = self._info.name if self._info else instance_name(announcement.name, announcement.node_id)
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            addresses=[socket.inet_aton(a) for a in addresses],
            port=announcement.port,
            properties=encode_txt(announcement),
            server=f"inferhub-{announcement.node_id[:8]}.local.",
        )

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if self._info is not None and name == self._info.name:
            return  # this node's own record
        if state_change is ServiceStateChange.Removed:
            if endpoint := self._endpoints.pop(name, None):
                self._gone(endpoint)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name), name=f"resolve {name}")
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    async def _resolve(self, name: str) -> None:
        assert self._zc is not None
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._zc.zeroconf, _RESOLVE_TIMEOUT_MS):
                _log.debug("no answer resolving %s", name)
                return
            address = pick_address(info.parsed_addresses(IPVersion.V4Only), _local_networks())
            if address is None or info.port is None:
                raise MalformedRecord("record has no IPv4 address or port")
            announcement = decode_txt(info.properties, address, info.port)
        except (MalformedRecord, BadTypeInNameException, ValueError) as exc:
            _log.info("ignoring the mDNS record %r: %s", name, exc)
            return
        if announcement.node_id == self.own_id:
            return  # this node, seen under an old instance name
        self._endpoints[name] = announcement.endpoint
        self._seen(announcement)
