"""How the router sees a node: its view made once from the status it sent (or this node's live state),
then brought up to now with what only this node knows (round trips, breakers, requests in flight)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from .names import model_key
from .router import RouterNode, rates
from .status import NodeStatus

_MIB = 1 << 20


def router_node(status: NodeStatus, *, local: bool) -> RouterNode:
    """Read what the router needs of a node's status: done once per status, not per decision."""
    backend = status.backend
    installed = {model_key(m.name): m.size for m in backend.installed}
    loaded = {model_key(m.name): m.size_vram for m in backend.loaded}
    telemetry = status.telemetry
    figures = status.speeds.models
    return RouterNode(
        node_id=status.node_id,
        name=status.name,
        local=local,
        share=status.share,
        backend_error=None if backend.reachable else (backend.error or "unreachable"),
        breaker=None,
        installed=installed,
        loaded=loaded,
        vram_free_mib=telemetry.vram_free_mib if telemetry else 0,
        vram_total_mib=telemetry.vram_total_mib if telemetry else 0,
        active=status.load.active,
        waiting=status.load.waiting,
        waiting_batch=status.load.waiting_batch,
        paused=status.owner.paused,
        reserve_mib=status.owner.reserve_mib,
        slots=status.load.slots,
        queue_full=status.load.queue_full,
        rtt_s=0.0,
        figures=figures,
        busy_s=status.speeds.busy_s,
        peak_loaded=status.peak_loaded_bytes,
        rates=rates(figures, installed),
    )


def now_at(
    node: RouterNode, *, rtt_s: float, breaker: str | None, sent: int, coming: Collection[str]
) -> RouterNode:
    """Bring a node's view up to now: its round trip and breaker, the requests this node sent there since
    its status was taken (which the status cannot show yet), and the models of those running there."""
    if not (rtt_s or breaker or sent or coming):
        return node
    return dataclasses.replace(
        node,
        rtt_s=rtt_s,
        breaker=breaker,
        active=node.active + sent,
        loaded=_expect_loads(node, coming) if coming else node.loaded,
    )


def _expect_loads(node: RouterNode, coming: Collection[str]) -> dict[str, int]:
    """Foresee what a node holds once the requests running there have their models, which a status taken
    before them cannot show: their models, less the idle ones pushed out to fit (when the room is known).
    Where their models cannot all fit, the node swaps them in turn: those not loaded yet count as not
    loaded, so more requests for them are weighed with a load."""
    loaded = dict(node.loaded)
    # The room for models: what is loaded plus measured free VRAM, else the most the node has held.
    capacity = sum(loaded.values()) + node.vram_free_mib * _MIB if node.vram_total_mib else node.peak_loaded
    for model in coming:
        loaded.setdefault(model, node.installed.get(model, 0))
    if not capacity:
        return loaded
    idle = sorted(m for m in loaded if m not in coming)
    swapped = sorted(m for m in coming if m not in node.loaded)
    for model in idle + swapped:
        if sum(loaded.values()) <= capacity:
            break
        del loaded[model]
    return loaded
