"""Admission to the backend: the owner's requests never wait, peers' ones take turns within their cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from inferhub_desktop.core import ApiError
from inferhub_desktop.core.api.admission import Admission


class Holder:
    """Requests that enter through an Admission and stay until told to leave."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self._leave: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, enter: Callable[[], AbstractAsyncContextManager[None]]) -> asyncio.Task[None]:
        self._leave[name] = asyncio.Event()
        task = asyncio.create_task(self._hold(name, enter), name=name)
        self._tasks[name] = task
        return task

    async def _hold(self, name: str, enter: Callable[[], AbstractAsyncContextManager[None]]) -> None:
        async with enter():
            self.entered.append(name)
            await self._leave[name].wait()

    async def finish(self, name: str) -> None:
        self._leave[name].set()
        await self._tasks[name]

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


@pytest.fixture
async def holder() -> AsyncIterator[Holder]:
    held = Holder()
    yield held
    await held.close()


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(5):
        await asyncio.sleep(0)


def counts(admission: Admission) -> tuple[int, int, int]:
    return admission.active_local, admission.active_remote, admission.waiting_remote


async def test_local_requests_never_wait(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    holder.start("remote", admission.remote)
    holder.start("queued", admission.remote)
    await settle()
    assert counts(admission) == (0, 1, 1)
    for name in ("a", "b", "c"):
        holder.start(name, admission.local)
    await settle()
    assert holder.entered == ["remote", "a", "b", "c"]
    assert counts(admission) == (3, 1, 1)


async def test_remote_requests_are_capped_at_max_remote(holder: Holder) -> None:
    admission = Admission(slots=4, max_remote=2)
    for name in ("r1", "r2", "r3"):
        holder.start(name, admission.remote)
    await settle()
    assert holder.entered == ["r1", "r2"]
    assert counts(admission) == (0, 2, 1)
    await holder.finish("r1")
    await settle()
    assert holder.entered == ["r1", "r2", "r3"]
    assert counts(admission) == (0, 2, 0)


async def test_remote_requests_wait_for_the_owners_and_enter_in_order(holder: Holder) -> None:
    admission = Admission(slots=2, max_remote=2)
    holder.start("local1", admission.local)
    holder.start("local2", admission.local)
    await settle()
    for name in ("A", "B", "C"):
        holder.start(name, admission.remote)
        await settle()
    assert counts(admission) == (2, 0, 3)

    await holder.finish("local1")
    await settle()
    # One slot is free and a local request still runs: one peer enters, the oldest.
    assert holder.entered[2:] == ["A"]
    # A newcomer does not jump the queue when a slot frees.
    holder.start("D", admission.remote)
    await holder.finish("local2")
    await settle()
    assert holder.entered[2:] == ["A", "B"]
    assert counts(admission) == (0, 2, 2)
    await holder.finish("A")
    await settle()
    assert holder.entered[2:] == ["A", "B", "C"]
    await holder.finish("B")
    await settle()
    assert holder.entered[2:] == ["A", "B", "C", "D"]


async def test_a_full_queue_refuses_with_ollamas_busy_error(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1, max_waiting=2)
    for name in ("running", "w1", "w2"):
        holder.start(name, admission.remote)
    await settle()
    assert counts(admission) == (0, 1, 2)
    with pytest.raises(ApiError) as refused:
        async with asyncio.timeout(1.0), admission.remote():
            pytest.fail("entered past a full queue")
    assert refused.value.status == 503
    assert refused.value.message == "server busy, please try again.  maximum pending requests exceeded"
    assert counts(admission) == (0, 1, 2)


async def test_a_cancelled_waiter_leaves_the_queue(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1, max_waiting=1)
    holder.start("running", admission.remote)
    waiter = holder.start("gone", admission.remote)
    await settle()
    assert counts(admission) == (0, 1, 1)
    waiter.cancel()
    await settle()
    assert waiter.cancelled()
    assert counts(admission) == (0, 1, 0)
    # Its place in the queue is free again, and it takes no slot when one frees.
    holder.start("next", admission.remote)
    await settle()
    await holder.finish("running")
    await settle()
    assert holder.entered == ["running", "next"]
    await holder.finish("next")
    assert counts(admission) == (0, 0, 0)


async def test_a_waiter_cancelled_as_its_slot_arrives_passes_the_slot_on(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    async with admission.remote():
        unlucky = holder.start("unlucky", admission.remote)
        holder.start("next", admission.remote)
        await settle()
    # The slot is handed to "unlucky", whose task has not run since: cancel it now.
    assert counts(admission) == (0, 1, 1)
    unlucky.cancel()
    await settle()
    assert unlucky.cancelled()
    assert holder.entered == ["next"]
    await holder.finish("next")
    assert counts(admission) == (0, 0, 0)


async def test_a_waiter_cancelled_just_before_a_slot_frees_is_skipped(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    async with admission.remote():
        gone = holder.start("gone", admission.remote)
        holder.start("next", admission.remote)
        await settle()
        # Cancelled, but its task has not run since: the slot freed next must pass it by.
        gone.cancel()
    await settle()
    assert gone.cancelled()
    assert holder.entered == ["next"]
    await holder.finish("next")
    assert counts(admission) == (0, 0, 0)


async def test_a_request_cancelled_while_running_frees_its_slot(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    running = holder.start("running", admission.remote)
    holder.start("next", admission.remote)
    await settle()
    running.cancel()
    await settle()
    assert holder.entered == ["running", "next"]
    assert counts(admission) == (0, 1, 0)


async def test_a_waiter_gives_up_after_the_wait(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1, wait_s=0.05)
    holder.start("running", admission.remote)
    await settle()
    started = asyncio.get_running_loop().time()
    with pytest.raises(ApiError) as refused:
        async with asyncio.timeout(1.0), admission.remote():
            pytest.fail("entered while the slot was taken")
    assert asyncio.get_running_loop().time() - started >= 0.05
    assert refused.value.status == 503
    assert refused.value.message.startswith("server busy, please try again.")
    assert "0.05 s" in refused.value.message
    assert counts(admission) == (0, 1, 0)
