"""Print what a pool of N peers costs one real node: CPU and bytes idle and under a steady request load,
how long a peer's change takes to reach it, and how long a crashed peer takes to leave it.

    python -m bench.scale [--peers 16 64 256] [--seconds 10]   (--seconds: the load's window)

One real node (its own process, with a fake Ollama) and N simulated peers served from this process, each
a share API on its own loopback port that answers the real peer protocol (its status, as a node sends
it, with 20 models and a GPU). The real node knows them by address, as `--peer HOST:PORT`, and treats
them as it treats any peer. This process counts every byte each simulated peer receives from the real
node and sends to it, which is the real node's traffic with its pool; the real node's CPU is read
from the OS. The simulated peers are cheap (a cached answer each), so the figures are the real node's.

Each N is measured three times in the run, against peers that speak each way nodes have told their
status: whole at every poll (before statuses had tags), 304 Not Modified to a poll when it has not
changed (tagged), and a stream of its changes with a heartbeat, which the real node follows instead of
polling (streamed: the peers run the node's own StatusFeed). Ratios are against "whole".

  idle           the real node with nothing to do but keep up with its pool, over one tag period
                 (TAG_MAX_AGE_S): every peer tells what moves slowly once in it, as on a LAN, where
                 machines' clocks do not strike together
  load           the same while its own tools send 10 small generations a second (to its own backend)
  in, out        bytes a second the real node received from its peers and sent them: the peers follow
                 it as it follows them, each from its own loopback address
  change seen    a peer starts offering a model no one had: until the real node would route to it
  crash noticed  a peer's process dies (its connections reset, its port closes): until the real node
                 no longer counts it
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

from bench.decision import peer_status
from inferhub_desktop.core import CONTROL_HEADER, ROUTE_PATH, STATUS_PATH, NodeStatus, read_control_token
from inferhub_desktop.core.api.feed import FEED_TYPE, StatusFeed
from inferhub_desktop.core.status import TAG_MAX_AGE_S
from tests.support import start_fake_ollama_process, start_node_process, stop_process

_LOCAL_MODEL = "llama3:latest"
_NEW_MODEL = "fresh:latest"
_MODES = ("whole", "tagged", "streamed")


@dataclasses.dataclass
class Tally:
    """Bytes the simulated peers received from the real node, and sent to it."""

    inbound: int = 0
    outbound: int = 0


class _Counted(asyncio.Protocol):
    """An aiohttp connection whose bytes are counted both ways."""

    def __init__(self, inner: asyncio.Protocol, tally: Tally, transports: set[asyncio.Transport]) -> None:
        self._inner = inner
        self._tally = tally
        self._transports = transports

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transports.add(transport)
        tally, write = self._tally, transport.write

        def counted_write(data: bytes | bytearray | memoryview) -> None:
            tally.outbound += len(data)
            write(data)

        def counted_writelines(chunks: Any) -> None:
            for chunk in chunks:
                counted_write(chunk)

        transport.write = counted_write  # type: ignore[method-assign]
        transport.writelines = counted_writelines  # type: ignore[method-assign]
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._tally.inbound += len(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class Peer:
    """One simulated peer: a share API answering its status."""

    def __init__(self, index: int, tally: Tally, *, mode: str) -> None:
        self.index = index
        # "whole", "tagged" (304 to a node that has its status already) or "streamed" (as nodes do now).
        self._tags = mode != "whole"
        self._feed = StatusFeed(lambda: self._parsed) if mode == "streamed" else None
        self.status = peer_status(index, models=20, processes=0)
        self.status["name"] = f"sim-{index:03d}"
        self._tally = tally
        self._publish()
        self._transports: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(STATUS_PATH, self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        factory = self._runner.server
        assert factory is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Counted(factory(), self._tally, self._transports), "127.0.0.1", 0
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def change(self, mutate: Callable[[dict[str, Any]], None]) -> None:
        mutate(self.status)
        self._publish()

    def read_machine(self, now: float, rng: random.Random) -> None:
        """Take a new reading of the machine, as a node does every second: what moves slowly moves."""
        telemetry = self.status["telemetry"]
        telemetry["taken_at"] = now
        telemetry["system"]["cpu_pct"] = round(rng.uniform(2.0, 8.0), 1)
        for gpu in telemetry["gpus"]:
            gpu["temperature_c"] = rng.randint(58, 62)
        self._publish()

    def _publish(self) -> None:
        self._body = json.dumps(self.status).encode()
        self._parsed = NodeStatus.from_json(self.status)
        self._tag, self._tag_epoch = "", -1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        # As a node's share API answers: a stream of its changes to a node that follows it, else whole, or
        # 304 to a node that has this status already.
        if self._feed is not None and FEED_TYPE in request.headers.get("Accept", ""):
            return await self._feed.reply(request, lambda: True)
        now = time.monotonic()
        if (epoch := int(now // TAG_MAX_AGE_S)) != self._tag_epoch:
            self._tag, self._tag_epoch = f'"{self._parsed.tag(now)}"', epoch
        if self._tags and request.headers.get("If-None-Match") == self._tag:
            return web.Response(status=304, headers={"ETag": self._tag})
        headers = {"ETag": self._tag} if self._tags else {}
        return web.Response(body=self._body, content_type="application/json", headers=headers)

    def crash(self) -> None:
        """Die as a killed process does: the port closes and every connection is reset."""
        if self._feed is not None:
            self._feed.end()
            self._feed = None
        if self._server is not None:
            self._server.close()
        for transport in self._transports:
            transport.abort()

    async def close(self) -> None:
        self.crash()
        if self._runner is not None:
            await self._runner.cleanup()


async def route(session: aiohttp.ClientSession, api: str, token: str, model: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"model": model})
    async with session.get(f"{api}{ROUTE_PATH}?{query}", headers={CONTROL_HEADER: token}) as reply:
        decision: dict[str, Any] = await reply.json()
        return decision


async def until(check: Callable[[], Any], timeout_s: float = 30.0) -> float:
    """Return the seconds until `await check()` is true, checking every 20 ms."""
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"not within {timeout_s:g} s")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def measure(n: int, seconds: float, backend: str, *, mode: str) -> dict[str, float]:
    tally = Tally()
    peers = [Peer(i, tally, mode=mode) for i in range(n)]
    for peer in peers:
        await peer.start()
    node = None
    with tempfile.TemporaryDirectory() as config_dir:
        try:
            addresses = [arg for peer in peers for arg in ("--peer", f"127.0.0.1:{peer.port}")]
            node, api = start_node_process(
                Path(config_dir), backend, "--interface", "127.0.0.1", "--share-port", "0", *addresses
            )
            token = read_control_token(Path(config_dir))
            process = psutil.Process(node.pid)
            async with aiohttp.ClientSession() as session:

                async def everyone() -> bool:
                    decision = await route(session, api, token, "model0:latest")
                    return len(decision["ranked"]) == n

                joined_s = await until(everyone, 120.0)
                async with session.get(api + STATUS_PATH, headers={CONTROL_HEADER: token}) as reply:
                    share_port = (await reply.json())["share_port"]
                # Each peer follows the real node as the real node follows it, and reads its machine.
                following = [asyncio.create_task(follow(i, share_port, tally, mode)) for i in range(n)]
                following.append(asyncio.create_task(read_machines(peers)))
                await asyncio.sleep(2.0)  # settle
                figures = {"joined_s": joined_s}
                for label, load in (("idle", False), ("load", True)):
                    cpu, before = process.cpu_times(), dataclasses.replace(tally)
                    started = time.perf_counter()
                    if load:
                        await steady_load(session, api, seconds)
                    else:
                        await asyncio.sleep(TAG_MAX_AGE_S)
                    elapsed = time.perf_counter() - started
                    used = process.cpu_times()
                    figures[f"{label}_cpu_pct"] = (
                        100 * (used.user + used.system - cpu.user - cpu.system) / elapsed
                    )
                    figures[f"{label}_in_kbs"] = (tally.outbound - before.outbound) / elapsed / 1024
                    figures[f"{label}_out_kbs"] = (tally.inbound - before.inbound) / elapsed / 1024

                changed = peers[0]

                def offer(status: dict[str, Any]) -> None:
                    fresh = {"name": _NEW_MODEL, "size": 1 << 30, "digest": "cd" * 32}
                    status["backend"]["installed"].append(fresh)
                    status["models_hash"] = "fedcba987654"

                changed.change(offer)

                async def routed() -> bool:
                    return bool((await route(session, api, token, _NEW_MODEL))["ranked"])

                figures["change_s"] = await until(routed)
                crashed = peers[-1]
                crashed.crash()
                following[n - 1].cancel()

                async def gone() -> bool:
                    decision = await route(session, api, token, "model0:latest")
                    named = [r["node"] for r in decision["ranked"]] + [
                        x["node"] for x in decision["left_out"]
                    ]
                    return crashed.status["name"] not in named

                figures["crash_s"] = await until(gone)
                for task in following:
                    task.cancel()
                await asyncio.gather(*following, return_exceptions=True)
                return figures
        finally:
            if node is not None:
                stop_process(node)
            for peer in peers:
                await peer.close()


async def read_machines(peers: list[Peer]) -> None:
    rng = random.Random(1)
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        for peer in peers:
            peer.read_machine(now, rng)


async def follow(index: int, port: int, tally: Tally, mode: str) -> None:
    """Follow the real node's status as peer `index` would, from its own loopback address (the node
    limits each source): by its stream, or by a poll a second; count the bytes both ways."""
    source = f"127.0.{1 + index // 250}.{1 + index % 250}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))

    def send(headers: str) -> None:
        data = f"GET {STATUS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n".encode()
        tally.outbound += len(data)
        writer.write(data)

    try:
        if mode == "streamed":
            send(f"Accept: {FEED_TYPE}\r\n")
            while data := await reader.read(65536):
                tally.inbound += len(data)
            return
        tag = ""
        while True:
            send(f"If-None-Match: {tag}\r\n" if tag and mode == "tagged" else "")
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(
                line.split(": ", 1)
                for line in head.decode("latin-1").lower().split("\r\n")[1:]
                if ": " in line
            )
            body = await reader.readexactly(int(fields.get("content-length", "0")))
            tally.inbound += len(head) + len(body)
            tag = fields.get("etag", "")
            await asyncio.sleep(1.0)
    finally:
        writer.close()


async def steady_load(session: aiohttp.ClientSession, api: str, seconds: float) -> None:
    """Send 10 small generations a second, for `seconds`."""
    body = {"model": _LOCAL_MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    sent = []

    async def one() -> None:
        async with session.post(api + "/api/generate", json=body) as reply:
            await reply.read()
            assert reply.status == 200, reply.status

    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        sent.append(asyncio.create_task(one()))
        await asyncio.sleep(0.1)
    await asyncio.gather(*sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--modes", nargs="+", choices=_MODES, default=list(_MODES))
    args = parser.parse_args()
    fake, backend = start_fake_ollama_process("--model", _LOCAL_MODEL, "--loaded", _LOCAL_MODEL, "--tps", "0")
    try:
        rows = [
            (n, mode, asyncio.run(measure(n, args.seconds, backend, mode=mode)))
            for n in args.peers
            for mode in args.modes
        ]
    finally:
        stop_process(fake)
    print(
        f"{'peers':>5}  {'statuses':<9}{'idle CPU %':>11}{'in KB/s':>9}{'out KB/s':>9}"
        f"{'load CPU %':>11}{'in KB/s':>9}{'change s':>9}{'crash s':>8}"
    )
    whole: dict[int, dict[str, float]] = {}
    for n, mode, f in rows:
        print(
            f"{n:>5}  {mode:<9}{f['idle_cpu_pct']:>11.2f}{f['idle_in_kbs']:>9.1f}"
            f"{f['idle_out_kbs']:>9.1f}{f['load_cpu_pct']:>11.2f}{f['load_in_kbs']:>9.1f}"
            f"{f['change_s']:>9.2f}{f['crash_s']:>8.2f}"
        )
        if mode == "whole":
            whole[n] = f
        elif n in whole:
            ratios = {key: f[key] / whole[n][key] for key in f if whole[n][key]}
            print(
                f"{'':>5}  {'ratio':<9}{ratios['idle_cpu_pct']:>10.2f}x{ratios['idle_in_kbs']:>8.3f}x"
                f"{ratios['idle_out_kbs']:>8.2f}x{ratios['load_cpu_pct']:>10.2f}x{ratios['load_in_kbs']:>8.3f}x"
            )
    print(
        "CPU in % of one core; in: what the real node received from its peers, out: what it sent them. "
        "whole: peers that send their whole status at every poll; tagged: peers that answer 304 when it "
        "has not changed; streamed: peers the node follows, which tell changes and a heartbeat, as nodes do"
    )


if __name__ == "__main__":
    main()
