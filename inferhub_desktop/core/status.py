"""What a node says about itself: its identity, switches, load, backend and models, machine and learnt
speeds, as one typed value. A peer's status is parsed once, when it arrives, with every size and count
bounded; the router, the pool, the metrics, the desktop app and the command line read its attributes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import uuid
from collections.abc import Collection
from typing import Any

from .backends.base import BackendState
from .speeds import Speeds
from .telemetry import Telemetry
from .wire.errors import MalformedRecord
from .wire.records import Fields, read_json

# A status's tag changes at least this often, so what moves a little at a time (temperatures, CPU, speeds
# fading with age) reaches peers too. At 256 peers, each told a minute's drift once a minute is half of
# an idle node's traffic; what routing acts on changes the tag at once.
TAG_MAX_AGE_S = 60.0
# Free VRAM and a GPU's load count as changed in steps of these.
_TAG_VRAM_STEP_MIB = 256
_TAG_LOAD_STEP_PCT = 10
# The version of this record; a node drops a status of another version, as it drops such a TXT record.
STATUS_VERSION = 1
# The most bytes a status may take on the wire: a node with a thousand models sends about 300 KiB.
MAX_STATUS_BYTES = 1 << 20
_MAX_NAME_CHARS = 63
_MAX_SLOTS = 4096
_HEX = re.compile(r"[0-9a-f]*")


@dataclasses.dataclass(frozen=True)
class Load:
    """How busy a node's backend is with the pool's requests."""

    active: int  # requests running on the backend, the owner's included
    remote: int  # peers' requests among them
    waiting: int  # peers' requests waiting for a slot
    slots: int  # peers' requests it runs at once
    queue_full: bool  # a further peer's request is refused as busy
    waiting_batch: int = 0  # batch requests among the waiting ones

    @classmethod
    def from_json(cls, fields: Fields) -> Load:
        return cls(
            active=fields.integer("active", 0, 1 << 20),
            remote=fields.integer("remote", 0, 1 << 20, default=0),
            waiting=fields.integer("waiting", 0, 1 << 20, default=0),
            slots=fields.integer("slots", 1, _MAX_SLOTS),
            queue_full=fields.flag("queue_full", default=False),
            waiting_batch=fields.integer("waiting_batch", 0, 1 << 20, default=0),
        )


@dataclasses.dataclass(frozen=True)
class OwnerState:
    """How the owner's protections stand (owner.py): why sharing is paused now (None: it is not), in how
    many seconds it resumes once what paused it has ended, the VRAM kept free for the owner, and what is
    watched on this machine."""

    paused: str | None = None
    resumes_in_s: float | None = None
    reserve_mib: int = 0
    watching: str = ""

    @classmethod
    def from_json(cls, fields: Fields) -> OwnerState:
        return cls(
            paused=fields.optional_text("paused", 512),
            resumes_in_s=fields.number("resumes_in_s", 0.0, 1e6) if "resumes_in_s" in fields else None,
            reserve_mib=fields.integer("reserve_mib", 0, 1 << 36, default=0),
            watching=fields.text("watching", 512, default=""),
        )


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    """One node's state, as it answers `GET /_inferhub/v1/status`."""

    node_id: str
    name: str
    version: str  # InferHub's
    api_url: str
    share: bool
    local_only: bool
    pool_pull: bool
    pool: str | None  # the private pool's public id; None in the LAN's open pool
    roster: int | None  # the version of the pool's roster this node has; members fetch a newer one
    tls: str | None  # the share API's certificate's fingerprint, which peers pin
    share_port: int
    load: Load
    models_hash: str
    backend: BackendState
    telemetry: Telemetry | None
    speeds: Speeds
    # The most model bytes the backend has held at once: its room for models where VRAM is not measured.
    peak_loaded_bytes: int
    # Tokens this machine's backend generated through the node since it started.
    tokens_generated: int
    owner: OwnerState = OwnerState()

    def state_words(self) -> list[str]:
        """Say what this machine does for the pool, in the words the tray, the dashboard and `inferhub
        status` share: what it shares and whether it serves now, which pool, the modes turned on."""
        if not self.share:
            sharing = "not sharing"
        elif self.owner.paused:
            sharing = f"sharing paused: {self.owner.paused}"
            if self.owner.resumes_in_s is not None:
                sharing += f" (resumes in {self.owner.resumes_in_s:.0f} s)"
        elif not self.backend.reachable:
            sharing = "sharing is on, but there is no model server to share"
        else:
            sharing = f"sharing {'this GPU' if self.telemetry and self.telemetry.gpus else 'this machine'}"
        if serving := self.load.remote:
            sharing += f", serving {'a request' if serving == 1 else f'{serving} requests'} for colleagues"
        words = [sharing, f"private pool {self.pool[:8]}" if self.pool else "open LAN pool"]
        if self.local_only:
            words.append("your requests use only this machine")
        if self.pool_pull:
            words.append("the pool may pull models here")
        return words

    def to_json(self) -> dict[str, Any]:
        """Return the status as JSON values."""
        return {
            "v": STATUS_VERSION,
            "id": self.node_id,
            "name": self.name,
            "version": self.version,
            "api_url": self.api_url,
            "share": self.share,
            "local_only": self.local_only,
            "pool_pull": self.pool_pull,
            "pool": self.pool,
            "roster": self.roster,
            "tls": self.tls,
            "share_port": self.share_port,
            "load": dataclasses.asdict(self.load),
            "models_hash": self.models_hash,
            "backend": self.backend.to_json(),
            "telemetry": self.telemetry.to_json() if self.telemetry else None,
            "speeds": self.speeds.to_json(),
            "peak_loaded_bytes": self.peak_loaded_bytes,
            "tokens_generated": self.tokens_generated,
            "owner": dataclasses.asdict(self.owner),
        }

    def tag(self, now: float) -> str:
        """Return a tag that changes whenever anything a peer acts on changes: switches, load, models,
        backend, pool, owner, tokens generated, free VRAM (in 256 MiB steps), a GPU's load (in 10-point
        steps), a learnt speed; and at least every TAG_MAX_AGE_S. A peer that has the status of a tag is
        answered 304 Not Modified, so an idle pool sends no statuses."""
        coarse = self.to_json()
        telemetry, speeds = self.telemetry, self.speeds
        coarse["telemetry"] = telemetry and [
            telemetry.summary(),
            telemetry.vram_total_mib,
            telemetry.vram_free_mib // _TAG_VRAM_STEP_MIB,
            telemetry.nvml_error,
            [(gpu.utilization_pct or 0) // _TAG_LOAD_STEP_PCT for gpu in telemetry.gpus],
        ]
        # Learnt means, not their weights, which fade every second.
        coarse["speeds"] = [
            sorted(
                (model, name, round(f.mean, 2))
                for model, m in speeds.models.items()
                for name, f in vars(m).items()
                if f
            ),
            round(speeds.busy_s.mean, 2) if speeds.busy_s else None,
        ]
        coarse["epoch"] = int(now // TAG_MAX_AGE_S)
        return hashlib.sha256(json.dumps(coarse, sort_keys=True).encode()).hexdigest()[:20]

    @classmethod
    def from_json(
        cls, value: Any, before: NodeStatus | None = None, changed: Collection[str] = ()
    ) -> NodeStatus:
        """Read a status; raise MalformedRecord saying what is wrong with it. A status that a change turned
        `before` into keeps, as they were read, its largest parts (backend, telemetry, speeds) where the
        change left them alone (`changed`: the keys it changed)."""
        fields = Fields(value, "status")
        version = fields.integer("v", 1, 1 << 20, default=STATUS_VERSION)
        if version != STATUS_VERSION:
            raise MalformedRecord(f"status version {version} is not {STATUS_VERSION}")
        node_id = fields.text("id", 36)
        try:
            uuid.UUID(node_id)
        except ValueError:
            raise MalformedRecord(f"status.id {node_id!r} is not a UUID") from None
        name = fields.text("name", _MAX_NAME_CHARS)
        if not name.strip() or not name.isprintable():
            raise MalformedRecord(f"status.name {name!r} is empty or not printable")
        telemetry = fields.optional_record("telemetry")
        owner = fields.optional_record("owner")
        return cls(
            node_id=node_id,
            name=name,
            version=fields.text("version", 64, default=""),
            api_url=fields.text("api_url", 256, default=""),
            share=fields.flag("share"),
            local_only=fields.flag("local_only", default=False),
            pool_pull=fields.flag("pool_pull", default=False),
            pool=fields.optional_text("pool", 32),
            roster=fields.optional_integer("roster", 1),
            tls=_hex(fields.optional_text("tls", 64), "status.tls"),
            share_port=fields.integer("share_port", 0, 65535, default=0),
            load=Load.from_json(fields.record("load")),
            models_hash=_hex(fields.text("models_hash", 16), "status.models_hash") or "",
            backend=before.backend
            if before and "backend" not in changed
            else BackendState.from_json(fields.record("backend")),
            telemetry=(
                before.telemetry
                if before and "telemetry" not in changed
                else Telemetry.from_json(telemetry)
                if telemetry
                else None
            ),
            speeds=(
                before.speeds
                if before and "speeds" not in changed
                else Speeds.from_json(fields.optional_record("speeds") or Fields({}, "status.speeds"))
            ),
            peak_loaded_bytes=fields.integer("peak_loaded_bytes", default=0),
            tokens_generated=fields.integer("tokens_generated", default=0),
            owner=OwnerState.from_json(owner) if owner else OwnerState(),
        )

    @classmethod
    def from_bytes(cls, body: bytes) -> NodeStatus:
        """Read a status as it came over HTTP; raise MalformedRecord for one too large or not JSON."""
        return cls.from_json(read_json(body, "status", MAX_STATUS_BYTES))


def _hex(value: str | None, where: str) -> str | None:
    if value is not None and not _HEX.fullmatch(value):
        raise MalformedRecord(f"{where} {value[:16]!r} is not lowercase hex")
    return value
