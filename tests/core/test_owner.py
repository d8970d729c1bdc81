"""The owner first: what pauses sharing (other GPU work, the owner at the keyboard, quiet hours), how it
resumes, the VRAM kept back, and what happens to peers' requests when the owner comes back."""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferhub_desktop.core import ConfigError, Node, SharingPaused
from inferhub_desktop.core import node as node_module
from inferhub_desktop.core.idle import Away
from inferhub_desktop.core.owner import Cause, PauseClock, cause_now, is_model_server
from inferhub_desktop.core.schedule import parse_window, quiet_now
from inferhub_desktop.core.settings import Settings
from inferhub_desktop.core.telemetry import GpuProcess, TelemetrySampler
from tests.fakes.nvml import MIB, FakeNvml
from tests.fakes.ollama import FakeModel, FakeOllama
from tests.support import eventually, node_settings

# A Wednesday afternoon.
WEDNESDAY = datetime.datetime(2026, 12, 2, 15, 30)
HERE = Away(0.0)


def settings(**values: Any) -> Settings:
    return Settings(config_dir=Path("/nonexistent"), node_id="id", name="ws-alice", **values)


def cause(**values: Any) -> Cause | None:
    seen: dict[str, Any] = {"foreign": (), "gpu_busy_pct": None, "away": HERE, "moment": WEDNESDAY}
    seen.update({k: values.pop(k) for k in list(values) if k in seen})
    return cause_now(settings(**values), **seen)


# -- what pauses sharing --------------------------------------------------------------------------------


def test_a_program_holding_gpu_memory_pauses_sharing_and_is_named() -> None:
    blender = GpuProcess(4242, "blender", 2048)
    assert cause(foreign=[blender]) == Cause("blender is using the GPU (2.0 GiB)", lingers=True)
    # One the node cannot name is still named by its pid.
    assert cause(foreign=[GpuProcess(77, "", 3072)]) == Cause(
        "a program (pid 77) is using the GPU (3.0 GiB)", lingers=True
    )
    assert cause(foreign=[blender], pause_on_gpu_use=False) is None


def test_the_desktops_small_graphics_users_do_not_pause_sharing_but_unmeasured_cuda_work_does() -> None:
    compositor, browser = GpuProcess(10, "gnome-shell", 300), GpuProcess(11, "firefox", None)
    assert cause(foreign=[compositor, browser]) is None
    assert cause(foreign=[compositor], pause_gpu_mib=256) == Cause(
        "gnome-shell is using the GPU (0.3 GiB)", lingers=True
    )
    # Windows' WDDM measures no process's memory: CUDA work still shows in the compute list.
    cuda = GpuProcess(12, "python.exe", None, compute=True)
    assert cause(foreign=[browser, cuda]) == Cause("python.exe is using the GPU", lingers=True)


def test_the_gpu_busy_while_the_model_server_is_idle_pauses_sharing() -> None:
    assert cause(gpu_busy_pct=49) is None
    assert cause(gpu_busy_pct=87) == Cause(
        "the GPU is 87% busy with other work", lingers=True, load_only=True
    )
    assert cause(gpu_busy_pct=87, pause_gpu_percent=0) is None


def test_sharing_only_while_away_waits_for_the_owners_absence_or_a_locked_screen() -> None:
    assert cause(share_when_away_min=10) == Cause("you are using this machine", lingers=False)
    assert cause(share_when_away_min=10, away=Away(599.0)) == Cause(
        "you are using this machine", lingers=False
    )
    assert cause(share_when_away_min=10, away=Away(600.0)) is None
    assert cause(share_when_away_min=10, away=Away(math.inf)) is None  # the screen is locked
    assert cause(share_when_away_min=10, away=Away(None)) == Cause(
        "this machine cannot tell whether you are away", lingers=False
    )
    assert cause(away=Away(None)) is None


def test_quiet_hours_pause_sharing_and_name_the_window() -> None:
    windows = ("sat,sun 10:00-14:00", "mon-fri 09:00-17:30")
    assert cause(quiet_hours=windows) == Cause("quiet hours (mon-fri 09:00-17:30)", lingers=False)
    assert cause(quiet_hours=windows, moment=WEDNESDAY.replace(hour=18)) is None


# -- quiet hours ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "moment", "quiet"),
    [
        ("mon-fri 09:00-17:30", "2026-12-02 09:00", True),  # Wednesday
        ("mon-fri 09:00-17:30", "2026-12-02 17:30", False),
        ("mon-fri 09:00-17:30", "2026-12-05 10:00", False),  # Saturday
        ("daily 22:00-07:00", "2026-12-02 23:15", True),
        ("daily 22:00-07:00", "2026-12-03 06:59", True),
        ("daily 22:00-07:00", "2026-12-03 07:00", False),
        ("fri 22:00-07:00", "2026-12-05 06:00", True),  # Saturday morning, after Friday night
        ("fri 22:00-07:00", "2026-12-04 06:00", False),  # Friday morning: Thursday night is not listed
        ("fri-mon 12:00-13:00", "2026-12-06 12:30", True),  # a range across the week's end: Sunday
        ("Saturday 18:00-24:00", "2026-12-05 23:59", True),
        ("Saturday 18:00-24:00", "2026-12-06 00:00", False),
        ("daily 00:00-24:00", "2026-12-02 23:59", True),
        ("mon fri 09:00-17:00", "2026-12-04 10:00", True),  # Monday and Friday: this is a Friday
        ("mon fri 09:00-17:00", "2026-12-02 10:00", False),  # not a Wednesday
        ("every day 12:00-13:00", "2026-12-06 12:10", True),
    ],
)
def test_a_quiet_hours_window_holds_when_the_owner_means(window: str, moment: str, quiet: bool) -> None:
    at = datetime.datetime.fromisoformat(moment)
    assert (quiet_now((window,), at) == window) is quiet


@pytest.mark.parametrize(
    ("window", "says"),
    [
        ("weekdays 09:00-17:00", "name no day"),
        ("monkey 09:00-17:00", "name no day"),
        ("mon 24:00-09:00", "impossible time 24:00"),
        ("mon 9-17", "are not DAYS HH:MM-HH:MM"),
        ("mon 09:00-25:00", "impossible time 25:00"),
        ("mon 09:00-09:00", "start and end at the same time"),
    ],
)
def test_quiet_hours_written_wrong_are_refused_saying_how_to_write_them(window: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_window(window)
    with pytest.raises(ConfigError, match=says):
        settings_store_check(window)


def settings_store_check(window: str) -> None:
    from inferhub_desktop.core.settings import build_settings

    build_settings(Path("/nonexistent"), "id", {"quiet_hours": [window]}, {}, {})


# -- when sharing resumes ---------------------------------------------------------------------------------


def test_sharing_resumes_the_set_time_after_other_gpu_work_ends() -> None:
    clock = PauseClock()
    blender = Cause("blender is using the GPU (2.0 GiB)", lingers=True)
    assert clock.update(None, 60, 0.0) is None
    paused = clock.update(blender, 60, 1.0)
    assert paused is not None
    assert (paused.reason, paused.since, paused.resumes_in_s) == (blender.reason, 1.0, None)
    assert clock.update(blender, 60, 2.0) == paused
    # Blender quits after the reading at 2 s: sharing stays paused for a minute from then, counting down.
    waiting = clock.update(None, 60, 3.0)
    assert waiting is not None
    assert waiting.resumes_in_s == pytest.approx(59.0)
    assert clock.update(None, 60, 61.5) is not None
    assert clock.update(None, 60, 62.0) is None


def test_quiet_hours_and_the_owners_absence_resume_sharing_at_once() -> None:
    clock = PauseClock()
    assert clock.update(Cause("quiet hours (daily 22:00-07:00)", lingers=False), 60, 0.0) is not None
    assert clock.update(None, 60, 1.0) is None


def test_the_gpus_load_alone_counts_once_seen_on_two_readings_in_a_row() -> None:
    clock = PauseClock()
    busy = Cause("the GPU is 90% busy with other work", lingers=True, load_only=True)
    assert clock.update(busy, 60, 0.0) is None
    assert clock.update(None, 60, 1.0) is None
    assert clock.update(busy, 60, 2.0) is None
    paused = clock.update(busy, 60, 3.0)
    assert paused is not None
    assert paused.since == 3.0


# -- whose processes are the model server's ---------------------------------------------------------------


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Real processes named as a model server and as the owner's own work."""
    started: dict[str, subprocess.Popen[bytes]] = {}
    for name in ("ollama", "blender", "llama-server"):
        binary = tmp_path / name
        shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
        started[name] = subprocess.Popen([str(binary), "60"])
    yield started
    for proc in started.values():
        proc.kill()
        proc.wait()


def test_model_servers_and_this_node_are_told_from_the_owners_programs(
    programs: dict[str, subprocess.Popen[bytes]],
) -> None:
    def serves(name: str) -> bool:
        return is_model_server(GpuProcess(programs[name].pid, name, 4096))

    assert serves("ollama")
    assert serves("llama-server")
    assert not serves("blender")
    assert is_model_server(GpuProcess(os.getpid(), "python", 100))
    # A process gone (or another container's) is not taken for the model server.
    assert not is_model_server(GpuProcess(4_194_311, "", 4096))


# -- a node with a GPU -------------------------------------------------------------------------------------

FLOOD_MODEL = FakeModel("mistral:latest", size=4 * 1024 * MIB)
BIG = FakeModel("big:latest", size=6 * 1024 * MIB)
SMALL = FakeModel("small:latest", size=2 * 1024 * MIB)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def nvml() -> FakeNvml:
    return FakeNvml()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    models = ["llama3:latest", FLOOD_MODEL, BIG, SMALL]
    async with FakeOllama(models, loaded=["llama3:latest"], tokens_per_second=20.0) as server:
        yield server


@pytest.fixture
async def node(tmp_path: Path, fake: FakeOllama, nvml: FakeNvml) -> AsyncIterator[Node]:
    store = node_settings(tmp_path, fake.url, share=True, max_remote=1, resume_after_s=3, grace_s=1)
    sampler = TelemetrySampler(nvml=nvml.module)
    async with Node(store, environ={}, sampler=sampler) as running:
        await eventually(lambda: running.telemetry is not None and bool(running.telemetry.gpus))
        yield running


@pytest.fixture
def blender(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    binary = tmp_path / "blender"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", binary)
    proc = subprocess.Popen([str(binary), "60"])
    yield proc
    proc.kill()
    proc.wait()


def start_on_gpu(nvml: FakeNvml, pid: int, mib: int) -> None:
    nvml.gpus[0]["graphics"].append((pid, mib * MIB))


def end_on_gpu(nvml: FakeNvml, pid: int) -> None:
    nvml.gpus[0]["graphics"] = [p for p in nvml.gpus[0]["graphics"] if p[0] != pid]


def readings(nvml: FakeNvml) -> int:
    """Readings of the GPUs so far: each asks each of the two GPUs for its compute processes once."""
    return nvml.calls["nvmlDeviceGetComputeRunningProcesses"] // 2


def share_url(node: Node) -> str:
    return f"http://127.0.0.1:{node.share_port}"


async def generate(http: aiohttp.ClientSession, url: str, model: str, tokens: int = 4) -> tuple[int, Any]:
    body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": tokens}}
    async with http.post(url + "/api/generate", json=body) as reply:
        return reply.status, await reply.json()


async def test_a_program_using_the_gpu_pauses_sharing_on_the_next_reading_and_it_resumes_after(
    node: Node, nvml: FakeNvml, blender: subprocess.Popen[bytes], http: aiohttp.ClientSession
) -> None:
    assert (node.guard.pause, node.announcement().share) == (None, True)
    told: list[str | None] = []
    node.events.subscribe(
        lambda event: told.append(event.reason) if isinstance(event, SharingPaused) else None
    )
    before = readings(nvml)
    start_on_gpu(nvml, blender.pid, 2048)
    await eventually(lambda: node.guard.pause is not None)
    # Readings are a second apart: the first that shows blender pauses sharing.
    assert readings(nvml) - before <= 2
    status = node.status()
    assert status.owner.paused == "blender is using the GPU (2.0 GiB)"
    assert status.share  # the owner's switch stays where the owner put it
    assert status.state_words()[0] == "sharing paused: blender is using the GPU (2.0 GiB)"
    assert not node.announcement().share  # peers that read only mDNS see it as not sharing
    assert "other programs on the GPU" in status.owner.watching
    status_code, answer = await generate(http, share_url(node), "llama3")
    assert (status_code, answer) == (
        503,
        {"error": "test-node has paused sharing: blender is using the GPU (2.0 GiB)"},
    )
    # Blender's memory grows: the words follow, and it is no news.
    end_on_gpu(nvml, blender.pid)
    start_on_gpu(nvml, blender.pid, 3072)
    await eventually(lambda: node.status().owner.paused == "blender is using the GPU (3.0 GiB)")
    assert told == ["blender is using the GPU (2.0 GiB)"]

    end_on_gpu(nvml, blender.pid)
    await eventually(lambda: node.guard.pause is not None and node.guard.pause.resumes_in_s is not None)
    assert (
        node.status()
        .state_words()[0]
        .startswith("sharing paused: blender is using the GPU (3.0 GiB) (resumes in")
    )
    await eventually(lambda: node.guard.pause is None)
    assert (await generate(http, share_url(node), "llama3"))[0] == 200
    assert node.announcement().share
    assert told == ["blender is using the GPU (2.0 GiB)", None]


async def test_when_the_owner_comes_back_peers_finish_within_the_grace_then_are_cut_and_their_models_unloaded(
    node: Node,
    nvml: FakeNvml,
    fake: FakeOllama,
    blender: subprocess.Popen[bytes],
    http: aiohttp.ClientSession,
) -> None:
    # The owner's own model, and one a peer loads.
    assert (await generate(http, node.api_url, "llama3"))[0] == 200
    assert (await generate(http, share_url(node), "mistral", tokens=1))[0] == 200
    await eventually(
        lambda: {m.name for m in node.backend_state.loaded} == {"llama3:latest", "mistral:latest"}
    )

    body = {"model": "mistral", "prompt": "a long story", "options": {"num_predict": 1000}}
    async with http.post(share_url(node) + "/api/generate", json=body) as streaming:
        assert streaming.status == 200
        await streaming.content.readline()
        waiting = asyncio.create_task(generate(http, share_url(node), "mistral"))
        await eventually(lambda: node.dispatcher.admission.waiting_remote == 1)

        start_on_gpu(nvml, blender.pid, 4096)
        # The request not yet started is refused at once: its node sends it elsewhere.
        assert await waiting == (
            503,
            {"error": "test-node has paused sharing: blender is using the GPU (4.0 GiB)"},
        )
        paused_at = asyncio.get_running_loop().time()
        lines = [json.loads(line) async for line in streaming.content]
    # The one under way went on for the grace period, then ended with an error that says why.
    assert asyncio.get_running_loop().time() - paused_at >= 0.9
    assert lines[-2]["done"] is False
    assert lines[-1] == {
        "error": "test-node's owner needs the GPU back (blender is using the GPU (4.0 GiB)); this reply was "
        "cut after the 1 s grace period. Ask again: another node of the pool will answer"
    }
    # Then the model only the peer used is unloaded; the owner's stays.
    await eventually(
        lambda: any(r.json == {"model": "mistral:latest", "keep_alive": 0} for r in fake.requests)
    )
    await eventually(lambda: {m.name for m in node.backend_state.loaded} == {"llama3:latest"})
    assert not any(
        r.json and r.json.get("model") == "llama3:latest" and r.json.get("keep_alive") == 0
        for r in fake.requests
    )
    # A cut says nothing of this machine's backend: the owner's requests go on as before.
    assert node.dispatcher.breaker(node.settings.node_id) == "closed"
    assert (await generate(http, node.api_url, "llama3"))[0] == 200


async def test_a_peers_request_still_waiting_for_its_answer_is_cut_after_the_grace_too(
    node: Node,
    nvml: FakeNvml,
    fake: FakeOllama,
    blender: subprocess.Popen[bytes],
    http: aiohttp.ClientSession,
) -> None:
    fake.load_delay_s = 30.0  # "small" takes long to load: its answer will not begin
    loading = asyncio.create_task(generate(http, share_url(node), "small"))
    await eventually(lambda: node.dispatcher.admission.active_remote == 1)
    start_on_gpu(nvml, blender.pid, 4096)
    code, answer = await loading
    # It fails as busy, with why: the peer's node sends it on to another node.
    assert code == 503
    assert answer["error"].startswith("test-node's owner needs the GPU back (blender is using the GPU")
    assert node.dispatcher.breaker(node.settings.node_id) == "closed"
    assert node.dispatcher.admission.active_remote == 0


async def test_a_peers_request_that_would_load_into_the_owners_reserve_is_refused_as_busy(
    node: Node, http: aiohttp.ClientSession
) -> None:
    node.store.change(reserve_vram_gib=34)
    assert node.status().owner.reserve_mib == 34 * 1024
    # 39.0 GiB free on the fake's two GPUs: a 6 GiB load would leave 33.0, a 2 GiB one 37.0.
    code, answer = await generate(http, share_url(node), "big")
    assert code == 503
    assert answer["error"] == (
        "test-node keeps 34 GiB of VRAM for its owner, and loading big:latest (6.0 GiB) would leave "
        "33.0 GiB free; another node of the pool can take it"
    )
    assert (await generate(http, share_url(node), "small"))[0] == 200
    # A model already loaded costs nothing more; the owner's own requests are never held to the reserve.
    assert (await generate(http, share_url(node), "llama3"))[0] == 200
    assert (await generate(http, node.api_url, "big"))[0] == 200


async def test_turning_sharing_off_drains_peers_the_same_way(node: Node, http: aiohttp.ClientSession) -> None:
    body = {"model": "llama3", "prompt": "a long story", "options": {"num_predict": 1000}}
    async with http.post(share_url(node) + "/api/generate", json=body) as streaming:
        await streaming.content.readline()
        node.switch({"share": False})
        lines = [json.loads(line) async for line in streaming.content]
    assert lines[-1]["error"].startswith("test-node's owner needs the GPU back (sharing was turned off)")


class Presence:
    """A stand-in for the OS's idle time, set by the test."""

    how = "a test's stand-in"

    def __init__(self) -> None:
        self.seconds: float | None = 0.0

    def away(self) -> Away:
        return Away(self.seconds)


async def test_sharing_only_while_away_follows_the_owner(
    tmp_path: Path, fake: FakeOllama, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_module, "_AWAY_INTERVAL_S", 0.0)
    presence = Presence()
    store = node_settings(tmp_path, fake.url, share=True, share_when_away_min=5)
    async with Node(store, environ={}, away=presence) as node:
        await eventually(lambda: node.guard.pause is not None)
        assert node.status().owner.paused == "you are using this machine"
        presence.seconds = 301.0
        await eventually(lambda: node.guard.pause is None)
        presence.seconds = math.inf  # the screen locked
        await asyncio.sleep(1.5)
        assert node.guard.pause is None
        presence.seconds = 2.0  # back at the keyboard
        await eventually(lambda: node.status().owner.paused == "you are using this machine")
