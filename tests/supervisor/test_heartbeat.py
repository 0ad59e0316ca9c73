"""The heartbeat: pure rendering, atomic writes, the writer task."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import anyio
import pytest

from mcp_supervisor.health import heartbeat
from mcp_supervisor.health.check import loads
from mcp_supervisor.health.verdict import verdict
from mcp_supervisor.spec import RunSpec
from mcp_supervisor.state import Phase, SupervisorState


def spec_for(path: Path, **over: object) -> RunSpec:
    return RunSpec(heartbeat_file=str(path), **over)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("phase", "child", "ready", "missed", "status"),
    [
        (Phase.STARTING, None, False, False, "starting"),
        (Phase.PREPARING, None, False, False, "starting"),
        (Phase.RUNNING, 7, False, False, "starting"),
        (Phase.RUNNING, 7, True, False, "ready"),
        (Phase.RUNNING, 7, True, True, "unhealthy"),
        (Phase.RUNNING, None, False, False, "unhealthy"),
        (Phase.RESTARTING, None, False, False, "starting"),
        (Phase.STOPPING, 7, True, False, "stopping"),
        (Phase.EXITED, None, False, False, "stopping"),
    ],
)
def test_status_of(phase: Phase, child: int | None, ready: bool, missed: bool, status: str) -> None:
    state = SupervisorState(phase=phase, child_pid=child, ready=ready, watchdog_missed=missed)
    assert heartbeat.status_of(state) == status


def test_render_carries_everything_the_probe_and_a_human_need() -> None:
    state = SupervisorState(phase=Phase.RUNNING, supervisor_pid=1, restarts=2)
    state.child_spawned(42)
    state.ready = True
    state.status_text = "serving"
    state.last_watchdog_ping = 123.5
    state.dependencies = {"postgres": "ok"}
    spec = RunSpec(
        heartbeat_interval=2.0, heartbeat_max_age=6.0, watchdog_sec=10.0, restart="on-failure"
    )
    data = heartbeat.render(state, spec, 1000.0, pid_namespace="pid:[1]")
    assert data["status"] == "ready"
    assert data["phase"] == "running"
    assert data["supervisor_pid"] == 1
    assert data["child_pid"] == 42
    assert isinstance(data["child_started_at"], float)
    assert data["restarts"] == 2
    assert data["last_watchdog_ping"] == 123.5
    assert data["dependencies"] == {"postgres": "ok"}
    assert (data["interval"], data["max_age"], data["watchdog_sec"]) == (2.0, 6.0, 10.0)
    assert data["updated_at"] == 1000.0
    assert data["pid_namespace"] == "pid:[1]"
    # The probe's own parser reads what the writer's json wrote, and judges it healthy.
    parsed = loads(json.dumps(data))
    assert parsed == data
    assert verdict(parsed, 1001.0, require_ready=True, pid_alive=lambda _: True)[0]


def test_write_atomic_creates_the_runtime_dir_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "run" / "mcp" / "heartbeat.json"
    heartbeat.write_atomic(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert oct(path.parent.stat().st_mode & 0o777) in ("0o755", "0o775")
    heartbeat.write_atomic(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(os.listdir(path.parent)) == ["heartbeat.json"]  # no temp file left
    heartbeat.remove(str(path))
    heartbeat.remove(str(path))  # already gone: fine
    assert not path.exists()


def test_a_reader_never_sees_half_a_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat.json"
    heartbeat.write_atomic(str(path), {"n": 0, "pad": "x" * 20000})
    stop = threading.Event()
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            text = path.read_text()
            try:
                json.loads(text)
            except ValueError:
                bad.append(text[:50])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(300):
            heartbeat.write_atomic(str(path), {"n": n, "pad": "x" * (20000 + n)})
    finally:
        stop.set()
        reader.join()
    assert bad == []


@pytest.mark.anyio
async def test_writer_writes_every_interval_at_once_on_poke_and_removes_on_exit(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hb" / "heartbeat.json"
    state = SupervisorState()
    beat = heartbeat.Heartbeat(spec_for(path, heartbeat_interval=0.2), state)
    async with anyio.create_task_group() as tg:
        tg.start_soon(beat.run)
        with anyio.fail_after(5):
            while not path.exists():  # noqa: ASYNC110 - polling a file
                await anyio.sleep(0.01)
        first = json.loads(path.read_text())
        assert first["status"] == "starting"
        # Interval: a newer updated_at without any poke.
        with anyio.fail_after(5):
            while json.loads(path.read_text())["updated_at"] == first["updated_at"]:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        # Poke: the change shows long before the next interval would.
        beat.spec = spec_for(path, heartbeat_interval=60.0)
        await anyio.sleep(0.3)  # let the 0.2 s wait end and the 60 s one begin
        state.phase = Phase.RUNNING
        state.child_spawned(os.getpid())
        state.ready = True
        writes = beat.writes
        beat.poke()
        with anyio.fail_after(1):
            while json.loads(path.read_text())["status"] != "ready":  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert beat.writes == writes + 1
        tg.cancel_scope.cancel()
    assert not path.exists()


@pytest.mark.anyio
async def test_write_failure_is_logged_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    beat = heartbeat.Heartbeat(spec_for(blocker / "heartbeat.json"), SupervisorState())
    beat.write_now()  # the "directory" is a file: ENOTDIR
    assert beat.writes == 0
    beat.path = str(tmp_path / "heartbeat.json")
    beat.write_now()
    assert beat.writes == 1


@pytest.mark.anyio
async def test_a_heartbeat_that_could_not_be_written_ends_quietly(tmp_path: Path) -> None:
    """A runtime directory that could not be made (a file in the way, a read-only /tmp):
    removing the heartbeat at the end fails too, and must not crash the supervisor."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    spec = spec_for(blocker / "heartbeat.json", heartbeat_interval=0.05)
    beat = heartbeat.Heartbeat(spec, SupervisorState())
    async with anyio.create_task_group() as tg:
        tg.start_soon(beat.run)
        await anyio.sleep(0.1)
        tg.cancel_scope.cancel()
    assert beat.writes == 0
