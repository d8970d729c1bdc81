"""The owner first: sharing pauses while the owner's machine does the owner's work, and peers' requests
leave when it does.

What pauses sharing, in the settings' words: another program using the GPU (NVML's compute and graphics
process lists: a process other than the model server holding `pause_gpu_mib` of GPU memory, or doing
CUDA work the driver cannot measure; or the GPU `pause_gpu_percent` busy while the model server is
idle), the owner at the keyboard when sharing is only for while they are away, and quiet hours. Sharing
resumes at once when the owner leaves or quiet hours end, and `resume_after_s` after other GPU work ends.

When sharing pauses (or the owner turns it off), no new peer's request starts and those waiting are
refused (their nodes send them elsewhere); those running get `grace_s` to finish and are then cut with
an error that says why; then the models loaded only for peers are unloaded, so the VRAM comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Callable, Collection, Iterable

import psutil

from .api.admission import Admission
from .backends.base import Backend, BackendState
from .events import Events, SharingPaused
from .idle import Away
from .names import model_key, short_name
from .schedule import quiet_now
from .settings import Settings
from .telemetry import GpuProcess, Telemetry
from .wire.errors import BackendUnavailable

_log = logging.getLogger(__name__)

# Programs that serve models: their processes (and their children, such as Ollama's runners) on the GPU
# are the model server's work, not the owner's.
_SERVER_NAMES = frozenset(
    {
        "ollama",
        "ollama app",
        "ollama_llama_server",
        "llama-server",
        "llama_server",
        "llama-box",
        "lm studio",
        "lmdeploy",
        "lms",
        "koboldcpp",
        "text-generation-launcher",
        "text-generation-router",
        "text-generation-server",
        "vllm",
        "sglang",
        "tabbyapi",
    }
)
# Model servers that run as Python modules (`python -m MODULE`).
_SERVER_MODULES = ("llama_cpp.server", "vllm", "sglang", "text_generation_server", "lmdeploy")
# GPU busy for this many readings in a row (a second apart) counts: one busy reading may be the tail of
# a request the model server just finished.
_BUSY_READINGS = 2
# The GPU's load counts as other work only once the model server has been idle this long.
_IDLE_BEFORE_LOAD_S = 2.0
# An unload request is a short call to the model server.
_UNLOAD_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Cause:
    """What stops sharing now, in words for the owner; `lingers` when sharing waits `resume_after_s`
    after it ends (other GPU work), rather than resuming at once (quiet hours, the owner away)."""

    reason: str
    lingers: bool
    # The GPU's load alone, with no program to name: it counts once seen on a few readings in a row.
    load_only: bool = False
    # What it is, apart from the figures in its words (a program's memory, the GPU's load), which move
    # at every reading: a new kind is news, new figures are not.
    kind: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class Pause:
    """Sharing paused: why, since when (monotonic seconds), and in how long it resumes once the cause has
    ended (None while the cause lasts)."""

    reason: str
    since: float
    resumes_in_s: float | None = None
    kind: str = ""


def is_model_server(process: GpuProcess) -> bool:
    """Whether a process on the GPU is a model server's (or this node's own): by its name or a parent's,
    or by the program or Python module its command line runs; a process that cannot be seen is not
    taken for one."""
    if process.pid == os.getpid():
        return True
    try:
        proc = psutil.Process(process.pid)
        if any(_bare(p.name()) in _SERVER_NAMES for p in [proc, *proc.parents()]):
            return True
        argv = proc.cmdline()
    except psutil.Error:
        return False
    programs = [_bare(os.path.basename(arg)) for arg in argv[:1]]
    modules = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-m"]
    return any(p in _SERVER_NAMES for p in programs) or any(
        module == marker or module.startswith(marker + ".")
        for module in modules
        for marker in _SERVER_MODULES
    )


def other_work(settings: Settings, processes: Iterable[GpuProcess]) -> GpuProcess | None:
    """Return the biggest process doing the owner's work on the GPU, or None. Small graphics users (the
    desktop's compositor, a browser) do not count; a CUDA process the driver cannot measure does."""
    heavy = [
        p
        for p in processes
        if (p.used_mib is not None and p.used_mib >= settings.pause_gpu_mib)
        or (p.used_mib is None and p.compute)
    ]
    return max(heavy, key=lambda p: p.used_mib or 0, default=None)


def cause_now(
    settings: Settings,
    *,
    foreign: Iterable[GpuProcess],
    gpu_busy_pct: int | None,
    away: Away,
    moment: datetime.datetime,
) -> Cause | None:
    """Say what stops this machine sharing now, or None; pure. `foreign` are the GPU processes that are
    not the model server's, `gpu_busy_pct` the GPU's load while the model server is idle (None while it
    is busy, or where it is not measured), `moment` the local time."""
    if window := quiet_now(settings.quiet_hours, moment):
        return Cause(f"quiet hours ({window})", lingers=False, kind=f"quiet {window}")
    if settings.share_when_away_min:
        if away.seconds is None:
            return Cause("this machine cannot tell whether you are away", lingers=False, kind="away")
        if away.seconds < settings.share_when_away_min * 60:
            return Cause("you are using this machine", lingers=False, kind="away")
    if settings.pause_on_gpu_use:
        if program := other_work(settings, foreign):
            who = program.name or f"a program (pid {program.pid})"
            used = f" ({program.used_mib / 1024:.1f} GiB)" if program.used_mib is not None else ""
            return Cause(f"{who} is using the GPU{used}", lingers=True, kind=f"program {program.pid}")
        if (
            settings.pause_gpu_percent
            and gpu_busy_pct is not None
            and gpu_busy_pct >= settings.pause_gpu_percent
        ):
            return Cause(
                f"the GPU is {gpu_busy_pct}% busy with other work", lingers=True, load_only=True, kind="load"
            )
    return None


class PauseClock:
    """Turn the cause seen at each reading into the pause: it begins with a cause and, for a lingering
    one, ends `resume_after_s` after the cause was last seen; pure, time is a parameter."""

    def __init__(self) -> None:
        self._pause: Pause | None = None
        self._last: Cause | None = None
        self._last_at = 0.0
        self._load_streak = 0

    def update(self, cause: Cause | None, resume_after_s: float, now: float) -> Pause | None:
        """Take the cause seen at one reading; return the pause now, or None."""
        self._load_streak = self._load_streak + 1 if cause is not None and cause.load_only else 0
        if (
            cause is not None
            and cause.load_only
            and self._pause is None
            and self._load_streak < _BUSY_READINGS
        ):
            cause = None
        if cause is not None:
            since = self._pause.since if self._pause is not None else now
            self._pause, self._last, self._last_at = Pause(cause.reason, since, kind=cause.kind), cause, now
        elif self._pause is not None:
            left = resume_after_s - (now - self._last_at) if self._last and self._last.lingers else 0.0
            self._pause = dataclasses.replace(self._pause, resumes_in_s=left) if left > 0 else None
        return self._pause


class OwnerGuard:
    """Watch for the owner's use of this machine; pause sharing and drain peers' requests when it comes."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        admission: Admission,
        *,
        backend: Callable[[], Backend],
        backend_state: Callable[[], BackendState],
        peers_only_models: Callable[[], Collection[str]],
        events: Events,
        probe: Callable[[], None],
        changed: Callable[[], None],
    ) -> None:
        """`peers_only_models` are the model keys loaded for peers alone; `probe` asks for the
        backend to be probed (its models were unloaded); `changed` is told when sharing pauses or
        resumes."""
        self._settings = settings
        self._admission = admission
        self._backend = backend
        self._backend_state = backend_state
        self._peers_only_models = peers_only_models
        self._events = events
        self._probe = probe
        self._changed = changed
        self._clock = PauseClock()
        self.pause: Pause | None = None
        self._drain: asyncio.Task[None] | None = None
        # Whether each process on the GPU is a model server's, by pid.
        self._servers: dict[int, bool] = {}

    @property
    def sharing(self) -> bool:
        """Whether peers' requests are taken now: the owner's switch is on and nothing paused it."""
        return self._settings().share and self.pause is None

    def refusal(self) -> str | None:
        """Say why peers' requests are refused now, or None while they are taken."""
        settings = self._settings()
        if not settings.share:
            return f"{settings.name} is not sharing its GPU right now; its owner can turn sharing on"
        if self.pause is not None:
            return f"{settings.name} has paused sharing: {self.pause.reason}"
        return None

    def watching(self, telemetry: Telemetry | None) -> str:
        """Say what this machine watches for its owner's work, and what it cannot see."""
        if telemetry is not None and telemetry.gpus:
            return "other programs on the GPU and its load (NVIDIA's NVML)"
        return (
            "nothing on the GPU: with no GPU readings here (no NVIDIA driver, or an Apple or AMD GPU) other "
            "programs using it cannot be seen; quiet hours and sharing only while you are away still apply"
        )

    def observe(self, telemetry: Telemetry | None, away: Away, now: float, moment: datetime.datetime) -> None:
        """Take one reading of the machine and pause or resume sharing by it."""
        settings = self._settings()
        foreign: list[GpuProcess] = []
        busy: int | None = None
        if telemetry is not None and settings.pause_on_gpu_use:
            processes = [p for gpu in telemetry.gpus for p in gpu.processes]
            # Each process is looked at once while it stays on the GPU, not at every reading.
            self._servers = {
                p.pid: self._servers[p.pid] if p.pid in self._servers else is_model_server(p)
                for p in processes
            }
            foreign = [p for p in processes if not self._servers[p.pid]]
            # NVML's load covers up to the last second: the model server's own work must be over by then.
            idle_since = self._admission.idle_since
            if idle_since is not None and now - idle_since >= _IDLE_BEFORE_LOAD_S:
                loads = [gpu.utilization_pct for gpu in telemetry.gpus if gpu.utilization_pct is not None]
                busy = max(loads, default=None)
        cause = cause_now(settings, foreign=foreign, gpu_busy_pct=busy, away=away, moment=moment)
        self._set(self._clock.update(cause, settings.resume_after_s, now))

    def switched(self) -> None:
        """Hear that the owner turned sharing on or off."""
        self._apply()

    def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()

    def _set(self, pause: Pause | None) -> None:
        before = self.pause
        self.pause = pause
        if (before.kind if before else None) != (pause.kind if pause else None):
            if pause is not None:
                _log.info("sharing paused: %s", pause.reason)
            elif before is not None:
                _log.info("sharing resumed: %s has ended", before.reason)
            self._events.emit(SharingPaused(pause.reason if pause else None))
            self._apply()
            self._changed()

    def _apply(self) -> None:
        """Take peers' requests while sharing; otherwise refuse them and drain those under way."""
        why = self.refusal()
        self._admission.refuse(why)
        if why is None:
            if self._drain is not None:
                self._drain.cancel()
                self._drain = None
            return
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._drain_peers(), name="drain-peers")
            self._drain.add_done_callback(_log_failure)

    async def _drain_peers(self) -> None:
        """Let peers' requests under way finish within the grace period, cut the rest, then unload the
        models only peers used."""
        settings = self._settings()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.grace_s):
                await self._admission.peers_done()
        why = self.pause.reason if self.pause else "sharing was turned off"
        if cut := self._admission.cut(
            f"{settings.name}'s owner needs the GPU back ({why}); this reply was cut after the "
            f"{settings.grace_s} s grace period. Ask again: another node of the pool will answer"
        ):
            _log.info(
                "cut %d peer request(s) still running after the %d s grace period", cut, settings.grace_s
            )
        await self._admission.peers_done()
        await self._unload_peers_models()

    async def _unload_peers_models(self) -> None:
        """Unload (keep_alive 0) the models peers' requests loaded that the owner has not used since (a
        model the owner then used on Ollama's own port, past the node, is still taken for theirs)."""
        backend, state = self._backend(), self._backend_state()
        theirs = set(self._peers_only_models())
        peers_only = [m.name for m in state.loaded if model_key(m.name) in theirs]
        if not peers_only:
            return
        if backend.kind != "ollama":
            _log.info(
                "cannot unload %s: a %s server has no call to unload a model",
                ", ".join(peers_only),
                backend.kind,
            )
            return
        for name in peers_only:
            body = json.dumps({"model": name, "keep_alive": 0}).encode()
            try:
                async with (
                    asyncio.timeout(_UNLOAD_TIMEOUT_S),
                    backend.request(
                        "POST", "/api/generate", {"Content-Type": "application/json"}, body
                    ) as reply,
                ):
                    await reply.read()
                _log.info("unloaded %s, which only peers used, to give its VRAM back", short_name(name))
            except (BackendUnavailable, TimeoutError) as exc:
                _log.warning("could not unload %s: %s", short_name(name), exc)
        self._probe()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log.error("draining peers' requests failed", exc_info=exc)


def _bare(name: str) -> str:
    return name.lower().removesuffix(".exe")
