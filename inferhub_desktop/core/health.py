"""Whether a node can answer, for monitors and load balancers: ok, degraded or unhealthy, and why."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .backends.base import BackendState
from .peers import PeerState

# The path monitors ask, on the local API and on the share API.
HEALTH_PATH = "/health"


@dataclasses.dataclass(frozen=True)
class Health:
    """A node's health as one word, with the reasons behind it and the backend version it answers with."""

    status: str  # "ok", "degraded" or "unhealthy"
    reasons: tuple[str, ...]
    local: bool  # this machine's backend answers
    # The version /api/version answers: this machine's backend's, else a serving peer's; None when none.
    version: str | None
    serving: tuple[str, ...]  # the peers that would answer this machine's requests now

    @property
    def http_status(self) -> int:
        """503 only when nothing answers, so a load balancer keeps a degraded node in rotation."""
        return 503 if self.status == "unhealthy" else 200

    def to_json(self, name: str) -> dict[str, Any]:
        return {
            "status": self.status,
            "node": name,
            "reasons": list(self.reasons),
            "serving": list(self.serving),
        }


def local_health(backend: BackendState, peers: Sequence[PeerState], *, local_only: bool) -> Health:
    """Say whether this machine's requests are answered: by its backend (ok), by peers while its backend
    is down, or with a peer's requests failing (degraded), or by nothing (unhealthy)."""
    usable = [
        p
        for p in peers
        if not local_only and p.share and p.status.backend.reachable and p.breaker == "closed"
    ]
    failing = [p.name for p in peers if p.breaker != "closed"]
    reasons = []
    if not backend.reachable:
        reasons.append(f"this machine's model server does not answer: {backend.error}")
    if failing:
        reasons.append(f"requests to {', '.join(failing)} failed lately")
    if backend.reachable:
        status, version = ("degraded" if failing else "ok"), backend.version
    elif usable:
        status, version = "degraded", usable[0].status.backend.version
        reasons.append(f"{', '.join(p.name for p in usable)} answer{'s' * (len(usable) == 1)} meanwhile")
    else:
        status, version = "unhealthy", None
        reasons.append(
            "nothing answers this machine's requests: "
            + ("it is set to use only itself" if local_only else "no peer shares a model server")
        )
    return Health(status, tuple(reasons), backend.reachable, version, tuple(p.name for p in usable))


def share_health(backend: BackendState, *, sharing: bool, name: str) -> Health:
    """Say whether this node serves its peers: ok while it shares a model server that answers."""
    if not sharing:
        return Health("unhealthy", (f"{name} is not sharing right now",), backend.reachable, None, ())
    if not backend.reachable:
        return Health(
            "unhealthy", (f"{name}'s model server does not answer: {backend.error}",), False, None, ()
        )
    return Health("ok", (), True, backend.version, ())
