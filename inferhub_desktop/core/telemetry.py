"""GPU (NVML) and system (psutil) telemetry, sampled off the event loop with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

import psutil

from .wire.errors import MalformedRecord
from .wire.records import Fields

_log = logging.getLogger(__name__)

# NVML answers in milliseconds; a driver stuck on a lost GPU can block a call for minutes.
_SAMPLE_TIMEOUT_S = 2.0
# mDNS TXT values are short; the summary shares a 255-byte TXT string with its key.
_SUMMARY_MAX_BYTES = 60
_MIB = 1024 * 1024
# NVML_VALUE_NOT_AVAILABLE as an unsigned long long: per-process memory NVML could not measure (WDDM).
_NOT_AVAILABLE_ULL = 2**64 - 1
_NAME_PREFIXES = ("NVIDIA ", "GeForce ")
# Bounds on what a peer's status may say of its machine.
_MAX_GPUS = 64
_MAX_PROCESSES = 1024
_MAX_MIB = 1 << 36

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU; `name` is empty when the pid is not visible to us, `used_mib`
    None where the driver cannot measure it (Windows' WDDM), and `compute` set for a process in NVML's
    compute list (CUDA work) rather than only its graphics one."""

    pid: int
    name: str
    used_mib: int | None
    compute: bool = False

    @classmethod
    def from_json(cls, fields: Fields) -> GpuProcess:
        return cls(
            pid=fields.integer("pid", 0, 1 << 32),
            name=fields.text("name", 256, default=""),
            used_mib=fields.optional_integer("used_mib", 0, _MAX_MIB),
            compute=fields.flag("compute", default=False),
        )


@dataclasses.dataclass(frozen=True)
class GpuReading:
    """One NVIDIA GPU as NVML saw it; a field is None where the GPU does not report it."""

    index: int
    uuid: str
    name: str
    total_mib: int
    used_mib: int
    free_mib: int
    utilization_pct: int | None
    temperature_c: int | None
    processes: tuple[GpuProcess, ...]

    @classmethod
    def from_json(cls, fields: Fields) -> GpuReading:
        reading = cls(
            index=fields.integer("index", 0, _MAX_GPUS * 16),
            uuid=fields.text("uuid", 128, default=""),
            name=fields.text("name", 128),
            total_mib=fields.integer("total_mib", 0, _MAX_MIB),
            used_mib=fields.integer("used_mib", 0, _MAX_MIB),
            free_mib=fields.integer("free_mib", 0, _MAX_MIB),
            utilization_pct=fields.optional_integer("utilization_pct", 0, 100),
            temperature_c=fields.optional_integer("temperature_c", -100, 300),
            processes=tuple(GpuProcess.from_json(p) for p in fields.records("processes", _MAX_PROCESSES)),
        )
        if max(reading.used_mib, reading.free_mib) > reading.total_mib:
            raise MalformedRecord(f"{fields.where} has more free or used memory than total")
        return reading


@dataclasses.dataclass(frozen=True)
class SystemReading:
    """CPU and RAM; `ram_free_mib` is what is available to new processes, caches included."""

    cpu_pct: float
    cpu_count: int
    ram_total_mib: int
    ram_used_mib: int
    ram_free_mib: int
    unified_memory: bool

    @classmethod
    def from_json(cls, fields: Fields) -> SystemReading:
        reading = cls(
            cpu_pct=fields.number("cpu_pct", 0.0, 100.0),
            cpu_count=fields.integer("cpu_count", 1, 1 << 20),
            ram_total_mib=fields.integer("ram_total_mib", 0, _MAX_MIB),
            ram_used_mib=fields.integer("ram_used_mib", 0, _MAX_MIB),
            ram_free_mib=fields.integer("ram_free_mib", 0, _MAX_MIB),
            unified_memory=fields.flag("unified_memory"),
        )
        if max(reading.ram_used_mib, reading.ram_free_mib) > reading.ram_total_mib:
            raise MalformedRecord(f"{fields.where} has more free or used memory than total")
        return reading


@dataclasses.dataclass(frozen=True)
class Telemetry:
    """One reading of a node's GPUs and system; `nvml_error` says why GPU readings are missing."""

    gpus: tuple[GpuReading, ...]
    system: SystemReading
    nvml_error: str | None
    taken_at: float

    @property
    def vram_total_mib(self) -> int:
        if self.system.unified_memory:
            return self.system.ram_total_mib
        return sum(gpu.total_mib for gpu in self.gpus)

    @property
    def vram_free_mib(self) -> int:
        if self.system.unified_memory:
            return self.system.ram_free_mib
        return sum(gpu.free_mib for gpu in self.gpus)

    def summary(self) -> str:
        """Return a short description of the node's accelerators, such as "2x RTX 4090"."""
        if not self.gpus:
            return "CPU" if self.system.unified_memory else "unknown GPU"
        counts: dict[str, int] = {}
        for gpu in self.gpus:
            short = _short_name(gpu.name)
            counts[short] = counts.get(short, 0) + 1
        return _fit_summary([(f"{n}x {name}" if n > 1 else name, n) for name, n in counts.items()])

    def to_json(self) -> dict[str, Any]:
        """Return the reading as a plain dict for the status API."""
        return {
            "summary": self.summary(),
            "vram_total_mib": self.vram_total_mib,
            "vram_free_mib": self.vram_free_mib,
            "gpus": [
                {**dataclasses.asdict(gpu), "processes": [dataclasses.asdict(p) for p in gpu.processes]}
                for gpu in self.gpus
            ],
            "system": dataclasses.asdict(self.system),
            "nvml_error": self.nvml_error,
            "taken_at": self.taken_at,
        }

    @classmethod
    def from_json(cls, fields: Fields) -> Telemetry:
        """Read a peer's reading; the summary and VRAM totals it sends are worked out again from its GPUs."""
        return cls(
            gpus=tuple(GpuReading.from_json(g) for g in fields.records("gpus", _MAX_GPUS)),
            system=SystemReading.from_json(fields.record("system")),
            nvml_error=fields.optional_text("nvml_error", 1024),
            taken_at=fields.number("taken_at", -float(1 << 53), float(1 << 53), default=0.0),
        )


def _short_name(name: str) -> str:
    for prefix in _NAME_PREFIXES:
        name = name.removeprefix(prefix)
    return name.strip() or "GPU"


def _fit_summary(parts: list[tuple[str, int]]) -> str:
    text = ""
    for keep in range(len(parts), 0, -1):
        dropped = sum(n for _, n in parts[keep:])
        text = " + ".join(part for part, _ in parts[:keep]) + (f" + {dropped} more" if dropped else "")
        if len(text.encode()) <= _SUMMARY_MAX_BYTES:
            return text
    return text.encode()[:_SUMMARY_MAX_BYTES].decode(errors="ignore").rstrip()


class _State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    ABSENT = "absent"
    FAILED = "failed"
    CLOSED = "closed"


class TelemetrySampler:
    """Own NVML's init and shutdown; take readings off the event loop with a timeout."""

    def __init__(self, *, timeout_s: float = _SAMPLE_TIMEOUT_S, nvml: ModuleType | None = None) -> None:
        self._timeout_s = timeout_s
        self._nvml = nvml
        self._errors: tuple[type[Exception], ...] = ()
        self._lock = threading.Lock()
        self._state = _State.NEW
        self._init_error: str | None = None
        # Reads using NVML right now; nvmlShutdown waits for the last one so no call outlives NVML.
        self._readers = 0
        self._shutdown_pending = False
        self._logged_error: str | None = None
        self._last: Telemetry | None = None
        self._in_flight: asyncio.Future[Telemetry] | None = None
        self._warned: asyncio.Future[Telemetry] | None = None

    def start(self) -> None:
        """Initialise NVML once; an absent or failing NVML is remembered and logged, never raised."""
        with self._lock:
            if self._state is not _State.NEW:
                return
            self._state = _State.STARTING
        # The first cpu_percent(None) call only sets the baseline the next one measures from.
        psutil.cpu_percent(interval=None)
        state, error = self._init_nvml()
        with self._lock:
            closed_meanwhile = self._state is _State.CLOSED
            if not closed_meanwhile:
                # _init_nvml has logged the outcome; reads should not log it again.
                self._state, self._init_error, self._logged_error = state, error, error
        if closed_meanwhile and state is _State.READY:
            self._shutdown()

    def _init_nvml(self) -> tuple[_State, str | None]:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                _log.info("No NVIDIA GPU telemetry: nvidia-ml-py is not installed (%s)", exc)
                return _State.ABSENT, None
        nvml = self._nvml
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        self._errors = (nvml.NVMLError,) + ((mismatch,) if isinstance(mismatch, type) else ())
        init_errors: tuple[type[Exception], ...] = (*self._errors, OSError)
        try:
            nvml.nvmlInit()
        except init_errors as exc:
            if _code(exc) in (nvml.NVML_ERROR_LIBRARY_NOT_FOUND, nvml.NVML_ERROR_DRIVER_NOT_LOADED):
                _log.info("No NVIDIA GPU telemetry: %s; reporting system memory", exc)
                return _State.ABSENT, None
            _log.warning("NVML failed to start, so GPU readings are off: %s", exc)
            return _State.FAILED, f"NVML failed to start: {exc}"
        return _State.READY, None

    def close(self) -> None:
        """Shut NVML down if it was initialised, once a reading still using it ends; idempotent."""
        with self._lock:
            was_ready = self._state is _State.READY
            self._state = _State.CLOSED
            if not was_ready:
                return
            if self._readers:
                self._shutdown_pending = True
                return
        self._shutdown()

    def _shutdown(self) -> None:
        assert self._nvml is not None
        try:
            self._nvml.nvmlShutdown()
        except self._errors as exc:
            _log.warning("NVML did not shut down cleanly: %s", exc)

    def read(self) -> Telemetry:
        """Take one full reading, blocking; NVML failures degrade the reading and are never raised."""
        self.start()
        with self._lock:
            state, init_error = self._state, self._init_error
            if state is _State.READY:
                self._readers += 1
        gpus: tuple[GpuReading, ...] = ()
        error = init_error
        if state is _State.READY:
            try:
                gpus, error = self._read_gpus()
            finally:
                self._leave()
        elif state is _State.STARTING:
            error = "NVML is still starting"
        elif state is _State.CLOSED:
            error = "the telemetry sampler is closed"
        self._log_error(error)
        system = _read_system(unified_memory=not gpus and error is None)
        return Telemetry(gpus=gpus, system=system, nvml_error=error, taken_at=time.monotonic())

    def _leave(self) -> None:
        with self._lock:
            self._readers -= 1
            last_out = self._readers == 0 and self._shutdown_pending
            if last_out:
                self._shutdown_pending = False
        if last_out:
            self._shutdown()

    def _log_error(self, error: str | None) -> None:
        # A broken GPU stays broken for every sample; say so when it changes, not every few seconds.
        if error != self._logged_error:
            if error is not None:
                _log.warning("GPU telemetry degraded: %s", error)
            else:
                _log.info("GPU telemetry recovered")
            self._logged_error = error

    def _read_gpus(self) -> tuple[tuple[GpuReading, ...], str | None]:
        assert self._nvml is not None
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except self._errors as exc:
            return (), f"NVML could not count GPUs: {exc}"
        problems: list[str] = []
        gpus = [self._read_gpu(index, problems) for index in range(count)]
        return tuple(gpu for gpu in gpus if gpu is not None), "; ".join(problems) or None

    def _read_gpu(self, index: int, problems: list[str]) -> GpuReading | None:
        nvml = self._nvml
        assert nvml is not None
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(nvml.nvmlDeviceGetName(handle))
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            memory = self._memory(handle)
            utilization = self._field(
                index, "utilization", problems, lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            )
            temperature = self._field(
                index,
                "temperature",
                problems,
                lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
            )
            compute = self._field(
                index, "processes", problems, lambda: list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
            )
            graphics = self._field(
                index, "processes", problems, lambda: list(nvml.nvmlDeviceGetGraphicsRunningProcesses(handle))
            )
        except self._errors as exc:
            problems.append(f"GPU {index} left out: {exc}")
            return None
        return GpuReading(
            index=index,
            uuid=uuid,
            name=name,
            total_mib=int(memory.total) // _MIB,
            used_mib=int(memory.used) // _MIB,
            free_mib=int(memory.free) // _MIB,
            utilization_pct=utilization,
            temperature_c=temperature,
            processes=_processes(compute or (), graphics or ()),
        )

    def _memory(self, handle: Any) -> Any:
        """Read memory as nvidia-smi shows it: the v2 query keeps driver-reserved memory out of "used"."""
        nvml = self._nvml
        assert nvml is not None
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None:
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except self._errors as exc:
                # Drivers older than the v2 query answer one of these; the v1 query still works there.
                unsupported = (
                    nvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                    nvml.NVML_ERROR_NOT_SUPPORTED,
                    nvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
                )
                if _code(exc) not in unsupported:
                    raise
        return nvml.nvmlDeviceGetMemoryInfo(handle)

    def _field(self, index: int, what: str, problems: list[str], call: Callable[[], T]) -> T | None:
        try:
            return call()
        except self._errors as exc:
            assert self._nvml is not None
            if _code(exc) == self._nvml.NVML_ERROR_GPU_IS_LOST:
                raise
            if _code(exc) != self._nvml.NVML_ERROR_NOT_SUPPORTED:
                problems.append(f"GPU {index} {what}: {exc}")
            return None

    async def sample(self) -> Telemetry:
        """Take a reading in a worker thread; past the timeout, return the last one marked as stale."""
        loop = asyncio.get_running_loop()
        future = self._in_flight
        # At most one reading runs at a time: a caller joins it rather than stacking hung threads.
        if future is None or future.done() or future.get_loop() is not loop:
            future = self._in_flight = self._start_reading(loop)
        try:
            async with asyncio.timeout(self._timeout_s):
                reading = await asyncio.shield(future)
        except TimeoutError:
            if future is not self._warned:
                self._warned = future
                _log.warning(
                    "GPU telemetry timed out after %g s; reporting the last reading", self._timeout_s
                )
            return self._stale(f"NVML reading timed out after {self._timeout_s:g} s")
        except Exception as exc:
            return self._stale(f"telemetry reading failed: {exc}")
        self._last = reading
        return reading

    def _start_reading(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Telemetry]:
        future: asyncio.Future[Telemetry] = loop.create_future()
        # A reading that fails after its caller gave up must not be reported as never retrieved.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())

        def work() -> None:
            outcome: Telemetry | Exception
            try:
                outcome = self.read()
            except Exception as exc:
                _log.exception("Telemetry reading failed")
                outcome = exc
            # RuntimeError: the loop closed while NVML hung, and nobody waits for this reading any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, outcome)

        # A daemon thread, not asyncio.to_thread: asyncio.run() joins the default executor on exit,
        # so one NVML call hung in the driver would keep the app from ever quitting.
        threading.Thread(target=work, name="inferhub-telemetry", daemon=True).start()
        return future

    def _stale(self, error: str) -> Telemetry:
        if self._last is not None:
            return dataclasses.replace(self._last, nvml_error=error)
        # psutil reads /proc or sysctl in microseconds; it is NVML that hangs.
        system = _read_system(unified_memory=self._state is _State.ABSENT)
        return Telemetry(gpus=(), system=system, nvml_error=error, taken_at=time.monotonic())


def _settle(future: asyncio.Future[Telemetry], outcome: Telemetry | Exception) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _code(exc: BaseException) -> object:
    return getattr(exc, "value", None)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _processes(compute: Iterable[Any], graphics: Iterable[Any]) -> tuple[GpuProcess, ...]:
    # A process drawing on the GPU appears in both the compute and the graphics lists.
    used_by_pid: dict[int, int | None] = {}
    computing: set[int] = set()
    for listed, infos in ((True, compute), (False, graphics)):
        for info in infos:
            used = info.usedGpuMemory
            used_mib = None if used is None or int(used) == _NOT_AVAILABLE_ULL else int(used) // _MIB
            pid = int(info.pid)
            if used_by_pid.get(pid) is None:
                used_by_pid[pid] = used_mib
            if listed:
                computing.add(pid)
    return tuple(
        GpuProcess(pid, _process_name(pid), used, pid in computing) for pid, used in used_by_pid.items()
    )


def _process_name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        # Gone already, another user's, or in another container's pid namespace.
        return ""


def _read_system(*, unified_memory: bool) -> SystemReading:
    memory = psutil.virtual_memory()
    total_mib, free_mib = memory.total // _MIB, memory.available // _MIB
    return SystemReading(
        cpu_pct=psutil.cpu_percent(interval=None),
        cpu_count=psutil.cpu_count() or os.cpu_count() or 1,
        ram_total_mib=total_mib,
        # Not psutil's `used`, which leaves out buffers and caches: used + free is the total, as on a GPU.
        ram_used_mib=total_mib - free_mib,
        ram_free_mib=free_mib,
        unified_memory=unified_memory,
    )
