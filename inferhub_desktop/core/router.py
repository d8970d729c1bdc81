"""Where a request runs: a pure function of the request, a snapshot of the pool, and now.

Each node that can serve the model is scored by when it would finish the request: the wait for a
slot, loading the model if it is not loaded (and making room for it when free VRAM is short), the
network round trip, and the time to run it at the speed that node has shown for that model. Figures
a node has not shown yet come from a prior; learnt figures fade back to it (see speeds.py), so a node
is tried again once what is known about it is old. The smallest estimate wins; a near tie goes to the
node that already holds the conversation, else to this machine.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .names import model_key, short_name
from .speeds import Figure, ModelFigures

# A reply's length in tokens when neither the request nor past replies say.
DEFAULT_TOKENS = 256
# Speed assumed where no node has shown any for the model.
DEFAULT_TOKENS_PER_S = 40.0
# An embedding request's run time assumed before one was seen.
DEFAULT_EMBED_S = 0.1
# Load time assumed before a node was seen loading the model: a fixed part and one per GiB.
LOAD_BASE_S = 0.5
LOAD_S_PER_GIB = 0.5
# Making room costs stopping a runner; the load waits first for a busy one to finish.
EVICT_S = 0.5
# How many samples a prior counts for against learnt figures.
PRIOR_WEIGHT = 0.3
# Estimates within this of the best count as a tie with it (relative, and seconds on top).
TIE_FRACTION = 0.05
TIE_S = 0.05
# A conversation stays on its node while that node is within this fraction of the best.
CONVERSATION_FRACTION = 0.25

_GIB = 1 << 30
_MIB = 1 << 20
# What a node has learnt of a model it has not run.
_NO_FIGURES = ModelFigures()
# Endpoints that only embed, and reads that name a model; the rest generate.
_EMBEDDINGS = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
_READS = frozenset({"/api/show", "/v1/models/:model"})
# Where each API puts a reply's token limit.
_TOKEN_LIMITS = (("options", "num_predict"), (None, "max_tokens"), (None, "max_completion_tokens"))


@dataclasses.dataclass(frozen=True)
class RouterNode:
    """One node as the router sees it; this machine's node has `local` set."""

    node_id: str
    name: str
    local: bool
    share: bool
    backend_error: str | None  # why its backend cannot be used; None when it can
    breaker: str | None  # why its circuit breaker keeps it out; None when it lets requests through
    installed: Mapping[str, int]  # model key -> size in bytes
    loaded: Mapping[str, int]  # model key -> size in VRAM, bytes
    vram_free_mib: int
    vram_total_mib: int
    active: int
    waiting: int
    slots: int
    queue_full: bool
    rtt_s: float
    # Batch requests among the waiting ones: an interactive request goes ahead of them.
    waiting_batch: int = 0
    # Why its owner has paused sharing for now (owner.py); None while it shares as switched.
    paused: str | None = None
    # VRAM its owner keeps free: a peer's request that would load a model into it is refused.
    reserve_mib: int = 0
    figures: Mapping[str, ModelFigures] = dataclasses.field(default_factory=dict)
    busy_s: Figure | None = None  # how long any request holds the node's backend, loads included
    # The most model bytes the node has been seen holding at once: its room for models where VRAM is
    # not measured (Apple silicon, CPU, no NVML); 0 when unknown.
    peak_loaded: int = 0
    # Its bandwidth and load rate, worked out once from `figures` where the node's view is made (see
    # rates()); None to work them out at each decision.
    rates: Rates | None = None


@dataclasses.dataclass(frozen=True)
class Rates:
    """What a node's learnt figures say of its hardware, whatever the model."""

    bandwidth: Figure | None  # bytes of weights read per second (tokens/s times the model's size)
    load_rate: Figure | None  # seconds to load a GiB of weights


def rates(figures: Mapping[str, ModelFigures], installed: Mapping[str, int]) -> Rates:
    """Work out a node's bandwidth and load rate from the figures it has learnt for its models."""
    return Rates(
        bandwidth=_weighted(
            (f.tokens_per_s, installed[name])
            for name, f in figures.items()
            if f.tokens_per_s and f.tokens_per_s.mean > 0 and installed.get(name)
        ),
        load_rate=_weighted(
            (f.load_s, _GIB / installed[name])
            for name, f in figures.items()
            if f.load_s and installed.get(name)
        ),
    )


@dataclasses.dataclass(frozen=True)
class RouteRequest:
    """What the router needs to know of a request."""

    model: str | None  # model key; None when the request names no model
    generates: bool = True  # a generation (tokens); False for embeddings
    read: bool = False  # a read such as show: no slot, no load
    tokens: int | None = None  # the reply's token limit, when the request sets one
    pin: str | None = None  # node name or id the request must go to
    local_only: bool = False
    conversation: str | None = None  # key of an ongoing conversation
    batch: bool = False  # it may wait behind interactive requests at every node


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The pool at one moment: every node, this one included, and where conversations are."""

    nodes: Sequence[RouterNode]
    conversations: Mapping[str, tuple[str, float]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Seconds until a node would finish the request, term by term."""

    queue_s: float = 0.0
    load_s: float = 0.0
    evict_s: float = 0.0
    rtt_s: float = 0.0
    run_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.queue_s + self.load_s + self.evict_s + self.rtt_s + self.run_s


@dataclasses.dataclass(frozen=True)
class Ranked:
    """A node that can serve the request, its estimate, and what the estimate rests on."""

    node: RouterNode
    estimate: Estimate
    # Put in words only when a route is explained, not for every node at every decision.
    wording: str | Callable[[], str]

    @property
    def basis(self) -> str:
        return self.wording if isinstance(self.wording, str) else self.wording()


@dataclasses.dataclass(frozen=True)
class LeftOut:
    """A node that cannot serve the request, and why."""

    node: RouterNode
    reason: str
    has_model: bool


@dataclasses.dataclass(frozen=True)
class RouteDecision:
    """The candidates best first (the order requests fail over in), the rest, and why the first."""

    model: str | None
    ranked: tuple[Ranked, ...]
    left_out: tuple[LeftOut, ...]
    choice: str

    def to_json(self) -> dict[str, Any]:
        """Return the decision as JSON values, for `inferhub route` and the dashboard."""
        return {
            "model": short_name(self.model) if self.model else None,
            "choice": self.choice,
            "ranked": [
                {
                    "node": r.node.name,
                    "id": r.node.node_id,
                    "local": r.node.local,
                    "total_s": round(r.estimate.total_s, 3),
                    **{k: round(v, 3) for k, v in dataclasses.asdict(r.estimate).items()},
                    "basis": r.basis,
                }
                for r in self.ranked
            ],
            "left_out": [
                {"node": x.node.name, "id": x.node.node_id, "local": x.node.local, "reason": x.reason}
                for x in self.left_out
            ],
        }


def conversation_key(model: str, fields: Mapping[str, Any] | None) -> str | None:
    """Name a chat by its model and its messages up to the first user turn, which every later turn repeats."""
    messages = fields.get("messages") if fields else None
    if not isinstance(messages, list):
        return None
    opening = next(
        (
            messages[: i + 1]
            for i, m in enumerate(messages)
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        None,
    )
    if opening is None:
        return None
    text = json.dumps([model, opening], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def route_request(
    pattern: str,
    model: str | None,
    fields: Mapping[str, Any] | None,
    pin: str | None,
    *,
    local_only: bool,
    batch: bool = False,
) -> RouteRequest:
    """Describe a request to the router: its model key, what it costs, its token limit, pin and class."""
    key = model_key(model) if model else None
    return RouteRequest(
        model=key,
        generates=pattern not in _EMBEDDINGS and pattern not in _READS,
        read=pattern in _READS,
        tokens=_token_limit(fields),
        pin=(pin or "").strip() or None,
        local_only=local_only,
        conversation=conversation_key(key, fields) if key else None,
        batch=batch,
    )


def _token_limit(fields: Mapping[str, Any] | None) -> int | None:
    for holder, name in _TOKEN_LIMITS:
        source = fields.get(holder) if holder and fields else fields
        value = source.get(name) if isinstance(source, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
            return int(value)
    return None


def choose_route(request: RouteRequest, snapshot: Snapshot, now: float) -> RouteDecision:
    """Rank the nodes that can serve `request` by estimated completion time, best first."""
    nodes = list(snapshot.nodes)
    if request.pin is not None:
        return _pinned(request, nodes)
    if request.model is None:
        # Nothing to choose by: the request is this machine's to answer.
        local = [n for n in nodes if n.local]
        here = tuple(Ranked(n, Estimate(), "the request names no model") for n in local)
        return RouteDecision(None, here, (), "this machine: the request names no model")

    model = request.model
    candidates: list[RouterNode] = []
    left_out: list[LeftOut] = []
    for node in nodes:
        reason = _unfit(request, node)
        if reason is None:
            candidates.append(node)
        else:
            # A peer left out by the local-only switch is not "in the pool" for this machine.
            reachable = node.local or not request.local_only
            left_out.append(LeftOut(node, reason, reachable and model in node.installed))

    pool = _Pool(nodes)
    ranked = sorted(
        (_rank(request, node, pool) for node in candidates),
        key=lambda r: (r.estimate.total_s, not r.node.local, r.node.name),
    )
    choice = "no node can serve it"
    if ranked:
        ranked, choice = _break_ties(ranked, snapshot.conversations.get(request.conversation or ""), now)
    return RouteDecision(model, tuple(ranked), tuple(left_out), choice)


def _pinned(request: RouteRequest, nodes: list[RouterNode]) -> RouteDecision:
    """Send a pinned request to its node as it stands: the node's own answer says what is wrong.

    A name two nodes share pins the first (this machine, else the first by name); an id pins one.
    """
    pin = (request.pin or "").lower()
    matching = [n for n in nodes if pin in (n.name.lower(), n.node_id.lower())]
    left_out = tuple(
        LeftOut(
            n,
            "pinned to another node of the same name; pin it by id"
            if n in matching
            else "not the pinned node",
            False,
        )
        for n in nodes
        if n not in matching[:1]
    )
    if not matching:
        return RouteDecision(request.model, (), left_out, f"no node is named {request.pin!r}")
    chosen = matching[0]
    ranked = (Ranked(chosen, Estimate(rtt_s=chosen.rtt_s), "pinned by the request"),)
    return RouteDecision(request.model, ranked, left_out, f"{chosen.name}: pinned by the request")


def _unfit(request: RouteRequest, node: RouterNode) -> str | None:
    """Say why a node cannot take the request, or None when it can."""
    if request.local_only and not node.local:
        return "this machine is set to use only itself"
    if not node.local and not node.share:
        return "not sharing its GPU"
    if not node.local and node.paused:
        return f"sharing paused by its owner: {node.paused}"
    if node.backend_error is not None:
        return f"its backend cannot be used: {node.backend_error}"
    if node.breaker is not None:
        return f"left out by its circuit breaker ({node.breaker})"
    if request.model not in node.installed:
        return f"does not have {short_name(request.model or '')}"
    if node.queue_full and not request.read:
        return "its queue is full"
    if not node.local and not request.read and (refusal := reserve_refusal(node, request.model or "")):
        return refusal
    return None


def reserve_refusal(node: RouterNode, model: str) -> str | None:
    """Say why a peer's request for `model` would eat into the VRAM the node's owner keeps free, or None:
    a model already loaded costs nothing more, one to load must leave the reserve free."""
    if not node.reserve_mib or not node.vram_total_mib or model in node.loaded or model not in node.installed:
        return None
    need_mib = -(-node.installed[model] // _MIB)
    left_mib = node.vram_free_mib - need_mib
    if left_mib >= node.reserve_mib:
        return None
    return (
        f"keeps {node.reserve_mib / 1024:g} GiB of VRAM for its owner, and loading {short_name(model)} "
        f"({need_mib / 1024:.1f} GiB) would leave {max(0, left_mib) / 1024:.1f} GiB free"
    )


def _rank(request: RouteRequest, node: RouterNode, pool: _Pool) -> Ranked:
    """Estimate when `node` would finish the request, and say what the estimate rests on."""
    model = request.model or ""
    if request.read:
        return Ranked(node, Estimate(rtt_s=node.rtt_s), "a read: only the round trip counts")
    figures = node.figures.get(model, _NO_FIGURES)

    tokens, per_token = 0, 0.0
    if request.generates:
        tokens = _expected_tokens(request, model, pool)
        # Blended as seconds per token, the quantity that adds up; one sample soon outweighs the prior.
        per_token = _blend(_inverse(figures.tokens_per_s), 1.0 / _speed_prior(node, model, pool))
        run_s = tokens * per_token + _blend(figures.prompt_s, 0.0)
    else:
        run_s = _blend(figures.run_s, DEFAULT_EMBED_S)

    load_s = evict_s = 0.0
    # What an eviction would cost: the model that goes, its reload, and the room and size that force it.
    evicts: tuple[str, float, int, int] | None = None
    if model not in node.loaded:
        size = node.installed.get(model, 0)
        load_s = _load_estimate(node, model, pool)
        room = _room(node)
        if room is not None and size > room and node.loaded:
            # A busy runner is only stopped once its requests finish; the model that goes must be loaded
            # again by its next request, unless another node that can serve it has it loaded.
            lost, reload_s = min(
                (
                    (
                        name,
                        0.0
                        if _loaded_elsewhere(request, name, node, pool)
                        else _load_estimate(node, name, pool),
                    )
                    for name in node.loaded
                ),
                key=lambda pair: pair[1],
            )
            evict_s = EVICT_S + (_service_s(node, run_s) if node.active else 0.0) + reload_s
            evicts = (lost, reload_s, room, size)

    queue_s = 0.0
    # Waiting batch requests are behind an interactive one, not ahead of it.
    ahead = node.active + node.waiting - (0 if request.batch else node.waiting_batch)
    over = ahead - node.slots + 1
    if over > 0:
        queue_s = over * _service_s(node, run_s) / node.slots
    estimate = Estimate(queue_s=queue_s, load_s=load_s, evict_s=evict_s, rtt_s=node.rtt_s, run_s=run_s)
    return Ranked(
        node,
        estimate,
        functools.partial(_basis, request, node, figures, tokens, per_token, load_s, evicts, ahead),
    )


def _basis(
    request: RouteRequest,
    node: RouterNode,
    figures: ModelFigures,
    tokens: int,
    per_token: float,
    load_s: float,
    evicts: tuple[str, float, int, int] | None,
    ahead: int,
) -> str:
    """Say what a node's estimate rests on (see _rank)."""
    words = []
    if request.generates:
        shown = figures.tokens_per_s
        words.append(
            f"{1 / per_token:.0f} tok/s "
            + (f"(learnt from {shown.weight:.1f} replies)" if shown else "(not measured yet)")
            + f" x {tokens} tokens"
        )
    words.append("loaded" if request.model in node.loaded else f"not loaded: loads in ~{load_s:.1f} s")
    if evicts is not None:
        lost, reload_s, room, size = evicts
        words.append(
            f"{max(room, 0) // _MIB} MiB free for {size // _MIB} MiB: evicts {short_name(lost)}"
            + (f", to load again in ~{reload_s:.1f} s" if reload_s else ", loaded elsewhere too")
        )
    if ahead - node.slots + 1 > 0:
        words.append(f"{ahead} running or waiting ahead for {node.slots} slot(s)")
    return "; ".join(words)


def _break_ties(
    ranked: list[Ranked], conversation: tuple[str, float] | None, now: float
) -> tuple[list[Ranked], str]:
    """Move the conversation's node, else this machine, first when it is as good as the best."""
    best = ranked[0].estimate.total_s
    if conversation is not None and conversation[1] > now:
        for r in ranked:
            if (
                r.node.node_id == conversation[0]
                and r.estimate.total_s <= best * (1 + CONVERSATION_FRACTION) + TIE_S
            ):
                ranked = [r, *(x for x in ranked if x is not r)]
                return ranked, f"{r.node.name}: it holds this conversation and is about as soon to finish"
    for r in ranked:
        if r.node.local and r is not ranked[0] and r.estimate.total_s <= best * (1 + TIE_FRACTION) + TIE_S:
            ranked = [r, *(x for x in ranked if x is not r)]
            return ranked, f"{r.node.name}: this machine, as soon to finish as the best"
    return ranked, f"{ranked[0].node.name}: the soonest to finish"


def _speed_prior(node: RouterNode, model: str, pool: _Pool) -> float:
    """Guess a node's tokens/s for a model it has not run lately.

    Generating a token reads every weight once, so tokens/s times the model's size is about the same
    for all models on one GPU: its memory bandwidth. The node's own, from the models it has run, leaning
    towards the median node's as its figures fade (an untried node is the median node, so it is tried
    once better-known ones are busy), over the model's size.
    """
    size = node.installed.get(model, 0)
    bandwidth = pool.own_or_median(node, _bandwidth)
    if bandwidth is None or size <= 0:
        return DEFAULT_TOKENS_PER_S
    return bandwidth / size


def _bandwidth(node: RouterNode) -> Figure | None:
    """Return the bytes of weights the node reads per second, from the speeds it has shown."""
    return (node.rates or rates(node.figures, node.installed)).bandwidth


def _load_estimate(node: RouterNode, model: str, pool: _Pool) -> float:
    """Estimate how long the node takes to load the model: what it showed for it, blended with a prior."""
    figures = node.figures.get(model, ModelFigures())
    rate = pool.own_or_median(node, _load_rate)
    size_gib = node.installed.get(model, 0) / _GIB
    prior = rate * size_gib if rate is not None else LOAD_BASE_S + LOAD_S_PER_GIB * size_gib
    return _blend(figures.load_s, prior)


def _load_rate(node: RouterNode) -> Figure | None:
    """Return the seconds per GiB the node took to load the models it has loaded (reading the weights)."""
    return (node.rates or rates(node.figures, node.installed)).load_rate


class _Pool:
    """The pool's nodes, and what a decision reads of all of them, worked out once per decision rather
    than once for each node it ranks."""

    def __init__(self, nodes: list[RouterNode]) -> None:
        self.nodes = nodes
        self._figures: dict[object, tuple[dict[str, Figure], float | None]] = {}
        self._tokens: dict[str, int] = {}

    def own_or_median(
        self, node: RouterNode, figure_of: Callable[[RouterNode], Figure | None]
    ) -> float | None:
        """Return a node's own figure blended towards the pool's median one, else the median, else None."""
        if figure_of not in self._figures:
            figures = {n.node_id: f for n in self.nodes if (f := figure_of(n)) is not None}
            median = statistics.median(f.mean for f in figures.values()) if figures else None
            self._figures[figure_of] = (figures, median)
        figures, median = self._figures[figure_of]
        own = figures.get(node.node_id)
        if own is None or median is None:
            return median
        return _blend(own, median)

    def mean_tokens(self, model: str) -> int:
        """Return the pool's mean reply length for the model, in tokens, from every node's figures."""
        if model not in self._tokens:
            means = [f.tokens for n in self.nodes if (f := n.figures.get(model)) and f.tokens]
            weight = sum(f.weight for f in means)
            self._tokens[model] = (
                max(1, round(sum(f.mean * f.weight for f in means) / weight)) if weight else DEFAULT_TOKENS
            )
        return self._tokens[model]


def _weighted(figures: Iterable[tuple[Figure, float]]) -> Figure | None:
    """Combine figures, each scaled by a factor, into one: their weighted mean and total weight."""
    pairs = list(figures)
    weight = sum(f.weight for f, _ in pairs)
    if not weight:
        return None
    return Figure(sum(f.mean * scale * f.weight for f, scale in pairs) / weight, weight)


def _room(node: RouterNode) -> int | None:
    """Return the bytes free for another model: measured VRAM, else the node's peak less what it holds."""
    if node.vram_total_mib:
        return node.vram_free_mib * _MIB
    if node.peak_loaded:
        return node.peak_loaded - sum(node.loaded.values())
    return None


def _loaded_elsewhere(request: RouteRequest, model: str, node: RouterNode, pool: _Pool) -> bool:
    """Tell whether another node that could take this request has the model loaded."""
    return any(
        model in other.loaded and _unfit(dataclasses.replace(request, model=model), other) is None
        for other in pool.nodes
        if other is not node
    )


def _expected_tokens(request: RouteRequest, model: str, pool: _Pool) -> int:
    """Guess the reply's length: the request's limit where it sets one, else the pool's mean for the model."""
    if request.tokens is not None and request.tokens > 0:
        return request.tokens
    return pool.mean_tokens(model)


def _service_s(node: RouterNode, run_s: float) -> float:
    """How long a request ahead in a node's queue holds it: the node's mean, loads included, else this one."""
    return _blend(node.busy_s, run_s)


def _blend(learnt: Figure | None, prior: float) -> float:
    if learnt is None:
        return prior
    return (learnt.mean * learnt.weight + prior * PRIOR_WEIGHT) / (learnt.weight + PRIOR_WEIGHT)


def _inverse(figure: Figure | None) -> Figure | None:
    if figure is None or figure.mean <= 0:
        return None
    return Figure(1.0 / figure.mean, figure.weight)
