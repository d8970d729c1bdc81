"""Circuit breakers per node: one that failed a request is left out until a probe of it succeeds.

A node opens on its first failure: a request that failed there is already being retried elsewhere,
and probes (a peer's status every second, the local backend's probe) are cheap enough to let it back
soon. A probe that succeeds after the failure lets one request through (half-open); its success
closes the breaker and its failure opens it again. Pure state; time is a parameter.
"""

from __future__ import annotations

import dataclasses
import enum


class BreakerState(enum.Enum):
    """Whether requests may go to a node."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclasses.dataclass
class _Breaker:
    state: BreakerState
    opened_at: float
    failures: int
    reason: str
    trial_out: bool = False


class CircuitBreakers:
    """The breakers of every node this one sends requests to, keyed by node id."""

    def __init__(self) -> None:
        self._breakers: dict[str, _Breaker] = {}

    def state(self, node_id: str) -> BreakerState:
        breaker = self._breakers.get(node_id)
        return breaker.state if breaker else BreakerState.CLOSED

    def describe(self, node_id: str) -> str:
        """Say why a node is left out, for the route explanation."""
        breaker = self._breakers.get(node_id)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return "closed"
        return f"{breaker.state.value} after {breaker.failures} failure(s): {breaker.reason}"

    def allows(self, node_id: str) -> bool:
        """Tell whether a request may be sent to the node now."""
        breaker = self._breakers.get(node_id)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return True
        return breaker.state is BreakerState.HALF_OPEN and not breaker.trial_out

    def sent(self, node_id: str) -> None:
        """Note that a request went to the node; a half-open node takes one trial at a time."""
        breaker = self._breakers.get(node_id)
        if breaker is not None and breaker.state is BreakerState.HALF_OPEN:
            breaker.trial_out = True

    def failed(self, node_id: str, reason: str, now: float) -> None:
        """Open the node's breaker: a request there failed."""
        breaker = self._breakers.get(node_id)
        failures = breaker.failures + 1 if breaker else 1
        self._breakers[node_id] = _Breaker(BreakerState.OPEN, now, failures, reason)

    def succeeded(self, node_id: str) -> None:
        """Close the node's breaker: a request there got its answer."""
        self._breakers.pop(node_id, None)

    def probed(self, node_id: str, now: float) -> None:
        """Let one trial request through an open breaker: a probe of the node succeeded after it opened."""
        breaker = self._breakers.get(node_id)
        # Each later probe lets one more trial through, so a trial that ended neither way (its client
        # left) does not hold the breaker half-open for good.
        if breaker is not None and now > breaker.opened_at:
            breaker.state = BreakerState.HALF_OPEN
            breaker.trial_out = False

    def forget(self, node_id: str) -> None:
        """Drop a node that left the pool; if it comes back it starts closed."""
        self._breakers.pop(node_id, None)
