"""Print what the pool does to a real model's speed, in one run: SmolLM2-135M on llama.cpp's OpenAI-compatible
server, asked directly, through a node's local API, and from a second node through the first one's share API.

    python -m bench.real_model [--rounds 12] [--tokens 64]

Each round streams the same greedy chat once on every path, in a shuffled order, so drift in the
machine's load falls on all three alike; ratios and added times are medians of each round's figures
against that round's direct run. Time to first token is from sending the request to the first piece of
text; tokens/s counts the pieces of text after the first over the time they took to arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from inferhub_desktop.core import CONTROL_HEADER, read_control_token
from tests.support import SMOLLM2, start_llama_server, start_node_process, stop_process

QUESTION = [{"role": "user", "content": "Tell me about the planets of the solar system."}]


@dataclass
class Run:
    first_token_s: float
    tokens: int
    tokens_per_s: float


def openai_text(line: bytes) -> str:
    data = line.strip().removeprefix(b"data:").strip()
    if not data or data == b"[DONE]":
        return ""
    choices = json.loads(data).get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


def ollama_text(line: bytes) -> str:
    return str(json.loads(line)["message"]["content"]) if line.strip() else ""


async def stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], text_of: Callable[[bytes], str]
) -> Run:
    started = time.perf_counter()
    arrivals = []
    async with session.post(url, json=body) as reply:
        assert reply.status == 200, await reply.text()
        async for line in reply.content:
            if text_of(line):
                arrivals.append(time.perf_counter())
    assert len(arrivals) > 2, f"{url} streamed {len(arrivals)} pieces of text"
    return Run(arrivals[0] - started, len(arrivals), (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]))


async def measure(llama: str, local: str, peer: str, rounds: int, tokens: int) -> None:
    direct_body = {
        "model": SMOLLM2,
        "messages": QUESTION,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": tokens,
        "seed": 1,
    }
    pool_body = {
        "model": SMOLLM2,
        "messages": QUESTION,
        "options": {"temperature": 0, "num_predict": tokens, "seed": 1},
    }
    paths = {
        "direct to llama.cpp": (f"{llama}/v1/chat/completions", direct_body, openai_text),
        "local API": (f"{local}/api/chat", pool_body, ollama_text),
        "peer's share API": (f"{peer}/api/chat", pool_body, ollama_text),
    }
    runs: dict[str, list[Run]] = {name: [] for name in paths}
    async with aiohttp.ClientSession() as session:
        for round_number in range(rounds + 2):
            order = list(paths)
            random.shuffle(order)
            for name in order:
                url, body, text_of = paths[name]
                run = await stream(session, url, body, text_of)
                if round_number >= 2:  # the first two rounds warm the caches and connections
                    runs[name].append(run)

    direct = runs["direct to llama.cpp"]
    print(f"SmolLM2-135M Q4_1, {rounds} rounds of a greedy chat of up to {tokens} tokens, medians:")
    print(f"{'path':<22}{'tokens':>8}{'tokens/s':>10}{'ratio':>8}{'first token':>14}{'added':>10}")
    for name, measured in runs.items():
        # Ratio and added time are taken round by round against that round's direct run, so a machine
        # whose speed drifts between rounds still compares like with like.
        ratio = statistics.median(
            r.tokens_per_s / d.tokens_per_s for r, d in zip(measured, direct, strict=True)
        )
        added = statistics.median(
            r.first_token_s - d.first_token_s for r, d in zip(measured, direct, strict=True)
        )
        print(
            f"{name:<22}{statistics.median(r.tokens for r in measured):>8.0f}"
            f"{statistics.median(r.tokens_per_s for r in measured):>10.1f}{ratio:>8.3f}"
            f"{statistics.median(r.first_token_s for r in measured) * 1000:>11.1f} ms{added * 1000:>+8.1f} ms"
        )


async def wait_for_route(local: str, token: str, peer_name: str) -> None:
    """Wait until the node sends smollm2 to the named peer."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(headers={CONTROL_HEADER: token}) as session:
        while time.monotonic() < deadline:
            async with session.get(f"{local}/_inferhub/v1/route", params={"model": SMOLLM2}) as reply:
                decision = await reply.json()
            ranked = decision.get("ranked") or [{}]
            if ranked[0].get("node") == peer_name:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the second node did not route {SMOLLM2} to {peer_name}: {decision}")


async def share_port(local: str, token: str) -> int:
    async with (
        aiohttp.ClientSession(headers={CONTROL_HEADER: token}) as session,
        session.get(f"{local}/_inferhub/v1/status") as reply,
    ):
        return int((await reply.json())["share_port"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    processes = []
    with tempfile.TemporaryDirectory() as work:
        try:
            server, llama = start_llama_server()
            processes.append(server)
            first, local = start_node_process(
                Path(work, "first"),
                f"openai:{llama}",
                "--name",
                "first",
                "--share",
                "--share-port",
                "0",
                "--interface",
                "127.0.0.1",
            )
            processes.append(first)
            port = asyncio.run(share_port(local, read_control_token(Path(work, "first"))))
            # The second node has no model server: it reaches the first by address, as over a VPN.
            second, peer = start_node_process(
                Path(work, "second"),
                "http://127.0.0.1:9",
                "--name",
                "second",
                "--share-port",
                "0",
                "--interface",
                "127.0.0.1",
                "--peer",
                f"127.0.0.1:{port}",
            )
            processes.append(second)
            asyncio.run(wait_for_route(peer, read_control_token(Path(work, "second")), "first"))
            asyncio.run(measure(llama, local, peer, args.rounds, args.tokens))
        finally:
            for process in reversed(processes):
                stop_process(process)


if __name__ == "__main__":
    main()
