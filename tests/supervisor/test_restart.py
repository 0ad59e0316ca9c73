"""The restart policy's pure decisions."""

from __future__ import annotations

import pytest

from mcp_supervisor.pid1.restart import (
    GIVE_UP_EXIT_CODE,
    RestartBudget,
    backoff_delay,
    decide,
    should_restart,
)


@pytest.mark.parametrize(
    ("policy", "code", "miss", "expected"),
    [
        ("never", 1, False, False),
        ("never", 0, True, False),
        ("on-failure", 0, False, False),
        ("on-failure", 1, False, True),
        ("on-failure", 137, False, True),
        ("on-failure", 0, True, True),
        ("always", 0, False, True),
        ("always", 3, False, True),
    ],
)
def test_should_restart(policy: str, code: int, miss: bool, expected: bool) -> None:
    assert should_restart(policy, code, stopping=False, watchdog_miss=miss) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["never", "on-failure", "always"])
def test_a_requested_stop_is_never_undone(policy: str) -> None:
    assert not should_restart(policy, 143, stopping=True, watchdog_miss=True)  # type: ignore[arg-type]


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_delay(n, cap=5.0) for n in range(0, 7)] == [0.5, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_delay(10_000, cap=30.0) == 30.0
    assert backoff_delay(1, cap=0.1) == 0.1


def test_budget_counts_within_the_window_only() -> None:
    budget = RestartBudget(limit=2, window=10.0)
    assert not budget.record(0.0)
    assert not budget.record(1.0)
    assert budget.record(2.0)  # third within 10 s: more than the limit
    assert budget.recent(2.0) == 3
    assert budget.recent(11.5) == 1  # 0.0 and 1.0 have left the window
    assert not budget.record(12.5)  # 2.0 is gone too: 12.5 is the second


def test_limit_zero_allows_no_restart() -> None:
    assert RestartBudget(limit=0, window=60.0).record(0.0)


def test_decide_grows_the_delay_then_gives_up() -> None:
    budget = RestartBudget(limit=3, window=60.0)
    delays = []
    for t in range(3):
        d = decide(
            "on-failure",
            1,
            stopping=False,
            watchdog_miss=False,
            budget=budget,
            backoff_cap=30.0,
            now=float(t),
        )
        assert d.restart and not d.give_up
        delays.append(d.delay)
    assert delays == [0.5, 1.0, 2.0]
    last = decide(
        "on-failure",
        1,
        stopping=False,
        watchdog_miss=False,
        budget=budget,
        backoff_cap=30.0,
        now=3.0,
    )
    assert (last.restart, last.give_up) == (False, True)
    assert last.reason == "more than 3 restarts within 60 s"
    assert GIVE_UP_EXIT_CODE == 70


def test_decide_no_restart_does_not_spend_budget() -> None:
    budget = RestartBudget(limit=1, window=60.0)
    d = decide(
        "on-failure",
        0,
        stopping=False,
        watchdog_miss=False,
        budget=budget,
        backoff_cap=1.0,
        now=0.0,
    )
    assert not d.restart and not d.give_up
    assert budget.recent(0.0) == 0


def test_decide_after_watchdog_miss_says_so() -> None:
    d = decide(
        "on-failure",
        137,
        stopping=False,
        watchdog_miss=True,
        budget=RestartBudget(5, 60.0),
        backoff_cap=1.0,
        now=0.0,
    )
    assert d.restart
    assert d.reason.startswith("watchdog missed")
