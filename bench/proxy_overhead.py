"""Print what a node adds to requests: direct-to-backend against through-the-node, in one run.

    python -m bench.proxy_overhead [--requests 500] [--streams 200]

The fake Ollama and the node run as their own processes, as they would on a workstation; both
paths are measured alternately so drift in the machine's load affects them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.support import start_fake_ollama_process, start_node_process, stop_process

SMALL = {"model": "llama3", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
STREAM = {"model": "llama3", "prompt": "hi", "options": {"num_predict": 4}}
LONG_STREAM = {"model": "llama3", "prompt": "count", "options": {"num_predict": 400}}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def small_request(session: aiohttp.ClientSession, url: str) -> float:
    start = time.perf_counter()
    async with session.post(url + "/api/generate", json=SMALL) as reply:
        await reply.read()
        assert reply.status == 200, reply.status
    return time.perf_counter() - start


async def first_chunk(session: aiohttp.ClientSession, url: str) -> float:
    start = time.perf_counter()
    async with session.post(url + "/api/generate", json=STREAM) as reply:
        await reply.content.readline()
        elapsed = time.perf_counter() - start
        await reply.read()
    return elapsed


async def count_lines(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url + "/api/generate", json=LONG_STREAM) as reply:
        return sum([1 async for _ in reply.content])


async def measure(direct: str, node: str, requests: int, streams: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(50):  # warm both paths' connections
            await small_request(session, direct)
            await small_request(session, node)
        small: dict[str, list[float]] = {direct: [], node: []}
        for _ in range(requests):
            for url in (direct, node):
                small[url].append(await small_request(session, url))
        ttfc: dict[str, list[float]] = {direct: [], node: []}
        for _ in range(streams):
            for url in (direct, node):
                ttfc[url].append(await first_chunk(session, url))
        sent, received = await count_lines(session, direct), await count_lines(session, node)

    def row(label: str, values: dict[str, list[float]], p: float) -> None:
        d, n = percentile(values[direct], p) * 1e3, percentile(values[node], p) * 1e3
        print(f"{label:<34}{d:>10.3f}{n:>10.3f}{n - d:>+10.3f}{n / d:>8.2f}x")

    print(f"{'(milliseconds)':<34}{'direct':>10}{'node':>10}{'added':>10}{'ratio':>9}")
    row(f"small generate p50 (n={requests})", small, 50)
    row(f"small generate p99 (n={requests})", small, 99)
    row(f"stream first chunk p50 (n={streams})", ttfc, 50)
    row(f"stream first chunk p99 (n={streams})", ttfc, 99)
    print(f"stream chunks: sent {sent}, received through the node {received} ({received / sent:.2f}:1)")
    print(
        f"mean small generate: direct {statistics.fmean(small[direct]) * 1e3:.3f} ms, "
        f"node {statistics.fmean(small[node]) * 1e3:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    # Unpaced tokens (--tps 0): a paced fake sleeps between tokens, and asyncio's sleeps round up to the
    # millisecond of epoll, which would blur a figure of fractions of a millisecond.
    fake, direct = start_fake_ollama_process(
        "--model", "llama3:latest", "--loaded", "llama3:latest", "--tps", "0"
    )
    try:
        with tempfile.TemporaryDirectory() as config_dir:
            node, node_url = start_node_process(Path(config_dir), direct)
            try:
                asyncio.run(measure(direct, node_url, args.requests, args.streams))
            finally:
                stop_process(node)
    finally:
        stop_process(fake)


if __name__ == "__main__":
    main()
