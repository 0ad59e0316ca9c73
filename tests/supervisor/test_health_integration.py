"""Health end to end: the real mcp-supervisor, real children, the real probe process, the
real notify socket. Small intervals keep it fast; bounds on timing are loose on purpose
(a busy machine), lower bounds on backoff are exact."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_ollama import FakeOllama

VENV_BIN = Path(sys.executable).parent
SUPERVISOR = str(VENV_BIN / "mcp-supervisor")
PYTHON = sys.executable

# A child that speaks sd_notify: READY=1, then PINGS pings every 0.1 s, then silence (its
# "event loop" is blocked). It appends "<pid> <event> <time>" lines to LOG.
NOTIFY_CHILD = r"""
import os, socket, sys, time
log, pings = sys.argv[1], int(sys.argv[2])
def note(event):
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {event} {time.time()}\n")
addr = os.environ["NOTIFY_SOCKET"]
addr = "\0" + addr[1:] if addr.startswith("@") else addr
note("start usec=" + os.environ.get("WATCHDOG_USEC", "-"))
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1\nSTATUS=serving", addr)
for _ in range(pings):
    note("ping")  # before sending: the supervisor's deadline cannot start earlier
    s.sendto(b"WATCHDOG=1", addr)
    time.sleep(0.1)
note("silent")
time.sleep(600)
"""

# A child that fails at once, noting when it started.
CRASHER = r"""
import os, sys, time
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()} start {time.time()}\n")
sys.exit(1)
"""


def env_for(tmp: Path, **settings: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MCP_SUPERVISOR_", "REGISTRY_DATABASE_URL", "LOG_", "NOTIFY_"))
    }
    env.update(
        MCP_SUPERVISOR_WAIT_FOR="none",
        MCP_SUPERVISOR_MIGRATE="false",
        MCP_SUPERVISOR_HEARTBEAT_FILE=str(tmp / "run" / "heartbeat.json"),
        MCP_SUPERVISOR_HEARTBEAT_INTERVAL="0.2",
        # Roomy: a loaded machine can delay a write; the stale tests set their own.
        MCP_SUPERVISOR_HEARTBEAT_MAX_AGE="3",
        MCP_SUPERVISOR_GRACE_PERIOD="2",
        LOG_FORMAT="json",
        LOG_LEVEL="debug",
    )
    env.update(
        {k if k.isupper() else f"MCP_SUPERVISOR_{k.upper()}": v for k, v in settings.items()}
    )
    return env


class Run:
    def __init__(self, tmp: Path, command: list[str], **settings: str) -> None:
        self.env = env_for(tmp, **settings)
        self.heartbeat = Path(self.env["MCP_SUPERVISOR_HEARTBEAT_FILE"])
        self.stderr = tmp / "supervisor.log"
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [SUPERVISOR, "--", *command],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )

    def probe(self, *extra: str) -> tuple[int, str]:
        """The real probe, as Docker runs it: a new process."""
        proc = subprocess.run(
            [SUPERVISOR, "--check", *extra, "--heartbeat-file", str(self.heartbeat)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.stderr == ""
        assert proc.stdout.count("\n") == 1, proc.stdout
        return proc.returncode, proc.stdout.strip()

    def beat(self) -> dict[str, Any]:
        for _ in range(50):
            try:
                return json.loads(self.heartbeat.read_text())  # type: ignore[no-any-return]
            except FileNotFoundError:
                time.sleep(0.02)
        raise AssertionError(f"no heartbeat at {self.heartbeat}")

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.stop()


def until(cond: Callable[[], Any], seconds: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or cond}")


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_fresh_heartbeat_live_child_then_killed(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, ["sleep", "600"], restart="never")
    runs.append(run)
    beat = until(lambda: run.heartbeat.exists() and run.beat()["child_pid"] and run.beat())
    assert beat["status"] == "starting"  # `sleep` never says READY=1
    assert beat["supervisor_pid"] == run.proc.pid
    assert beat["max_age"] == 3.0  # stored for the probe
    code, line = run.probe()
    assert code == 0, line
    assert line.startswith(f"healthy: starting, child pid {beat['child_pid']}")
    code, line = run.probe("--ready")
    assert (code, line) == (1, "not ready: starting, phase running")

    os.kill(beat["child_pid"], signal.SIGKILL)
    # At once, not an interval later: the probe looks at the child itself (or the
    # supervisor has already exited and removed its heartbeat).
    code, line = run.probe()
    assert code == 1
    assert line.startswith(("child not alive", "no heartbeat", "stopping")), line
    assert run.wait() == 137
    assert not run.heartbeat.exists()  # removed on exit
    assert run.probe()[1].startswith("no heartbeat at ")


def test_hung_supervisor_dead_child_and_stale_heartbeat(tmp_path: Path, runs: list[Run]) -> None:
    run = Run(tmp_path, ["sleep", "600"], restart="never", heartbeat_max_age="2")
    runs.append(run)
    beat = until(lambda: run.heartbeat.exists() and run.beat()["child_pid"] and run.beat())
    os.kill(run.proc.pid, signal.SIGSTOP)  # the supervisor hangs: no reaping, no writing
    try:
        os.kill(beat["child_pid"], signal.SIGKILL)
        code, line = until(lambda: (r := run.probe())[0] == 1 and r, what="probe to fail")
        assert line == f"child not alive: pid {beat['child_pid']} has exited or is a zombie"
        time.sleep(max(0.0, run.beat()["updated_at"] + 2.2 - time.time()))  # past max age
        code, line = run.probe()
        assert code == 1
        assert line.startswith("stale heartbeat: last written ")
    finally:
        os.kill(run.proc.pid, signal.SIGCONT)
    assert run.wait() == 137


def test_ready_then_silent_is_unhealthy_within_the_watchdog_period(
    tmp_path: Path, runs: list[Run]
) -> None:
    log = tmp_path / "child.log"
    run = Run(
        tmp_path, [PYTHON, "-c", NOTIFY_CHILD, str(log), "5"], restart="never", watchdog_sec="0.5"
    )
    runs.append(run)
    until(lambda: run.heartbeat.exists() and run.beat()["status"] == "ready", what="ready")
    assert run.probe("--ready")[0] == 0
    assert lines(log)[0][1:3] == ["start", "usec=500000"]
    until(lambda: any(ev[1] == "silent" for ev in lines(log)), what="the child to go silent")
    last_ping = max(float(ev[2]) for ev in lines(log) if ev[1] == "ping")
    beat = until(lambda: run.beat()["watchdog_missed"] and run.beat(), what="the miss")
    missed_at = next(e for e in run.logs() if e.get("event", "").startswith("watchdog missed"))
    assert beat["status"] == "unhealthy"
    assert beat["last_watchdog_ping"] == pytest.approx(last_ping, abs=0.1)
    code, line = run.probe()
    assert code == 1
    assert line.startswith(f"watchdog missed: child pid {beat['child_pid']} sent no WATCHDOG=1")
    # Not early, and not much later than the period (loose: a busy machine).
    when = datetime.fromisoformat(missed_at["timestamp"].replace("Z", "+00:00")).timestamp()
    assert 0.5 <= when - last_ping < 0.5 + 1.0
    # Under `never` the child is left alone: unhealthy, still running.
    assert run.proc.poll() is None
    assert len({ev[0] for ev in lines(log)}) == 1


def test_watchdog_miss_restarts_under_on_failure(tmp_path: Path, runs: list[Run]) -> None:
    log = tmp_path / "child.log"
    run = Run(
        tmp_path,
        [PYTHON, "-c", NOTIFY_CHILD, str(log), "3"],
        restart="on-failure",
        watchdog_sec="0.5",
    )
    runs.append(run)
    # A second child: the first went silent, was killed and replaced.
    until(lambda: len({ev[0] for ev in lines(log)}) >= 2, what="a restart")
    first, second = list(dict.fromkeys(ev[0] for ev in lines(log)))[:2]
    with pytest.raises(ProcessLookupError):
        os.kill(int(first), 0)
    events = [e.get("event", "") for e in run.logs()]
    assert any(e.startswith("watchdog missed") for e in events)
    beat = until(lambda: run.beat()["child_pid"] == int(second) and run.beat())
    assert beat["restarts"] >= 1
    until(lambda: run.beat()["status"] == "ready", what="the new child to be ready")
    assert run.probe("--ready")[0] == 0


def test_crash_loop_backs_off_then_exits_at_the_limit(tmp_path: Path, runs: list[Run]) -> None:
    starts = tmp_path / "starts.log"
    run = Run(
        tmp_path,
        [PYTHON, "-c", CRASHER, str(starts)],
        restart="on-failure",
        restart_limit="3",
        restart_window="60",
        restart_backoff_cap="10",
    )
    runs.append(run)
    assert run.wait() == 70  # more than 3 restarts in 60 s: the container runtime decides
    times = [float(ev[2]) for ev in lines(starts)]
    assert len(times) == 4  # the first start and 3 restarts
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.5 s, 1 s, 2 s: never sooner, and growing.
    for gap, delay in zip(gaps, [0.5, 1.0, 2.0], strict=True):
        assert gap >= delay
    assert gaps[0] < gaps[1] < gaps[2]
    assert not run.heartbeat.exists()
    assert any("restart limit" in e.get("event", "") for e in run.logs())


def test_stop_during_the_backoff_exits_at_once(tmp_path: Path, runs: list[Run]) -> None:
    starts = tmp_path / "starts.log"
    run = Run(
        tmp_path,
        [PYTHON, "-c", CRASHER, str(starts)],
        restart="always",
        restart_backoff_cap="60",
    )
    runs.append(run)
    until(lambda: len(lines(starts)) >= 3, what="two restarts")  # now waiting 2 s
    until(lambda: run.beat()["phase"] == "restarting", what="the backoff")
    assert run.probe()[1].startswith("child not alive: restarting it")
    count = len(lines(starts))
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(timeout=5) == 143
    assert len(lines(starts)) == count


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out.extend(int(c) for c in (task / "children").read_text().split())
    return out


@pytest.mark.pid1
@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")),
    reason="needs root, unshare and nsenter",
)
def test_probe_inside_the_pid_namespace_like_docker_exec(tmp_path: Path) -> None:
    """The supervisor as PID 1 of its own namespace; the probe entering it (as `docker exec`
    does) checks the pids, the probe outside judges by the heartbeat's age alone."""
    env = env_for(tmp_path, restart="never", heartbeat_max_age="2")
    hb = env["MCP_SUPERVISOR_HEARTBEAT_FILE"]
    outer = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", SUPERVISOR, "--", "sleep", "600"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        supervisor = until(lambda: _children(outer.pid), what="the supervisor")[0]
        beat = until(
            lambda: Path(hb).exists() and (b := json.loads(Path(hb).read_text()))["child_pid"] and b
        )
        assert beat["supervisor_pid"] == 1
        child = _children(supervisor)[0]  # its pid as seen from here

        def probe(inside: bool) -> tuple[int, str]:
            argv = [SUPERVISOR, "--check", "--heartbeat-file", hb]
            if inside:
                argv = ["nsenter", "-t", str(supervisor), "-p", "-m", *argv]
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            return proc.returncode, proc.stdout.strip()

        code, line = probe(inside=True)
        assert code == 0, line
        code, line = probe(inside=False)
        assert code == 0, line
        os.kill(supervisor, signal.SIGSTOP)  # no reaping, no rewriting: a hung PID 1
        try:
            os.kill(child, signal.SIGKILL)
            _, line = until(lambda: (r := probe(inside=True))[0] == 1 and r)
            assert line == f"child not alive: pid {beat['child_pid']} has exited or is a zombie"
            # Outside the namespace the pids mean nothing: healthy until the file is stale.
            code, line = probe(inside=False)
            assert code == 0, line
            last = json.loads(Path(hb).read_text())["updated_at"]
            time.sleep(max(0.0, last + 2.2 - time.time()))  # past the max age (2 s)
            assert probe(inside=False)[1].startswith("stale heartbeat")
        finally:
            os.kill(supervisor, signal.SIGCONT)
        assert outer.wait(30) == 137
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()


def test_heartbeat_while_waiting_for_a_dependency(tmp_path: Path, runs: list[Run]) -> None:
    """Alive but not ready while the supervisor waits; the dependency shows in the file."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = Run(
        tmp_path,
        ["sleep", "600"],
        restart="never",
        wait_for="ollama",
        dependency_timeout="60",
        OLLAMA_BASE_URL=f"http://127.0.0.1:{port}",
    )
    runs.append(run)
    beat = until(lambda: run.heartbeat.exists() and run.beat(), what="a heartbeat")
    assert (beat["phase"], beat["dependencies"]) == ("preparing", {"ollama": "waiting"})
    code, line = run.probe()
    assert code == 0, line
    assert line.startswith("healthy: starting, phase preparing")
    assert run.probe("--ready") == (1, "not ready: starting, phase preparing")
    with FakeOllama().start(port=port):
        beat = until(lambda: run.beat()["child_pid"] and run.beat(), what="the child")
        assert beat["dependencies"] == {"ollama": "ok"}
        run.stop()
