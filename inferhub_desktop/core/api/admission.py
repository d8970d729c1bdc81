"""Admission to this machine's backend: the owner's requests first, peers' ones within a cap."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator

from ..wire.errors import ApiError

# A peer's request waits this long for a slot before it is refused; generations can take minutes,
# and a refused peer fails over to another node, so the wait is generous.
_REMOTE_WAIT_S = 600.0
# Peers' requests that may wait at once; one more is refused at once, as Ollama refuses past
# OLLAMA_MAX_QUEUE.
_MAX_WAITING = 64

# Ollama's own wording (two spaces included), so clients that recognise it retry or fail over.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class Admission:
    """Count requests on this machine's backend: the owner's local ones always enter at once; peers'
    ones only while fewer than `max_remote` of theirs run and the backend has a free slot, waiting (FIFO)
    up to a bound otherwise."""

    def __init__(
        self, *, slots: int, max_remote: int, max_waiting: int = _MAX_WAITING, wait_s: float = _REMOTE_WAIT_S
    ) -> None:
        self._slots = slots
        self._max_remote = max_remote
        self._max_waiting = max_waiting
        self._wait_s = wait_s
        self._active_local = 0
        self._active_remote = 0
        # Futures of waiting peers' requests, oldest first; a slot is handed to the head by setting
        # its result, so a request arriving later cannot take it first.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def active(self) -> int:
        """Requests running on the backend now, the owner's and peers' together."""
        return self._active_local + self._active_remote

    @property
    def active_local(self) -> int:
        return self._active_local

    @property
    def active_remote(self) -> int:
        return self._active_remote

    @property
    def waiting_remote(self) -> int:
        return len(self._waiters)

    @property
    def queue_full(self) -> bool:
        """Whether a peer's request would be refused at once."""
        return self.waiting_remote >= self._max_waiting

    @contextlib.asynccontextmanager
    async def local(self) -> AsyncIterator[None]:
        """Count a request of this machine's owner while it runs; it never waits."""
        self._active_local += 1
        try:
            yield
        finally:
            self._active_local -= 1
            self._wake()

    @contextlib.asynccontextmanager
    async def remote(self) -> AsyncIterator[None]:
        """Wait for a peer's turn, then count the request while it runs.

        Raises ApiError(503) when `max_waiting` requests wait already, or when no slot frees up
        within `wait_s`.
        """
        await self._enter_remote()
        try:
            yield
        finally:
            self._active_remote -= 1
            self._wake()

    def _remote_fits(self) -> bool:
        return self._active_remote < self._max_remote and self.active < self._slots

    async def _enter_remote(self) -> None:
        if not self.waiting_remote and self._remote_fits():
            self._active_remote += 1
            return
        if self.waiting_remote >= self._max_waiting:
            raise ApiError(503, BUSY_MESSAGE)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._wait_s):
                await waiter
        except TimeoutError:
            self._give_up(waiter)
            raise ApiError(
                503,
                f"server busy, please try again.  no slot for peers came free within {self._wait_s:g} s",
            ) from None
        except BaseException:
            self._give_up(waiter)  # cancelled: the client went away, or the node stops
            raise

    def _give_up(self, waiter: asyncio.Future[None]) -> None:
        """Take a waiter out of the queue, or pass on the slot it was handed as it stopped waiting."""
        if waiter.done() and not waiter.cancelled():
            self._active_remote -= 1
        else:
            with contextlib.suppress(ValueError):  # _wake may have dropped it, cancelled, already
                self._waiters.remove(waiter)
        # Whoever queued behind it while it was leaving may fit now.
        self._wake()

    def _wake(self) -> None:
        """Hand free slots to the waiting peers' requests, oldest first."""
        while self._waiters and self._remote_fits():
            waiter = self._waiters.popleft()
            if waiter.done():
                continue  # cancelled; its task takes itself out
            self._active_remote += 1
            waiter.set_result(None)
