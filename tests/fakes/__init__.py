"""Faithful fakes of the servers InferHub talks to, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class _Server(AbstractAsyncContextManager["_Server"], Protocol):
    url: str


async def serve_until_stopped(fake: _Server) -> int:
    """Run a fake as its own process: print `LISTENING URL` once it listens (the line tests.support
    waits for), serve until SIGTERM or SIGINT, then close it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with fake:
        print(f"LISTENING {fake.url}", flush=True)
        await stop.wait()
    return 0
