"""Prometheus metrics of a node, served at /metrics: what its requests did, counted as they end, and its
state (streams, slots, peers, breakers, backend, GPUs), read when scraped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .backends.base import BackendState
from .breaker import BreakerState
from .events import Event, Events, RequestDone
from .telemetry import Telemetry
from .wire.responses import valid_utf8

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A client may name any model; past this many distinct names, further ones are counted as "other", so a
# stream of made-up names cannot grow the metrics without end.
MAX_MODEL_LABELS = 100
_OTHER = "other"
_MIB = 1024 * 1024

_FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class NodeMetrics:
    """A node's metrics in a registry of their own, so several nodes in one process keep theirs apart."""

    def __init__(self, events: Events, gauges: Callable[[], Gauges]) -> None:
        self.registry = CollectorRegistry()
        labels = ("api", "endpoint", "model", "node")
        self._requests = Counter(
            "inferhub_requests",
            "Inference requests that ended, by API (local or share), endpoint, model, the node that "
            "answered, and outcome (ok, error or cancelled by the client)",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self._first_token = Histogram(
            "inferhub_time_to_first_token_seconds",
            "Time from a request's arrival to the first byte of its answer reaching the client",
            labels,
            buckets=_FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self._duration = Histogram(
            "inferhub_request_duration_seconds",
            "Time from a request's arrival to the end of its answer",
            labels,
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._tokens = Counter(
            "inferhub_tokens_generated",
            "Tokens generated in answers, by the node that generated them",
            labels,
            registry=self.registry,
        )
        self._failovers = Counter(
            "inferhub_failovers",
            "Requests sent on to another node after the one tried first failed before answering",
            ("api", "endpoint", "model"),
            registry=self.registry,
        )
        self._models: set[str] = set()
        self.registry.register(_NodeState(gauges))
        self.unsubscribe: Callable[[], None] = events.subscribe(self._heard)

    def render(self) -> bytes:
        """Return the metrics in Prometheus' text format."""
        return generate_latest(self.registry)

    def _heard(self, event: Event) -> None:
        if not isinstance(event, RequestDone):
            return
        model = self._model_label(valid_utf8(event.model or ""))
        labels = (event.api, event.endpoint, model, valid_utf8(event.node))
        outcome = "cancelled" if event.cancelled else "ok" if event.ok else "error"
        self._requests.labels(*labels, outcome).inc()
        self._duration.labels(*labels).observe(event.duration_s)
        if event.first_byte_s is not None:
            self._first_token.labels(*labels).observe(event.first_byte_s)
        if event.tokens:
            self._tokens.labels(*labels).inc(event.tokens)
        if event.attempts > 1:
            self._failovers.labels(event.api, event.endpoint, model).inc(event.attempts - 1)

    def _model_label(self, model: str) -> str:
        if model in self._models or len(self._models) < MAX_MODEL_LABELS:
            self._models.add(model)
            return model
        return _OTHER


@dataclasses.dataclass(frozen=True)
class PeerGauge:
    """A peer as a scrape shows it."""

    name: str
    node_id: str
    sharing: bool
    breaker: BreakerState


@dataclasses.dataclass(frozen=True)
class Gauges:
    """The node's state at the moment of a scrape."""

    streams: Mapping[str, int]  # streamed answers being relayed, by API
    backend_active: int
    peers_queued: int
    slots: int
    sharing: bool
    backend: BackendState
    peers: Sequence[PeerGauge]
    telemetry: Telemetry | None


class _NodeState(Collector):
    """The node's state, read when scraped, so gauges are never stale."""

    def __init__(self, gauges: Callable[[], Gauges]) -> None:
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        gauges = self._gauges()
        streams = GaugeMetricFamily(
            "inferhub_active_streams", "Streamed answers being relayed now, by API", labels=("api",)
        )
        for api, count in gauges.streams.items():
            streams.add_metric((api,), count)
        yield streams
        yield _gauge(
            "inferhub_backend_requests_active",
            "Requests this machine's backend is running",
            gauges.backend_active,
        )
        yield _gauge(
            "inferhub_peer_requests_queued", "Peers' requests waiting for a slot here", gauges.peers_queued
        )
        yield _gauge("inferhub_backend_slots", "Peers' requests this machine runs at once", gauges.slots)
        yield _gauge(
            "inferhub_sharing", "1 while this machine shares its GPU with the pool", int(gauges.sharing)
        )
        state = gauges.backend
        up = GaugeMetricFamily(
            "inferhub_backend_up", "1 while this machine's model server answers", labels=("kind", "url")
        )
        up.add_metric((state.kind, state.url), int(state.reachable))
        yield up
        yield from self._peers(gauges.peers)
        yield from self._gpus(gauges.telemetry)

    def _peers(self, peers: Sequence[PeerGauge]) -> Iterator[Metric]:
        yield _gauge("inferhub_peers_up", "Peers this node sees on the LAN", len(peers))
        sharing = GaugeMetricFamily(
            "inferhub_peer_sharing", "1 for each peer that shares its GPU", labels=("peer", "peer_id")
        )
        breaker = GaugeMetricFamily(
            "inferhub_peer_circuit_breaker",
            "1 for the state this node's circuit breaker holds for each peer (closed: in use; open: left "
            "out after failures; half-open: on trial)",
            labels=("peer", "peer_id", "state"),
        )
        for peer in peers:
            ids = (valid_utf8(peer.name), peer.node_id)
            sharing.add_metric(ids, int(peer.sharing))
            for state in BreakerState:
                breaker.add_metric((*ids, state.value), int(state is peer.breaker))
        yield sharing
        yield breaker

    def _gpus(self, telemetry: Telemetry | None) -> Iterator[Metric]:
        if telemetry is None:
            return
        labels = ("gpu", "name", "uuid")
        families = {
            "total": GaugeMetricFamily("inferhub_gpu_memory_total_bytes", "GPU memory", labels=labels),
            "used": GaugeMetricFamily("inferhub_gpu_memory_used_bytes", "GPU memory in use", labels=labels),
            "util": GaugeMetricFamily(
                "inferhub_gpu_utilization_ratio", "Share of time the GPU was busy (0 to 1)", labels=labels
            ),
            "temp": GaugeMetricFamily("inferhub_gpu_temperature_celsius", "GPU temperature", labels=labels),
        }
        for gpu in telemetry.gpus:
            ids = (str(gpu.index), gpu.name, gpu.uuid)
            families["total"].add_metric(ids, gpu.total_mib * _MIB)
            families["used"].add_metric(ids, gpu.used_mib * _MIB)
            if gpu.utilization_pct is not None:
                families["util"].add_metric(ids, gpu.utilization_pct / 100)
            if gpu.temperature_c is not None:
                families["temp"].add_metric(ids, gpu.temperature_c)
        yield from families.values()
        system = telemetry.system
        yield _gauge(
            "inferhub_cpu_utilization_ratio", "Share of CPU time in use (0 to 1)", system.cpu_pct / 100
        )
        yield _gauge("inferhub_memory_total_bytes", "System memory", system.ram_total_mib * _MIB)
        yield _gauge("inferhub_memory_used_bytes", "System memory in use", system.ram_used_mib * _MIB)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
