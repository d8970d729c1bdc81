"""This node's status told to the peers that follow it, as it changes, instead of being asked for it
every second.

A peer asks for the status with `Accept: application/x-ndjson` and keeps the answer open: the status,
whole, as one JSON line; then, whenever its tag changes (looked at every CHANGE_CHECK_S, so a busy node's
load goes out at most that often), what changed, as `{"change": {...}}` (see `changed`); and an empty
line every HEARTBEAT_S while nothing changed, which is how the peer knows this node's process is alive.
Whether its machine is still there is TCP keepalive's to tell, on both ends: the kernel's probes cost
neither node a wake-up, where heartbeats often enough to notice an unplugged cable within seconds would
wake both for every peer every second or two.

The stream ends cleanly when this node stops (or its share API restarts), and at once for a follower
that is no longer let in. Every follower is woken by the same tick, so a hundred followers cost one
wake-up of the loop, not a hundred.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..status import NodeStatus
from ..wire.keepalive import keep_alive

FEED_TYPE = "application/x-ndjson"
# A change is told within this; changes within it are told once, as the status at its end.
CHANGE_CHECK_S = 0.25
# An empty line this often while nothing changed; a follower that hears nothing for a few of them takes
# this node's process to be hung.
HEARTBEAT_S = 10.0
_HEARTBEAT = b"\n"
# A follower whose machine vanished is let go after this long without a word from it (acknowledgements
# of our heartbeats included) and that many unanswered probes, a second apart: TCP alone would hold its
# connection for the ~15 minutes it retries a heartbeat.
_FOLLOWER_IDLE_S = 10
_FOLLOWER_PROBES = 3


class StatusFeed:
    """The stream of this node's status to each peer that follows it."""

    def __init__(self, status: Callable[[], NodeStatus], clock: Callable[[], float] = time.monotonic) -> None:
        self._status = status
        self._clock = clock
        self._tag = ""
        self._told: dict[str, Any] = {}
        # The status whole, and what changed from the one before, each as the line that tells it.
        self._line = b""
        self._change = b""
        # Counts the statuses told: a follower that missed a tick while it wrote still sends the last one.
        self._version = 0
        self._tick: asyncio.Future[bool] | None = None
        self._followers = 0
        self._task: asyncio.Task[None] | None = None
        # When the followers were last woken: a heartbeat is due HEARTBEAT_S after.
        self._told_at = 0.0

    @property
    def followers(self) -> int:
        return self._followers

    async def reply(self, request: web.BaseRequest, let_in: Callable[[], bool]) -> web.StreamResponse:
        """Follow the node's status until it stops, the follower leaves, or `let_in()` turns false."""
        self._followers += 1
        self._ensure_running()
        response = web.StreamResponse(headers={"Content-Type": FEED_TYPE, "Cache-Control": "no-store"})
        response.enable_chunked_encoding()
        told = -1
        if request.transport is not None:
            keep_alive(
                request.transport.get_extra_info("socket"),
                idle_s=_FOLLOWER_IDLE_S,
                interval_s=1,
                probes=_FOLLOWER_PROBES,
                writes_too=True,
            )
        try:
            await response.prepare(request)
            while let_in():
                if told != self._version:
                    # What changed, to a follower that has the status before; the whole status otherwise.
                    line = self._change if told == self._version - 1 and self._change else self._line
                    told = self._version
                    await response.write(line)
                else:
                    await response.write(_HEARTBEAT)
                tick = self._tick
                if tick is None or not await asyncio.shield(tick):
                    break
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the follower left; RuntimeError is aiohttp's word for a closed transport
        finally:
            self._followers -= 1
        return response

    def poke(self) -> None:
        """Look at the status now, not at the next tick: something peers act on at once changed (the
        backend came or went, a switch turned)."""
        if self._task is not None and not self._task.done() and self._look():
            self._tell()

    def end(self) -> None:
        """End every stream now, cleanly: this node stops, or its share API listens anew."""
        if self._tick is not None and not self._tick.done():
            self._tick.set_result(False)
        self._tick = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._look()
            self._tick = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(), name="status-feed")

    def _look(self) -> bool:
        """Take the status as it is now; return whether its tag changed."""
        status = self._status()
        tag = status.tag(self._clock())
        if tag == self._tag:
            return False
        told = status.to_json()
        change = changed(self._told, told) if self._told else None
        self._tag = tag
        if change == {}:
            return False  # the tag aged, and nothing in the status moved: a heartbeat says as much
        self._told = told
        self._line = _line(told)
        self._change = _line({"change": change}) if change is not None else b""
        self._version += 1
        return True

    async def _run(self) -> None:
        self._told_at = self._clock()
        # Runs while anyone follows; then the tick goes quiet until the next follower.
        while True:
            await asyncio.sleep(CHANGE_CHECK_S)
            if not self._followers:
                break
            if self._look() or self._clock() - self._told_at >= HEARTBEAT_S:
                self._tell()

    def _tell(self) -> None:
        """Wake every follower: each sends what changed, or a heartbeat."""
        self._told_at = self._clock()
        tick, self._tick = self._tick, asyncio.get_running_loop().create_future()
        if tick is not None and not tick.done():
            tick.set_result(True)


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any] | None:
    """Return what turns one status (as JSON) into another: the keys whose values differ, an object's
    keys compared one by one, anything else (lists too) told whole. None where a key was dropped: then the
    whole status is told, so a change never has to say "remove"."""
    change: dict[str, Any] = {}
    if not before.keys() <= after.keys():
        return None
    for key, value in after.items():
        old = before.get(key, _MISSING)
        if old == value:
            continue
        if isinstance(old, dict) and isinstance(value, dict):
            inner = changed(old, value)
            if inner is None:
                return None
            change[key] = inner
        else:
            change[key] = value
    return change


def apply_change(before: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """Return the status (as JSON) that a change made by `changed` turns `before` into."""
    after = dict(before)
    for key, value in change.items():
        old = before.get(key)
        after[key] = apply_change(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return after


_MISSING = object()


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"
