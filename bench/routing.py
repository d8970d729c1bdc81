"""Print how well requests are placed in a heterogeneous pool: this router against round-robin,
least-connections, random and an oracle, under one mixed workload, in one run.

    python -m bench.routing [--seconds 14] [--warmup 8] [--rate 4] [--seed 7] [--drain 8]

Seven nodes run on loopback, each with a fake Ollama of its own speed, parallel slots, models, loaded
set, room for loaded models and load time. Every policy gets a fresh pool and the same arrivals
(Poisson, three models, replies of 20 to 120 tokens). All requests enter through the same node's
local API: this router decides itself; the other policies pin each request to the node they choose
(X-InferHub-Node), so every policy pays the same hops. The oracle knows each node's true speed, slots,
load time and loaded models, and when each request it placed will end, and picks the earliest finish.
Completion time runs from a request's arrival to its full answer; requests arriving in the warm-up are
served but not counted (the router starts knowing no speeds, and learns them while serving). A policy
that lets queues grow without bound is cut off `--drain` seconds after the last arrival: its requests
still running count with the time they had waited so far, so its figures are then lower bounds (`>=`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from inferhub_desktop.core import Node
from tests.fakes.ollama import FakeOllama
from tests.support import node_settings

A, B, C = "llama3:latest", "qwen3:8b", "phi3:latest"
MIX = ((A, 0.5), (B, 0.3), (C, 0.2))
TOKENS = (20, 120)


@dataclasses.dataclass(frozen=True)
class Machine:
    """One node of the simulated pool and its Ollama's true figures."""

    name: str
    tokens_per_s: float
    slots: int
    models: tuple[str, ...]
    loaded: tuple[str, ...]
    max_loaded: int
    load_s: float


# n0 is the machine the requests come from. Speeds span 20 to 160 tokens/s; slots, loaded sets,
# room for loaded models and load times differ, as on a real office LAN.
POOL = (
    Machine("n0", 40, 1, (A, B), (A,), 1, 2.0),
    Machine("n1", 160, 2, (A, B, C), (B,), 2, 1.5),
    Machine("n2", 120, 1, (A, C), (A,), 1, 1.5),
    Machine("n3", 60, 2, (A, B), (), 1, 3.0),
    Machine("n4", 30, 1, (A, C), (C,), 1, 2.5),
    Machine("n5", 20, 1, (A, B, C), (A,), 2, 4.0),
    Machine("n6", 90, 1, (B, C), (C,), 1, 2.0),
)


@dataclasses.dataclass(frozen=True)
class Arrival:
    at: float
    model: str
    tokens: int
    counted: bool


def workload(seconds: float, warmup: float, rate: float, seed: int) -> list[Arrival]:
    """Draw the arrivals every policy is given: Poisson times, a model mix, reply lengths."""
    rng = random.Random(seed)
    arrivals, at = [], 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= warmup + seconds:
            return arrivals
        model = rng.choices([m for m, _ in MIX], weights=[w for _, w in MIX])[0]
        arrivals.append(Arrival(at, model, rng.randint(*TOKENS), at >= warmup))


@dataclasses.dataclass
class Running:
    """A fresh pool: the fakes, the nodes, and what the policies may know of it."""

    fakes: dict[str, FakeOllama]
    entry: Node
    loads: dict[str, int]
    in_flight: dict[str, int]
    # For the oracle: the ends it expects of the requests it placed that are still running.
    ends: dict[str, dict[Arrival, float]]


@contextlib.asynccontextmanager
async def pool(work: Path) -> Any:
    """Start the seven fakes and nodes, and wait until the entry node knows every peer's models."""
    async with contextlib.AsyncExitStack() as stack:
        fakes: dict[str, FakeOllama] = {}
        loads = {m.name: 0 for m in POOL}
        nodes = []
        for machine in POOL:
            fake = FakeOllama(
                machine.models,
                loaded=machine.loaded,
                tokens_per_second=machine.tokens_per_s,
                load_delay_s=machine.load_s,
                num_parallel=machine.slots,
                max_loaded_models=machine.max_loaded,
            )
            _count_loads(fake, loads, machine.name)
            await stack.enter_async_context(fake)
            fakes[machine.name] = fake
            settings = node_settings(
                work / machine.name, fake.url, name=machine.name, share=True, max_remote=machine.slots
            )
            nodes.append(await stack.enter_async_context(Node(settings, environ={})))
        entry = nodes[0]
        deadline = time.monotonic() + 30
        while sum(1 for p in entry.membership.peers if p.status.backend.installed) < len(POOL) - 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the entry node did not learn of every peer within 30 s")
            await asyncio.sleep(0.05)
        names = [m.name for m in POOL]
        yield Running(
            fakes,
            entry,
            loads,
            dict.fromkeys(names, 0),
            {n: {} for n in names},
        )


def _count_loads(fake: FakeOllama, loads: dict[str, int], name: str) -> None:
    """Count the fake's model loads: each cold start is one."""
    load = fake._become_loaded

    async def counted(model: Any) -> None:
        loads[name] += 1
        await load(model)

    fake._become_loaded = counted  # type: ignore[method-assign]


# A policy picks the node to pin a request to, or None to let the entry node's router decide.
Policy = Callable[[Running, Arrival, float], str | None]


def holders(model: str) -> list[str]:
    return [m.name for m in POOL if model in m.models]


def router(run: Running, arrival: Arrival, now: float) -> str | None:
    return None


def round_robin() -> Policy:
    turns: dict[str, int] = {}

    def choose(run: Running, arrival: Arrival, now: float) -> str | None:
        names = holders(arrival.model)
        turn = turns.get(arrival.model, 0)
        turns[arrival.model] = turn + 1
        return names[turn % len(names)]

    return choose


def least_connections(run: Running, arrival: Arrival, now: float) -> str | None:
    return min(holders(arrival.model), key=lambda n: (run.in_flight[n], n))


def uniform_random(seed: int) -> Policy:
    rng = random.Random(seed)
    return lambda run, arrival, now: rng.choice(holders(arrival.model))


def oracle(run: Running, arrival: Arrival, now: float) -> str | None:
    """Pick the earliest true finish: a slot free, the load if needed, then tokens at the true speed.

    It knows which requests are still running where (not only when it expected them to end), so a
    request running late holds its slot, as it does on the node.
    """
    best: tuple[float, str] | None = None
    for machine in POOL:
        if arrival.model not in machine.models:
            continue
        fake = run.fakes[machine.name]
        ends = sorted(max(end, now) for end in run.ends[machine.name].values())
        start = now if len(ends) < machine.slots else ends[len(ends) - machine.slots]
        # Loaded now, or being loaded for a request placed there that is still running.
        placed = {a.model for a in run.ends[machine.name]}
        ready = fake._is_loaded(fake.models[arrival.model]) or arrival.model in placed
        end = start + (0.0 if ready else machine.load_s) + arrival.tokens / machine.tokens_per_s
        if best is None or end < best[0]:
            best = (end, machine.name)
    assert best is not None
    end, name = best
    run.ends[name][arrival] = end
    return name


@dataclasses.dataclass
class Result:
    policy: str
    times: list[float]
    loads: int
    failures: int
    unfinished: int


async def run_policy(name: str, policy: Policy, arrivals: list[Arrival], work: Path, drain: float) -> Result:
    async with pool(work / name) as run, aiohttp.ClientSession() as session:
        url = run.entry.api_url + "/api/generate"
        loads_before = sum(run.loads.values())
        times: list[float] = []
        failures = unfinished = 0
        start = time.monotonic()
        cutoff = start + arrivals[-1].at + drain

        async def one(arrival: Arrival) -> None:
            nonlocal failures, unfinished
            await asyncio.sleep(max(0.0, start + arrival.at - time.monotonic()))
            now = time.monotonic()
            pin = policy(run, arrival, now)
            headers = {"X-InferHub-Node": pin} if pin else {}
            body = {
                "model": arrival.model,
                "prompt": "hello",
                "stream": False,
                "options": {"num_predict": arrival.tokens},
            }
            node = pin or ""
            run.in_flight[node] = run.in_flight.get(node, 0) + 1
            try:
                async with (
                    asyncio.timeout_at(asyncio.get_running_loop().time() + cutoff - now),
                    session.post(url, json=body, headers=headers) as reply,
                ):
                    await reply.read()
                    ok = reply.status == 200
            except TimeoutError:
                unfinished += 1
                ok = True
            finally:
                run.in_flight[node] -= 1
                run.ends.get(node, {}).pop(arrival, None)
            if not ok:
                failures += 1
            elif arrival.counted:
                times.append(time.monotonic() - now)

        await asyncio.gather(*(one(a) for a in arrivals))
        return Result(name, times, sum(run.loads.values()) - loads_before, failures, unfinished)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(seconds: float, warmup: float, rate: float, seed: int, drain: float) -> None:
    arrivals = workload(seconds, warmup, rate, seed)
    counted = sum(a.counted for a in arrivals)
    print(
        f"{len(POOL)} nodes, {len(arrivals)} requests ({counted} counted after a {warmup:g} s warm-up), "
        f"{rate:g}/s for {warmup + seconds:g} s, seed {seed}"
    )
    policies: list[tuple[str, Policy]] = [
        ("round-robin", round_robin()),
        ("least-connections", least_connections),
        ("random", uniform_random(seed)),
        ("inferhub router", router),
        ("oracle", oracle),
    ]
    results = []
    with tempfile.TemporaryDirectory() as work:
        for name, policy in policies:
            began = time.monotonic()
            results.append(await run_policy(name, policy, arrivals, Path(work), drain))
            print(f"  ran {name} in {time.monotonic() - began:.1f} s", flush=True)
    print(f"\n{'policy':<20}{'mean s':>9}{'p95 s':>9}{'cold loads':>12}{'failed':>8}{'cut off':>9}")
    for r in results:
        bound = ">=" if r.unfinished else ""
        mean, p95 = bound + f"{statistics.fmean(r.times):.2f}", bound + f"{percentile(r.times, 95):.2f}"
        print(f"{r.policy:<20}{mean:>9}{p95:>9}{r.loads:>12}{r.failures:>8}{r.unfinished:>9}")
    p95 = {r.policy: percentile(r.times, 95) for r in results}
    ours = p95["inferhub router"]
    print(
        f"\nrouter p95 vs round-robin {1 - ours / p95['round-robin']:+.0%} lower, "
        f"vs least-connections {1 - ours / p95['least-connections']:+.0%} lower, "
        f"vs random {1 - ours / p95['random']:+.0%} lower; "
        f"{ours / p95['oracle'] - 1:+.0%} against the oracle"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=14.0, help="measured arrivals, seconds")
    parser.add_argument("--warmup", type=float, default=8.0, help="arrivals served but not counted, seconds")
    parser.add_argument("--rate", type=float, default=4.0, help="arrivals per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drain", type=float, default=8.0, help="seconds after the last arrival to wait")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.warmup, args.rate, args.seed, args.drain))
