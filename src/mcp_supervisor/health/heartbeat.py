"""The heartbeat file: what `mcp-supervisor --check` judges.

`render` is pure (state -> JSON object); `write_atomic` and `remove` are the file IO; a
`Heartbeat` writes every interval and at once on `poke()` (the runner and the notify
receiver poke on every state change), and removes the file when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import structlog

from mcp_supervisor.spec import RunSpec
from mcp_supervisor.state import Phase, SupervisorState

FORMAT_VERSION = 1
log = structlog.get_logger("mcp-supervisor")


def status_of(state: SupervisorState) -> str:
    """starting | ready | unhealthy | stopping: the one word a human looks for first."""
    if state.phase in (Phase.STOPPING, Phase.EXITED):
        return "stopping"
    if state.watchdog_missed:
        return "unhealthy"
    if state.phase is Phase.RUNNING and state.child_pid is not None:
        return "ready" if state.ready else "starting"
    if state.phase is Phase.RUNNING:  # the child is gone and the runner has not decided yet
        return "unhealthy"
    return "starting"  # starting, preparing, restarting


def render(
    state: SupervisorState, spec: RunSpec, now: float, *, pid_namespace: str | None = None
) -> dict[str, Any]:
    """The heartbeat as a JSON object; `now` is the wall clock (the probe compares it with
    its own). The max age is stored so that the probe needs no configuration."""
    return {
        "version": FORMAT_VERSION,
        "status": status_of(state),
        "phase": state.phase.value,
        "status_text": state.status_text,
        "supervisor_pid": state.supervisor_pid,
        "pid_namespace": pid_namespace,
        "child_pid": state.child_pid,
        "child_started_at": state.child_started_at,
        "ready": state.ready,
        "restarts": state.restarts,
        "restart_policy": spec.restart,
        "last_watchdog_ping": state.last_watchdog_ping,
        "watchdog_missed": state.watchdog_missed,
        "watchdog_sec": spec.watchdog_sec,
        "dependencies": dict(state.dependencies),
        "interval": spec.heartbeat_interval,
        "max_age": spec.heartbeat_max_age,
        "updated_at": now,
    }


def write_atomic(path: str, data: Mapping[str, Any]) -> None:
    """Write, then rename over the old file: a reader sees the old or the new heartbeat,
    never half of one. No fsync: the file only matters while this process lives."""
    directory = os.path.dirname(path) or "."  # noqa: PTH120 - plain str paths throughout
    os.makedirs(directory, mode=0o755, exist_ok=True)  # noqa: PTH103
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")  # noqa: PTH118, PTH119
    payload = json.dumps(data, separators=(",", ":")).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, payload)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # noqa: PTH105
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # noqa: PTH108
        raise


def remove(path: str) -> None:
    """Best effort: gone already, or never written (its directory could not be made)."""
    with contextlib.suppress(OSError):
        os.unlink(path)  # noqa: PTH108


def read_pid_namespace() -> str | None:
    """Our PID namespace, e.g. 'pid:[4026532]': the probe compares it with its own to know
    whether the pids in the heartbeat are its pids too."""
    try:
        return os.readlink("/proc/self/ns/pid")  # noqa: PTH115
    except OSError:
        return None


class Heartbeat:
    """Writes the heartbeat every `spec.heartbeat_interval` and at once after `poke()`."""

    def __init__(
        self, spec: RunSpec, state: SupervisorState, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.spec = spec
        self.state = state
        if spec.heartbeat_file is None:
            raise ValueError("no heartbeat path: the runtime directory is claimed first")
        self.path = spec.heartbeat_file
        self._clock = clock
        self._wake = anyio.Event()
        self._namespace = read_pid_namespace()
        self._failing = False
        self.writes = 0

    def poke(self) -> None:
        """Something changed: write now rather than at the next interval."""
        self._wake.set()

    def write_now(self) -> None:
        data = render(self.state, self.spec, self._clock(), pid_namespace=self._namespace)
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            # A read-only or full disk must not stop the service; the probe will say
            # "no heartbeat" or "stale", which is the truth. Logged once per failure spell.
            if not self._failing:
                log.error("cannot write the heartbeat", path=self.path, error=str(exc))
            self._failing = True
            return
        if self._failing:
            log.info("heartbeat written again", path=self.path)
        self._failing = False
        self.writes += 1

    async def run(self) -> None:
        """Until cancelled; the file is removed on the way out (the probe then says
        "no heartbeat", which is what a stopped supervisor is)."""
        try:
            while True:
                # A fresh event before writing: a poke during the write is not lost.
                self._wake = anyio.Event()
                self.write_now()
                with anyio.move_on_after(self.spec.heartbeat_interval):
                    await self._wake.wait()
        finally:
            remove(self.path)
