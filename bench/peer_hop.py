"""Print what a hop to a peer costs over a private pool's mutual TLS against the open pool's plain HTTP,
in one run.

    python -m bench.peer_hop [--requests 500]

Two pairs of node processes on this machine: in each, a node with no model of its own sends every
request to its peer, whose backend (a fake Ollama process, unpaced) has the model. One pair is in the
LAN's open pool (plain HTTP between them), the other in a private pool (mutual TLS, connections kept
alive). Requests go to either pair alternately, so drift in the machine's load affects both alike, and are
spaced under the share API's rate limit (about 45 s for 500); the figures are the time a client waits
for a small generation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp

from inferhub_desktop.core import CONTROL_HEADER, PEERS_PATH, read_control_token
from tests.support import private_pool, start_fake_ollama_process, start_node_process, stop_process

# Each pair's requests are spaced so, with the status polls, they stay under the share API's rate limit.
_GAP_S = 1 / 12
LOOPBACK = ("--interface", "127.0.0.1", "--share-port", "0")
SMALL = {"model": "llama3", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def small_request(session: aiohttp.ClientSession, url: str, answerer: str) -> float:
    start = time.perf_counter()
    async with session.post(url + "/api/generate", json=SMALL) as reply:
        await reply.read()
        assert (reply.status, reply.headers.get("X-InferHub-Node")) == (200, answerer), reply.status
    return time.perf_counter() - start


async def wait_for_peer(session: aiohttp.ClientSession, url: str, config_dir: Path, name: str) -> None:
    headers = {CONTROL_HEADER: read_control_token(config_dir)}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with session.get(url + PEERS_PATH, headers=headers) as reply:
            if name in {peer["name"] for peer in json.loads(await reply.read())}:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} never saw {name}")


async def measure(users: dict[str, tuple[str, Path, str]], requests: int) -> None:
    async with aiohttp.ClientSession() as session:
        for url, config_dir, server in users.values():
            await wait_for_peer(session, url, config_dir, server)
        for _ in range(20):  # warm both paths' connections
            for url, _, server in users.values():
                await small_request(session, url, server)
            await asyncio.sleep(_GAP_S)
        times: dict[str, list[float]] = {label: [] for label in users}
        pairs = list(users.items())
        for n in range(requests):
            started = time.monotonic()
            # Which pair goes first alternates: the first request after a pause pays for waking up.
            for label, (url, _, server) in pairs if n % 2 else reversed(pairs):
                times[label].append(await small_request(session, url, server))
            # Under the share API's limit of 20 requests a second from one address.
            await asyncio.sleep(max(0.0, _GAP_S - (time.monotonic() - started)))

    plain, mtls = times["plain HTTP"], times["mutual TLS"]
    head = f"(milliseconds, n={requests})"
    print(f"{head:<28}{'plain HTTP':>12}{'mutual TLS':>12}{'added':>10}{'ratio':>9}")
    for p in (50, 90, 99):
        a, b = percentile(plain, p) * 1e3, percentile(mtls, p) * 1e3
        print(f"{f'generate through a peer p{p}':<28}{a:>12.3f}{b:>12.3f}{b - a:>+10.3f}{b / a:>8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    fake, backend = start_fake_ollama_process(
        "--model", "llama3:latest", "--loaded", "llama3:latest", "--tps", "0"
    )
    empty, no_models = start_fake_ollama_process("--tps", "0")
    nodes = []
    try:
        with tempfile.TemporaryDirectory() as work:
            root = Path(work)
            private_pool(root / "tls-server", root / "tls-user")
            users = {}
            for label, prefix in (("plain HTTP", "open"), ("mutual TLS", "tls")):
                name = f"{prefix}-server"
                server, _ = start_node_process(root / name, backend, "--share", "--name", name, *LOOPBACK)
                user, user_url = start_node_process(
                    root / f"{prefix}-user", no_models, "--name", f"{prefix}-user", *LOOPBACK
                )
                nodes += [server, user]
                users[label] = (user_url, root / f"{prefix}-user", f"{prefix}-server")
            asyncio.run(measure(users, args.requests))
    finally:
        for proc in (*nodes, fake, empty):
            stop_process(proc)


if __name__ == "__main__":
    main()
