"""Pure decisions for waiting on dependencies: retry delays and when to give up.

Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
Jitter"): attempt n sleeps uniform(0, min(cap, base * 2**n)), so the first retry comes
within `base` (100 ms) and replicas that start together spread out instead of knocking in
lockstep. Everything happens under one overall deadline.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

FIRST_RETRY = 0.1  # seconds: the first retry comes within this
# A server that answers "starting up" (PostgreSQL 57P03) is seconds from ready at most:
# retry it quickly instead of growing the delay.
STARTING_RETRY = 0.1


class Cause(StrEnum):
    """Why one attempt to reach a dependency failed; logged with every failure."""

    REFUSED = "refused"  # nothing listens on host:port (yet)
    DNS = "dns"  # the host name does not resolve (yet)
    TIMEOUT = "timeout"  # no answer in time
    AUTHENTICATION = "authentication"  # wrong user/password: retrying cannot help
    STARTING = "starting"  # the server answers but is not ready (starting up, recovery)
    OTHER = "other"


# Failures that retrying cannot fix: give up at once with a clear message.
FATAL_CAUSES = frozenset({Cause.AUTHENTICATION})


def is_fatal(cause: Cause) -> bool:
    return cause in FATAL_CAUSES


def full_jitter(
    attempt: int,
    *,
    cap: float,
    base: float = FIRST_RETRY,
    rand: Callable[[float, float], float] = random.uniform,
) -> float:
    """Delay before retry number `attempt` (0 = the first retry)."""
    # Bound the exponent: 2**1100 overflows a float long after the cap is reached.
    ceiling = min(cap, base * 2.0 ** min(attempt, 60))
    return rand(0.0, ceiling)


@dataclass(frozen=True)
class RetryDecision:
    """Either sleep `delay` seconds and try again, or give up (delay is None)."""

    delay: float | None

    @property
    def give_up(self) -> bool:
        return self.delay is None


def next_retry(
    attempt: int,
    cause: Cause,
    *,
    now: float,
    deadline: float,
    cap: float,
    rand: Callable[[float, float], float] = random.uniform,
) -> RetryDecision:
    """What to do after failed attempt number `attempt` (0-based) at monotonic time `now`.

    Fatal causes and a passed deadline give up; otherwise the jittered delay, never
    sleeping past the deadline (one last attempt happens right at it).
    """
    remaining = deadline - now
    if is_fatal(cause) or remaining <= 0:
        return RetryDecision(None)
    delay = full_jitter(attempt, cap=cap, rand=rand)
    if cause is Cause.STARTING:
        delay = min(delay, STARTING_RETRY)
    return RetryDecision(min(delay, remaining))
