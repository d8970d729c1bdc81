"""Ollama's scheduler (server/sched.go): models loaded on demand within OLLAMA_MAX_LOADED_MODELS, each with
OLLAMA_NUM_PARALLEL slots, idle ones unloaded to make room, keep-alive timers, and a bounded queue."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from .models import FakeModel, _find, _Name, _name_error, _NameErrors
from .wire import _HELD, DEFAULT_KEEP_ALIVE_S, _ApiError, _local_now

_SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"  # ErrMaxQueue, 2 spaces


# Architectures Ollama 0.12.10 loads with one slot whatever OLLAMA_NUM_PARALLEL says (an encoder cache).
_SERIAL_FAMILIES = frozenset({"mllama", "qwen3vl", "qwen3vlmoe"})


@dataclass
class _Runner:
    """The requests using one loaded model: all of them keep it loaded; `running` ones hold its slots."""

    users: int = 0
    running: int = 0
    queue: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


class Scheduling:
    """The scheduler's part of FakeOllama: its state is set up by FakeOllama.__init__."""

    def _lookup(self, raw: str, errors: _NameErrors) -> FakeModel:
        """Find a local model by name, raising the endpoint's own wording when that fails."""
        if not raw.strip():
            raise _name_error(errors.empty, raw)
        try:
            name = _Name.parse(raw)
        except ValueError:
            raise _name_error(errors.invalid, raw) from None
        model = _find(self.models.values(), name)
        if model is None:
            raise _name_error(errors.missing, raw, name.short)
        return model

    def _require_known(self, raw: str) -> FakeModel:
        """Find a local model for a constructor argument."""
        model = _find(self.models.values(), _Name.parse(raw))
        if model is None:
            raise ValueError(f"loaded model {raw!r} is not among the fake's models")
        return model

    def _install(self, model: FakeModel) -> None:
        """Add a model, replacing any model with the same name."""
        self._forget(self.models, model.ref)
        self.models[model.name] = model

    def _loaded_now(self) -> dict[str, datetime]:
        """Drop idle loaded models whose keep-alive ran out, as Ollama's scheduler does; return the rest."""
        now = datetime.now(UTC)
        # A model in use never expires: Ollama starts its keep-alive timer once it goes idle.
        expired = [
            name for name, expires in self.loaded.items() if expires <= now and name not in self._runners
        ]
        for name in expired:
            del self.loaded[name]
        return self.loaded

    def _is_loaded(self, model: FakeModel) -> bool:
        """Tell whether the model is loaded now."""
        return any(_Name.parse(name).key == model.ref.key for name in self._loaded_now())

    def _touch(self, model: FakeModel, keep_alive: float | None) -> None:
        """Keep the model loaded for `keep_alive` seconds from now (the default when None; 0 unloads)."""
        self._forget(self.loaded, model.ref)
        if keep_alive != 0:
            seconds = DEFAULT_KEEP_ALIVE_S if keep_alive is None else keep_alive
            self.loaded[model.name] = _local_now() + timedelta(seconds=seconds)

    @staticmethod
    def _forget(entries: dict[str, Any], name: _Name) -> None:
        """Remove every entry filed under the same model name."""
        for key in [key for key in entries if _Name.parse(key).key == name.key]:
            del entries[key]

    def _unload(self, model: FakeModel) -> None:
        """Unload the model at once, making room for a load that waits for some."""
        self._forget(self.loaded, model.ref)
        self._freed.set()

    def _resident(self, model: FakeModel) -> bool:
        """Tell whether the model is loaded or loading."""
        return model.name in self._loading or self._is_loaded(model)

    def _full(self) -> bool:
        """Tell whether max_loaded_models are loaded or loading."""
        if not self.max_loaded_models:
            return False
        return len(self._loaded_now()) + len(self._loading) >= self.max_loaded_models

    def _parallel(self, model: FakeModel) -> int | None:
        """Return how many requests the model runs at once, None for no limit."""
        if self.num_parallel is None:
            return None
        if "completion" not in model.capabilities or model.family in _SERIAL_FAMILIES:
            return 1  # Ollama gives embedding-only models one slot, like _SERIAL_FAMILIES
        return max(self.num_parallel, 1)

    async def _load(self, request: web.Request, model: FakeModel, keep_alive: float | None) -> int:
        """Get the model loaded for the request, which uses it till it ends; return when ready, in perf ns."""
        if not self._resident(model):
            await self._make_room(model)
        runner = self._runners.setdefault(model.name, _Runner())
        runner.users += 1
        request[_HELD].callback(self._leave, model.name, runner)
        if not self._is_loaded(model):
            task = self._loading.get(model.name)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._become_loaded(model))
                self._loading[model.name] = task
            self._waiting += 1
            try:
                # A client that leaves does not abort the load, like Ollama's scheduler.
                await asyncio.shield(task)
            finally:
                self._waiting -= 1
        loaded_ns = time.perf_counter_ns()
        self._touch(model, keep_alive or None)  # keep_alive 0 unloads only once the request is done
        return loaded_ns

    async def _make_room(self, model: FakeModel) -> None:
        """Queue for a load like Ollama's pending requests, unloading the least recently used idle model."""
        # Ollama's pending channel holds max_queue requests behind the one its scheduler has in hand.
        if self._pending > self.max_queue:
            raise _ApiError(503, _SERVER_BUSY)
        self._pending += 1
        self._waiting += 1
        try:
            async with self._scheduling:
                while not self._resident(model) and self._full():
                    # _touch re-files a model on each use, so `loaded` runs from least recently used.
                    idle = next((name for name in self._loaded_now() if name not in self._runners), None)
                    if idle is not None:
                        del self.loaded[idle]
                        continue
                    self._freed.clear()
                    await self._freed.wait()
        finally:
            self._pending -= 1
            self._waiting -= 1

    async def _become_loaded(self, model: FakeModel) -> None:
        """Spend load_delay_s, then mark the model loaded."""
        try:
            await asyncio.sleep(self.load_delay_s)
            self._touch(model, None)
        finally:
            self._loading.pop(model.name, None)
            self._freed.set()  # a model loaded for clients that left is idle: a queued load may evict it

    def _leave(self, name: str, runner: _Runner) -> None:
        """Stop using a model; once idle it may be unloaded to make room for another."""
        runner.users -= 1
        if not runner.users:
            del self._runners[name]
            self._freed.set()

    async def _take_slot(self, request: web.Request, model: FakeModel) -> int:
        """Wait FIFO for a slot of the model, held till the request ends; return when taken, in perf ns."""
        runner = self._runners[model.name]
        limit = self._parallel(model)
        if limit is None or (runner.running < limit and not runner.queue):
            runner.running += 1
        else:
            turn = asyncio.get_running_loop().create_future()
            runner.queue.append(turn)
            self._waiting += 1
            try:
                await turn  # a finishing request hands its slot straight over, so none jumps the queue
            except asyncio.CancelledError:
                if not turn.cancelled():
                    self._release(runner)  # the slot came as the client left: pass it on
                elif turn in runner.queue:
                    runner.queue.remove(turn)
                raise
            finally:
                self._waiting -= 1
        request[_HELD].callback(self._release, runner)
        return time.perf_counter_ns()

    def _release(self, runner: _Runner) -> None:
        """Hand a freed slot to the oldest request still waiting, or give it back."""
        while runner.queue:
            turn = runner.queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        runner.running -= 1
