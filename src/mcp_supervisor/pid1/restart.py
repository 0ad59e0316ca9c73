"""The restart policy as pure decisions: whether to restart, after how long, and when to
give up so that the container's own restart policy takes over."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mcp_supervisor import exitcodes
from mcp_supervisor.spec import RestartPolicy

BACKOFF_BASE = 0.5  # seconds before the first restart; doubles with each recent restart
GIVE_UP_EXIT_CODE = exitcodes.SOFTWARE  # more than restart_limit restarts within restart_window


def should_restart(
    policy: RestartPolicy, exit_code: int, *, stopping: bool, watchdog_miss: bool
) -> bool:
    """systemd's Restart= semantics: a stop we were asked for is never undone; on-failure
    restarts a non-zero exit (128+N for a signal) and a child the watchdog gave up on."""
    if stopping or policy == "never":
        return False
    if policy == "always":
        return True
    return exit_code != 0 or watchdog_miss


def backoff_delay(attempt: int, cap: float, base: float = BACKOFF_BASE) -> float:
    """Seconds to wait before restart number `attempt` (1-based) within the window:
    base, 2*base, 4*base, ... never more than `cap`."""
    if attempt <= 1:
        return min(base, cap)
    # Bounded exponent: 2**64 seconds is already "cap" for any sane cap.
    return min(cap, base * 2.0 ** min(attempt - 1, 64))


@dataclass
class RestartBudget:
    """At most `limit` restarts within any `window` seconds (monotonic clock)."""

    limit: int
    window: float
    _times: deque[float] = field(default_factory=deque, repr=False)

    def _forget(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()

    def record(self, now: float) -> bool:
        """Count a restart at `now`; True when that makes more than `limit` restarts within
        the window: time to exit and let the container runtime decide."""
        self._forget(now)
        self._times.append(now)
        return len(self._times) > self.limit

    def recent(self, now: float) -> int:
        """Restarts within the window ending at `now` (the backoff's attempt number)."""
        self._forget(now)
        return len(self._times)


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    delay: float = 0.0
    give_up: bool = False  # the budget is spent: exit with GIVE_UP_EXIT_CODE
    reason: str = ""


def decide(
    policy: RestartPolicy,
    exit_code: int,
    *,
    stopping: bool,
    watchdog_miss: bool,
    budget: RestartBudget,
    backoff_cap: float,
    now: float,
) -> RestartDecision:
    """What to do once the main child is gone (records the restart in `budget`)."""
    if not should_restart(policy, exit_code, stopping=stopping, watchdog_miss=watchdog_miss):
        return RestartDecision(False, reason=f"restart policy {policy}")
    if budget.record(now):
        return RestartDecision(
            False,
            give_up=True,
            reason=f"more than {budget.limit} restarts within {budget.window:g} s",
        )
    delay = backoff_delay(budget.recent(now), backoff_cap)
    why = "watchdog missed" if watchdog_miss else f"exit code {exit_code}"
    return RestartDecision(True, delay=delay, reason=f"{why}, restart policy {policy}")
