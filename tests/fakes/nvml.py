"""A stand-in for pynvml (nvidia-ml-py's module): two GPUs as a driver reports them, with the real error
classes, and failures and hangs on request."""

from __future__ import annotations

import collections
import copy
import dataclasses
import os
import threading
import types
from collections.abc import Callable
from typing import Any

import pynvml

MIB = 1024 * 1024
# Above any pid Linux can hand out (pid_max is at most 2**22), so psutil cannot see them.
GONE_PIDS = (4_194_311, 4_194_312, 4_194_313)
MY_PID = os.getpid()
NOT_AVAILABLE = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value


def _process(pid: int, used: int | None) -> Any:
    return pynvml.nvmlFriendlyObject(
        {"pid": pid, "usedGpuMemory": used, "gpuInstanceId": 0xFFFFFFFF, "computeInstanceId": 0xFFFFFFFF}
    )


# What a driver reports for an RTX 4090 running a model and an idle RTX 3090 on a riser that
# reports no utilisation. Names and UUIDs come back as str from nvidia-ml-py >= 11.515 and as
# bytes from older versions: one of each.
GPUS: list[dict[str, Any]] = [
    {
        "name": "NVIDIA GeForce RTX 4090",
        "uuid": "GPU-6a3b2f1e-8c4d-4e5f-9a0b-1c2d3e4f5a6b",
        "memory": (24564 * MIB, 15353 * MIB + (MIB - 123_456), 9210 * MIB + 123_456),
        # What the v2 memory query reports apart, as nvidia-smi does; v1 counts it as used.
        "reserved": 480 * MIB,
        "utilization": 37,
        "temperature": 61,
        "compute": [(MY_PID, 8192 * MIB)],
        "graphics": [(MY_PID, None), (GONE_PIDS[0], None)],
    },
    {
        "name": b"NVIDIA GeForce RTX 3090",
        "uuid": b"GPU-0f9e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f",
        "memory": (24576 * MIB, 24574 * MIB + (MIB - 500), MIB + 500),
        "utilization": pynvml.NVML_ERROR_NOT_SUPPORTED,
        "temperature": 48,
        "compute": [(GONE_PIDS[1], NOT_AVAILABLE)],
        "graphics": [(GONE_PIDS[1], 512 * MIB), (GONE_PIDS[2], NOT_AVAILABLE)],
    },
]


@dataclasses.dataclass(frozen=True)
class _Handle:
    index: int


class FakeNvml:
    """A stand-in for pynvml: two GPUs, the real error classes, failures and hangs on request."""

    def __init__(self) -> None:
        self.module = types.ModuleType("fake_pynvml")
        # The real error classes and constants, so the sampler meets exactly what nvidia-ml-py raises.
        for name, value in vars(pynvml).items():
            if name.startswith(("NVML_ERROR_", "NVMLError", "NVMLLibrary")) or name == "NVML_TEMPERATURE_GPU":
                setattr(self.module, name, value)
        for name in dir(self):
            if name.startswith("nvml"):
                setattr(self.module, name, getattr(self, name))
        # This driver's GPUs, which a test may change: start or end a process, load the GPU.
        self.gpus = copy.deepcopy(GPUS)
        self.calls: collections.Counter[str] = collections.Counter()
        self.failures: dict[tuple[str, int | None], Callable[[], Exception]] = {}
        self.initialised = 0
        self.hang_in: str | None = None
        self.hanging = threading.Event()
        self.release = threading.Event()

    def fail(self, function: str, code: int, index: int | None = None) -> None:
        self.fail_with(function, lambda: pynvml.NVMLError(code), index)

    def fail_with(self, function: str, error: Callable[[], Exception], index: int | None = None) -> None:
        self.failures[function, index] = error

    def _enter(self, function: str, index: int | None = None) -> dict[str, Any]:
        self.calls[function] += 1
        if function == self.hang_in:
            self.hanging.set()
            self.release.wait(timeout=60)
        error = self.failures.get((function, index)) or self.failures.get((function, None))
        if error is not None:
            raise error()
        if function != "nvmlInit" and not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        return self.gpus[index] if index is not None else {}

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._enter("nvmlDeviceGetHandleByIndex", index)
        return _Handle(index)

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        return self._enter("nvmlDeviceGetName", handle.index)["name"]  # type: ignore[no-any-return]

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        return self._enter("nvmlDeviceGetUUID", handle.index)["uuid"]  # type: ignore[no-any-return]

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: int | None = None) -> Any:
        if version is not None:
            # Only a fake given `nvmlMemory_v2` (a driver new enough for it) is asked this way.
            gpu = self._enter("nvmlDeviceGetMemoryInfo_v2", handle.index)
            total, free, used = gpu["memory"]
            reserved = gpu.get("reserved", 0)
            return pynvml.c_nvmlMemory_v2_t(
                version=version, total=total, reserved=reserved, free=free, used=used - reserved
            )
        total, free, used = self._enter("nvmlDeviceGetMemoryInfo", handle.index)["memory"]
        return pynvml.c_nvmlMemory_t(total=total, free=free, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._enter("nvmlDeviceGetUtilizationRates", handle.index)["utilization"]
        if gpu == pynvml.NVML_ERROR_NOT_SUPPORTED:
            raise pynvml.NVMLError(gpu)
        return pynvml.c_nvmlUtilization_t(gpu=gpu, memory=12)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._enter("nvmlDeviceGetTemperature", handle.index)["temperature"]  # type: ignore[no-any-return]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        gpu = self._enter("nvmlDeviceGetComputeRunningProcesses", handle.index)
        return [_process(pid, used) for pid, used in gpu["compute"]]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: _Handle) -> list[Any]:
        gpu = self._enter("nvmlDeviceGetGraphicsRunningProcesses", handle.index)
        return [_process(pid, used) for pid, used in gpu["graphics"]]
