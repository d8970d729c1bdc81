"""Admission to this machine's backend: the owner's requests first, peers' ones within a cap, in turns.

Peers' requests that find no free slot wait in one queue per requesting machine, and the queues are
served by start-time fair queueing (Goyal, Vin and Cheng, SIGCOMM 1996): each request is tagged with
when its machine's turn would start if every machine with work waiting were served alike, counting a
request as the tokens it may generate, and the smallest tag goes next. A machine that sends forty
requests gets the same share of the backend as one that sends one at a time, not forty turns before
it; one that asks for long replies spends its share sooner. Batch requests wait behind every
interactive one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

from ..wire.errors import ApiError

# A peer's request waits this long for a slot before it is refused; generations can take minutes,
# and a refused peer fails over to another node, so the wait is generous.
_REMOTE_WAIT_S = 600.0
# Peers' requests that may wait at once; one more is refused at once, as Ollama refuses past
# OLLAMA_MAX_QUEUE.
_MAX_WAITING = 64
# What a request costs in its machine's share when it does not say how many tokens it may generate,
# and the most one counts for, so a request that sets no real limit does not lose every turn after it.
DEFAULT_COST = 256
MAX_COST = 8192
# Machines whose place in the turns is remembered; those whose turn has come are forgotten first.
_MAX_CALLERS = 1024

# What a turn cut before its answer began is cancelled with.
CUT_MESSAGE = "inferhub: the owner took the GPU back"
# Ollama's own wording (two spaces included), so clients that recognise it retry or fail over.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


@dataclasses.dataclass(eq=False)
class Turn:
    """A peer's request on this machine's backend: who sent it, what it is charged, and why it was cut,
    once it is."""

    caller: str
    batch: bool
    # What it is charged in its machine's share; settled with what it generated (`tokens`) as it ends.
    cost: int
    # Resolves with the reason when the owner takes the GPU back while the request runs.
    cut: asyncio.Future[str]
    task: asyncio.Task[Any] | None = None
    # Set once the request is under way, and once the backend's answer began: a cut ends the answer
    # (relay.py), or the request before its answer; one cut before it was under way never starts.
    started: bool = False
    replying: bool = False
    tokens: int | None = None

    @property
    def cut_reason(self) -> str | None:
        return self.cut.result() if self.cut.done() and not self.cut.cancelled() else None


@dataclasses.dataclass(eq=False)
class _Waiter:
    turn: Turn
    tag: float
    entered: asyncio.Future[None]
    queued: bool = True


class Admission:
    """Count requests on this machine's backend: the owner's local ones always enter at once; peers'
    ones only while fewer than `max_remote` of theirs run and the backend has a free slot, waiting in
    fair turns per machine up to a bound otherwise."""

    def __init__(
        self, *, slots: int, max_remote: int, max_waiting: int = _MAX_WAITING, wait_s: float = _REMOTE_WAIT_S
    ) -> None:
        self._slots = slots
        self._max_remote = max_remote
        self._max_waiting = max_waiting
        self._wait_s = wait_s
        self._active_local = 0
        self._running: set[Turn] = set()
        # Set while no peer's request runs, for whoever waits for them to end.
        self._no_peers = asyncio.Event()
        self._no_peers.set()
        # Since when (monotonic seconds) no request of anyone's has run; None while one runs.
        self.idle_since: float | None = time.monotonic()
        # Why peers' requests are refused now (sharing paused or off); None while they are taken.
        self._closed: str | None = None
        # Waiting requests by (batch, start tag, arrival): interactive ones first, then the smallest tag.
        # A slot is handed to the head by setting its future, so a later request cannot take it first.
        self._queue: list[tuple[bool, float, int, _Waiter]] = []
        self._arrivals = itertools.count()
        self._waiting = 0
        self._waiting_batch = 0
        # Per class (interactive, batch): the tag of the request that entered last, the fair queue's clock,
        # and each machine's finish tag, where its next request's turn starts, kept in the order machines
        # last asked.
        self._clock = {False: 0.0, True: 0.0}
        self._finish: dict[tuple[bool, str], float] = {}

    @property
    def active(self) -> int:
        """Requests running on the backend now, the owner's and peers' together."""
        return self._active_local + len(self._running)

    @property
    def active_local(self) -> int:
        return self._active_local

    @property
    def active_remote(self) -> int:
        return len(self._running)

    @property
    def waiting_remote(self) -> int:
        return self._waiting

    @property
    def waiting_batch(self) -> int:
        """Batch requests among the waiting ones."""
        return self._waiting_batch

    @property
    def queue_full(self) -> bool:
        """Whether a peer's request would be refused at once."""
        return self._waiting >= self._max_waiting

    async def peers_done(self) -> None:
        """Return once no peer's request runs."""
        await self._no_peers.wait()

    @contextlib.asynccontextmanager
    async def local(self) -> AsyncIterator[None]:
        """Count a request of this machine's owner while it runs; it never waits."""
        self._active_local += 1
        self.idle_since = None
        try:
            yield
        finally:
            self._active_local -= 1
            self._wake()
            self._maybe_idle()

    @contextlib.asynccontextmanager
    async def remote(
        self, caller: str = "", *, batch: bool = False, cost: int = DEFAULT_COST
    ) -> AsyncIterator[Turn]:
        """Wait for a peer's turn, then count the request while it runs; yield the turn, whose `cut`
        says when the owner took the GPU back.

        Raises ApiError(503) while peers' requests are refused, when `max_waiting` requests wait
        already, when no slot frees up within `wait_s`, when refusals begin while it waits, or when it is
        cut as its turn comes.
        """
        loop = asyncio.get_running_loop()
        turn = Turn(caller, batch, max(1, min(cost, MAX_COST)), loop.create_future(), asyncio.current_task())
        await self._enter(turn)
        try:
            if (reason := turn.cut_reason) is not None:
                raise ApiError(503, reason)
            turn.started = True
            yield turn
        finally:
            self._stop(turn)
            if not turn.cut.done():
                turn.cut.cancel()
            if turn.tokens is not None:
                self._charge(turn, min(turn.tokens, MAX_COST) - turn.cost)
            self._wake()
            self._maybe_idle()

    def refuse(self, reason: str | None) -> None:
        """Refuse peers' requests with `reason` from now on, those waiting too (they fail over to other
        nodes); None takes them again. Running ones go on until `cut`."""
        self._closed = reason
        if reason is None:
            return
        for *_, waiter in self._queue:
            if waiter.queued and not waiter.entered.done():
                waiter.entered.set_exception(ApiError(503, reason))
        self._wake()

    def cut(self, reason: str) -> int:
        """Cut the peers' requests running now with `reason`; return how many. One whose answer began
        ends it (relay.py); one still waiting for the backend's first byte is cancelled."""
        turns = [turn for turn in self._running if not turn.cut.done()]
        for turn in turns:
            turn.cut.set_result(reason)
            if turn.started and not turn.replying and turn.task is not None:
                turn.task.cancel(CUT_MESSAGE)
        return len(turns)

    def _start(self, turn: Turn) -> None:
        self._running.add(turn)
        self._no_peers.clear()
        self.idle_since = None

    def _stop(self, turn: Turn) -> None:
        self._running.discard(turn)
        if not self._running:
            self._no_peers.set()

    def _maybe_idle(self) -> None:
        if not self.active and self.idle_since is None:
            self.idle_since = time.monotonic()

    def _fits(self) -> bool:
        return len(self._running) < self._max_remote and self.active < self._slots

    def _tag(self, turn: Turn) -> float:
        """Return the start tag of a machine's request, and move its finish tag on by the request's cost."""
        key = (turn.batch, turn.caller)
        start = max(self._clock[turn.batch], self._finish.pop(key, 0.0))
        self._finish[key] = start + turn.cost
        # Past the bound, the machines that asked longest ago are forgotten: they start at the clock.
        while len(self._finish) > _MAX_CALLERS:
            del self._finish[next(iter(self._finish))]
        return start

    def _charge(self, turn: Turn, tokens: int) -> None:
        """Move a machine's finish tag by `tokens`: back for a request that never ran or ran short."""
        key = (turn.batch, turn.caller)
        if key in self._finish:
            self._finish[key] = max(self._clock[turn.batch], self._finish[key] + tokens)

    async def _enter(self, turn: Turn) -> None:
        if self._closed is not None:
            raise ApiError(503, self._closed)
        if not self._waiting and self._fits():
            self._clock[turn.batch] = self._tag(turn)
            self._start(turn)
            return
        if self._waiting >= self._max_waiting:
            raise ApiError(503, BUSY_MESSAGE)
        waiter = _Waiter(turn, self._tag(turn), asyncio.get_running_loop().create_future())
        heapq.heappush(self._queue, (turn.batch, waiter.tag, next(self._arrivals), waiter))
        self._count(waiter, 1)
        try:
            async with asyncio.timeout(self._wait_s):
                await waiter.entered
        except TimeoutError:
            self._give_up(waiter)
            raise ApiError(
                503,
                f"server busy, please try again.  no slot for peers came free within {self._wait_s:g} s",
            ) from None
        except BaseException:
            self._give_up(waiter)  # cancelled (the client went away, or the node stops), or refused
            raise

    def _count(self, waiter: _Waiter, step: int) -> None:
        self._waiting += step
        self._waiting_batch += step if waiter.turn.batch else 0

    def _give_up(self, waiter: _Waiter) -> None:
        """Take a waiter out of the queue, or pass on the slot it was handed as it stopped waiting."""
        if waiter.queued:
            waiter.queued = False  # left in the heap, skipped when it comes up
            self._count(waiter, -1)
        elif waiter.entered.done() and not waiter.entered.cancelled() and waiter.entered.exception() is None:
            self._stop(waiter.turn)
        # It never ran: it costs its machine nothing.
        self._charge(waiter.turn, -waiter.turn.cost)
        if len(self._queue) > 2 * self._max_waiting:
            self._queue = [entry for entry in self._queue if entry[3].queued]
            heapq.heapify(self._queue)
        # Whoever queued behind it while it was leaving may fit now.
        self._wake()
        self._maybe_idle()

    def _wake(self) -> None:
        """Hand free slots to the waiting peers' requests, smallest tag first."""
        while self._queue and self._fits():
            _, tag, _, waiter = heapq.heappop(self._queue)
            if not waiter.queued:
                continue  # gave up while waiting
            waiter.queued = False
            self._count(waiter, -1)
            if waiter.entered.done():
                continue  # cancelled or refused; its task takes itself out
            self._clock[waiter.turn.batch] = tag
            self._start(waiter.turn)
            waiter.entered.set_result(None)
