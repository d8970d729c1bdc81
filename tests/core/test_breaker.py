"""Circuit breakers: a node that failed a request stays out until a probe lets one trial through."""

from __future__ import annotations

from inferhub_desktop.core.breaker import BreakerState, CircuitBreakers

NODE = "node-a"
FAILED_AT = 100.0


def opened(reason: str = "connection reset") -> CircuitBreakers:
    breakers = CircuitBreakers()
    breakers.failed(NODE, reason, FAILED_AT)
    return breakers


def half_open() -> CircuitBreakers:
    breakers = opened()
    breakers.probed(NODE, FAILED_AT + 1)
    return breakers


def test_a_node_never_seen_is_closed_and_allowed() -> None:
    breakers = CircuitBreakers()
    assert breakers.state(NODE) is BreakerState.CLOSED
    assert breakers.allows(NODE)
    assert breakers.describe(NODE) == "closed"


def test_sending_to_a_closed_node_keeps_it_allowed() -> None:
    breakers = CircuitBreakers()
    for _ in range(3):
        breakers.sent(NODE)
    assert breakers.allows(NODE)
    assert breakers.state(NODE) is BreakerState.CLOSED


def test_one_failure_opens_the_breaker() -> None:
    breakers = opened()
    assert breakers.state(NODE) is BreakerState.OPEN
    assert not breakers.allows(NODE)


def test_a_failure_opens_only_that_nodes_breaker() -> None:
    breakers = opened()
    assert breakers.allows("node-b")
    assert breakers.state("node-b") is BreakerState.CLOSED


def test_a_probe_taken_at_or_before_the_failure_does_not_half_open() -> None:
    breakers = opened()
    breakers.probed(NODE, FAILED_AT - 1)
    breakers.probed(NODE, FAILED_AT)
    assert breakers.state(NODE) is BreakerState.OPEN
    assert not breakers.allows(NODE)


def test_a_probe_after_the_failure_half_opens() -> None:
    breakers = half_open()
    assert breakers.state(NODE) is BreakerState.HALF_OPEN
    assert breakers.allows(NODE)


def test_a_probe_of_a_closed_node_changes_nothing() -> None:
    breakers = CircuitBreakers()
    breakers.probed(NODE, FAILED_AT)
    assert breakers.state(NODE) is BreakerState.CLOSED


def test_half_open_lets_exactly_one_trial_through() -> None:
    breakers = half_open()
    breakers.sent(NODE)
    assert breakers.state(NODE) is BreakerState.HALF_OPEN
    assert not breakers.allows(NODE)


def test_a_later_probe_lets_another_trial_through() -> None:
    # The trial's client may have left: it ended neither way, and must not hold the breaker for good.
    breakers = half_open()
    breakers.sent(NODE)
    breakers.probed(NODE, FAILED_AT + 2)
    assert breakers.allows(NODE)
    breakers.sent(NODE)
    assert not breakers.allows(NODE)


def test_a_trials_success_closes_the_breaker() -> None:
    breakers = half_open()
    breakers.sent(NODE)
    breakers.succeeded(NODE)
    assert breakers.state(NODE) is BreakerState.CLOSED
    assert breakers.allows(NODE)
    assert breakers.describe(NODE) == "closed"


def test_a_trials_failure_reopens_and_counts_the_failures() -> None:
    breakers = half_open()
    breakers.sent(NODE)
    breakers.failed(NODE, "timed out", FAILED_AT + 5)
    assert breakers.state(NODE) is BreakerState.OPEN
    assert not breakers.allows(NODE)
    assert breakers.describe(NODE) == "open after 2 failure(s): timed out"


def test_a_reopened_breaker_waits_for_a_probe_after_the_new_failure() -> None:
    breakers = half_open()
    breakers.failed(NODE, "timed out", FAILED_AT + 5)
    breakers.probed(NODE, FAILED_AT + 5)
    assert breakers.state(NODE) is BreakerState.OPEN
    breakers.probed(NODE, FAILED_AT + 6)
    assert breakers.state(NODE) is BreakerState.HALF_OPEN


def test_describe_says_the_state_the_failures_and_the_last_reason() -> None:
    breakers = opened("connection refused")
    assert breakers.describe(NODE) == "open after 1 failure(s): connection refused"
    breakers.probed(NODE, FAILED_AT + 1)
    assert breakers.describe(NODE) == "half-open after 1 failure(s): connection refused"


def test_success_forgets_the_failure_count() -> None:
    breakers = half_open()
    breakers.succeeded(NODE)
    breakers.failed(NODE, "reset", FAILED_AT + 10)
    assert breakers.describe(NODE) == "open after 1 failure(s): reset"


def test_a_forgotten_node_comes_back_closed() -> None:
    breakers = opened()
    breakers.forget(NODE)
    assert breakers.state(NODE) is BreakerState.CLOSED
    assert breakers.allows(NODE)
    breakers.failed(NODE, "reset", FAILED_AT + 10)
    assert breakers.describe(NODE) == "open after 1 failure(s): reset"


def test_forgetting_or_closing_an_unknown_node_is_harmless() -> None:
    breakers = CircuitBreakers()
    breakers.forget(NODE)
    breakers.succeeded(NODE)
    assert breakers.state(NODE) is BreakerState.CLOSED
