"""SpeedBook: what finished requests showed of a backend, as means whose weight halves with age."""

from __future__ import annotations

import json
import math

import pytest

from inferhub_desktop.core.names import model_key
from inferhub_desktop.core.speeds import (
    BUSY_HALF_LIFE_S,
    COLD_LOAD_MIN_S,
    HALF_LIFE_S,
    Observation,
    SpeedBook,
)

MODEL = model_key("llama3")
OTHER = model_key("nomic-embed-text")
T0 = 5000.0


def figures(book: SpeedBook, now: float = T0, model: str = MODEL) -> dict[str, list[float]]:
    result: dict[str, list[float]] = book.snapshot(now).to_json()["models"][model]
    return result


def test_an_empty_book_publishes_nothing() -> None:
    assert SpeedBook().snapshot(T0).to_json() == {"models": {}, "busy_s": None}


def test_tokens_per_second_comes_from_eval_count_over_eval_time() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=3.0, eval_count=120, eval_s=2.0), T0)
    assert figures(book)["tokens_per_s"] == [pytest.approx(120 / 2.0), pytest.approx(1.0)]
    assert figures(book)["tokens"] == [pytest.approx(120), pytest.approx(1.0)]


@pytest.mark.parametrize("eval_count", [0, 1])
def test_a_reply_of_one_token_or_none_teaches_no_speed(eval_count: int) -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=0.5, eval_count=eval_count, eval_s=0.01), T0)
    assert "tokens_per_s" not in figures(book)
    assert figures(book)["tokens"] == [pytest.approx(eval_count), pytest.approx(1.0)]


@pytest.mark.parametrize("eval_s", [None, 0.0])
def test_a_reply_without_an_eval_time_teaches_no_speed(eval_s: float | None) -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=1.0, eval_count=50, eval_s=eval_s), T0)
    assert "tokens_per_s" not in figures(book)


def test_a_reply_that_says_nothing_teaches_only_its_run_time() -> None:
    book = SpeedBook()
    book.observe(OTHER, Observation(total_s=0.2), T0)
    assert figures(book, model=OTHER) == {"run_s": [pytest.approx(0.2), pytest.approx(1.0)]}


def test_the_prompt_time_is_learnt_when_given() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=2.0, prompt_s=0.3), T0)
    assert figures(book)["prompt_s"] == [pytest.approx(0.3), pytest.approx(1.0)]


def test_a_cold_load_is_learnt_and_taken_out_of_the_run_time() -> None:
    load = COLD_LOAD_MIN_S + 2.0
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=load + 1.5, load_s=load), T0)
    assert figures(book)["load_s"] == [pytest.approx(load), pytest.approx(1.0)]
    assert figures(book)["run_s"] == [pytest.approx(1.5), pytest.approx(1.0)]


@pytest.mark.parametrize("load", [0.0, COLD_LOAD_MIN_S / 2, COLD_LOAD_MIN_S * 0.99])
def test_a_warm_start_is_not_learnt_as_a_load(load: float) -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=1.0, load_s=load), T0)
    assert "load_s" not in figures(book)
    assert figures(book)["run_s"][0] == pytest.approx(1.0 - load, abs=1e-4)


def test_a_load_of_exactly_the_threshold_is_a_cold_load() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=1.0, load_s=COLD_LOAD_MIN_S), T0)
    assert figures(book)["load_s"][0] == pytest.approx(COLD_LOAD_MIN_S)


def test_a_load_longer_than_the_total_gives_no_negative_run_time() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=1.0, load_s=3.0), T0)
    assert figures(book)["run_s"][0] == 0


def test_means_average_the_samples_of_the_same_moment() -> None:
    book = SpeedBook()
    for count in (100, 200, 300):
        book.observe(MODEL, Observation(total_s=2.0, eval_count=count, eval_s=1.0), T0)
    assert figures(book)["tokens_per_s"] == [pytest.approx(200), pytest.approx(3.0)]


def test_the_busy_time_of_any_request_spans_every_model() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=3.0), T0)
    book.observe(OTHER, Observation(total_s=1.0), T0)
    assert book.snapshot(T0).to_json()["busy_s"] == [pytest.approx(2.0), pytest.approx(2.0)]


def test_the_busy_time_leaves_out_waiting_for_a_slot() -> None:
    # 5 s in all, of which 1 s prompt, 2 s generating and a 0.5 s cold load: it queued for 1.5 s.
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=5.0, eval_count=40, eval_s=2.0, prompt_s=1.0, load_s=0.5), T0)
    assert book.snapshot(T0).to_json()["busy_s"][0] == pytest.approx(3.5)
    # A short load_duration is the scheduler's, not a load: it does not count.
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=5.0, eval_count=40, eval_s=2.0, prompt_s=1.0, load_s=0.1), T0)
    assert book.snapshot(T0).to_json()["busy_s"][0] == pytest.approx(3.0)


def test_the_busy_time_includes_loads_that_the_run_time_leaves_out() -> None:
    cold, warm = COLD_LOAD_MIN_S + 2.0, COLD_LOAD_MIN_S / 2
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=cold + 1.0, load_s=cold), T0)
    book.observe(OTHER, Observation(total_s=warm + 3.0, load_s=warm), T0)
    data = book.snapshot(T0).to_json()
    assert data["busy_s"] == [pytest.approx((cold + 1.0 + warm + 3.0) / 2, abs=1e-4), pytest.approx(2.0)]
    assert data["models"][MODEL]["run_s"][0] == pytest.approx(1.0, abs=1e-4)
    assert data["models"][OTHER]["run_s"][0] == pytest.approx(3.0, abs=1e-4)


def test_a_samples_weight_halves_every_half_life_while_the_mean_stays() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=2.0, eval_count=100, eval_s=1.0), T0)
    data = book.snapshot(T0 + HALF_LIFE_S).to_json()
    mean, weight = data["models"][MODEL]["tokens_per_s"]
    assert mean == pytest.approx(100)
    assert weight == pytest.approx(0.5, abs=1e-3)
    assert figures(book, T0 + 2 * HALF_LIFE_S)["tokens_per_s"] == [
        pytest.approx(100),
        pytest.approx(0.25, abs=1e-3),
    ]


def test_how_long_requests_hold_the_backend_fades_within_seconds() -> None:
    # It follows the node's load, which changes by the minute; speeds change by the month.
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=2.0, eval_count=100, eval_s=1.0), T0)
    assert BUSY_HALF_LIFE_S < HALF_LIFE_S
    assert book.snapshot(T0 + BUSY_HALF_LIFE_S).to_json()["busy_s"] == [
        pytest.approx(2.0),
        pytest.approx(0.5, abs=1e-3),
    ]
    assert figures(book, T0 + BUSY_HALF_LIFE_S)["tokens_per_s"][1] > 0.9


def test_a_newer_sample_outweighs_an_older_one() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=2.0, eval_count=100, eval_s=1.0), T0)
    book.observe(MODEL, Observation(total_s=2.0, eval_count=40, eval_s=1.0), T0 + HALF_LIFE_S)
    mean, weight = figures(book, T0 + HALF_LIFE_S)["tokens_per_s"]
    assert weight == pytest.approx(1.5)
    assert mean == pytest.approx((100 * 0.5 + 40 * 1.0) / 1.5, abs=1e-3)


def test_reading_does_not_change_what_is_learnt() -> None:
    book, twin = SpeedBook(), SpeedBook()
    for b in (book, twin):
        b.observe(MODEL, Observation(total_s=2.0, eval_count=100, eval_s=1.0), T0)
    for step in range(1, 5):
        book.snapshot(T0 + step * HALF_LIFE_S / 4).to_json()
    assert book.snapshot(T0 + HALF_LIFE_S).to_json() == twin.snapshot(T0 + HALF_LIFE_S).to_json()


def test_a_figure_nobody_renews_fades_out_of_the_book() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=2.0, eval_count=100, eval_s=1.0), T0)
    assert MODEL in book.snapshot(T0 + HALF_LIFE_S).to_json()["models"]
    assert book.snapshot(T0 + 20 * HALF_LIFE_S).to_json() == {"models": {}, "busy_s": None}


def test_a_renewed_figure_stays_while_a_stale_one_fades() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=2.0, prompt_s=0.5), T0)
    later = T0 + 20 * HALF_LIFE_S
    book.observe(MODEL, Observation(total_s=2.0), later)
    assert set(figures(book, later)) == {"run_s"}


def test_to_json_is_plain_json_of_means_and_weights() -> None:
    book = SpeedBook()
    book.observe(
        MODEL,
        Observation(total_s=4.0, eval_count=77, eval_s=3.0, prompt_s=0.1, load_s=0.5),
        T0,
    )
    book.observe(OTHER, Observation(total_s=0.05), T0)
    data = book.snapshot(T0 + 1.0).to_json()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"models", "busy_s"}
    assert set(data["models"]) == {MODEL, OTHER}
    assert set(data["models"][MODEL]) == {"tokens_per_s", "tokens", "prompt_s", "load_s", "run_s"}
    for model_figures in data["models"].values():
        for pair in model_figures.values():
            assert len(pair) == 2
            mean, weight = pair
            assert math.isfinite(mean)
            assert mean >= 0
            assert 0 < weight <= 1
    assert data["models"][MODEL]["tokens_per_s"][0] == pytest.approx(77 / 3.0, abs=1e-4)
    # MODEL's request held the backend for its compute and cold load; OTHER's says only its total.
    assert data["busy_s"][0] == pytest.approx((3.0 + 0.1 + 0.5 + 0.05) / 2, abs=1e-4)


def test_a_read_at_an_earlier_time_does_not_decay_twice() -> None:
    book = SpeedBook()
    book.observe(MODEL, Observation(total_s=2.0, eval_count=100, eval_s=1.0), T0)
    book.snapshot(T0 + 2 * HALF_LIFE_S).to_json()
    book.snapshot(T0 + HALF_LIFE_S).to_json()
    assert figures(book, T0 + 2 * HALF_LIFE_S)["tokens_per_s"][1] == pytest.approx(0.25, abs=1e-3)
