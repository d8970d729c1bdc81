"""choose_route: nodes ranked by when they would finish a request, on hand-built snapshots."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import pytest

from inferhub_desktop.core.names import model_key, short_name
from inferhub_desktop.core.router import (
    CONVERSATION_FRACTION,
    DEFAULT_EMBED_S,
    DEFAULT_TOKENS,
    DEFAULT_TOKENS_PER_S,
    EVICT_S,
    LOAD_BASE_S,
    LOAD_S_PER_GIB,
    PRIOR_WEIGHT,
    TIE_FRACTION,
    TIE_S,
    Estimate,
    Figure,
    ModelFigures,
    RouteDecision,
    RouteRequest,
    RouterNode,
    Snapshot,
    choose_route,
)

MODEL = model_key("llama3")
OTHER = model_key("qwen2.5:7b")
THIRD = model_key("mistral")
GIB = 1 << 30
MIB = 1 << 20
SIZE = 4 * GIB
NOW = 1000.0
# A weight so large that a learnt figure all but ignores its prior.
SURE = 1e9


def node(name: str, **overrides: Any) -> RouterNode:
    """A sharing peer, idle, with MODEL installed and loaded and room to spare; override what matters."""
    base = RouterNode(
        node_id=f"id-{name}",
        name=name,
        local=False,
        share=True,
        backend_error=None,
        breaker=None,
        installed={MODEL: SIZE},
        loaded={MODEL: SIZE},
        vram_free_mib=16 * 1024,
        vram_total_mib=24 * 1024,
        active=0,
        waiting=0,
        slots=1,
        queue_full=False,
        rtt_s=0.0,
    )
    return dataclasses.replace(base, **overrides)


def speed(tokens_per_s: float, weight: float = SURE, **more: Figure) -> dict[str, ModelFigures]:
    """Figures for MODEL: a learnt tokens/s and any other figure given."""
    return {MODEL: ModelFigures(tokens_per_s=Figure(tokens_per_s, weight), **more)}


def decide(*nodes: RouterNode, now: float = NOW, conversations: Any = None, **request: Any) -> RouteDecision:
    request.setdefault("model", MODEL)
    return choose_route(RouteRequest(**request), Snapshot(nodes, conversations or {}), now)


def order(decision: RouteDecision) -> list[str]:
    return [r.node.name for r in decision.ranked]


def estimate(decision: RouteDecision, name: str) -> Estimate:
    return next(r.estimate for r in decision.ranked if r.node.name == name)


def left_out(decision: RouteDecision) -> dict[str, str]:
    return {x.node.name: x.reason for x in decision.left_out}


def unloaded_load_s(size: int) -> float:
    """The load time assumed for a model of `size` bytes where no node was seen loading any."""
    return LOAD_BASE_S + LOAD_S_PER_GIB * size / GIB


def blended(learnt: Figure, prior: float) -> float:
    """A learnt mean weighed against its prior, which counts PRIOR_WEIGHT samples."""
    return (learnt.mean * learnt.weight + prior * PRIOR_WEIGHT) / (learnt.weight + PRIOR_WEIGHT)


def load_figure(load_s: float) -> ModelFigures:
    """A load time surely learnt."""
    return ModelFigures(load_s=Figure(load_s, SURE))


# -- which node has the model -------------------------------------------------------------------


def test_a_model_only_one_node_has_goes_to_that_node() -> None:
    here = node("here", local=True, installed={OTHER: SIZE}, loaded={OTHER: SIZE})
    there = node("there")
    decision = decide(here, there)
    assert order(decision) == ["there"]
    assert decision.ranked[0].node is there
    assert "here" in left_out(decision)


def test_no_node_with_the_model_leaves_nothing_ranked() -> None:
    decision = decide(node("here", local=True, installed={}, loaded={}), node("there", installed={}))
    assert decision.ranked == ()
    assert set(left_out(decision)) == {"here", "there"}
    assert "no node" in decision.choice


# -- load, eviction, queue, round trip ---------------------------------------------------------


def test_a_loaded_node_beats_an_unloaded_one_of_equal_speed() -> None:
    cold = node("cold", loaded={}, figures=speed(50))
    warm = node("warm", figures=speed(50))
    decision = decide(cold, warm)
    assert order(decision) == ["warm", "cold"]
    assert estimate(decision, "warm").load_s == 0
    assert estimate(decision, "cold").load_s == pytest.approx(unloaded_load_s(SIZE))
    assert estimate(decision, "cold").run_s == pytest.approx(estimate(decision, "warm").run_s)


def test_a_learnt_load_time_is_blended_with_the_prior() -> None:
    # The prior is the node's seconds per GiB over the models it loaded, this one included, each as
    # much as its weight; in a pool of one it is also the median rate.
    learnt, other_load, other_size = Figure(12.0, 2.0), 1.0, 2 * GIB
    cold = node(
        "cold",
        installed={MODEL: SIZE, OTHER: other_size},
        loaded={},
        figures={MODEL: ModelFigures(load_s=learnt), OTHER: load_figure(other_load)},
    )
    rate = (learnt.mean / (SIZE / GIB) * learnt.weight + other_load / (other_size / GIB) * SURE) / (
        learnt.weight + SURE
    )
    prior = rate * SIZE / GIB
    assert prior != pytest.approx(learnt.mean)
    assert estimate(decide(cold), "cold").load_s == pytest.approx(blended(learnt, prior))


def test_an_unloaded_model_loads_at_the_nodes_own_rate_for_the_models_it_loaded() -> None:
    # Its seconds per GiB, averaged over its models, times this model's size; a quicker node's rate
    # does not count for it.
    other, third = (1.0, 2 * GIB), (20.0, 8 * GIB)
    mine = node(
        "mine",
        installed={MODEL: SIZE, OTHER: other[1], THIRD: third[1]},
        loaded={},
        figures={OTHER: load_figure(other[0]), THIRD: load_figure(third[0])},
    )
    quick = node("quick", installed={MODEL: SIZE, OTHER: other[1]}, figures={OTHER: load_figure(0.01)})
    rate = (other[0] / (other[1] / GIB) + third[0] / (third[1] / GIB)) / 2
    decision = decide(mine, quick)
    assert estimate(decision, "mine").load_s == pytest.approx(rate * SIZE / GIB)
    assert estimate(decision, "mine").load_s != pytest.approx(unloaded_load_s(SIZE))


@pytest.mark.parametrize("rates", [(0.25, 1.0, 4.0), (0.5, 1.0, 3.0, 9.0)], ids=["odd", "even"])
def test_a_node_never_seen_loading_takes_the_median_nodes_load_rate(rates: tuple[float, ...]) -> None:
    other_size = 2 * GIB
    known = [
        node(f"k{i}", installed={MODEL: SIZE, OTHER: other_size}, figures={OTHER: load_figure(r * 2)})
        for i, r in enumerate(rates)
    ]
    decision = decide(*known, node("new", loaded={}))
    assert estimate(decision, "new").load_s == pytest.approx(statistics.median(rates) * SIZE / GIB)


@pytest.mark.parametrize("size", [GIB // 2, SIZE, 40 * GIB])
def test_with_no_load_seen_anywhere_the_default_load_time_is_assumed(size: int) -> None:
    decision = decide(node("cold", installed={MODEL: size}, loaded={}))
    assert estimate(decision, "cold").load_s == pytest.approx(LOAD_BASE_S + LOAD_S_PER_GIB * size / GIB)


def crossover_tokens(fast: float, slow: float, load_s: float) -> float:
    """Tokens past which loading on the fast node finishes sooner than running on the loaded slow one."""
    return load_s / (1 / slow - 1 / fast)


@pytest.mark.parametrize(("fast", "slow", "size_gib"), [(100.0, 20.0, 8), (60.0, 40.0, 2), (200.0, 10.0, 30)])
def test_a_much_faster_cold_node_wins_only_when_the_reply_is_long_enough(
    fast: float, slow: float, size_gib: int
) -> None:
    size = size_gib * GIB
    roomy = {"vram_free_mib": 64 * 1024, "vram_total_mib": 80 * 1024}
    quick = node("quick", installed={MODEL: size}, loaded={}, figures=speed(fast), **roomy)
    plodding = node("plodding", installed={MODEL: size}, loaded={MODEL: size}, figures=speed(slow), **roomy)
    crossover = crossover_tokens(fast, slow, unloaded_load_s(size))
    short, long = int(crossover / 2), int(crossover * 2)
    assert short >= 1

    assert order(decide(quick, plodding, tokens=short)) == ["plodding", "quick"]
    assert order(decide(quick, plodding, tokens=long)) == ["quick", "plodding"]


def test_a_node_with_every_slot_busy_ranks_behind_an_idle_one_of_equal_speed() -> None:
    # Even this machine, which otherwise wins ties, loses to an idle peer when it must queue.
    busy = node("busy", local=True, active=1, slots=1, figures=speed(50))
    idle = node("idle", figures=speed(50))
    decision = decide(busy, idle)
    assert order(decision) == ["idle", "busy"]
    assert estimate(decision, "idle").queue_s == 0
    assert estimate(decision, "busy").queue_s > 0


@pytest.mark.parametrize(
    ("active", "waiting", "slots"),
    [(0, 0, 1), (1, 0, 2), (1, 0, 1), (2, 0, 2), (3, 1, 2), (2, 3, 2), (4, 4, 4), (7, 2, 3)],
)
def test_the_queue_wait_scales_with_the_requests_ahead_per_slot(
    active: int, waiting: int, slots: int
) -> None:
    decision = decide(node("n", active=active, waiting=waiting, slots=slots))
    ahead = max(0, active + waiting - slots + 1)
    got = estimate(decision, "n")
    # With no run time learnt for the node, each request ahead is taken to be as long as this one.
    assert got.queue_s == pytest.approx(ahead / slots * got.run_s)


def test_an_interactive_request_counts_no_waiting_batch_work_ahead_of_it_and_a_batch_one_counts_all() -> None:
    busy = node("busy", active=2, waiting=5, waiting_batch=4, slots=2)
    interactive, batch = estimate(decide(busy), "busy"), estimate(decide(busy, batch=True), "busy")
    # Interactive: the 2 running and the 1 interactive waiting are ahead; batch: all 7.
    assert interactive.queue_s == pytest.approx((2 + 1 - 2 + 1) / 2 * interactive.run_s)
    assert batch.queue_s == pytest.approx((2 + 5 - 2 + 1) / 2 * batch.run_s)
    # To an interactive request, batch work waiting is as if it were not there.
    plain = node("plain", active=2, waiting=1, slots=2)
    assert estimate(decide(plain), "plain").queue_s == pytest.approx(interactive.queue_s)


def test_the_queue_wait_uses_the_nodes_mean_busy_time_when_it_has_one() -> None:
    mean_busy = 7.5
    decision = decide(node("n", active=3, slots=2, busy_s=Figure(mean_busy, SURE)))
    assert estimate(decision, "n").queue_s == pytest.approx((3 - 2 + 1) / 2 * mean_busy)
    assert estimate(decision, "n").run_s != pytest.approx(mean_busy)


def test_a_little_learnt_busy_time_is_blended_with_this_requests_run_time() -> None:
    busy = Figure(7.5, 1.0)
    decision = decide(node("n", active=1, slots=1, busy_s=busy))
    got = estimate(decision, "n")
    assert got.queue_s == pytest.approx(blended(busy, got.run_s))


def full(name: str, held: dict[str, int], **overrides: Any) -> RouterNode:
    """A node with MODEL and `held` installed, only `held` loaded, and no VRAM free unless overridden."""
    return node(name, **{"installed": {MODEL: SIZE, **held}, "loaded": held, "vram_free_mib": 0, **overrides})


def ranked(decision: RouteDecision, name: str) -> Any:
    return next(r for r in decision.ranked if r.node.name == name)


def test_eviction_counts_only_when_the_model_does_not_fit_in_free_vram() -> None:
    size_mib = SIZE // MIB
    short_of_room = full("short", {OTHER: SIZE}, vram_free_mib=size_mib - 1)
    just_fits = full("fits", {THIRD: SIZE}, vram_free_mib=size_mib)
    decision = decide(short_of_room, just_fits)
    # No load was seen anywhere and no other node holds OTHER: loading it again costs the default.
    assert estimate(decision, "short").evict_s == pytest.approx(EVICT_S + unloaded_load_s(SIZE))
    assert estimate(decision, "fits").evict_s == 0
    assert order(decision) == ["fits", "short"]


def test_eviction_is_not_counted_on_a_node_with_nothing_loaded() -> None:
    decision = decide(node("empty", loaded={}, vram_free_mib=0))
    assert estimate(decision, "empty").evict_s == 0
    assert estimate(decision, "empty").load_s > 0


def test_eviction_is_not_counted_without_a_vram_reading_or_a_peak() -> None:
    decision = decide(full("blind", {OTHER: SIZE}, vram_total_mib=0, peak_loaded=0))
    assert estimate(decision, "blind").evict_s == 0
    assert estimate(decision, "blind").load_s > 0


@pytest.mark.parametrize(
    ("held", "evicts"),
    [
        ({OTHER: SIZE}, False),
        ({OTHER: SIZE + 1}, True),
        ({OTHER: SIZE // 2, THIRD: SIZE // 2}, False),
        ({OTHER: SIZE // 2, THIRD: SIZE // 2 + 1}, True),
    ],
    ids=["fits-exactly", "a-byte-short", "two-fit", "two-a-byte-short"],
)
def test_without_a_vram_reading_the_room_is_the_peak_less_what_is_loaded(
    held: dict[str, int], evicts: bool
) -> None:
    peak = 2 * SIZE
    assert (peak - sum(held.values()) < SIZE) is evicts
    decision = decide(full("n", held, vram_total_mib=0, peak_loaded=peak))
    assert (estimate(decision, "n").evict_s > 0) is evicts


def test_a_vram_reading_outweighs_the_peak() -> None:
    roomy_peak = {"installed": {MODEL: SIZE, OTHER: SIZE}, "loaded": {OTHER: SIZE}, "peak_loaded": 9 * SIZE}
    short = node("short", vram_free_mib=SIZE // MIB - 1, **roomy_peak)
    assert estimate(decide(short), "short").evict_s > 0
    tight_peak = {"installed": {MODEL: SIZE, OTHER: SIZE}, "loaded": {OTHER: SIZE}, "peak_loaded": SIZE}
    roomy = node("roomy", vram_free_mib=SIZE // MIB, **tight_peak)
    assert estimate(decide(roomy), "roomy").evict_s == 0


def test_eviction_loses_the_loaded_model_cheapest_to_load_again() -> None:
    small, big = GIB, 8 * GIB
    decision = decide(full("n", {THIRD: big, OTHER: small}))
    got = ranked(decision, "n")
    assert got.estimate.evict_s == pytest.approx(EVICT_S + unloaded_load_s(small))
    assert f"evicts {short_name(OTHER)}" in got.basis
    assert f"load again in ~{unloaded_load_s(small):.1f} s" in got.basis


def test_a_model_another_node_holds_costs_nothing_to_load_again() -> None:
    # The bigger model is loaded elsewhere, so losing it here is cheaper than losing the small one.
    small, big = GIB, 8 * GIB
    elsewhere = node("elsewhere", installed={THIRD: big}, loaded={THIRD: big})
    decision = decide(full("n", {THIRD: big, OTHER: small}), elsewhere)
    got = ranked(decision, "n")
    assert got.estimate.evict_s == pytest.approx(EVICT_S)
    assert f"evicts {short_name(THIRD)}" in got.basis
    assert "loaded elsewhere" in got.basis


@pytest.mark.parametrize(
    "unusable",
    [{"share": False}, {"backend_error": "connection refused"}, {"breaker": "open after 1 failure(s)"}],
    ids=["not sharing", "backend down", "breaker open"],
)
def test_a_model_held_only_by_a_node_that_cannot_serve_must_be_loaded_again(unusable: dict[str, Any]) -> None:
    small, big = GIB, 8 * GIB
    holder = node("holder", installed={THIRD: big}, loaded={THIRD: big}, **unusable)
    got = ranked(decide(full("n", {THIRD: big, OTHER: small}), holder), "n")
    assert got.estimate.evict_s == pytest.approx(EVICT_S + unloaded_load_s(small))
    assert "loaded elsewhere" not in got.basis


def test_the_cost_of_loading_the_lost_model_again_is_at_this_nodes_load_rate() -> None:
    third_load, third_size, held = 4.0, 8 * GIB, 2 * GIB
    n = node(
        "n",
        installed={MODEL: SIZE, OTHER: held, THIRD: third_size},
        loaded={OTHER: held},
        vram_free_mib=0,
        figures={THIRD: load_figure(third_load)},
    )
    rate = third_load / (third_size / GIB)
    got = estimate(decide(n), "n")
    assert got.load_s == pytest.approx(rate * SIZE / GIB)
    assert got.evict_s == pytest.approx(EVICT_S + rate * held / GIB)


def test_eviction_is_not_counted_for_a_loaded_model() -> None:
    decision = decide(node("full", vram_free_mib=0))
    assert estimate(decision, "full").evict_s == 0
    assert estimate(decision, "full").load_s == 0


def test_eviction_waits_for_a_busy_runner_to_finish() -> None:
    # Two slots and one busy: no queue, but the runner must finish before its model can be stopped.
    # Both hold OTHER, so losing it costs no load elsewhere; only the wait differs.
    decision = decide(full("idle", {OTHER: SIZE}), full("busy", {OTHER: SIZE}, active=1, slots=2))
    idle, busy = estimate(decision, "idle"), estimate(decision, "busy")
    assert busy.queue_s == 0
    assert idle.evict_s == pytest.approx(EVICT_S)
    assert busy.evict_s == pytest.approx(EVICT_S + busy.run_s)
    assert order(decision) == ["idle", "busy"]


def test_eviction_waits_for_the_nodes_mean_busy_time_when_it_has_one() -> None:
    mean_busy = Figure(9.0, 2.0)
    decision = decide(
        full("idle", {OTHER: SIZE}), full("busy", {OTHER: SIZE}, active=1, slots=2, busy_s=mean_busy)
    )
    busy = estimate(decision, "busy")
    assert busy.evict_s == pytest.approx(EVICT_S + blended(mean_busy, busy.run_s))


def test_the_round_trip_counts_and_breaks_otherwise_equal_peers() -> None:
    near, far = node("near", rtt_s=0.001), node("far", rtt_s=0.4)
    decision = decide(far, near)
    assert estimate(decision, "far").rtt_s == pytest.approx(0.4)
    assert estimate(decision, "far").total_s - estimate(decision, "near").total_s == pytest.approx(0.399)
    assert order(decision) == ["near", "far"]


# -- speeds: priors and learnt figures ----------------------------------------------------------


def test_with_no_speed_known_anywhere_the_default_speed_is_assumed() -> None:
    decision = decide(node("n"), tokens=100)
    assert estimate(decision, "n").run_s == pytest.approx(100 / DEFAULT_TOKENS_PER_S)


def sized(name: str, size: int, tokens_per_s: float) -> RouterNode:
    """A node whose copy of MODEL is `size` bytes, on which it has surely shown `tokens_per_s`."""
    return node(name, installed={MODEL: size}, loaded={MODEL: size}, figures=speed(tokens_per_s))


def test_an_untried_node_is_assumed_to_have_the_median_nodes_bandwidth() -> None:
    # Bandwidth is tokens/s times the bytes read per token: 160, 200 and 360 GiB/s here.
    slow, mid, fast = sized("slow", 8 * GIB, 20), sized("mid", 2 * GIB, 100), sized("fast", SIZE, 90)
    decision = decide(slow, mid, fast, node("new"), tokens=180)
    median = statistics.median([20 * 8 * GIB, 100 * 2 * GIB, 90 * SIZE])
    assert median == 100 * 2 * GIB
    assert estimate(decision, "new").run_s == pytest.approx(180 / (median / SIZE))
    # Neither the fastest tokens/s seen nor the median tokens/s.
    assert estimate(decision, "new").run_s != pytest.approx(180 / 100)
    assert estimate(decision, "new").run_s != pytest.approx(180 / 90)
    assert order(decision) == ["mid", "fast", "new", "slow"]


def test_a_nodes_speed_on_other_models_sets_its_prior_for_an_untried_one() -> None:
    # Its own bandwidth, the mean over the models it ran, counts before a far faster node's.
    other, third = (90.0, 2 * GIB), (30.0, 8 * GIB)
    mine = node(
        "mine",
        installed={MODEL: SIZE, OTHER: other[1], THIRD: third[1]},
        figures={
            OTHER: ModelFigures(tokens_per_s=Figure(other[0], SURE)),
            THIRD: ModelFigures(tokens_per_s=Figure(third[0], SURE)),
        },
    )
    bandwidth = (other[0] * other[1] + third[0] * third[1]) / 2
    decision = decide(mine, node("quick", figures=speed(500)), tokens=100)
    assert estimate(decision, "mine").run_s == pytest.approx(100 / (bandwidth / SIZE))
    assert bandwidth / SIZE != pytest.approx(DEFAULT_TOKENS_PER_S)


def test_a_model_of_unknown_size_is_assumed_to_run_at_the_default_speed() -> None:
    shown = {OTHER: ModelFigures(tokens_per_s=Figure(90.0, SURE))}
    n = node("n", installed={MODEL: 0, OTHER: 2 * GIB}, loaded={MODEL: 0}, figures=shown)
    assert estimate(decide(n, tokens=100), "n").run_s == pytest.approx(100 / DEFAULT_TOKENS_PER_S)


def test_one_slow_sample_pulls_an_untried_node_below_the_fastest() -> None:
    fast = node("fast", figures=speed(100, weight=5))
    assert estimate(decide(fast, node("new"), tokens=100), "new").run_s == pytest.approx(1.0)

    decision = decide(fast, node("new", figures=speed(10, weight=1)), tokens=100)
    assert order(decision) == ["fast", "new"]
    assert estimate(decision, "new").run_s > estimate(decision, "fast").run_s


def weighted_bandwidth(n: RouterNode) -> Figure:
    """The node's bytes read per second: tokens/s times size, over its models, as much as each weighs."""
    shown = [(f.tokens_per_s, n.installed[m]) for m, f in n.figures.items() if f.tokens_per_s]
    weight = sum(f.weight for f, _ in shown)
    return Figure(sum(f.mean * size * f.weight for f, size in shown) / weight, weight)


def with_other_model_shown(learnt: Figure, other_tokens_per_s: float, other_size: int) -> RouterNode:
    """A node that has learnt `learnt` for MODEL and surely shown a speed on OTHER."""
    return node(
        "n",
        installed={MODEL: SIZE, OTHER: other_size},
        figures={
            MODEL: ModelFigures(tokens_per_s=learnt),
            OTHER: ModelFigures(tokens_per_s=Figure(other_tokens_per_s, SURE)),
        },
    )


def test_learnt_speeds_are_blended_with_the_prior_as_seconds_per_token() -> None:
    learnt, other_size = Figure(25.0, 2.0), 2 * GIB
    n = with_other_model_shown(learnt, 150.0, other_size)
    own = weighted_bandwidth(n)
    median = (own.mean + 1000 * SIZE) / 2  # of n and "fast"
    prior = blended(own, median) / SIZE
    assert prior != pytest.approx(learnt.mean)
    decision = decide(node("fast", figures=speed(1000)), n, tokens=200)
    per_token = blended(Figure(1 / learnt.mean, learnt.weight), 1 / prior)
    assert estimate(decision, "n").run_s == pytest.approx(200 * per_token)
    # Not the blend of tokens/s, which would make the slow node look faster than it is.
    assert estimate(decision, "n").run_s != pytest.approx(200 / blended(learnt, prior))


def test_a_faded_figure_leans_back_to_the_prior() -> None:
    faded, other_size = Figure(5.0, 1e-6), 2 * GIB
    n = with_other_model_shown(faded, 190.0, other_size)
    own = weighted_bandwidth(n)
    prior = blended(own, (own.mean + 1000 * SIZE) / 2) / SIZE
    decision = decide(node("fast", figures=speed(1000)), n, tokens=100)
    assert estimate(decision, "n").run_s == pytest.approx(100 / prior, rel=1e-3)
    assert estimate(decision, "n").run_s != pytest.approx(100 / faded.mean, rel=1e-3)


def test_a_learnt_prompt_time_adds_to_the_run_time() -> None:
    figures = speed(50, prompt_s=Figure(2.0, SURE))
    decision = decide(node("n", figures=figures), tokens=100)
    assert estimate(decision, "n").run_s == pytest.approx(100 / 50 + 2.0)


# -- the reply's expected length ---------------------------------------------------------------


def tokens_figures(*figures: Figure) -> list[RouterNode]:
    """Nodes that have learnt reply lengths but no speed, so run time is tokens at the default speed."""
    return [node(f"t{i}", figures={MODEL: ModelFigures(tokens=f)}) for i, f in enumerate(figures)]


def expected_tokens(decision: RouteDecision) -> float:
    return decision.ranked[0].estimate.run_s * DEFAULT_TOKENS_PER_S


def test_without_a_limit_or_a_history_the_default_length_is_assumed() -> None:
    assert expected_tokens(decide(node("n"))) == pytest.approx(DEFAULT_TOKENS)


@pytest.mark.parametrize("limit", [0, -1])
def test_a_non_positive_limit_counts_as_no_limit(limit: int) -> None:
    assert expected_tokens(decide(node("n"), tokens=limit)) == pytest.approx(DEFAULT_TOKENS)


def test_without_a_history_the_requests_limit_is_the_length() -> None:
    assert expected_tokens(decide(node("n"), tokens=DEFAULT_TOKENS * 3)) == pytest.approx(DEFAULT_TOKENS * 3)


def test_the_pools_mean_reply_length_is_weighted_across_nodes() -> None:
    history = (Figure(100.0, 1.0), Figure(200.0, 3.0))
    mean = sum(f.mean * f.weight for f in history) / sum(f.weight for f in history)
    assert expected_tokens(decide(*tokens_figures(*history))) == pytest.approx(mean)


@pytest.mark.parametrize("limit", [40, 150, 5000])
def test_the_requests_limit_is_the_length_whatever_the_pools_mean(limit: int) -> None:
    history = (Figure(100.0, 1.0), Figure(200.0, 3.0))
    mean = sum(f.mean * f.weight for f in history) / sum(f.weight for f in history)
    assert limit != pytest.approx(mean)
    assert expected_tokens(decide(*tokens_figures(*history), tokens=limit)) == pytest.approx(limit)


# -- embeddings and reads ----------------------------------------------------------------------


def test_an_embedding_is_estimated_by_run_time_not_tokens() -> None:
    untried = decide(node("n", figures=speed(5)), generates=False, tokens=100_000)
    assert estimate(untried, "n").run_s == pytest.approx(DEFAULT_EMBED_S)

    learnt = decide(node("n", figures={MODEL: ModelFigures(run_s=Figure(0.8, SURE))}), generates=False)
    assert estimate(learnt, "n").run_s == pytest.approx(0.8)


def test_an_embedding_goes_to_the_node_with_the_shorter_learnt_run_time() -> None:
    quick = node("quick", figures={MODEL: ModelFigures(run_s=Figure(0.05, SURE))})
    slow = node("slow", local=True, figures={MODEL: ModelFigures(run_s=Figure(2.0, SURE))})
    assert order(decide(slow, quick, generates=False)) == ["quick", "slow"]


def test_a_read_ranks_by_round_trip_only() -> None:
    # The nearer node is cold, busy and slow; none of that matters for a read.
    near = node("near", rtt_s=0.001, loaded={}, active=5, figures=speed(1), vram_free_mib=0)
    far = node("far", rtt_s=0.05, figures=speed(500))
    decision = decide(far, near, read=True)
    assert order(decision) == ["near", "far"]
    assert estimate(decision, "near") == Estimate(rtt_s=0.001)


def test_a_read_goes_to_this_machine_first_on_equal_round_trips() -> None:
    decision = decide(node("aa"), node("zz", local=True), read=True)
    assert order(decision) == ["zz", "aa"]


def test_a_full_queue_does_not_keep_out_a_read() -> None:
    decision = decide(node("full", queue_full=True), read=True)
    assert order(decision) == ["full"]


# -- ties --------------------------------------------------------------------------------------


def test_an_exact_tie_goes_to_this_machine() -> None:
    # The peer sorts first by name and comes first in the snapshot; this machine still wins.
    decision = decide(node("aa"), node("zz", local=True))
    assert order(decision) == ["zz", "aa"]
    assert estimate(decision, "zz").total_s == estimate(decision, "aa").total_s


def test_an_exact_tie_between_peers_does_not_depend_on_snapshot_order() -> None:
    first, second = node("p1"), node("p2")
    assert order(decide(first, second)) == order(decide(second, first))


# A long generation, where the relative part of a margin dominates, and a short embedding, where the
# absolute part does.
KINDS = pytest.mark.parametrize(
    "kind", [{"generates": True}, {"generates": False}], ids=["generation", "embedding"]
)


def local_behind_by(fraction_of_margin: float, kind: dict[str, bool]) -> tuple[RouterNode, RouterNode]:
    """A peer and this machine, later by `fraction_of_margin` of the near-tie margin."""
    peer = node("peer")
    best = estimate(decide(peer, **kind), "peer").total_s
    behind = fraction_of_margin * (best * TIE_FRACTION + TIE_S)
    return peer, node("local", local=True, rtt_s=peer.rtt_s + behind)


@KINDS
def test_a_near_tie_goes_to_this_machine(kind: dict[str, bool]) -> None:
    peer, local = local_behind_by(0.9, kind)
    decision = decide(peer, local, **kind)
    assert estimate(decision, "local").total_s > estimate(decision, "peer").total_s
    assert order(decision) == ["local", "peer"]


@KINDS
def test_this_machine_does_not_win_beyond_the_tie_margin(kind: dict[str, bool]) -> None:
    peer, local = local_behind_by(1.1, kind)
    assert order(decide(peer, local, **kind)) == ["peer", "local"]


def conversation_setup(
    fraction_of_margin: float, kind: dict[str, bool] | None = None
) -> tuple[RouterNode, RouterNode]:
    """The best peer, and a peer holding the conversation behind it by that much of the margin."""
    best = node("best")
    total = estimate(decide(best, **(kind or {})), "best").total_s
    behind = fraction_of_margin * (total * CONVERSATION_FRACTION + TIE_S)
    return best, node("holder", rtt_s=behind)


@KINDS
def test_a_live_conversation_stays_on_its_node_within_the_conversation_margin(kind: dict[str, bool]) -> None:
    best, holder = conversation_setup(0.9, kind)
    # Further behind than a plain near tie would allow.
    assert CONVERSATION_FRACTION > TIE_FRACTION
    live = {"c": (holder.node_id, NOW + 60)}
    decision = decide(best, holder, conversation="c", conversations=live, **kind)
    assert order(decision) == ["holder", "best"]
    assert "conversation" in decision.choice


@KINDS
def test_a_conversation_moves_when_its_node_is_beyond_the_margin(kind: dict[str, bool]) -> None:
    best, holder = conversation_setup(1.1, kind)
    live = {"c": (holder.node_id, NOW + 60)}
    decision = decide(best, holder, conversation="c", conversations=live, **kind)
    assert order(decision) == ["best", "holder"]


@pytest.mark.parametrize("until", [NOW, NOW - 1])
def test_an_expired_conversation_does_not_count(until: float) -> None:
    best, holder = conversation_setup(0.5)
    decision = decide(best, holder, conversation="c", conversations={"c": (holder.node_id, until)})
    assert order(decision) == ["best", "holder"]


def test_another_conversations_node_does_not_count() -> None:
    best, holder = conversation_setup(0.5)
    decision = decide(best, holder, conversation="mine", conversations={"theirs": (holder.node_id, NOW + 60)})
    assert order(decision) == ["best", "holder"]


def test_the_conversations_node_wins_over_this_machines_near_tie() -> None:
    best, holder = conversation_setup(0.5)
    local = dataclasses.replace(best, name="local", node_id="id-local", local=True)
    decision = decide(best, holder, local, conversation="c", conversations={"c": (holder.node_id, NOW + 60)})
    assert order(decision)[0] == "holder"


def test_a_conversation_on_a_node_that_cannot_serve_goes_elsewhere() -> None:
    best, holder = conversation_setup(0.5)
    broken = dataclasses.replace(holder, breaker="open after 1 failure(s): reset")
    decision = decide(best, broken, conversation="c", conversations={"c": (holder.node_id, NOW + 60)})
    assert order(decision) == ["best"]


# -- nodes left out ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "request_fields", "words"),
    [
        ({}, {"local_only": True}, "only itself"),
        ({"share": False}, {}, "not sharing"),
        ({"backend_error": "connection refused"}, {}, "connection refused"),
        ({"breaker": "open after 2 failure(s): reset"}, {}, "open after 2 failure(s): reset"),
        ({"installed": {OTHER: SIZE}, "loaded": {}}, {}, short_name(MODEL)),
        ({"queue_full": True}, {}, "queue is full"),
    ],
    ids=["local-only", "not-sharing", "backend-error", "breaker", "not-installed", "queue-full"],
)
def test_a_peer_that_cannot_serve_is_left_out_with_its_reason(
    overrides: dict[str, Any], request_fields: dict[str, Any], words: str
) -> None:
    here = node("here", local=True)
    peer = node("peer", **overrides)
    decision = decide(here, peer, **request_fields)
    assert order(decision) == ["here"]
    assert words in left_out(decision)["peer"]
    # A peer the local-only switch keeps out is not in this machine's pool, model or not.
    has_model = MODEL in peer.installed and not request_fields.get("local_only", False)
    assert decision.left_out[0].has_model is has_model


@pytest.mark.parametrize(
    "overrides",
    [
        {"backend_error": "not running"},
        {"breaker": "open"},
        {"queue_full": True},
        {"installed": {}, "loaded": {}},
    ],
    ids=["backend-error", "breaker", "queue-full", "not-installed"],
)
def test_this_machine_is_left_out_for_the_same_reasons(overrides: dict[str, Any]) -> None:
    decision = decide(node("here", local=True, **overrides), node("peer"))
    assert order(decision) == ["peer"]
    assert "here" in left_out(decision)


def test_this_machine_serves_itself_though_it_does_not_share() -> None:
    assert order(decide(node("here", local=True, share=False), local_only=True)) == ["here"]


def test_left_out_says_whether_the_node_has_the_model() -> None:
    decision = decide(
        node("here", local=True),
        node("broken", backend_error="down"),
        node("without", installed={OTHER: SIZE}, loaded={}),
    )
    has_model = {x.node.name: x.has_model for x in decision.left_out}
    assert has_model == {"broken": True, "without": False}


def test_with_local_only_a_peer_does_not_count_as_having_the_model_but_this_machine_does() -> None:
    decision = decide(node("here", local=True, breaker="open"), node("peer"), local_only=True)
    has_model = {x.node.name: x.has_model for x in decision.left_out}
    assert has_model == {"here": True, "peer": False}


# -- pinned requests and requests without a model ----------------------------------------------


@pytest.mark.parametrize("pin", ["Box-2", "box-2", "BOX-2", "id-box-2", "ID-Box-2"])
def test_a_pinned_request_goes_to_its_node_by_name_or_id(pin: str) -> None:
    decision = decide(node("here", local=True), node("box-1"), node("box-2", rtt_s=0.3), pin=pin)
    assert order(decision) == ["box-2"]
    assert estimate(decision, "box-2") == Estimate(rtt_s=0.3)
    assert set(left_out(decision)) == {"here", "box-1"}


def test_a_pinned_request_goes_to_its_node_whatever_its_state() -> None:
    wreck = node(
        "wreck",
        share=False,
        backend_error="down",
        breaker="open",
        installed={},
        loaded={},
        queue_full=True,
        active=9,
    )
    decision = decide(node("here", local=True), wreck, pin="wreck", local_only=True)
    assert order(decision) == ["wreck"]


def test_a_pin_that_matches_no_node_ranks_none() -> None:
    decision = decide(node("here", local=True), node("peer"), pin="elsewhere")
    assert decision.ranked == ()
    assert set(left_out(decision)) == {"here", "peer"}
    assert "elsewhere" in decision.choice


def test_a_name_two_nodes_share_pins_the_first_and_says_why_the_other_is_left_out() -> None:
    twin_a = node("twin", node_id="id-a", local=True)
    twin_b = node("twin", node_id="id-b")
    decision = decide(twin_a, twin_b, node("other"), pin="twin")
    assert [r.node.node_id for r in decision.ranked] == ["id-a"]
    reasons = {x.node.node_id: x.reason for x in decision.left_out}
    assert reasons == {
        "id-b": "pinned to another node of the same name; pin it by id",
        "id-other": "not the pinned node",
    }
    assert [r.node.node_id for r in decide(twin_a, twin_b, pin="ID-B").ranked] == ["id-b"]


def test_a_request_naming_no_model_is_this_machines() -> None:
    decision = decide(node("peer"), node("here", local=True, installed={}, loaded={}), model=None)
    assert order(decision) == ["here"]
    assert decision.model is None


# -- the decision as JSON ----------------------------------------------------------------------


def test_the_decision_as_json() -> None:
    decision = decide(
        node("here", local=True, loaded={}, rtt_s=0.0),
        node("peer", rtt_s=0.123456),
        node("broken", backend_error="down"),
    )
    data = decision.to_json()
    assert data["model"] == short_name(MODEL) == "llama3:latest"
    assert data["choice"] == decision.choice
    assert [r["node"] for r in data["ranked"]] == order(decision)
    for entry, ranked in zip(data["ranked"], decision.ranked, strict=True):
        assert set(entry) == {
            "node",
            "id",
            "local",
            "total_s",
            "queue_s",
            "load_s",
            "evict_s",
            "rtt_s",
            "run_s",
            "basis",
        }
        assert entry["id"] == ranked.node.node_id
        assert entry["local"] is ranked.node.local
        assert entry["basis"] == ranked.basis
        for term, value in dataclasses.asdict(ranked.estimate).items():
            assert entry[term] == round(value, 3)
        assert entry["total_s"] == round(ranked.estimate.total_s, 3)
    peer = next(r for r in data["ranked"] if r["node"] == "peer")
    assert peer["rtt_s"] == 0.123
    assert data["left_out"] == [
        {"node": "broken", "id": "id-broken", "local": False, "reason": left_out(decision)["broken"]}
    ]


def test_the_decision_as_json_names_a_namespaced_model_short_and_no_model_as_none() -> None:
    key = model_key("someone/model:q4")
    decision = decide(node("n", installed={key: SIZE}), model=key)
    assert decision.to_json()["model"] == "someone/model:q4"
    assert decide(node("here", local=True), model=None).to_json()["model"] is None


# -- bugs --------------------------------------------------------------------------------------


def test_a_zero_tokens_per_s_figure_does_not_break_routing() -> None:
    decision = decide(node("here", local=True), node("odd", figures=speed(0.0, weight=1.0)))
    assert "here" in order(decision)


# -- the owner first ----------------------------------------------------------------------------------


def test_a_peer_paused_for_its_owner_is_left_out_saying_why() -> None:
    paused = node("desk", paused="blender is using the GPU (2.0 GiB)")
    decision = decide(paused, node("other"))
    assert order(decision) == ["other"]
    assert left_out(decision) == {"desk": "sharing paused by its owner: blender is using the GPU (2.0 GiB)"}


def test_a_peer_whose_owner_keeps_vram_takes_no_load_that_would_eat_into_it() -> None:
    # 16 GiB free, 4 GiB models, 13 GiB kept: loading one would leave 12.
    keeps = node("desk", reserve_mib=13 * 1024, installed={MODEL: SIZE, OTHER: SIZE}, loaded={MODEL: SIZE})
    assert left_out(decide(keeps, model=OTHER)) == {
        "desk": "keeps 13 GiB of VRAM for its owner, and loading qwen2.5:7b (4.0 GiB) would leave 12.0 GiB "
        "free"
    }
    # A model loaded already costs nothing more; with 12 GiB kept the load fits.
    assert order(decide(keeps)) == ["desk"]
    assert order(decide(dataclasses.replace(keeps, reserve_mib=12 * 1024), model=OTHER)) == ["desk"]
    # The owner's own requests are not held to it.
    assert order(decide(dataclasses.replace(keeps, local=True), model=OTHER)) == ["desk"]
