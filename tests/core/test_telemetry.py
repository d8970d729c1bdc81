"""Telemetry against a stand-in NVML that uses the real nvidia-ml-py error classes, and the real one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pynvml
import pytest

from inferhub_desktop.core.telemetry import GpuProcess, GpuReading, SystemReading, Telemetry, TelemetrySampler
from tests.fakes.nvml import GONE_PIDS, MIB, MY_PID, FakeNvml
from tests.support import ROOT, eventually

LOGGER = "inferhub_desktop.core.telemetry"
ALL_CODES = sorted(value for name, value in vars(pynvml).items() if name.startswith("NVML_ERROR_"))
ABSENT_CODES = {pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED}
TELEMETRY_THREAD = "inferhub-telemetry"


EXPECTED = (
    GpuReading(
        index=0,
        uuid="GPU-6a3b2f1e-8c4d-4e5f-9a0b-1c2d3e4f5a6b",
        name="NVIDIA GeForce RTX 4090",
        total_mib=24564,
        used_mib=9210,
        free_mib=15353,
        utilization_pct=37,
        temperature_c=61,
        processes=(
            GpuProcess(pid=MY_PID, name=psutil.Process().name(), used_mib=8192, compute=True),
            GpuProcess(pid=GONE_PIDS[0], name="", used_mib=None),
        ),
    ),
    GpuReading(
        index=1,
        uuid="GPU-0f9e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f",
        name="NVIDIA GeForce RTX 3090",
        total_mib=24576,
        used_mib=1,
        free_mib=24574,
        utilization_pct=None,
        temperature_c=48,
        processes=(
            GpuProcess(pid=GONE_PIDS[1], name="", used_mib=512, compute=True),
            GpuProcess(pid=GONE_PIDS[2], name="", used_mib=None),
        ),
    ),
)


@pytest.fixture
def fake() -> Iterator[FakeNvml]:
    fake = FakeNvml()
    yield fake
    # Lets a reading hung in the fake finish, so its thread ends before the leak check.
    fake.release.set()


@pytest.fixture
def sampler(fake: FakeNvml) -> Iterator[TelemetrySampler]:
    sampler = TelemetrySampler(nvml=fake.module)
    yield sampler
    sampler.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return caplog


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def _telemetry_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == TELEMETRY_THREAD and t.is_alive()]


def _nvml_error(code: int) -> str:
    return str(pynvml.NVMLError(code))


# Readings


def test_two_gpus_are_read_in_mib(sampler: TelemetrySampler, fake: FakeNvml) -> None:
    reading = sampler.read()

    assert reading.gpus == EXPECTED
    assert reading.nvml_error is None
    assert reading.system.unified_memory is False
    assert reading.vram_total_mib == 24564 + 24576
    assert reading.vram_free_mib == 15353 + 24574
    assert reading.summary() == "RTX 4090 + RTX 3090"
    assert fake.calls["nvmlInit"] == 1
    assert not any(psutil.pid_exists(pid) for pid in GONE_PIDS)


async def test_sample_gives_the_same_reading_as_read(sampler: TelemetrySampler) -> None:
    before = time.monotonic()
    reading = await sampler.sample()

    assert reading.gpus == EXPECTED
    assert reading.nvml_error is None
    assert before <= reading.taken_at <= time.monotonic()


def test_system_reading_matches_psutil(sampler: TelemetrySampler) -> None:
    system = sampler.read().system

    assert system.cpu_count == psutil.cpu_count()
    assert 0.0 <= system.cpu_pct <= 100.0
    assert system.ram_total_mib == psutil.virtual_memory().total // MIB
    assert system.ram_used_mib + system.ram_free_mib == system.ram_total_mib
    assert 0 < system.ram_free_mib < system.ram_total_mib


def test_start_is_idempotent_and_read_starts_lazily(sampler: TelemetrySampler, fake: FakeNvml) -> None:
    sampler.read()
    sampler.start()
    sampler.read()

    assert fake.calls["nvmlInit"] == 1


async def test_concurrent_samples_share_one_reading(sampler: TelemetrySampler, fake: FakeNvml) -> None:
    readings = await asyncio.gather(sampler.sample(), sampler.sample(), sampler.sample())

    assert fake.calls["nvmlDeviceGetCount"] == 1
    assert readings[0] is readings[1] is readings[2]
    assert readings[0].gpus == EXPECTED


# NVML errors, wherever nvidia-ml-py can raise them


@pytest.mark.parametrize("code", ALL_CODES)
async def test_error_at_init(code: int, fake: FakeNvml, logs: pytest.LogCaptureFixture) -> None:
    fake.fail("nvmlInit", code)
    sampler = TelemetrySampler(nvml=fake.module)

    first = await sampler.sample()
    second = await sampler.sample()
    sampler.close()

    assert first.gpus == second.gpus == ()
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetCount"] == 0
    assert fake.calls["nvmlShutdown"] == 0
    if code in ABSENT_CODES:
        assert first.nvml_error is None
        assert first.system.unified_memory is True
        assert first.summary() == "CPU"
        assert first.vram_total_mib == first.system.ram_total_mib
        assert _records(logs, logging.INFO) == [
            f"No NVIDIA GPU telemetry: {_nvml_error(code)}; reporting system memory"
        ]
        assert _records(logs, logging.WARNING) == []
    else:
        assert first.nvml_error == f"NVML failed to start: {_nvml_error(code)}"
        assert first.system.unified_memory is False
        assert first.summary() == "unknown GPU"
        assert first.vram_total_mib == 0
        assert _records(logs, logging.WARNING) == [
            f"NVML failed to start, so GPU readings are off: {_nvml_error(code)}"
        ]


@pytest.mark.parametrize("code", ALL_CODES)
async def test_error_counting_gpus(code: int, sampler: TelemetrySampler, fake: FakeNvml) -> None:
    fake.fail("nvmlDeviceGetCount", code)

    reading = await sampler.sample()

    assert reading.gpus == ()
    assert reading.nvml_error == f"NVML could not count GPUs: {_nvml_error(code)}"
    assert reading.system.unified_memory is False
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 0


@pytest.mark.parametrize(
    "function",
    ["nvmlDeviceGetHandleByIndex", "nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetMemoryInfo"],
)
@pytest.mark.parametrize("code", ALL_CODES)
async def test_error_on_a_required_call_leaves_that_gpu_out(
    function: str, code: int, sampler: TelemetrySampler, fake: FakeNvml
) -> None:
    fake.fail(function, code, index=1)

    reading = await sampler.sample()

    assert reading.gpus == EXPECTED[:1]
    assert reading.nvml_error == f"GPU 1 left out: {_nvml_error(code)}"
    assert reading.summary() == "RTX 4090"


OPTIONAL_FIELDS: dict[str, tuple[str, dict[str, Any]]] = {
    "nvmlDeviceGetUtilizationRates": ("utilization", {"utilization_pct": None}),
    "nvmlDeviceGetTemperature": ("temperature", {"temperature_c": None}),
    "nvmlDeviceGetComputeRunningProcesses": (
        "processes",
        {"processes": (GpuProcess(GONE_PIDS[1], "", 512), GpuProcess(GONE_PIDS[2], "", None))},
    ),
    "nvmlDeviceGetGraphicsRunningProcesses": (
        "processes",
        {"processes": (GpuProcess(GONE_PIDS[1], "", None, compute=True),)},
    ),
}


@pytest.mark.parametrize("function", list(OPTIONAL_FIELDS))
@pytest.mark.parametrize("code", ALL_CODES)
async def test_error_on_an_optional_field_degrades_it(
    function: str, code: int, sampler: TelemetrySampler, fake: FakeNvml
) -> None:
    fake.fail(function, code, index=1)
    what, degraded = OPTIONAL_FIELDS[function]

    reading = await sampler.sample()

    if code == pynvml.NVML_ERROR_GPU_IS_LOST:
        assert reading.gpus == EXPECTED[:1]
        assert reading.nvml_error == "GPU 1 left out: GPU is lost"
    elif code == pynvml.NVML_ERROR_NOT_SUPPORTED:
        assert reading.gpus == (EXPECTED[0], dataclasses.replace(EXPECTED[1], **degraded))
        assert reading.nvml_error is None
    else:
        assert reading.gpus == (EXPECTED[0], dataclasses.replace(EXPECTED[1], **degraded))
        assert reading.nvml_error == f"GPU 1 {what}: {_nvml_error(code)}"


def test_library_mismatch_on_processes_degrades_them(sampler: TelemetrySampler, fake: FakeNvml) -> None:
    fake.fail_with(
        "nvmlDeviceGetComputeRunningProcesses", lambda: pynvml.NVMLLibraryMismatchError("use _v2"), index=0
    )

    reading = sampler.read()

    assert reading.gpus == (
        dataclasses.replace(
            EXPECTED[0],
            processes=(GpuProcess(MY_PID, psutil.Process().name(), None), EXPECTED[0].processes[1]),
        ),
        EXPECTED[1],
    )
    assert reading.nvml_error == "GPU 0 processes: use _v2"


def test_errors_on_every_gpu_are_all_reported(sampler: TelemetrySampler, fake: FakeNvml) -> None:
    fake.fail("nvmlDeviceGetTemperature", pynvml.NVML_ERROR_NO_PERMISSION, index=0)
    fake.fail("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_GPU_IS_LOST, index=1)

    reading = sampler.read()

    assert reading.gpus == (dataclasses.replace(EXPECTED[0], temperature_c=None),)
    assert reading.nvml_error == "GPU 0 temperature: Insufficient Permissions; GPU 1 left out: GPU is lost"


async def test_a_degraded_reading_is_logged_once_until_it_changes(
    sampler: TelemetrySampler, fake: FakeNvml, logs: pytest.LogCaptureFixture
) -> None:
    fake.fail("nvmlDeviceGetMemoryInfo", pynvml.NVML_ERROR_GPU_IS_LOST, index=1)
    for _ in range(3):
        await sampler.sample()
    fake.failures.clear()
    await sampler.sample()

    assert _records(logs, logging.WARNING) == ["GPU telemetry degraded: GPU 1 left out: GPU is lost"]
    assert _records(logs, logging.INFO) == ["GPU telemetry recovered"]


async def test_an_unexpected_exception_is_logged_and_reported(
    sampler: TelemetrySampler, fake: FakeNvml, logs: pytest.LogCaptureFixture
) -> None:
    fake.fail_with("nvmlDeviceGetCount", lambda: ValueError("a bug"))

    reading = await sampler.sample()

    assert reading.gpus == ()
    assert reading.nvml_error == "telemetry reading failed: a bug"
    assert _records(logs, logging.ERROR) == ["Telemetry reading failed"]


def test_os_error_at_init_is_a_failing_nvml(fake: FakeNvml) -> None:
    fake.fail_with("nvmlInit", lambda: OSError("libnvidia-ml.so.1: invalid ELF header"))
    sampler = TelemetrySampler(nvml=fake.module)

    reading = sampler.read()

    assert reading.gpus == ()
    assert reading.nvml_error == "NVML failed to start: libnvidia-ml.so.1: invalid ELF header"
    assert reading.system.unified_memory is False


# Shutting NVML down


def test_close_shuts_nvml_down_once(sampler: TelemetrySampler, fake: FakeNvml) -> None:
    sampler.read()
    sampler.close()
    sampler.close()
    after = sampler.read()

    assert fake.calls["nvmlShutdown"] == 1
    assert fake.initialised == 0
    assert after.gpus == ()
    assert after.nvml_error == "the telemetry sampler is closed"
    assert fake.calls["nvmlInit"] == 1


def test_close_before_start_touches_no_nvml(fake: FakeNvml) -> None:
    sampler = TelemetrySampler(nvml=fake.module)
    sampler.close()
    sampler.start()

    assert fake.calls == {}


def test_a_failing_shutdown_is_logged_not_raised(
    sampler: TelemetrySampler, fake: FakeNvml, logs: pytest.LogCaptureFixture
) -> None:
    sampler.start()
    fake.fail("nvmlShutdown", pynvml.NVML_ERROR_UNKNOWN)

    sampler.close()

    assert fake.calls["nvmlShutdown"] == 1
    assert _records(logs, logging.WARNING) == ["NVML did not shut down cleanly: Unknown Error"]


async def test_close_during_a_hung_reading_shuts_down_once_it_ends(
    fake: FakeNvml, logs: pytest.LogCaptureFixture
) -> None:
    sampler = TelemetrySampler(nvml=fake.module, timeout_s=0.1)
    fake.hang_in = "nvmlDeviceGetTemperature"
    await sampler.sample()

    sampler.close()
    shut_down_while_hung = fake.calls["nvmlShutdown"]
    fake.release.set()
    await eventually(lambda: not _telemetry_threads())

    assert shut_down_while_hung == 0
    assert fake.calls["nvmlShutdown"] == 1
    assert fake.initialised == 0


# NVML absent


def test_real_nvml_absent_is_normal(logs: pytest.LogCaptureFixture) -> None:
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded):
        pass  # What nvidia-ml-py raises on a machine without an NVIDIA driver.
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVIDIA driver")
    sampler = TelemetrySampler()

    first = sampler.read()
    second = sampler.read()
    sampler.close()

    assert first.gpus == second.gpus == ()
    assert first.nvml_error is None
    assert first.system.unified_memory is True
    assert first.summary() == "CPU"
    assert first.vram_free_mib == first.system.ram_free_mib
    assert len(_records(logs, logging.INFO)) == 1
    assert _records(logs, logging.INFO)[0].startswith("No NVIDIA GPU telemetry: ")
    assert _records(logs, logging.WARNING) == []


def test_missing_nvidia_ml_py_is_normal(
    monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    sampler = TelemetrySampler()

    reading = sampler.read()
    sampler.close()

    assert reading.gpus == ()
    assert reading.nvml_error is None
    assert reading.system.unified_memory is True
    assert [m.split(" (")[0] for m in _records(logs, logging.INFO)] == [
        "No NVIDIA GPU telemetry: nvidia-ml-py is not installed"
    ]


# A hung NVML


async def test_a_hung_reading_returns_the_last_good_one_in_time(
    fake: FakeNvml, logs: pytest.LogCaptureFixture
) -> None:
    sampler = TelemetrySampler(nvml=fake.module, timeout_s=0.3)
    good = await sampler.sample()
    fake.hang_in = "nvmlDeviceGetTemperature"
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    stale = await sampler.sample()
    elapsed = time.monotonic() - started
    ticks_while_hung = ticks
    again = await sampler.sample()
    threads_while_hung = len(_telemetry_threads())
    ticker.cancel()

    assert good.nvml_error is None
    assert fake.hanging.is_set()
    assert 0.25 <= elapsed < 1.3
    assert ticks_while_hung >= 5
    assert stale.gpus == good.gpus == EXPECTED
    assert stale.taken_at == good.taken_at
    assert stale.nvml_error == again.nvml_error == "NVML reading timed out after 0.3 s"
    # The second sample joined the hung reading instead of starting another thread.
    assert threads_while_hung == 1
    assert fake.calls["nvmlDeviceGetCount"] == 2
    assert _records(logs, logging.WARNING) == [
        "GPU telemetry timed out after 0.3 s; reporting the last reading"
    ]

    fake.release.set()
    fresh = await sampler.sample()
    sampler.close()
    assert fresh.nvml_error is None
    assert fresh.gpus == EXPECTED
    assert fresh.taken_at > good.taken_at


async def test_a_first_reading_that_hangs_gives_system_only(fake: FakeNvml) -> None:
    fake.hang_in = "nvmlDeviceGetCount"
    sampler = TelemetrySampler(nvml=fake.module, timeout_s=0.1)

    reading = await sampler.sample()
    fake.release.set()
    await eventually(lambda: not _telemetry_threads())
    sampler.close()

    assert reading.gpus == ()
    assert reading.nvml_error == "NVML reading timed out after 0.1 s"
    assert reading.system.unified_memory is False
    assert reading.system.ram_total_mib == psutil.virtual_memory().total // MIB


def test_a_reading_hung_for_good_does_not_stop_asyncio_run_from_returning() -> None:
    script = textwrap.dedent(
        """
        import asyncio, threading, types
        import pynvml
        from inferhub_desktop.core.telemetry import TelemetrySampler

        nvml = types.ModuleType("hung_nvml")
        nvml.__dict__.update(vars(pynvml))
        nvml.nvmlInit = lambda: None
        nvml.nvmlDeviceGetCount = lambda: threading.Event().wait()

        async def main():
            print((await TelemetrySampler(nvml=nvml, timeout_s=0.2).sample()).nvml_error)

        asyncio.run(main())
        print("asyncio.run returned")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["NVML reading timed out after 0.2 s", "asyncio.run returned"]


# Values


def _gpu(name: str, index: int = 0, total_mib: int = 24576, free_mib: int = 20000) -> GpuReading:
    return GpuReading(index, f"GPU-{index}", name, total_mib, total_mib - free_mib, free_mib, 0, 40, ())


def _telemetry(*gpus: GpuReading, unified: bool = False) -> Telemetry:
    system = SystemReading(12.5, 16, 65536, 16384, 49152, unified_memory=unified)
    return Telemetry(gpus=gpus, system=system, nvml_error=None, taken_at=1234.5)


@pytest.mark.parametrize(
    ("names", "summary"),
    [
        (["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"], "2x RTX 4090"),
        (["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"], "RTX 4090 + RTX 3090"),
        (
            ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 4090"],
            "2x RTX 4090 + RTX 3090",
        ),
        (["NVIDIA RTX A6000"], "RTX A6000"),
        (["NVIDIA H100 80GB HBM3"] * 8, "8x H100 80GB HBM3"),
        (["Tesla V100-SXM2-16GB"], "Tesla V100-SXM2-16GB"),
        (["GeForce GTX 1080 Ti"], "GTX 1080 Ti"),
        (
            [
                "NVIDIA GeForce RTX 4090",
                "NVIDIA GeForce RTX 3090",
                "NVIDIA RTX A6000",
                "NVIDIA RTX A5000",
                "NVIDIA GeForce RTX 3080",
                "NVIDIA GeForce RTX 3080",
                "NVIDIA GeForce RTX 2080 Ti",
            ],
            "RTX 4090 + RTX 3090 + RTX A6000 + RTX A5000 + 3 more",
        ),
        (["NVIDIA " + "X" * 80], "X" * 60),
    ],
)
def test_summary(names: list[str], summary: str) -> None:
    telemetry = _telemetry(*(_gpu(name, i) for i, name in enumerate(names)))

    assert telemetry.summary() == summary
    assert len(summary.encode()) <= 60


def test_summary_without_gpus() -> None:
    assert _telemetry(unified=True).summary() == "CPU"
    assert _telemetry(unified=False).summary() == "unknown GPU"


def test_vram_sums_gpus_or_is_system_ram_when_unified() -> None:
    gpus = _telemetry(_gpu("A", 0, 24564, 15353), _gpu("B", 1, 24576, 24574))
    unified = _telemetry(unified=True)

    assert (gpus.vram_total_mib, gpus.vram_free_mib) == (49140, 39927)
    assert (unified.vram_total_mib, unified.vram_free_mib) == (65536, 49152)


def test_to_json_is_plain_json(sampler: TelemetrySampler) -> None:
    reading = sampler.read()

    data = reading.to_json()

    assert json.loads(json.dumps(data)) == data
    assert data["summary"] == "RTX 4090 + RTX 3090"
    assert data["vram_total_mib"] == 49140
    assert data["nvml_error"] is None
    assert data["taken_at"] == reading.taken_at
    assert data["system"]["unified_memory"] is False
    assert [gpu["name"] for gpu in data["gpus"]] == ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"]
    assert data["gpus"][1]["utilization_pct"] is None
    assert data["gpus"][0]["processes"] == [
        {"pid": MY_PID, "name": psutil.Process().name(), "used_mib": 8192, "compute": True},
        {"pid": GONE_PIDS[0], "name": "", "used_mib": None, "compute": False},
    ]


def test_values_are_frozen() -> None:
    telemetry = _telemetry(_gpu("A"))

    with pytest.raises(dataclasses.FrozenInstanceError):
        telemetry.gpus[0].used_mib = 1  # type: ignore[misc]


def test_memory_is_read_as_nvidia_smi_shows_it_where_the_driver_can(fake: FakeNvml) -> None:
    fake.module.nvmlMemory_v2 = pynvml.nvmlMemory_v2  # type: ignore[attr-defined]
    sampler = TelemetrySampler(nvml=fake.module)
    try:
        reading = sampler.read()
    finally:
        sampler.close()
    first = reading.gpus[0]
    assert (first.total_mib, first.free_mib, first.used_mib) == (24564, 15353, 9210 - 480)
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == 0


@pytest.mark.parametrize(
    "code",
    [
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
    ],
)
def test_older_drivers_fall_back_to_the_first_memory_query(fake: FakeNvml, code: int) -> None:
    fake.module.nvmlMemory_v2 = pynvml.nvmlMemory_v2  # type: ignore[attr-defined]
    fake.fail("nvmlDeviceGetMemoryInfo_v2", code)
    sampler = TelemetrySampler(nvml=fake.module)
    try:
        reading = sampler.read()
    finally:
        sampler.close()
    assert [(g.total_mib, g.free_mib, g.used_mib) for g in reading.gpus] == [
        (24564, 15353, 9210),
        (24576, 24574, 1),
    ]
    assert reading.nvml_error is None
