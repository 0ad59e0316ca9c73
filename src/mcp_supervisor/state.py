"""What the supervisor knows about itself right now: read by the heartbeat writer and the
log context, written only by the runner. Plain data, no IO."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import StrEnum


class Phase(StrEnum):
    """The supervisor's lifecycle, in order; logged on every line."""

    STARTING = "starting"  # config read, nothing spawned yet
    PREPARING = "preparing"  # embedded PostgreSQL, waiting for dependencies, migrations
    RUNNING = "running"  # the main child runs
    RESTARTING = "restarting"  # the child exited and the restart policy brings it back
    STOPPING = "stopping"  # a stop signal arrived: forwarding, grace window, kill
    EXITED = "exited"


@dataclass
class SupervisorState:
    phase: Phase = Phase.STARTING
    supervisor_pid: int = field(default_factory=os.getpid)
    child_pid: int | None = None
    child_started_at: float | None = None  # wall clock (time.time())
    restarts: int = 0
    # sd_notify: the child said READY=1 / its last WATCHDOG=1 (monotonic and wall clock).
    ready: bool = False
    status_text: str | None = None
    last_watchdog_ping: float | None = None  # wall clock
    watchdog_missed: bool = False
    dependencies: dict[str, str] = field(default_factory=dict)  # name -> ok|waiting|failed|skipped

    def child_spawned(self, pid: int) -> None:
        self.child_pid = pid
        self.child_started_at = time.time()
        self.ready = False
        self.last_watchdog_ping = None
        self.watchdog_missed = False

    def child_gone(self) -> None:
        self.child_pid = None
        self.ready = False
