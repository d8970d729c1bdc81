"""What a node tells its listeners (the desktop app, and anything else that watches it): one frozen value
per thing that happened, delivered on the node's event loop."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from .settings import Settings

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PeerJoined:
    """A node of the pool answered for the first time."""

    node_id: str
    name: str
    address: str


@dataclasses.dataclass(frozen=True)
class PeerLeft:
    """A peer said goodbye or stopped answering."""

    node_id: str
    name: str
    reason: str


@dataclasses.dataclass(frozen=True)
class SettingsChanged:
    """The owner changed settings (a switch, the pool, peers, the settings dialog); `settings` are those
    now in effect, `before` those they replaced, and `changed` names the fields that differ."""

    settings: Settings
    before: Settings
    changed: frozenset[str]


@dataclasses.dataclass(frozen=True)
class SharingPaused:
    """Sharing paused for the owner (`reason` says why), or resumed (`reason` is None)."""

    reason: str | None


@dataclasses.dataclass(frozen=True)
class BackendChanged:
    """This machine's backend came up, or went down (`error` says why)."""

    url: str
    reachable: bool
    error: str | None


@dataclasses.dataclass(frozen=True)
class RequestDone:
    """An inference request ended, answered or not.

    `api` is "local" for this machine's clients and "share" for a peer's request served here; `node` is
    the node that answered last (empty when none was tried), `client` the peer a share request came from,
    `address` the address it came from, and `verified` whether the pool proved who sent it (a private
    pool's members do; in the LAN's open pool a request only says who it is from).
    """

    at: float  # wall-clock seconds
    api: str
    endpoint: str
    model: str | None
    node: str
    client: str
    attempts: int
    status: int
    duration_s: float
    first_byte_s: float | None
    tokens: int | None
    tokens_per_s: float | None
    error: str | None = None
    cancelled: bool = False
    address: str = ""
    verified: bool = False
    # The request's id at this node, as RequestUnderway had it while it ran.
    request_id: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


@dataclasses.dataclass(frozen=True)
class RequestUnderway:
    """An inference request being answered now: its id at this node, since when (wall-clock seconds),
    through which API, for which model, on which node so far (empty until one is chosen) and for whom (a
    share request's peer)."""

    request_id: str
    at: float
    api: str
    model: str | None
    node: str
    client: str


Event = PeerJoined | PeerLeft | SettingsChanged | BackendChanged | RequestDone | SharingPaused
Listener = Callable[[Event], None]


class Events:
    """Deliver events to the listeners subscribed; a failing listener is logged, never the emitter's
    problem."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every event from now on; return the callable that stops it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.exception("an event listener failed on %s", type(event).__name__)
