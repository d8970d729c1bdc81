"""Print what one routing decision costs in-process, and whether it grows with the size of peers' statuses.

    python -m bench.decision [--peers 16] [--models 20] [--rounds 2000]

A node runs on loopback with a fake Ollama; its pool is given simulated peers whose statuses arrive as
they would from the LAN. Each figure is the median time of the node's whole decision for one chat
request (the plan the local API asks for): this node's own view, its peers', and the ranking. Three
pools are timed in the same run: peers of `--models` models each (the baseline), the same peers with
bulky telemetry (8 GPUs of 100 processes each), and peers of ten times as many models. The ratios
against the baseline say how the decision grows with what peers report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from multidict import CIMultiDict

from inferhub_desktop.core import Node, NodeStatus
from inferhub_desktop.core.api.relay import Query
from inferhub_desktop.core.peers import PeerAnnouncement
from inferhub_desktop.core.wire.endpoints import match
from tests.fakes.ollama import FakeOllama
from tests.support import eventually, node_settings

_GIB = 1 << 30


def peer_status(index: int, models: int, processes: int) -> dict[str, Any]:
    """A peer's status as its share API sends it: `models` installed, two loaded, learnt speeds."""
    names = [f"model{m}:latest" for m in range(models)]
    gpus = [
        {
            "index": g,
            "uuid": f"GPU-{index}-{g}",
            "name": "NVIDIA GeForce RTX 4090",
            "total_mib": 24564,
            "used_mib": 8000,
            "free_mib": 16564,
            "utilization_pct": 30,
            "temperature_c": 60,
            "processes": [{"pid": 1000 + p, "name": f"proc{p}", "used_mib": 10} for p in range(processes)],
        }
        for g in range(8 if processes else 1)
    ]
    return {
        "id": str(uuid.UUID(int=index + 1)),
        "name": f"peer{index:02d}",
        "version": "0.0.0",
        "api_url": "http://127.0.0.1:11435",
        "share": True,
        "local_only": False,
        "pool_pull": False,
        "pool": None,
        "tls": None,
        "share_port": 11436,
        "load": {"active": index % 3, "remote": 0, "waiting": 0, "slots": 2, "queue_full": False},
        "models_hash": "0123456789ab",
        "backend": {
            "kind": "ollama",
            "url": "http://127.0.0.1:11434",
            "reachable": True,
            "version": "0.12.10",
            "installed": [
                {
                    "name": name,
                    "size": 4 * _GIB,
                    "digest": "ab" * 32,
                    "family": "llama",
                    "parameter_size": "8B",
                    "quantization_level": "Q4_K_M",
                }
                for name in names
            ],
            "loaded": [
                {
                    "name": name,
                    "size": 4 * _GIB,
                    "size_vram": 4 * _GIB,
                    "expires_at": "2026-12-04T00:00:00Z",
                    "context_length": 4096,
                }
                for name in names[:2]
            ],
            "error": None,
        },
        "telemetry": {
            "summary": "RTX 4090",
            "vram_total_mib": 24564 * len(gpus),
            "vram_free_mib": 16564 * len(gpus),
            "gpus": gpus,
            "system": {
                "cpu_pct": 5.0,
                "cpu_count": 16,
                "ram_total_mib": 65536,
                "ram_used_mib": 8000,
                "ram_free_mib": 57536,
                "unified_memory": False,
            },
            "nvml_error": None,
            "taken_at": 0.0,
        },
        "speeds": {
            "models": {
                name: {"tokens_per_s": [80.0 + index, 5.0], "tokens": [200.0, 5.0], "run_s": [2.5, 5.0]}
                for name in names
            },
            "busy_s": [2.5, 5.0],
        },
        "peak_loaded_bytes": 8 * _GIB,
        "tokens_generated": 1000,
    }


def add_peers(node: Node, peers: int, models: int, processes: int) -> int:
    """Give the node's pool `peers` simulated peers; return the size of one status on the wire."""
    now = time.monotonic()
    size = 0
    for index in range(peers):
        wire = json.dumps(peer_status(index, models, processes)).encode()
        size = len(wire)
        # Parsed once, as the pool parses a status when it arrives.
        status = NodeStatus.from_bytes(wire)
        announcement = PeerAnnouncement(
            node_id=status.node_id,
            name=status.name,
            address="127.0.0.2",
            port=11436 + index,
            share=True,
            gpu="RTX 4090",
            vram_free_mib=16564,
            vram_total_mib=24564,
            active=0,
            slots=2,
            models_hash="0123456789ab",
        )
        # Far in the future, so the pool's own expiry leaves them alone while they are timed.
        node.membership.table.seen(announcement, status, now + 3600.0)
    return size


def decision_s(node: Node, rounds: int) -> float:
    """Return the median time of one decision for a chat with a model every peer has."""
    endpoint = match("POST", "/api/chat").endpoint
    assert endpoint is not None
    fields = {"model": "model1", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    query = Query(endpoint, "model1", fields, CIMultiDict(), "/api/chat")
    plan = node.dispatcher.plan  # the decision the local API asks for
    assert len(plan(query, "local").targets) > 1
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        plan(query, "local")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def measure(peers: int, models: int, rounds: int) -> None:
    pools = (
        ("baseline", models, 0),
        ("bulky telemetry", models, 100),
        (f"{models * 10} models each", models * 10, 0),
    )
    with tempfile.TemporaryDirectory() as work:
        async with FakeOllama(["model1:latest"]) as fake:
            figures = []
            for label, count, processes in pools:
                settings = node_settings(Path(work) / label, fake.url, share=True)
                async with Node(settings, environ={}) as node:
                    await eventually(lambda node=node: node.backend_state.reachable)  # type: ignore[misc]
                    size = add_peers(node, peers, count, processes)
                    figures.append((label, size, decision_s(node, rounds)))
    base = figures[0][2]
    print(f"one routing decision, {peers} peers, median of {rounds}")
    for label, size, seconds in figures:
        print(
            f"  {label:<20} status {size / 1024:7.1f} KiB   {seconds * 1e6:8.1f} µs   ×{seconds / base:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=16)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(measure(args.peers, args.models, args.rounds))


if __name__ == "__main__":
    main()
