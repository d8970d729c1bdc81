"""The one object between the core and Qt: it turns the node's events and state into Qt signals."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from PySide6.QtCore import QObject, QTimer, Signal

from ..core import (
    AddressState,
    BackendChanged,
    Event,
    Events,
    InferhubError,
    NodeStatus,
    PeerJoined,
    PeerLeft,
    PeerState,
    RequestDone,
    RequestUnderway,
    SettingsChanged,
    SettingsStore,
    SharingPaused,
)
from .model import PoolView, Problem, pool_view

# The dashboard and the menu are refreshed this often; events refresh them at once.
REFRESH_MS = 1000
# Pool throughput is the tokens generated over this window, so a reply counted at its end is spread.
_THROUGHPUT_WINDOW_S = 10.0
# Requests kept for the dashboard's list.
RECENT_REQUESTS = 200
# Entries of the audit log (what peers had this machine serve) the dashboard shows.
AUDIT_SHOWN = 200


class Core(Protocol):
    """What the app needs of a node; `Node` is one."""

    # The settings it runs with, and through which the app changes them.
    store: SettingsStore
    events: Events

    @property
    def api_url(self) -> str: ...

    def status(self) -> NodeStatus: ...

    def peers(self) -> list[PeerState]: ...

    def audit(self, limit: int) -> list[dict[str, Any]]: ...

    def usage(self) -> dict[str, Any]: ...

    def addresses(self) -> list[AddressState]: ...

    def underway(self) -> list[RequestUnderway]: ...

    def elsewhere(self) -> list[str]: ...

    def probe_now(self) -> None: ...

    def copy_model(self, model: str) -> AsyncIterator[dict[str, Any]]: ...


# Peers of a node that restarted (new settings) that come back within this long were never gone.
RESTART_REJOIN_S = 30.0


def plain_reason(name: str, reason: str) -> str:
    """Say why a peer left in the words after its name: "stopped answering", "left the pool"."""
    prefix = f"peer {name!r} "
    return reason[len(prefix) :] if reason.startswith(prefix) else reason


class Bridge(QObject):
    """Watch a node: its events become signals, and its state a PoolView every second."""

    view_changed = Signal(object)  # PoolView
    sampled = Signal(float, float, object)  # at (monotonic s), pool tokens/s, this GPU's % or None
    peer_joined = Signal(str)  # name
    peer_left = Signal(str, str)  # name, why
    settings_changed = Signal(object)  # SettingsChanged
    # A change the owner asked for was refused (it could not be saved): a title and what to do.
    refused = Signal(str, str)
    backend_changed = Signal(bool, str)  # reachable, error
    sharing_paused = Signal(str)  # why sharing paused for the owner; empty when it resumed
    request_done = Signal(object)  # RequestDone
    audit_changed = Signal(object)  # [audit entry], newest last
    # A model being copied from the pool: a title and how it goes (started, done, or why it failed).
    copying = Signal(str, str)

    def __init__(self, parent: QObject | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(parent)
        self._clock = clock
        self._core: Core | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self.view: PoolView | None = None
        # What is wrong with the pool, worked out once per refresh for the tray and the dashboard.
        self.problems: list[Problem] = []
        self.recent: collections.deque[RequestDone] = collections.deque(maxlen=RECENT_REQUESTS)
        # The audit log's last entries, read again only after a peer's request ended.
        self.audit: list[dict[str, Any]] = []
        # What each peer had this machine serve today, read with the audit log (Node.usage).
        self.usage: dict[str, Any] = {}
        self._audit_stale = True
        self._alone_since = clock()
        # Peers that went without a goodbye (name: what happened in plain words), until they are back.
        self.lost: dict[str, str] = {}
        # Switches turned through this bridge, not yet heard back from the store: they need no message.
        self._made_here: dict[str, bool] = {}
        # The peers of the node before it restarted, and when the new one started: they coming back
        # soon after is the restart, not news.
        self._known_before: set[str] = set()
        self._attached_at = -RESTART_REJOIN_S
        # (at, {node id: tokens generated}) over the throughput window.
        self._counts: collections.deque[tuple[float, dict[str, int]]] = collections.deque()
        # Copies of models under way, kept until they end.
        self._copies: set[asyncio.Future[None]] = set()
        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh)

    @property
    def core(self) -> Core:
        if self._core is None:
            raise RuntimeError("the bridge watches no node")
        return self._core

    def attach(self, core: Core) -> None:
        """Watch `core` from now on (a node restarted with new settings replaces the old one)."""
        self.detach()
        self._core = core
        self._unsubscribe = [
            core.events.subscribe(self._on_event),
            core.store.events.subscribe(self._on_event),
        ]
        self._counts.clear()
        self._audit_stale = True
        self._attached_at = self._clock()
        self._timer.start()
        self.refresh()

    def detach(self) -> None:
        self._known_before = {peer.name for peer in self.view.peers} if self.view else set()
        self._timer.stop()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self._core = None

    def refresh(self) -> None:
        """Read the node's state now and tell the views."""
        if self._core is None:
            return
        now = self._clock()
        core = self._core
        view = pool_view(
            core.status(),
            core.peers(),
            core.addresses(),
            underway=core.underway(),
            elsewhere=core.elsewhere(),
        )
        if view.peers:
            self._alone_since = now
        self.view = view
        self.problems = view.problems(alone_for_s=now - self._alone_since, lost=self.lost)
        self.view_changed.emit(view)
        self.sampled.emit(now, self._throughput(view, now), view.me.utilization_pct)
        if self._audit_stale:
            self._audit_stale = False
            self.audit = self._core.audit(AUDIT_SHOWN)
            self.usage = self._core.usage()
            self.audit_changed.emit(self.audit)

    def set_switch(self, key: str, on: bool) -> None:
        """Turn a switch on or off through the store; one that cannot be saved stays as it was, and
        `refused` says why."""
        self._made_here[key] = on
        try:
            self.core.store.change(**{key: on})
        except InferhubError as exc:
            self._made_here.pop(key, None)
            self.refused.emit("InferHub could not change that", str(exc))
            # The menu and the dashboard show the switch where it still is.
            self.refresh()

    def retry(self) -> None:
        """Ask the node to look for its model server now, rather than at its next probe."""
        self.core.probe_now()
        self.refresh()

    def get_model(self, model: str) -> None:
        """Copy a model a member has onto this machine, saying when it starts and how it ends."""
        task = asyncio.ensure_future(self._copy(model))
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)

    async def _copy(self, model: str) -> None:
        self.copying.emit(f"Copying {model}", "from the pool to this machine; InferHub says when it is here")
        try:
            async for _ in self.core.copy_model(model):
                pass
        except InferhubError as exc:
            self.copying.emit(f"Could not copy {model}", str(exc))
            return
        self.copying.emit(f"{model} is on this machine", "copied from the pool, and checked")
        self.refresh()

    def remove_peer(self, address: str) -> None:
        """Stop reaching a peer named by address; raise InferhubError if the change cannot be saved."""
        self.core.store.change(peers=[p for p in self.core.store.settings.peers if p != address])
        self.refresh()

    def made_here(self, key: str, value: bool) -> bool:
        """Whether a switch's change heard from the store is the one turned through this bridge."""
        return self._made_here.pop(key, None) is value

    def add_peer(self, address: str) -> None:
        """Reach a peer by HOST[:PORT] from now on; raise InferhubError (ConfigError for an address that
        is not one) if it cannot be added."""
        address = address.strip()
        peers = list(self.core.store.settings.peers)
        if address not in peers:
            self.core.store.change(peers=[*peers, address])
        self.refresh()

    def _throughput(self, view: PoolView, now: float) -> float:
        """Return the pool's tokens per second over the last few seconds, from every node's counter."""
        counts = {n.node_id: n.tokens_generated for n in view.nodes}
        self._counts.append((now, counts))
        while len(self._counts) > 2 and now - self._counts[1][0] >= _THROUGHPUT_WINDOW_S:
            self._counts.popleft()
        then, before = self._counts[0]
        if now <= then:
            return 0.0
        # A node that joined or restarted in between adds nothing it did not generate in the window.
        tokens = sum(max(0, n - before[i]) for i, n in counts.items() if i in before)
        return tokens / (now - then)

    def _on_event(self, event: Event) -> None:
        match event:
            case PeerJoined(name=name):
                self.lost.pop(name, None)
                restarted = self._clock() - self._attached_at < RESTART_REJOIN_S
                if not (restarted and name in self._known_before):
                    self.peer_joined.emit(name)
                self._known_before.discard(name)
            case PeerLeft(name=name, reason=reason):
                what = plain_reason(name, reason)
                # Gone without a goodbye: said until it is back. (A goodbye, a removal or a change of
                # pool is no loss.)
                if what.startswith("stopped answering"):
                    self.lost[name] = what
                self.peer_left.emit(name, what)
            case SettingsChanged():
                self.settings_changed.emit(event)
            case BackendChanged(reachable=reachable, error=error):
                self.backend_changed.emit(reachable, error or "")
            case SharingPaused(reason=reason):
                self.sharing_paused.emit(reason or "")
            case RequestDone():
                self.recent.appendleft(event)
                if self.view is not None:
                    # Ended: no longer running, without waiting for the next refresh to say so.
                    running = tuple(r for r in self.view.underway if r.request_id != event.request_id)
                    self.view = dataclasses.replace(self.view, underway=running)
                # A peer's request is in the audit log now; the next refresh shows it.
                self._audit_stale = self._audit_stale or event.api == "share"
                self.request_done.emit(event)
                return  # a request changes nothing the next refresh will not show
        self.refresh()
