"""This node's membership of the pool: discovery, static peers, liveness polling and the peer table."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from .api.feed import FEED_TYPE, HEARTBEAT_S, apply_change
from .backends.http1 import VANISHED_S, Http1Client, HttpError, Response
from .discovery import Discovery, DiscoveryFailed
from .peers import AddressState, Peer, PeerAnnouncement, PeerTable, encode_txt, url_host
from .pool import MAX_ROSTER_BYTES, PrivatePool, Roster
from .settings import Settings, parse_peer
from .status import MAX_STATUS_BYTES, NodeStatus
from .tls import peer_fingerprint, shown_fingerprint
from .wire.endpoints import ROSTER_PATH, STATUS_PATH
from .wire.errors import MalformedRecord, Unauthorized
from .wire.headers import SHARE_PORT_HEADER
from .wire.records import read_json

_log = logging.getLogger(__name__)

# A node that does not answer (or, too old to stream, tells its status only when asked) is asked this
# often; a stream that ends is asked for again at once.
_PEER_POLL_S = 1.0
_PEER_POLL_TIMEOUT_S = 0.8
# A polled peer that has told nothing for this long is gone (crashed, or its link is down).
_PEER_TTL_S = 4.0
# A streamed peer is watched by the kernel instead: a crashed one's stream is cut at once, and TCP
# keepalive cuts the stream of one whose machine vanished (cable out, power lost, asleep) within
# VANISHED_S. Only a process that hangs on a live machine goes quiet: after two missed heartbeats.
_STREAM_QUIET_S = 2 * HEARTBEAT_S + 1.0
# How a peer that is asked again at once, and does not answer, has left: it said so (a goodbye on mDNS,
# or its stream ended), or its stream was cut (its process died).
_LEFT = "left the pool"
_CUT = "stopped answering (its connection was cut)"
# How a peer whose record came to name another pool, or that the owner no longer names, has left.
_OTHER_POOL = "is in another pool now"
_UNNAMED = "is no longer named as a peer"
# How a peer whose machine no longer answers TCP has left; it is not asked again first.
_VANISHED = f"stopped answering (its machine went silent for {VANISHED_S} s)"
# Peers gone quiet are looked for this often.
_EXPIRE_CHECK_S = 0.5
# This node's TXT record changes at most this often, so a busy node does not flood the LAN.
_TXT_MIN_INTERVAL_S = 1.0
# Joining mDNS is tried again this often while it fails.
_MDNS_RETRY_S = 5.0
# The record is looked at this often; a share toggle is published at once.
_ADVERTISE_CHECK_S = 1.0
# What of the record changes as the node works: peers read it from its status stream, so a change to it
# alone is not announced again (every node on the LAN would parse each announcement).
_MOVING_TXT_KEYS = ("vram", "load", "mh")


def announcement_from_status(status: NodeStatus, address: str, port: int) -> PeerAnnouncement:
    """Return what a peer says about itself in its status, as its DNS-SD record would, at an address."""
    telemetry = status.telemetry
    return PeerAnnouncement(
        node_id=status.node_id,
        name=status.name,
        address=address,
        port=port,
        # As its record says it: a peer paused for its owner takes no requests, whatever its switch.
        share=status.share and status.owner.paused is None,
        gpu=telemetry.summary() if telemetry else "",
        vram_free_mib=telemetry.vram_free_mib if telemetry else 0,
        vram_total_mib=telemetry.vram_total_mib if telemetry else 0,
        active=status.load.active,
        slots=status.load.slots,
        models_hash=status.models_hash,
        tls=status.tls or "",
    )


class Membership:
    """Find peers by mDNS and by address, keep the live ones, and keep this node's record current."""

    def __init__(
        self,
        settings: Settings,
        own: Callable[[], PeerAnnouncement],
        *,
        pool: Callable[[], PrivatePool | None] = lambda: None,
        joined: Callable[[Peer], None] = lambda peer: None,
        answered: Callable[[str], None] = lambda node_id: None,
        left: Callable[[Peer, str], None] = lambda peer, reason: None,
    ) -> None:
        self._settings = settings
        # Kept-alive connections to each node polled, and how they reach it (a pin, or the pool's TLS).
        self._links: dict[tuple[str, int], tuple[object, Http1Client]] = {}
        self._own = own
        # The private pool, or None in the LAN's open pool; it may change while the node runs.
        self._pool = pool
        # Whether a newer roster is being fetched from a member that has it.
        self._fetching_roster = False
        # Told when a peer first answers, when it answers a status poll, and when it leaves (and why).
        self._joined = joined
        self._answered = answered
        self._left = left
        self.table = PeerTable(settings.node_id, _PEER_TTL_S)
        # Where peers may be reached, and how they were learnt of ("mdns" or "static").
        self._candidates: dict[tuple[str, int], str] = {parse_peer(p): "static" for p in settings.peers}
        # The pool id each node found by mDNS advertises: only those of this node's pool are polled.
        self._advertised_pools: dict[tuple[str, int], str] = {}
        # The TLS certificates nodes' records pin, and those learnt from nodes reached by address.
        self._advertised_tls: dict[tuple[str, int], str] = {}
        self._learnt_tls: dict[tuple[str, int], str] = {}
        # The last status each node sent, with its tag: asked for again only when the tag changed.
        self._known: dict[tuple[str, int], tuple[str, NodeStatus]] = {}
        # How reaching each node named by address goes, for its owner to see.
        self._reaching: dict[tuple[str, int], AddressState] = {}
        # Nodes to be asked at once whether they have left, with the words for it if they have: a goodbye
        # was heard on mDNS or their stream ended (_LEFT), or their stream was cut (_CUT).
        self._goodbyes: dict[tuple[str, int], str] = {}
        # Those of them whose goodbye was heard on mDNS.
        self._said_on_mdns: set[tuple[str, int]] = set()
        # Why each node that answers but is not taken as a peer is ignored.
        self._ignored: dict[tuple[str, int], str] = {}
        self._discovery = Discovery(settings.node_id, settings.interfaces, self._on_seen, self._on_gone)
        self._poll_now = asyncio.Event()
        self._advertise_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # The task that follows each node that may be a peer, and the pool it was started for.
        self._followers: dict[tuple[str, int], tuple[asyncio.Task[None], PrivatePool | None]] = {}
        # Set to ask a node at once rather than at its next poll (a goodbye was heard for it).
        self._wakes: dict[tuple[str, int], asyncio.Event] = {}

    @property
    def peers(self) -> list[Peer]:
        return list(self.table)

    def private_pools(self) -> list[dict[str, str]]:
        """Return the private pools nodes on mDNS advertise, and where each such node is: a machine asks
        them to admit it with an invite, and only the authority of the invite's pool can."""
        return [
            {"pool": pool, "address": f"{url_host(host)}:{port}"}
            for (host, port), pool in self._advertised_pools.items()
            if pool
        ]

    def elsewhere(self) -> list[str]:
        """Return where the nodes on mDNS that advertise another pool than this node's are: they are never
        polled, and the owner may want to know why they are not peers."""
        pool = self._pool()
        own = pool.pool_id if pool else ""
        pools = self._advertised_pools.items()
        return sorted(f"{url_host(host)}:{port}" for (host, port), other in pools if other != own)

    def set_static_peers(self, peers: Sequence[str]) -> None:
        """Reach these HOST:PORT peers by address from now on, in place of the ones given before."""
        # In the order given: the owner sees them so.
        wanted = list(dict.fromkeys(parse_peer(peer) for peer in peers))
        for endpoint, how in list(self._candidates.items()):
            if how == "static":
                del self._candidates[endpoint]
                if endpoint not in wanted:
                    self._reaching.pop(endpoint, None)
        for endpoint in wanted:
            self._candidates.pop(endpoint, None)  # one learnt on mDNS is reached by address from now on
            self._candidates[endpoint] = "static"
        self._poll_now.set()

    def addresses(self) -> list[AddressState]:
        """Return the peers named by address, in the settings' order, each with how reaching it goes."""
        return [
            self._reaching.get(endpoint, AddressState(f"{url_host(endpoint[0])}:{endpoint[1]}", "reaching"))
            for endpoint, how in self._candidates.items()
            if how == "static"
        ]

    def _reached(self, endpoint: tuple[str, int], state: str, detail: str) -> None:
        if self._candidates.get(endpoint) == "static":
            self._reaching[endpoint] = AddressState(f"{url_host(endpoint[0])}:{endpoint[1]}", state, detail)

    def rekey(self) -> None:
        """This node joined or left a private pool: forget every peer until it proves it belongs."""
        self._known.clear()
        for peer in self.table:
            self.table.remove(peer.node_id)
            self._left(peer, f"peer {peer.announcement.name!r} is not in this node's pool now")
        self._poll_now.set()
        self.readvertise()

    def roster_changed(self) -> None:
        """The pool's roster changed: peers no longer on it leave at once."""
        pool = self._pool()
        if pool is None:
            return
        for peer in self.table:
            if pool.roster.member(peer.node_id) is None:
                self.table.remove(peer.node_id)
                _log.info("peer %r was removed from the pool", peer.announcement.name)
                self._left(peer, f"peer {peer.announcement.name!r} was removed from the pool")
        self._poll_now.set()
        self.readvertise()

    def readvertise(self) -> None:
        """Publish this node's record soon: something a user changed is in it."""
        self._advertise_now.set()

    async def start(self) -> None:
        """Join mDNS and begin polling; returns at once, discovery settles in the background."""
        self._tasks = [
            asyncio.create_task(self._poll(), name="poll-peers"),
            asyncio.create_task(self._advertise(), name="advertise"),
        ]

    async def close(self) -> None:
        """Say goodbye on mDNS and stop following peers."""
        tasks = self._tasks + [task for task, _ in self._followers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()
        await self._discovery.close()
        for _, link in self._links.values():
            link.close()
        self._links.clear()

    def followed_by(self, host: str, port: int) -> None:
        """A node at `host` whose share API is on `port` follows this one: follow it back now, rather than
        once its record is heard on mDNS, so a lost announcement costs the pool nothing and a network that
        filters mDNS needs a peer named on one side only. This trusts nothing more than a record would:
        the node is asked for its status like any other, and forgotten if it does not answer."""
        endpoint = (host, port)
        if endpoint in self._candidates:
            return
        pool = self._pool()
        self._candidates[endpoint] = "follower"
        # It reached this node's share API, so it is in this node's pool: the private one's TLS let it in.
        self._advertised_pools[endpoint] = pool.pool_id if pool else ""
        self._poll_now.set()

    def _forget_follower(self, endpoint: tuple[str, int]) -> None:
        """A node learnt from its following this one, that did not answer and is not a peer (any more), is
        not asked again: it follows anew when it comes back."""
        if self._candidates.get(endpoint) == "follower" and not any(
            peer.announcement.endpoint == endpoint for peer in self.table
        ):
            del self._candidates[endpoint]
            self._advertised_pools.pop(endpoint, None)
            self._poll_now.set()

    def _on_seen(self, announcement: PeerAnnouncement) -> None:
        if self._candidates.get(announcement.endpoint) != "static":
            self._candidates[announcement.endpoint] = "mdns"
        self._advertised_pools[announcement.endpoint] = announcement.pool
        self._advertised_tls[announcement.endpoint] = announcement.tls
        self._poll_now.set()

    def _on_gone(self, endpoint: tuple[str, int]) -> None:
        """A goodbye on mDNS is a hint, which anyone on the LAN can send: the node is asked at once, and
        leaves only if it does not answer."""
        self._goodbyes[endpoint] = _LEFT
        self._said_on_mdns.add(endpoint)
        if wake := self._wakes.get(endpoint):
            wake.set()
        self._poll_now.set()

    def _said_goodbye(self, endpoint: tuple[str, int]) -> None:
        """The node that said goodbye, or whose stream ended, does not answer: it has left."""
        how = self._goodbyes.pop(endpoint, _LEFT)
        on_mdns = endpoint in self._said_on_mdns
        self._said_on_mdns.discard(endpoint)
        if link := self._links.pop(endpoint, None):
            link[1].close()
        # Only its goodbye on mDNS takes back what its record said (its pool, its certificate): a stream
        # that ended may be the node listening anew, whose new record can come first.
        if on_mdns and self._candidates.get(endpoint) == "mdns":
            del self._candidates[endpoint]
            self._advertised_pools.pop(endpoint, None)
            self._advertised_tls.pop(endpoint, None)
            self._poll_now.set()  # its follower stops
        self._drop(endpoint, how, logged="said goodbye" if how == _LEFT else how)

    def _drop(self, endpoint: tuple[str, int], how: str, logged: str) -> None:
        """The peer at `endpoint`, if any, leaves: `how`, for the events; `logged`, for the log."""
        for peer in self.table:
            if peer.announcement.endpoint == endpoint:
                self.table.remove(peer.node_id)
                _log.info("peer %r (%s:%d) %s", peer.announcement.name, *endpoint, logged)
                self._left(peer, f"peer {peer.announcement.name!r} {how}")

    async def _poll(self) -> None:
        """Keep one follower per node that may be a peer, and drop the peers that went quiet."""
        pool = self._pool()
        looked = True  # woken because something changed, not by the clock
        while True:
            self._poll_now.clear()
            # What is followed changes only with what woke this loop (a record heard or gone, peers
            # named, the pool or its roster, a follower ended), so a pool of hundreds costs no rebuild
            # at every check.
            if looked or self._pool() is not pool:
                pool = self._pool()
                self._follow_wanted(pool)
            for peer in self.table.expire(time.monotonic()):
                _log.info(
                    "peer %r (%s:%d) stopped answering", peer.announcement.name, *peer.announcement.endpoint
                )
                self._left(peer, f"peer {peer.announcement.name!r} stopped answering")
            looked = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXPIRE_CHECK_S):
                    await self._poll_now.wait()
                    looked = True
                    # Asked to look now (a record heard, peers named, the roster changed): the nodes
                    # waiting for their next poll are asked at once; a stream tells without asking.
                    for wake in self._wakes.values():
                        wake.set()

    def _follow_wanted(self, pool: PrivatePool | None) -> None:
        """Keep one follower for each node that may be a peer, and none for the others."""
        pool_id = pool.pool_id if pool else ""
        # Nodes that advertise another pool are not asked; those reached by address prove theirs by
        # their certificates.
        wanted = {
            endpoint
            for endpoint, how in self._candidates.items()
            if how == "static" or self._advertised_pools.get(endpoint, "") == pool_id
        }
        # Statuses kept are those of the nodes still asked.
        self._known = {e: known for e, known in self._known.items() if e in wanted}
        for endpoint, (task, followed) in list(self._followers.items()):
            # A follower for another pool (its TLS and its checks) starts anew.
            if endpoint not in wanted or followed is not pool or task.done():
                task.cancel()
                del self._followers[endpoint]
                self._wakes.pop(endpoint, None)
            if endpoint not in wanted:
                # Its record now names another pool, or the owner no longer names it: it is no peer of
                # this node's from now on.
                why = _OTHER_POOL if endpoint in self._candidates else _UNNAMED
                self._drop(endpoint, why, why)
        for endpoint in wanted - self._followers.keys():
            task = asyncio.create_task(self._follow(endpoint, pool), name=f"follow-{endpoint[0]}")
            # A follower that ends (its node is no longer one to follow) is let go, or started again.
            task.add_done_callback(lambda _: self._poll_now.set())
            self._followers[endpoint] = (task, pool)

    async def _follow(self, endpoint: tuple[str, int], pool: PrivatePool | None) -> None:
        """Follow one node's status for as long as this node wants it: its stream of changes, asked for
        again at once when it ends and a poll later when the node does not answer; a node too old to
        stream is asked once a poll. A node forgotten meanwhile (one that named itself by following this
        node, and did not answer) is not asked again, though a wake-up came for it."""
        wake = self._wakes.setdefault(endpoint, asyncio.Event())
        while endpoint in self._candidates:
            wake.clear()
            asked = time.monotonic()
            try:
                await self._check(endpoint, pool)
            except Exception:
                # Whatever one node sends, following it and the others goes on.
                _log.warning("following the node at %s:%d failed", *endpoint, exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, asked + _PEER_POLL_S - time.monotonic())):
                    await wake.wait()

    async def _check(self, endpoint: tuple[str, int], pool: PrivatePool | None) -> None:
        """Ask a node for its status, and follow it while it streams; record each status it tells, or why
        it cannot be a peer."""
        host, port = endpoint
        # In the open pool, the certificate a node's record pins; a node reached by address has its own
        # learnt on first contact (its status names it).
        pin = "" if pool else self._advertised_tls.get(endpoint) or self._learnt_tls.get(endpoint, "")
        sent = time.monotonic()
        try:
            try:
                streamed = await self._statuses(endpoint, pool.client_context if pool else pin, pool, sent)
            except HttpError:
                if pool is not None or pin or self._candidates.get(endpoint) != "static":
                    raise
                # A node reached by address whose share API speaks only TLS: the certificate it shows
                # now is pinned for the status fetch, whose answer must name it.
                async with asyncio.timeout(_PEER_POLL_TIMEOUT_S):
                    shown = await shown_fingerprint(host, port)
                streamed = await self._statuses(endpoint, shown, pool, sent)
        except (TimeoutError, OSError, HttpError, ValueError, RecursionError) as exc:
            _log.debug("peer at %s:%d did not answer: %s", host, port, exc)
            self._reached(endpoint, "unreachable", _why_unreachable(exc))
            if endpoint in self._goodbyes:
                self._said_goodbye(endpoint)
            self._forget_follower(endpoint)
            return
        except (MalformedRecord, Unauthorized) as exc:
            # Said once, not at every poll.
            if self._ignored.get(endpoint) != str(exc):
                _log.info("ignoring the peer at %s:%d: %s", host, port, exc)
            self._ignored[endpoint] = str(exc)
            self._reached(endpoint, "refused", str(exc))
            if isinstance(exc, Unauthorized):
                # It cannot be used now (it refuses this machine, or left the roster): it leaves at once.
                why = f"is not in this node's pool: {exc}"
                self._drop(endpoint, why, why)
            if endpoint in self._goodbyes:
                self._said_goodbye(endpoint)
            self._forget_follower(endpoint)
            return
        if streamed:
            # A stream ends cleanly when its node stops (or listens anew for another pool), and is cut
            # when its process dies: the node is asked again at once, and leaves if it does not answer.
            self._goodbyes.setdefault(endpoint, _LEFT)

    async def _statuses(
        self,
        endpoint: tuple[str, int],
        tls: str | ssl.SSLContext | None,
        pool: PrivatePool | None,
        sent: float,
    ) -> bool:
        """Ask a node for its status as a stream and take each status it tells until the stream ends;
        a node that answers with one status (an older one) is taken once. Return whether it streamed."""
        host, port = endpoint
        tag, known = self._known.get(endpoint, ("", None))
        headers = {"Accept": f"{FEED_TYPE}, application/json", SHARE_PORT_HEADER: str(self._own().port)}
        if known is not None:
            headers["If-None-Match"] = tag
        async with self._asking(host, port, STATUS_PATH, tls or "", headers) as (reply, shown):
            if reply.status == 304 and known is not None:
                await reply.read()
                await self._take(endpoint, known, shown, pool, time.monotonic() - sent)
                return False
            if reply.status != 200:
                raise ValueError(f"{STATUS_PATH} answered HTTP {reply.status}")
            if not reply.headers.get("Content-Type", "").startswith(FEED_TYPE):
                status = NodeStatus.from_bytes(await _body(reply, STATUS_PATH, MAX_STATUS_BYTES))
                if tag := reply.headers.get("ETag", ""):
                    self._known[endpoint] = (tag, status)
                else:
                    self._known.pop(endpoint, None)
                await self._take(endpoint, status, shown, pool, time.monotonic() - sent)
                return False
            told: NodeStatus | None = None
            # The status as JSON, which each change told is applied to.
            whole: dict[str, Any] = {}
            rtt_s: float | None = time.monotonic() - sent
            lines = _lines(reply, MAX_STATUS_BYTES, _STREAM_QUIET_S)
            while True:
                try:
                    line = await anext(lines, None)
                except HttpError as exc:
                    _log.debug("the status stream of %s:%d was cut: %s", host, port, exc)
                    if isinstance(exc.__cause__, TimeoutError):
                        # Keepalive's verdict: the machine is gone, and asking it would only wait.
                        self._goodbyes[endpoint] = _VANISHED
                        self._said_goodbye(endpoint)
                    else:
                        # Cut (its process died, say): it is asked again at once, as after a clean
                        # end, and leaves if it does not answer.
                        self._goodbyes[endpoint] = _CUT
                    break
                if line is None:
                    break
                if line:
                    whole, change = _told(whole, line)
                    told = (
                        NodeStatus.from_json(whole, told, change)
                        if change is not None
                        else NodeStatus.from_json(whole)
                    )
                    await self._take(endpoint, told, shown, pool, rtt_s, _STREAM_QUIET_S)
                    rtt_s = None
                elif told is not None:
                    # A heartbeat: the peer is alive, and a goodbye heard for it was not its own. One
                    # that went quiet for a while and was dropped is taken again.
                    self._goodbyes.pop(endpoint, None)
                    self._said_on_mdns.discard(endpoint)
                    if self.table.heard(told.node_id, time.monotonic()):
                        self._answered(told.node_id)
                    else:
                        await self._take(endpoint, told, shown, pool, None, _STREAM_QUIET_S)
        return True

    async def _take(
        self,
        endpoint: tuple[str, int],
        status: NodeStatus,
        shown: str,
        pool: PrivatePool | None,
        rtt_s: float | None,
        quiet_s: float | None = None,
    ) -> None:
        """Take a status a node told: as a peer's if it is one (its certificate names it), else raise
        MalformedRecord or Unauthorized saying why not. `rtt_s` is how long its answer took, where known;
        `quiet_s` how long it may then stay silent (None: the TTL of a polled peer)."""
        host, port = endpoint
        if pool is not None:
            member = pool.roster.member_by_fingerprint(shown)
            if member is None:
                raise Unauthorized(
                    "its certificate is the pool's, but its machine is not on the roster (removed)"
                )
            if status.node_id != member.node_id:
                raise Unauthorized(
                    f"it claims the node id {status.node_id}, but its certificate is {member.node_id}'s"
                )
        announcement = announcement_from_status(status, host, port)
        if announcement.tls != shown:
            raise MalformedRecord("its status names another TLS certificate than the one it showed")
        # A goodbye for a node that answers was not its own.
        self._goodbyes.pop(endpoint, None)
        self._said_on_mdns.discard(endpoint)
        if (
            shown
            and pool is None
            and not (self._advertised_tls.get(endpoint) or self._learnt_tls.get(endpoint))
        ):
            self._learnt_tls[endpoint] = shown
        self._ignored.pop(endpoint, None)
        self._reached(endpoint, "reached", announcement.name)
        if self.table.seen(announcement, status, time.monotonic(), rtt_s=rtt_s, quiet_s=quiet_s):
            _log.info("peer %r joined from %s:%d", announcement.name, host, port)
            if peer := self.table.get(announcement.node_id):
                self._joined(peer)
        self._answered(announcement.node_id)
        if pool is not None and (status.roster or 0) > pool.roster.version and not self._fetching_roster:
            self._fetching_roster = True
            try:
                await self._fetch_roster(host, port, pool)
            finally:
                self._fetching_roster = False

    async def _fetch_roster(self, host: str, port: int, pool: PrivatePool) -> None:
        """Take the newer roster a member has: removals reach every member within a second or two."""
        try:
            body, shown = await self._fetch(host, port, ROSTER_PATH, MAX_ROSTER_BYTES, pool.client_context)
            if pool.roster.member_by_fingerprint(shown) is None:
                raise Unauthorized("it is not on the roster")
            taken = pool.adopt(Roster.from_bytes(body))
        except (TimeoutError, OSError, HttpError, ValueError, MalformedRecord, Unauthorized) as exc:
            _log.warning("could not take the newer roster of the member at %s:%d: %s", host, port, exc)
            return
        if not taken:
            return
        _log.info(
            "pool roster version %d: %d members, %d removed",
            pool.roster.version,
            len(pool.roster.members) - len(pool.roster.removed),
            len(pool.roster.removed),
        )
        try:
            pool.save()
        except OSError as exc:
            _log.warning("could not save the pool's roster: %s", exc)
        self.roster_changed()

    async def _fetch(
        self, host: str, port: int, path: str, limit: int, tls: str | ssl.SSLContext
    ) -> tuple[bytes, str]:
        """GET a path of a node's share API; return the body, read up to `limit` bytes, and the fingerprint
        of the certificate the node showed."""
        async with asyncio.timeout(_PEER_POLL_TIMEOUT_S), self._asking(host, port, path, tls, {}) as answer:
            reply, shown = answer
            if reply.status != 200:
                raise ValueError(f"{path} answered HTTP {reply.status}")
            return await _body(reply, path, limit), shown

    @contextlib.asynccontextmanager
    async def _asking(
        self, host: str, port: int, path: str, tls: str | ssl.SSLContext, headers: dict[str, str]
    ) -> AsyncIterator[tuple[Response, str]]:
        """GET a path of a node's share API: over TLS with the pool's context, or with a pinned
        certificate's fingerprint, else over plain HTTP. Give the reply, its head read within the poll's
        timeout, and the fingerprint of the certificate the node showed ("" over plain HTTP); raise
        Unauthorized if the node refuses this machine."""
        link = self._link(host, port, tls)
        async with asyncio.timeout(_PEER_POLL_TIMEOUT_S):
            connection, reply = await link.request("GET", path, headers, None)
        try:
            if reply.status == 401:
                raise Unauthorized("it refuses this machine: it is not a member of that node's pool")
            yield reply, peer_fingerprint(connection.writer.get_extra_info("ssl_object"))
        finally:
            link.release(connection, reply)

    def _link(self, host: str, port: int, tls: str | ssl.SSLContext) -> Http1Client:
        """Return the kept-alive connections to a node's share API, made anew when how it is reached
        changes."""
        kind = tls if isinstance(tls, str) else id(tls)
        link = self._links.get((host, port))
        if link is None or link[0] != kind:
            if link is not None:
                link[1].close()
            scheme = "https" if tls else "http"
            client = Http1Client(
                f"{scheme}://{url_host(host)}:{port}",
                connect_timeout_s=_PEER_POLL_TIMEOUT_S,
                pin=tls if isinstance(tls, str) and tls else None,
                tls=tls if isinstance(tls, ssl.SSLContext) else None,
            )
            link = self._links[(host, port)] = (kind, client)
        return link[1]

    async def _advertise(self) -> None:
        while True:
            announcement = self._own()
            try:
                await self._discovery.start(announcement)
                break
            except (OSError, DiscoveryFailed) as exc:
                # The interface may not be up yet (a laptop waking, a VPN connecting), or mDNS did not start
                # in time on a machine too busy: peers reached by address are followed meanwhile.
                what = str(exc) or type(exc).__name__
                _log.warning("cannot join mDNS (%s); trying again in %.0f s", what, _MDNS_RETRY_S)
                await self._discovery.close()
                await asyncio.sleep(_MDNS_RETRY_S)
        advertised, last_sent = _lasting(encode_txt(announcement)), time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ADVERTISE_CHECK_S):
                    await self._advertise_now.wait()
            self._advertise_now.clear()
            await asyncio.sleep(max(0.0, last_sent + _TXT_MIN_INTERVAL_S - time.monotonic()))
            announcement = self._own()
            txt = _lasting(encode_txt(announcement))
            if txt != advertised:
                await self._discovery.update(announcement)
                advertised, last_sent = txt, time.monotonic()


def _lasting(txt: dict[str, str]) -> dict[str, str]:
    """The part of a TXT record that says who a node is and whether it may be used."""
    return {key: value for key, value in txt.items() if key not in _MOVING_TXT_KEYS}


def _why_unreachable(exc: BaseException) -> str:
    """Say in plain words why a node named by address did not answer."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ConnectionRefusedError):
        return "nothing listens there (connection refused): is InferHub running there, on that port?"
    if isinstance(cause, TimeoutError):
        return "no answer in time: is the machine on, and does its firewall let the port through?"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(exc) or type(exc).__name__


async def _body(reply: Response, path: str, limit: int) -> bytes:
    """Read a whole reply of a known length up to `limit` bytes: a peer cannot fill memory."""
    length = reply.headers.get("Content-Length", "0")
    if not length.isdigit() or int(length) > limit:
        raise MalformedRecord(f"{path} of {length} bytes is over {limit}")
    chunks, size = [], 0
    async for chunk in reply.iter_chunks():
        size += len(chunk)
        if size > limit:
            raise MalformedRecord(f"{path} is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _lines(reply: Response, limit: int, quiet_s: float) -> AsyncIterator[bytes]:
    """Yield a streamed reply's lines as they come (an empty one for a heartbeat); raise TimeoutError if
    nothing comes for `quiet_s`, and MalformedRecord for a line over `limit` bytes."""
    chunks = reply.iter_chunks()
    pending = b""
    while True:
        async with asyncio.timeout(quiet_s):
            chunk = await anext(chunks, None)
        if chunk is None:
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > limit:
            raise MalformedRecord(f"a status of over {limit} bytes")
        for line in lines:
            yield line


def _told(whole: dict[str, Any], line: bytes) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Return a node's status as JSON after a line of its stream (the status whole, or what changed in the
    one before), and the change (None: the line was the status whole); raise MalformedRecord for a line
    that is neither."""
    value = read_json(line, "status", MAX_STATUS_BYTES)
    if not isinstance(value, dict):
        raise MalformedRecord("a status that is not a JSON object")
    if value.keys() != {"change"}:
        return value, None
    change = value["change"]
    if not whole or not isinstance(change, dict):
        raise MalformedRecord("a change told before the status it changes")
    return apply_change(whole, change), change
