"""Backoff decisions: full jitter, the cap, the deadline, fatal causes."""

from __future__ import annotations

import random

import pytest

from mcp_supervisor.prepare.backoff import (
    FIRST_RETRY,
    STARTING_RETRY,
    Cause,
    full_jitter,
    is_fatal,
    next_retry,
)


def upper(_low: float, high: float) -> float:
    """A 'random' source that always draws the top of the range: the ceiling itself."""
    return high


def test_first_retry_comes_within_100_ms() -> None:
    assert full_jitter(0, cap=2.0, rand=upper) == pytest.approx(FIRST_RETRY)
    assert FIRST_RETRY <= 0.1
    rng = random.Random(7)
    assert all(0 <= full_jitter(0, cap=2.0, rand=rng.uniform) <= 0.1 for _ in range(1000))


def test_ceiling_doubles_until_the_cap() -> None:
    ceilings = [full_jitter(n, cap=2.0, rand=upper) for n in range(8)]
    assert ceilings[:5] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert ceilings[5:] == pytest.approx([2.0, 2.0, 2.0])


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    assert full_jitter(10_000, cap=2.0, rand=upper) == pytest.approx(2.0)


def test_full_jitter_spreads_over_the_whole_range() -> None:
    rng = random.Random(1)
    draws = [full_jitter(10, cap=2.0, rand=rng.uniform) for _ in range(2000)]
    assert min(draws) >= 0 and max(draws) <= 2.0
    # Full jitter, not "cap plus a little noise": small and large delays both occur.
    assert min(draws) < 0.2 and max(draws) > 1.8


def test_retry_never_sleeps_past_the_deadline() -> None:
    decision = next_retry(10, Cause.REFUSED, now=99.5, deadline=100.0, cap=2.0, rand=upper)
    assert decision.delay == pytest.approx(0.5)
    assert not decision.give_up


def test_gives_up_at_the_deadline() -> None:
    assert next_retry(3, Cause.REFUSED, now=100.0, deadline=100.0, cap=2.0).give_up
    assert next_retry(3, Cause.TIMEOUT, now=101.0, deadline=100.0, cap=2.0).give_up


def test_authentication_fails_at_once() -> None:
    assert is_fatal(Cause.AUTHENTICATION)
    assert next_retry(0, Cause.AUTHENTICATION, now=0.0, deadline=60.0, cap=2.0).give_up


@pytest.mark.parametrize("cause", [c for c in Cause if c is not Cause.AUTHENTICATION])
def test_other_causes_are_retried(cause: Cause) -> None:
    assert not is_fatal(cause)
    assert not next_retry(0, cause, now=0.0, deadline=60.0, cap=2.0).give_up


def test_a_starting_server_is_retried_quickly() -> None:
    decision = next_retry(9, Cause.STARTING, now=0.0, deadline=60.0, cap=2.0, rand=upper)
    assert decision.delay is not None and decision.delay <= STARTING_RETRY
