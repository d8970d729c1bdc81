"""Admission to the backend: the owner's requests never wait, peers' ones take turns within their cap."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from inferhub_desktop.core import ApiError
from inferhub_desktop.core.api.admission import CUT_MESSAGE, MAX_COST, Admission


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


def from_machine(
    admission: Admission, caller: str, **turn: Any
) -> Callable[[], AbstractAsyncContextManager[Any]]:
    return functools.partial(admission.remote, caller, **turn)


async def test_a_machine_that_floods_does_not_make_another_wait_behind_its_flood(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    for n in range(6):
        holder.start(f"flood{n}", from_machine(admission, "10.0.0.1"))
    await settle()
    holder.start("single", from_machine(admission, "10.0.0.2"))
    await settle()
    assert holder.entered == ["flood0"]
    await holder.finish("flood0")
    await settle()
    # The one request of the other machine goes before the flood's second, not its sixth.
    assert holder.entered == ["flood0", "single"]
    # The flooding machine goes on in its own order once no one else waits.
    for n, name in enumerate(["single", "flood1", "flood2"]):
        await holder.finish(name)
        await settle()
        assert holder.entered[-1] == f"flood{n + 1}"


async def test_machines_sending_one_request_at_a_time_alternate_with_a_flood(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    for n in range(8):
        holder.start(f"A{n}", from_machine(admission, "A"))
    await settle()
    b = c = 0
    holder.start("B0", from_machine(admission, "B"))
    holder.start("C0", from_machine(admission, "C"))
    await settle()
    for _ in range(6):
        await holder.finish(holder.entered[-1])
        await settle()
        # B and C each send their next request as soon as their last one ends, as a person at a
        # chat window does.
        last = holder.entered[-1]
        if last == f"B{b}":
            b += 1
            holder.start(f"B{b}", from_machine(admission, "B"))
        elif last == f"C{c}":
            c += 1
            holder.start(f"C{c}", from_machine(admission, "C"))
        await settle()
    assert holder.entered == ["A0", "B0", "C0", "A1", "B1", "C1", "A2"]


async def test_a_machine_asking_for_long_replies_spends_its_share_sooner(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    holder.start("running", admission.remote)
    await settle()
    for n in range(2):
        holder.start(f"long{n}", from_machine(admission, "L", cost=1000))
    for n in range(4):
        holder.start(f"short{n}", from_machine(admission, "S", cost=250))
    await settle()
    order = ["running"]
    while len(order) < 7:
        await holder.finish(order[-1])
        await settle()
        order.append(holder.entered[-1])
    # One reply of 1000 tokens costs L as much as four of 250 cost S.
    assert order == ["running", "long0", "short0", "short1", "short2", "short3", "long1"]


async def test_batch_requests_wait_behind_every_interactive_one(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    holder.start("running", admission.remote)
    await settle()
    holder.start("batch0", from_machine(admission, "A", batch=True))
    holder.start("batch1", from_machine(admission, "B", batch=True))
    await settle()
    assert (admission.waiting_remote, admission.waiting_batch) == (2, 2)
    holder.start("chat", from_machine(admission, "A"))
    await settle()
    assert (admission.waiting_remote, admission.waiting_batch) == (3, 2)
    order = ["running"]
    while len(order) < 4:
        await holder.finish(order[-1])
        await settle()
        order.append(holder.entered[-1])
    assert order == ["running", "chat", "batch0", "batch1"]
    assert (admission.waiting_remote, admission.waiting_batch) == (0, 0)


async def test_refusing_peers_turns_away_those_waiting_and_those_to_come(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    holder.start("running", admission.remote)
    waiting = holder.start("waiting", admission.remote)
    await settle()
    admission.refuse("ws-alice is paused: blender is using the GPU")
    await settle()
    with pytest.raises(ApiError) as refused:
        await waiting
    assert (refused.value.status, refused.value.message) == (
        503,
        "ws-alice is paused: blender is using the GPU",
    )
    with pytest.raises(ApiError) as refused:
        async with admission.remote():
            pytest.fail("entered while refused")
    assert refused.value.status == 503
    # The request already running goes on until it is cut.
    assert counts(admission) == (0, 1, 0)
    await holder.finish("running")
    admission.refuse(None)
    async with admission.remote():
        assert counts(admission) == (0, 1, 0)


async def test_cutting_ends_the_answers_under_way_and_cancels_requests_not_answered_yet(
    holder: Holder,
) -> None:
    admission = Admission(slots=3, max_remote=3)
    told: list[str] = []

    async def answering() -> None:
        async with admission.remote("A") as turn:
            turn.replying = True  # the backend's answer began: the relay ends it, saying why
            told.append(await turn.cut)

    async def loading() -> None:
        async with admission.remote("A"):
            try:
                await asyncio.sleep(60)  # no answer yet: the request itself is cancelled
            except asyncio.CancelledError as exc:
                told.append(exc.args[0])
                raise

    tasks = [asyncio.create_task(answering()) for _ in range(2)] + [asyncio.create_task(loading())]
    await settle()
    assert admission.cut("the owner took the GPU back") == 3
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(told) == sorted(["the owner took the GPU back"] * 2 + [CUT_MESSAGE])
    assert isinstance(results[2], asyncio.CancelledError)
    assert counts(admission) == (0, 0, 0)
    assert admission.cut("nothing runs") == 0


async def test_a_request_cut_as_its_turn_comes_never_starts(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    async with admission.remote("A"):
        waiting = holder.start("next", admission.remote)
        await settle()
    # The slot is handed to "next", whose task has not run since: the owner takes the GPU back now.
    assert admission.cut("the owner took the GPU back") == 1
    with pytest.raises(ApiError) as refused:
        await waiting
    assert (refused.value.status, refused.value.message) == (503, "the owner took the GPU back")
    assert holder.entered == []
    assert counts(admission) == (0, 0, 0)


async def test_requests_that_never_ran_cost_their_machine_nothing(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    holder.start("running", admission.remote)
    gone = [holder.start(f"gone{n}", from_machine(admission, "A")) for n in range(5)]
    await settle()
    for task in gone:
        task.cancel()  # their nodes sent them elsewhere
    await settle()
    holder.start("A0", from_machine(admission, "A"))
    holder.start("B0", from_machine(admission, "B"))
    holder.start("A1", from_machine(admission, "A"))
    await settle()
    order = ["running"]
    while len(order) < 4:
        await holder.finish(order[-1])
        await settle()
        order.append(holder.entered[-1])
    # A's cancelled requests do not push its new ones behind B's.
    assert order == ["running", "A0", "B0", "A1"]


async def test_a_request_is_charged_what_it_generated_in_the_end(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    async with admission.remote("A", cost=MAX_COST) as turn:
        holder.start("A0", from_machine(admission, "A"))
        holder.start("B0", from_machine(admission, "B"))
        await settle()
        turn.tokens = 10  # it asked for up to 8192 tokens and wrote 10
    order: list[str] = []
    for _ in range(2):
        await settle()
        order.append(holder.entered[-1])
        await holder.finish(order[-1])
    # Queued while A still owed 8192, A0 was tagged behind B0; it is not punished again after that.
    assert order == ["B0", "A0"]
    async with admission.remote("A", cost=100) as turn:
        turn.tokens = 100
    assert admission.active == 0


async def test_machines_are_remembered_within_a_bound(holder: Holder) -> None:
    admission = Admission(slots=1, max_remote=1)
    for n in range(3000):
        async with admission.remote(f"10.0.{n // 256}.{n % 256}"):
            pass
    assert len(admission._finish) <= 1024
