"""Peers: the DNS-SD TXT record nodes agree on, and the table of live peers (pure state, no I/O)."""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from .status import NodeStatus
from .wire.errors import MalformedRecord
from .wire.records import Fields

PROTOCOL_VERSION = 1
SERVICE_TYPE = "_inferhub._tcp.local."
# A DNS-SD TXT string is at most 255 bytes; the design keeps the whole record well under 1300.
_MAX_TXT_STRING_BYTES = 255
_MAX_TXT_RECORD_BYTES = 1300
_MAX_NAME_CHARS = 63
_MAX_GPU_CHARS = 60
_MAX_MODELS_HASH_CHARS = 16
_MAX_POOL_CHARS = 32
_MAX_TLS_CHARS = 128
# Larger than any real machine: a record claiming more is lying.
_MAX_VRAM_MIB = 64 * 1024 * 1024
_MAX_SLOTS = 4096
# Each round trip measured counts this much in a peer's smoothed one, as TCP smooths its RTT.
_RTT_SMOOTHING = 0.125


@dataclasses.dataclass(frozen=True)
class PeerAnnouncement:
    """What a node says about itself in its TXT record, and where it can be reached."""

    node_id: str
    name: str
    address: str
    port: int
    share: bool
    gpu: str
    vram_free_mib: int
    vram_total_mib: int
    active: int
    slots: int
    models_hash: str
    pool: str = ""
    tls: str = ""
    version: int = PROTOCOL_VERSION

    @property
    def endpoint(self) -> tuple[str, int]:
        return self.address, self.port


def url_host(host: str) -> str:
    """Write an address as a URL's host: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host


def encode_txt(announcement: PeerAnnouncement) -> dict[str, str]:
    """Return the TXT record's key/value pairs for this node's announcement."""
    return {
        "v": str(announcement.version),
        "id": announcement.node_id,
        "name": announcement.name,
        "share": "1" if announcement.share else "0",
        "gpu": announcement.gpu,
        "vram": f"{announcement.vram_free_mib}/{announcement.vram_total_mib}",
        "load": f"{announcement.active}/{announcement.slots}",
        "mh": announcement.models_hash,
        "pool": announcement.pool,
        "tls": announcement.tls,
    }


def decode_txt(properties: Mapping[bytes, bytes | None], address: str, port: int) -> PeerAnnouncement:
    """Read another node's TXT record; raise MalformedRecord saying what is wrong with it."""
    size = sum(len(k) + 1 + len(v or b"") + 1 for k, v in properties.items())
    if size > _MAX_TXT_RECORD_BYTES:
        raise MalformedRecord(f"TXT record of {size} bytes is over {_MAX_TXT_RECORD_BYTES}")
    try:
        txt = {k.decode(): (v or b"").decode() for k, v in properties.items()}
    except UnicodeDecodeError as exc:
        raise MalformedRecord("TXT record is not UTF-8") from exc
    for key, value in txt.items():
        if len(key.encode()) + 1 + len(value.encode()) > _MAX_TXT_STRING_BYTES:
            raise MalformedRecord(f"TXT key {key!r} is over {_MAX_TXT_STRING_BYTES} bytes")

    version = _int(txt, "v", 1, 1_000_000)
    if version != PROTOCOL_VERSION:
        raise MalformedRecord(f"protocol version {version} is not {PROTOCOL_VERSION}")
    node_id = _field(txt, "id", 36)
    try:
        uuid.UUID(node_id)
    except ValueError:
        raise MalformedRecord(f"id {node_id!r} is not a UUID") from None
    share = _field(txt, "share", 1)
    if share not in ("0", "1"):
        raise MalformedRecord(f"share {share!r} is not 0 or 1")
    free, total = _pair(txt, "vram", _MAX_VRAM_MIB)
    if free > total:
        raise MalformedRecord(f"vram free {free} MiB is more than its total {total} MiB")
    active, slots = _pair(txt, "load", _MAX_SLOTS)
    if slots < 1:
        raise MalformedRecord("load has no slots")
    models_hash = _field(txt, "mh", _MAX_MODELS_HASH_CHARS)
    if any(c not in "0123456789abcdef" for c in models_hash):
        raise MalformedRecord(f"mh {models_hash!r} is not lowercase hex")
    if not 1 <= port <= 65535:
        raise MalformedRecord(f"port {port} is out of range")
    tls = _field(txt, "tls", _MAX_TLS_CHARS)
    if tls and (len(tls) != 64 or any(c not in "0123456789abcdef" for c in tls)):
        raise MalformedRecord(f"tls {tls[:16]!r}… is not a SHA-256 fingerprint in lowercase hex")
    return PeerAnnouncement(
        node_id=node_id,
        name=_field(txt, "name", _MAX_NAME_CHARS, required=True),
        address=address,
        port=port,
        share=share == "1",
        gpu=_field(txt, "gpu", _MAX_GPU_CHARS),
        vram_free_mib=free,
        vram_total_mib=total,
        active=active,
        slots=slots,
        models_hash=models_hash,
        pool=_field(txt, "pool", _MAX_POOL_CHARS),
        tls=tls,
        version=version,
    )


def _field(txt: Mapping[str, str], key: str, max_chars: int, *, required: bool = False) -> str:
    if key not in txt:
        raise MalformedRecord(f"TXT key {key!r} is missing")
    value = txt[key]
    if len(value) > max_chars or not value.isprintable() or (required and not value.strip()):
        raise MalformedRecord(f"TXT key {key!r} has an invalid value {value[:80]!r}")
    return value


def _int(txt: Mapping[str, str], key: str, low: int, high: int) -> int:
    value = _field(txt, key, 10)
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise MalformedRecord(f"TXT key {key!r} is not a number in {low}..{high}: {value!r}")
    return int(value)


def _pair(txt: Mapping[str, str], key: str, high: int) -> tuple[int, int]:
    first, sep, second = _field(txt, key, 24).partition("/")
    numbers = first + second
    if (
        not (sep and first and second and numbers.isascii() and numbers.isdigit())
        or max(int(first), int(second)) > high
    ):
        raise MalformedRecord(f"TXT key {key!r} is not two numbers A/B up to {high}: {txt[key]!r}")
    return int(first), int(second)


@dataclasses.dataclass(frozen=True)
class Peer:
    """A node this one can reach: what it announced, its last full status, when it last answered, and
    how long its answers take (a smoothed round trip)."""

    announcement: PeerAnnouncement
    status: NodeStatus
    last_seen: float
    rtt_s: float = 0.0

    @property
    def node_id(self) -> str:
        return self.announcement.node_id

    def state(self, breaker: str) -> PeerState:
        """Return the peer as the node reports it, with how its circuit breaker holds it."""
        a = self.announcement
        return PeerState(a.node_id, a.name, a.address, a.port, a.share, self.status, breaker)


@dataclasses.dataclass(frozen=True)
class AddressState:
    """A peer the owner named by address, and how reaching it goes: "reaching" until the first answer,
    then "reached" (`detail`: the node's name), "unreachable" or "refused" (`detail`: why)."""

    address: str  # HOST:PORT
    state: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"address": self.address, "state": self.state, "detail": self.detail}

    @classmethod
    def from_json(cls, value: Any) -> AddressState:
        """Read a peer named by address as the local API lists it; raise MalformedRecord if it is not one."""
        fields = Fields(value, "address")
        state = fields.text("state", 16)
        if state not in ("reaching", "reached", "unreachable", "refused"):
            raise MalformedRecord(f"address.state {state[:16]!r} is not one this version knows")
        return cls(fields.text("address", 262), state, fields.text("detail", 512, default=""))


@dataclasses.dataclass(frozen=True)
class PeerState:
    """A peer as a node reports it to its owner (the local API, the desktop app, `inferhub peers`):
    where it is, what it last said of itself, and how this node's circuit breaker holds it."""

    node_id: str
    name: str
    address: str
    port: int
    share: bool
    status: NodeStatus
    breaker: str  # "closed", or why it is open

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "share": self.share,
            "status": self.status.to_json(),
            "breaker": self.breaker,
        }

    @classmethod
    def from_json(cls, value: Any) -> PeerState:
        """Read a peer as the local API lists it; raise MalformedRecord saying what is wrong."""
        fields = Fields(value, "peer")
        return cls(
            node_id=fields.text("id", 36),
            name=fields.text("name", _MAX_NAME_CHARS),
            address=fields.text("address", 64),
            port=fields.integer("port", 0, 65535),
            share=fields.flag("share"),
            status=NodeStatus.from_json(fields.raw("status")),
            breaker=fields.text("breaker", 256, default="closed"),
        )


class PeerTable:
    """The live peers; decisions take `now` (monotonic seconds) and do no I/O."""

    def __init__(self, own_id: str, ttl_s: float) -> None:
        self._own_id = own_id
        self._ttl_s = ttl_s
        self._peers: dict[str, Peer] = {}
        # When each peer's last heartbeat came, where one came after its last status.
        self._heard: dict[str, float] = {}
        # How long each peer may stay silent, where it is not the TTL (a stream's heartbeats are sparser
        # than polls).
        self._quiet_s: dict[str, float] = {}
        self._ordered: list[Peer] | None = None
        # No peer can go silent for too long before this: the expiry check skips its scan until then.
        self._due = math.inf

    def __iter__(self) -> Iterator[Peer]:
        # Sorted once per change, not at every routing decision.
        if self._ordered is None:
            self._ordered = sorted(self._peers.values(), key=lambda p: (p.announcement.name, p.node_id))
        return iter(self._ordered)

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, node_id: str) -> Peer | None:
        return self._peers.get(node_id)

    def seen(
        self,
        announcement: PeerAnnouncement,
        status: NodeStatus,
        now: float,
        rtt_s: float | None = 0.0,
        quiet_s: float | None = None,
    ) -> bool:
        """Record that a peer told this status, having answered after `rtt_s` (None: a status it told
        unasked, which says nothing of its round trip); it is dropped after `quiet_s` of silence (None:
        the TTL). Return whether it is new."""
        if announcement.node_id == self._own_id:
            return False
        if quiet_s is None:
            self._quiet_s.pop(announcement.node_id, None)
        else:
            self._quiet_s[announcement.node_id] = quiet_s
        self._due = min(self._due, now + (self._ttl_s if quiet_s is None else quiet_s))
        old = self._peers.get(announcement.node_id)
        if rtt_s is None:
            rtt_s = old.rtt_s if old is not None else 0.0
        elif old is not None:
            rtt_s = (1 - _RTT_SMOOTHING) * old.rtt_s + _RTT_SMOOTHING * rtt_s
        self._peers[announcement.node_id] = Peer(announcement, status, now, rtt_s)
        self._ordered = None
        return old is None

    def heard(self, node_id: str, now: float) -> bool:
        """Record that a peer is alive (its heartbeat); return False if it is not in the table."""
        if node_id not in self._peers:
            return False
        self._heard[node_id] = now
        return True

    def remove(self, node_id: str) -> Peer | None:
        """Drop a peer that said goodbye; return it if it was there."""
        self._heard.pop(node_id, None)
        self._quiet_s.pop(node_id, None)
        self._ordered = None
        return self._peers.pop(node_id, None)

    def expire(self, now: float) -> list[Peer]:
        """Drop and return the peers that have been silent for longer than they may be."""
        if now <= self._due:
            return []
        heard, quiet_s = self._heard, self._quiet_s
        gone, self._due = [], math.inf
        for peer in self._peers.values():
            due = max(peer.last_seen, heard.get(peer.node_id, 0.0)) + quiet_s.get(peer.node_id, self._ttl_s)
            if now > due:
                gone.append(peer)
            else:
                self._due = min(self._due, due)
        for peer in gone:
            self.remove(peer.node_id)
        return gone
