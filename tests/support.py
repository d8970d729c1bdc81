"""Helpers for tests that run real servers: an event loop in a thread, and ready-made settings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from inferhub_desktop.core import Settings, load_settings

T = TypeVar("T")


def node_settings(config_dir: Path, backend: str, **overrides: Any) -> Settings:
    """Settings for a test node on a free loopback port, untouched by the test machine's environment."""
    values = {"api_port": 0, "backend": backend, "name": "test-node", **overrides}
    return load_settings(config_dir, values, environ={})


class LoopThread:
    """An event loop running in a thread, so synchronous clients can talk to servers it runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)

    def __enter__(self) -> LoopThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_rest())
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
