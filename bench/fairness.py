"""Print how a machine that floods a node's share API treats colleagues sending one request at a time:
their latency alone, with today's single queue and with one queue per machine, and the flood's throughput.

    python -m bench.fairness [--flood 40] [--long 100] [--short 25] [--think 0.5] [--tps 100]

One serving node (a process, sharing, 2 slots for peers) in front of a fake Ollama process that runs
2 requests at once at --tps tokens a second each. Three machines call its share API as peers do, each
from its own loopback address (127.0.0.2, .3, .4), which is who the open pool's node takes them for:
A sends --flood requests of --long tokens at once; B and C send one request of --short tokens at a
time, --think seconds apart, while A's flood lasts. Measured in one run:

  alone                B and C with no flood; A's flood with no one else
  one queue            A, B and C all from one address: the node sees one machine, and serves it first
                       come, first served, as a single queue does
  a queue per machine  each from its own address: the node's fair turns

"all tok/s" is what the node generated for the three together (for "alone", A's flood by itself): fair
turns move work from A to B and C, they do not lose any.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.support import start_fake_ollama_process, start_node_process, stop_process

MODEL = "llama3:latest"
A, B, C = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Machine:
    """A peer calling the share API from its own address."""

    def __init__(self, share: str, address: str) -> None:
        self._share = share
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=0),
            timeout=aiohttp.ClientTimeout(total=900),
        )

    async def generate(self, tokens: int) -> float:
        """Send one generation; return how long it took."""
        body = {"model": MODEL, "prompt": "hi", "stream": True, "options": {"num_predict": tokens}}
        started = time.perf_counter()
        async with self._session.post(self._share + "/api/generate", json=body) as reply:
            async for _ in reply.content:
                pass
            assert reply.status == 200, reply.status
        return time.perf_counter() - started

    async def close(self) -> None:
        await self._session.close()


async def one_at_a_time(machine: Machine, tokens: int, think_s: float, until: asyncio.Event) -> list[float]:
    """Send requests one after another until `until` is set; return their latencies."""
    latencies = []
    while not until.is_set():
        latencies.append(await machine.generate(tokens))
        await asyncio.sleep(think_s)
    return latencies


async def flood(machine: Machine, count: int, tokens: int) -> float:
    """Send `count` requests at once; return the requests answered per second."""
    started = time.perf_counter()
    await asyncio.gather(*(machine.generate(tokens) for _ in range(count)))
    return count / (time.perf_counter() - started)


async def run(
    machines: tuple[Machine, Machine, Machine], args: argparse.Namespace, *, with_flood: bool
) -> tuple[list[float], float, float]:
    """Run B and C one request at a time, with A's flood or for as long as one would take; return B's
    and C's latencies, A's throughput, and the tokens a second the node generated for all three."""
    a, b, c = machines
    done = asyncio.Event()
    started = time.perf_counter()
    colleagues = [asyncio.create_task(one_at_a_time(m, args.short, args.think, done)) for m in (b, c)]
    throughput = 0.0
    if with_flood:
        throughput = await flood(a, args.flood, args.long)
    else:
        await asyncio.sleep(args.flood * args.long / args.tps / 2)
    done.set()
    latencies = [x for task in colleagues for x in await task]
    tokens = len(latencies) * args.short + (args.flood * args.long if with_flood else 0)
    return latencies, throughput, tokens / (time.perf_counter() - started)


async def measure(share: str, args: argparse.Namespace) -> None:
    own = (Machine(share, A), Machine(share, B), Machine(share, C))
    # One queue: B and C send from A's address, on A's connections.
    shared = (own[0], own[0], own[0])
    try:
        await own[1].generate(1)  # the model is loaded and the connections are up
        alone, _, _ = await run(own, args, with_flood=False)
        a_alone = await flood(own[0], args.flood, args.long)
        single, a_single, all_single = await run(shared, args, with_flood=True)
        fair, a_fair, all_fair = await run(own, args, with_flood=True)
    finally:
        for machine in own:
            await machine.close()

    print(
        f"A: {args.flood} requests of {args.long} tokens at once; B, C: {args.short} tokens, one at a time, "
        f"{args.think:g} s apart; 2 slots at {args.tps:g} tokens/s each"
    )
    print(
        f"{'B and C latency (s)':<24}{'n':>5}{'p50':>8}{'p95':>8}{'p95/alone':>11}"
        f"{'A req/s':>9}{'A/alone':>9}{'all tok/s':>11}"
    )
    base = percentile(alone, 95)
    for label, latencies, throughput, tokens in (
        ("alone", alone, a_alone, args.flood * args.long * a_alone / args.flood),
        ("one queue", single, a_single, all_single),
        ("a queue per machine", fair, a_fair, all_fair),
    ):
        print(
            f"{label:<24}{len(latencies):>5}{statistics.median(latencies):>8.2f}"
            f"{percentile(latencies, 95):>8.2f}{percentile(latencies, 95) / base:>10.2f}x"
            f"{throughput:>9.2f}{throughput / a_alone:>8.2f}x{tokens:>11.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=40, help="requests A sends at once")
    parser.add_argument("--long", type=int, default=100, help="tokens of each of A's replies")
    parser.add_argument("--short", type=int, default=25, help="tokens of each of B's and C's replies")
    parser.add_argument("--think", type=float, default=0.5, help="seconds B and C wait between requests")
    parser.add_argument("--tps", type=float, default=100.0, help="tokens a second of each running request")
    args = parser.parse_args()
    fake, backend = start_fake_ollama_process(
        "--model", MODEL, "--loaded", MODEL, "--tps", str(args.tps), "--parallel", "2"
    )
    try:
        with tempfile.TemporaryDirectory() as config_dir:
            port = free_port()
            node, _ = start_node_process(
                Path(config_dir),
                backend,
                "--share",
                "--max-remote",
                "2",
                "--interface",
                "127.0.0.1",
                "--share-port",
                str(port),
            )
            try:
                asyncio.run(measure(f"http://127.0.0.1:{port}", args))
            finally:
                stop_process(node)
    finally:
        stop_process(fake)


if __name__ == "__main__":
    main()
