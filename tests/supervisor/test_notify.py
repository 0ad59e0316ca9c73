"""sd_notify on the supervisor's side: the pure core, then a real socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from mcp_supervisor.health import notify
from mcp_supervisor.health.notify import Watchdog, apply, overdue, parse
from mcp_supervisor.spec import RunSpec
from mcp_supervisor.state import Phase, SupervisorState


def running(pid: int = 100) -> SupervisorState:
    state = SupervisorState(phase=Phase.RUNNING)
    state.child_spawned(pid)
    return state


def test_parse() -> None:
    assert parse(b"READY=1\nSTATUS=indexing 3/10 files\n") == {
        "READY": "1",
        "STATUS": "indexing 3/10 files",
    }
    assert parse(b"WATCHDOG=1") == {"WATCHDOG": "1"}
    assert parse(b"garbage\n=x\n\nA=1\nA=2\nB=") == {"A": "2", "B": ""}
    assert parse(b"STATUS=caf\xc3\xa9 \xff") == {"STATUS": "caf\u00e9 \ufffd"}
    assert parse(b"") == {}


def test_ready_status_and_stopping() -> None:
    state, wd = running(), Watchdog(10.0)
    assert apply(state, wd, {"READY": "1", "STATUS": "serving"}, now=0, wall=0).changed
    assert state.ready and state.status_text == "serving"
    assert not apply(state, wd, {"READY": "1"}, now=0, wall=0).changed  # nothing new
    assert apply(state, wd, {"STOPPING": "1", "STATUS": "bye"}, now=0, wall=0).changed
    assert not state.ready and state.status_text == "bye"


def test_watchdog_is_armed_by_the_first_ping_only() -> None:
    state, wd = running(), Watchdog(10.0)
    apply(state, wd, {"READY": "1"}, now=0.0, wall=500.0)
    assert not overdue(state, wd, 1000.0)  # never pinged: judged by liveness alone
    assert apply(state, wd, {"WATCHDOG": "1"}, now=5.0, wall=505.0).changed
    assert state.last_watchdog_ping == 505.0
    assert not overdue(state, wd, 15.0)
    assert overdue(state, wd, 15.01)
    apply(state, wd, {"WATCHDOG": "1"}, now=14.0, wall=514.0)
    assert not overdue(state, wd, 24.0)
    assert overdue(state, wd, 24.5)


def test_extend_timeout_pushes_the_deadline() -> None:
    state, wd = running(), Watchdog(2.0)
    apply(state, wd, {"WATCHDOG": "1"}, now=0.0, wall=0.0)
    apply(state, wd, {"EXTEND_TIMEOUT_USEC": "30000000"}, now=1.0, wall=1.0)
    assert not overdue(state, wd, 30.0)
    assert overdue(state, wd, 31.5)
    apply(state, wd, {"EXTEND_TIMEOUT_USEC": "nonsense"}, now=1.0, wall=1.0)  # ignored


def test_trigger_is_a_miss_and_a_known_miss_is_not_repeated() -> None:
    state, wd = running(), Watchdog(2.0)
    assert apply(state, wd, {"WATCHDOG": "trigger"}, now=0, wall=0).miss
    apply(state, wd, {"WATCHDOG": "1"}, now=0.0, wall=0.0)
    state.watchdog_missed = True
    assert not overdue(state, wd, 100.0)


def test_a_new_child_starts_with_a_fresh_watchdog() -> None:
    state, wd = running(100), Watchdog(2.0)
    apply(state, wd, {"WATCHDOG": "1"}, now=0.0, wall=0.0)
    state.child_gone()
    assert not overdue(state, wd, 100.0)
    assert not apply(state, wd, {"READY": "1"}, now=0, wall=0).changed  # no child: ignored
    state.child_spawned(101)
    assert not overdue(state, wd, 100.0)  # the old deadline went with the old child
    assert wd.deadline is None


def test_child_env() -> None:
    assert notify.env_for_child("/run/x/notify.sock", 2.5) == {
        "NOTIFY_SOCKET": "/run/x/notify.sock",
        "WATCHDOG_USEC": "2500000",
    }


def send(address: str, payload: bytes) -> None:
    target: str | bytes = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(payload, target)


async def until(cond: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll: the state is changed by another task reacting to another process."""
    with anyio.fail_after(seconds):
        while not cond():  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_real_socket_ready_status_ping_and_miss(tmp_path: Path) -> None:
    spec = RunSpec(heartbeat_file=str(tmp_path / "hb.json"), watchdog_sec=0.3)
    state = running(os.getpid())  # the test process plays the child
    changes: list[bool] = []
    misses: list[str] = []

    async def on_miss(reason: str) -> None:
        misses.append(reason)

    server = notify.NotifyServer(
        spec, state, on_change=lambda: changes.append(True), on_miss=on_miss
    )
    env = server.child_env()
    assert env["NOTIFY_SOCKET"] == str(tmp_path / "notify.sock")
    assert env["WATCHDOG_USEC"] == "300000"
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        send(env["NOTIFY_SOCKET"], b"READY=1\nSTATUS=serving")
        await until(lambda: state.ready)
        assert state.status_text == "serving"
        for _ in range(5):  # pings keep it healthy well past one period
            send(env["NOTIFY_SOCKET"], b"WATCHDOG=1")
            await anyio.sleep(0.1)
        assert not state.watchdog_missed
        assert state.last_watchdog_ping is not None
        await anyio.sleep(0.1)  # 0.2 s of silence: not yet a miss
        assert not state.watchdog_missed
        # Silence past the period: missed (the bound is loose for a busy machine).
        await until(lambda: state.watchdog_missed, seconds=1.0)
        assert misses == ["no WATCHDOG=1 within 0.3 s"]
        assert changes
        await anyio.sleep(0.5)
        assert len(misses) == 1  # told once per child
        tg.cancel_scope.cancel()
    assert not (tmp_path / "notify.sock").exists()


@pytest.mark.anyio
async def test_a_real_child_process_speaks_through_the_env(tmp_path: Path) -> None:
    spec = RunSpec(heartbeat_file=str(tmp_path / "hb.json"), watchdog_sec=5)
    state = SupervisorState(phase=Phase.RUNNING)
    server = notify.NotifyServer(spec, state)
    code = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "s.sendto(b'READY=1\\nSTATUS=up\\nWATCHDOG=1', os.environ['NOTIFY_SOCKET'])\n"
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        env = {**os.environ, **server.child_env()}
        proc = subprocess.Popen([sys.executable, "-c", code], env=env)  # noqa: ASYNC220
        state.child_spawned(proc.pid)
        await until(lambda: state.ready)
        assert state.status_text == "up"
        assert state.last_watchdog_ping is not None
        proc.wait()
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_messages_from_outside_the_childs_tree_are_ignored(tmp_path: Path) -> None:
    spec = RunSpec(heartbeat_file=str(tmp_path / "hb.json"))
    sleeper = subprocess.Popen(["sleep", "30"])  # noqa: ASYNC220
    try:
        state = running(sleeper.pid)  # the child is `sleep`; we (its parent) are not its tree
        server = notify.NotifyServer(spec, state)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            send(server.open(), b"READY=1")
            await anyio.sleep(0.2)
            assert not state.ready
            state.child_spawned(os.getpid())  # now we are the child
            send(server.open(), b"READY=1")
            await until(lambda: state.ready)
            tg.cancel_scope.cancel()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.anyio
async def test_too_long_a_path_falls_back_to_an_abstract_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100) / "heartbeat.json"
    state = running(os.getpid())
    server = notify.NotifyServer(RunSpec(heartbeat_file=str(deep)), state)
    address = server.open()
    assert address.startswith("@mcp-supervisor/")
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        send(address, b"READY=1")
        await until(lambda: state.ready)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_trigger_over_the_socket_calls_on_miss(tmp_path: Path) -> None:
    state = running(os.getpid())
    got = anyio.Event()

    async def on_miss(reason: str) -> None:
        assert "WATCHDOG=trigger" in reason
        got.set()

    server = notify.NotifyServer(
        RunSpec(heartbeat_file=str(tmp_path / "h")), state, on_miss=on_miss
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        send(server.open(), b"WATCHDOG=trigger")
        with anyio.fail_after(5):
            await got.wait()
        assert state.watchdog_missed
        tg.cancel_scope.cancel()


def test_a_live_socket_is_never_taken_over(tmp_path: Path) -> None:
    """Another supervisor's socket at our path (issue 11: the second unlinked the first's,
    whose watchdog then starved): left alone, we fall back to an abstract name."""
    spec = RunSpec(heartbeat_file=str(tmp_path / "hb.json"))
    first = notify.NotifyServer(spec, SupervisorState())
    second = notify.NotifyServer(spec, SupervisorState())
    path = first.open()
    assert second.open().startswith("@mcp-supervisor/")
    send(path, b"READY=1")
    assert first._sock is not None and first._sock.recv(64) == b"READY=1"  # still the first's
    second.close()
    assert Path(path).exists()
    first.close()
    assert not Path(path).exists()


def test_a_stale_socket_is_replaced_and_anything_else_left_alone(tmp_path: Path) -> None:
    spec = RunSpec(heartbeat_file=str(tmp_path / "hb.json"))
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
        gone.bind(str(path))  # closed without unlinking: what a killed supervisor leaves
    server = notify.NotifyServer(spec, SupervisorState())
    assert server.open() == str(path)
    server.close()
    path.write_text("not a socket")
    other = notify.NotifyServer(spec, SupervisorState())
    assert other.open().startswith("@")
    other.close()
    assert path.read_text() == "not a socket"
