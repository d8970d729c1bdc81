"""A demonstration pool of four workstations, shaped as a node's answers are, for the UI's tests."""

from __future__ import annotations

import dataclasses
import datetime
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from inferhub_desktop.core import (
    SWITCHES,
    AddressState,
    ApiError,
    Events,
    NodeStatus,
    PeerState,
    RequestDone,
    RequestUnderway,
    SettingsStore,
    audit_entry,
)
from inferhub_desktop.core.audit import usage_on

_GIB = 1 << 30
# name, GPU summary, [(GPU, total MiB, used MiB, utilisation %)], installed, loaded, active/slots, tok/s,
# sharing
_NODES: list[
    tuple[str, str, list[tuple[str, int, int, int]], list[str], list[str], tuple[int, int], float, bool]
] = [
    (
        "atlas",
        "RTX 4090",
        [("NVIDIA GeForce RTX 4090", 24564, 17210, 71)],
        ["llama3.1:8b", "qwen2.5-coder:14b", "nomic-embed-text:latest"],
        ["qwen2.5-coder:14b", "nomic-embed-text:latest"],
        (1, 2),
        96.0,
        True,
    ),
    (
        "borealis",
        "2x RTX 3090",
        [("NVIDIA GeForce RTX 3090", 24576, 21980, 88), ("NVIDIA GeForce RTX 3090", 24576, 20110, 83)],
        ["llama3.1:70b", "llama3.1:8b", "mistral-small:24b"],
        ["llama3.1:70b"],
        (2, 2),
        21.5,
        True,
    ),
    (
        "cobalt",
        "RTX 4080 SUPER",
        [("NVIDIA GeForce RTX 4080 SUPER", 16376, 6020, 34)],
        ["llama3.1:8b", "gemma2:9b", "phi4:14b"],
        ["llama3.1:8b"],
        (0, 1),
        118.0,
        True,
    ),
    (
        "dune",
        "RTX A6000",
        [("NVIDIA RTX A6000", 49140, 1024, 0)],
        ["deepseek-r1:32b", "llama3.1:8b"],
        [],
        (0, 2),
        0.0,
        False,
    ),
]


def _status(index: int, node_id: str, share_port: int, tokens: int) -> dict[str, Any]:
    name, summary, gpus, installed, loaded, (active, slots), speed, sharing = _NODES[index]
    total = sum(g[1] for g in gpus)
    return {
        "id": node_id,
        "name": name,
        "version": "demo",
        "api_url": "http://127.0.0.1:11435",
        "share": sharing,
        "local_only": False,
        "pool_pull": False,
        # The demonstration's pool is private: its members are known, and the audit log names them.
        "pool": "5e1f0c2a9b7d3e11",
        "tls": None,
        "share_port": share_port,
        "load": {
            "active": active,
            "remote": 1 if index == 0 else 0,
            "waiting": 0,
            "slots": slots,
            "queue_full": False,
        },
        "models_hash": "0" * 12,
        "backend": {
            "kind": "ollama",
            "url": "http://127.0.0.1:11434",
            "reachable": True,
            "version": "0.12.10",
            "installed": [
                {
                    "name": m,
                    "size": 5 * _GIB,
                    "digest": "",
                    "family": "",
                    "parameter_size": "",
                    "quantization_level": "",
                }
                for m in installed
            ],
            "loaded": [
                {"name": m, "size": 5 * _GIB, "size_vram": 5 * _GIB, "expires_at": "", "context_length": 8192}
                for m in loaded
            ],
            "error": None,
        },
        "telemetry": {
            "summary": summary,
            "vram_total_mib": total,
            "vram_free_mib": total - sum(g[2] for g in gpus),
            "gpus": [
                {
                    "index": n,
                    "uuid": "",
                    "name": gpu,
                    "total_mib": gpu_total,
                    "used_mib": used,
                    "free_mib": gpu_total - used,
                    "utilization_pct": util,
                    "temperature_c": 61,
                    "processes": [],
                }
                for n, (gpu, gpu_total, used, util) in enumerate(gpus)
            ],
            "system": {
                "cpu_pct": 12.0,
                "cpu_count": 16,
                "ram_total_mib": 65536,
                "ram_used_mib": 20480,
                "ram_free_mib": 45056,
                "unified_memory": False,
            },
            "nvml_error": None,
            "taken_at": 0.0,
        },
        "speeds": {
            "models": {m: {"tokens_per_s": [speed, 3.0]} for m in loaded} if speed else {},
            "busy_s": None,
        },
        "peak_loaded_bytes": 10 * _GIB,
        "tokens_generated": tokens,
    }


class DemoCore:
    """A pool of four workstations that behaves as a node does towards the app, without a network."""

    def __init__(self, config_dir: Path) -> None:
        self.store = SettingsStore(config_dir, {"name": "atlas", "share": True}, environ={})
        self.events = Events()
        self._ids = [str(uuid.uuid5(uuid.NAMESPACE_DNS, n[0])) for n in _NODES]
        self._tokens = [0] * len(_NODES)
        # How often the app asked for the model server to be looked for at once.
        self.probes = 0
        # The models the app had copied from the pool.
        self.copied: list[str] = []
        # A request being answered as the pool is shown, and the nodes of another pool nearby.
        self.running: list[RequestUnderway] = []
        self.nearby: list[str] = []
        # What peers had this machine serve before, newest last, as a node's audit log holds it.
        now = time.time()
        self._audit = [
            audit_entry(self._served(now - ago, model, peer, seconds, tokens, error), peer)
            for ago, model, peer, seconds, tokens, error in [
                (26 * 3600, "qwen2.5-coder:14b", "cobalt", 4.2, 388, None),
                (5 * 3600, "llama3.1:8b", "borealis", 0.9, 95, None),
                (3 * 3600, "qwen2.5-coder:14b", "dune", 31.0, 0, "model runner has unexpectedly stopped"),
                (40 * 60, "nomic-embed-text", "cobalt", 0.05, 0, None),
            ]
        ]

    @property
    def api_url(self) -> str:
        return "http://127.0.0.1:11435"

    def advance(self, seconds: float) -> None:
        """Let the pool generate tokens for `seconds` at its nodes' speeds."""
        for n, node in enumerate(_NODES):
            self._tokens[n] += round(node[6] * node[5][0] * seconds)

    def status(self) -> NodeStatus:
        settings = self.store.settings
        # Read as a node reads a peer's, so the demonstration's figures are as bounded as a real status.
        return NodeStatus.from_json(
            {
                **_status(0, self._ids[0], settings.share_port, self._tokens[0]),
                **{key: getattr(settings, key) for key in SWITCHES},
            }
        )

    def peers(self) -> list[PeerState]:
        return [
            PeerState(
                node_id=self._ids[n],
                name=_NODES[n][0],
                address=f"192.168.1.{20 + n}",
                port=11436,
                share=_NODES[n][7],
                status=NodeStatus.from_json(_status(n, self._ids[n], 11436, self._tokens[n])),
                breaker="closed",
            )
            for n in range(1, len(_NODES))
        ]

    def audit(self, limit: int) -> list[dict[str, Any]]:
        return self._audit[-limit:]

    def usage(self) -> dict[str, Any]:
        today, whole = usage_on(self._audit, datetime.date.today())
        return {"now": [], "today": [dataclasses.asdict(u) for u in today], "whole_day": whole}

    def probe_now(self) -> None:
        """The demonstration's backend is always up: there is nothing to look for."""
        self.probes += 1

    async def copy_model(self, model: str) -> AsyncIterator[dict[str, Any]]:
        """Copy a model as a node does, in a moment; one named "broken:latest" fails as a node says so."""
        self.copied.append(model)
        if model == "broken:latest":
            raise ApiError(502, "copying broken:latest from the pool failed: max retries exceeded")
        yield {"status": "pulling manifest"}
        yield {"status": "success"}

    def underway(self) -> list[RequestUnderway]:
        return list(self.running)

    def elsewhere(self) -> list[str]:
        return list(self.nearby)

    def addresses(self) -> list[AddressState]:
        """The demonstration's peers named by address: as a node would say how reaching them goes."""
        reached = {f"192.168.1.{20 + n}:11436": _NODES[n][0] for n in range(1, len(_NODES))}
        return [
            AddressState(peer, "reached", reached[peer])
            if peer in reached
            else AddressState(peer, "unreachable", "cannot connect: Connection refused")
            for peer in self.store.settings.peers
        ]

    def _served(
        self, at: float, model: str, peer: str, seconds: float, tokens: int, error: str | None
    ) -> RequestDone:
        """Return a request this machine served for a peer, as the share API ends one."""
        return RequestDone(
            at=at,
            api="share",
            endpoint="/api/chat",
            model=model,
            node="atlas",
            client=self._ids[[n[0] for n in _NODES].index(peer)],
            attempts=1,
            status=500 if error else 200,
            duration_s=seconds,
            first_byte_s=0.09,
            tokens=tokens or None,
            tokens_per_s=tokens / seconds if tokens else None,
            error=error,
            address=f"192.168.1.{20 + [n[0] for n in _NODES].index(peer)}",
            verified=True,
        )

    def replay_requests(self) -> None:
        """Tell of a few recent requests, as a node does when they end."""
        now = time.time()
        # Oldest first, as they ended.
        for ago, model, node, api, client, seconds, tokens, error in [
            (75, "mistral-small:24b", "borealis", "local", "", 0.4, 0, "model requires more system memory"),
            (48, "nomic-embed-text", "atlas", "local", "", 0.08, 0, None),
            (31, "llama3.1:8b", "cobalt", "local", "", 3.0, 355, None),
            (16, "llama3.1:8b", "atlas", "share", "cobalt", 1.2, 140, None),
            (9, "llama3.1:70b", "borealis", "local", "", 14.8, 318, None),
            (3, "qwen2.5-coder:14b", "atlas", "local", "", 2.1, 212, None),
        ]:
            if api == "share":
                # Served here for a peer: the node logs it before telling of it.
                self._audit.append(
                    audit_entry(self._served(now - ago, model, client, seconds, tokens, error), client)
                )
            self.events.emit(
                RequestDone(
                    at=now - ago,
                    api=api,
                    endpoint="/api/chat",
                    model=model,
                    node=node,
                    client=client,
                    attempts=1,
                    status=500 if error else 200,
                    duration_s=seconds,
                    first_byte_s=0.09,
                    tokens=tokens or None,
                    tokens_per_s=tokens / seconds if tokens else None,
                    error=error,
                )
            )
