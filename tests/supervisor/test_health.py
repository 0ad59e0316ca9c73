"""The pure verdict on a heartbeat: every reason, and the readiness probe."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_supervisor.health.verdict import DEFAULT_MAX_AGE, max_age_of, verdict

NOW = 1_000_000.0


def beat(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "status": "ready",
        "phase": "running",
        "status_text": "serving",
        "supervisor_pid": 10,
        "child_pid": 11,
        "restarts": 0,
        "watchdog_missed": False,
        "watchdog_sec": 30.0,
        "max_age": 15.0,
        "updated_at": NOW - 2.0,
    }
    base.update(over)
    return base


def alive(_: int) -> bool:
    return True


def judge(hb: Any, *, ready: bool = False, pid_alive: Any = alive, **kw: Any) -> tuple[bool, str]:
    return verdict(hb, NOW, require_ready=ready, pid_alive=pid_alive, **kw)


def test_fresh_heartbeat_and_live_child_is_healthy() -> None:
    ok, reason = judge(beat())
    assert ok
    assert reason.startswith("healthy: ready (serving), child pid 11")


def test_ready_probe_passes_only_when_ready() -> None:
    assert judge(beat(), ready=True)[0]
    ok, reason = judge(beat(status="starting", status_text=None), ready=True)
    assert not ok
    assert reason == "not ready: starting, phase running"


def test_starting_is_alive_but_not_ready() -> None:
    hb = beat(status="starting", phase="preparing", child_pid=None, status_text=None)
    assert judge(hb) == (True, "healthy: starting, phase preparing, heartbeat 2.0 s old")
    assert not judge(hb, ready=True)[0]


def test_stale_heartbeat_uses_stored_max_age() -> None:
    ok, reason = judge(beat(updated_at=NOW - 15.5))
    assert not ok
    assert reason == "stale heartbeat: last written 15.5 s ago (max age 15 s)"
    assert judge(beat(updated_at=NOW - 14.5))[0]


def test_max_age_override_wins() -> None:
    assert not judge(beat(updated_at=NOW - 5), max_age=4.0)[0]
    assert judge(beat(updated_at=NOW - 20), max_age=30.0)[0]
    assert max_age_of({}, None) == DEFAULT_MAX_AGE
    assert max_age_of({"max_age": "x"}, None) == DEFAULT_MAX_AGE
    assert max_age_of({"max_age": 7}, None) == 7


def test_heartbeat_from_the_future_counts_as_fresh() -> None:
    ok, reason = judge(beat(updated_at=NOW + 3))
    assert ok
    assert "heartbeat 0.0 s old" in reason


def test_dead_or_zombie_child_is_unhealthy() -> None:
    ok, reason = judge(beat(), pid_alive=lambda pid: pid != 11)
    assert not ok
    assert reason == "child not alive: pid 11 has exited or is a zombie"


def test_dead_supervisor_is_unhealthy_even_with_a_fresh_file() -> None:
    ok, reason = judge(beat(), pid_alive=lambda pid: pid != 10)
    assert (ok, reason) == (False, "supervisor not alive (pid 10)")


def test_running_without_child_and_restarting_are_not_alive() -> None:
    assert judge(beat(child_pid=None)) == (False, "child not alive: no child process")
    ok, reason = judge(beat(phase="restarting", status="starting", child_pid=None, restarts=3))
    assert (ok, reason) == (False, "child not alive: restarting it (restarts so far: 3)")


def test_watchdog_missed() -> None:
    ok, reason = judge(beat(status="unhealthy", watchdog_missed=True, watchdog_sec=2.5))
    assert (ok, reason) == (False, "watchdog missed: child pid 11 sent no WATCHDOG=1 within 2.5 s")


def test_stopping() -> None:
    ok, reason = judge(beat(status="stopping", phase="stopping"))
    assert (ok, reason) == (False, "stopping: the supervisor is shutting down")


@pytest.mark.parametrize(
    "hb",
    [
        [],
        "x",
        None,
        {},
        beat(updated_at="yesterday"),
        beat(updated_at=True),
        beat(status="fine"),
        beat(status=None),
    ],
)
def test_corrupt_heartbeats(hb: Any) -> None:
    ok, reason = judge(hb)
    assert not ok
    assert reason.startswith("corrupt heartbeat: ")


def test_odd_pids_are_not_probed() -> None:
    seen: list[int] = []

    def record(pid: int) -> bool:
        seen.append(pid)
        return True

    assert judge(beat(supervisor_pid=True, child_pid=-3, phase="starting"), pid_alive=record)[0]
    assert seen == []
