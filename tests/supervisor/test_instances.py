"""Several real supervisors on one machine (issue 11: two MCP clients each starting a
server, a CLI beside a server): each keeps its heartbeat and notify socket to itself, and
`mcp-supervisor --check` finds the one it is asked about with no configuration."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.supervisor.harness import (
    CHILDREN,
    PYTHON,
    SUPERVISOR,
    Supervised,
    alive,
    base_env,
    can_unshare,
    wait_for_file,
)

needs_unshare = pytest.mark.skipif(not can_unshare(), reason="needs root and unshare(1)")


@pytest.fixture
def runtime_root() -> Iterator[Path]:
    """A TMPDIR of the test's own, short enough for socket paths (108 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="sup-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def default_env(runtime_root: Path, **settings: str) -> dict[str, str]:
    """Default runtime settings (no heartbeat path), with the bases in `runtime_root` so
    that other supervisors on this machine do not count."""
    env = base_env(LOG_LEVEL="info", MCP_SUPERVISOR_RESTART="on-failure", **settings)
    env.pop("XDG_RUNTIME_DIR", None)
    env["TMPDIR"] = str(runtime_root)
    return env


class Server:
    """A supervisor whose child feeds its watchdog (children/notify_pinger.py); the
    heartbeat is found where the README says: next to the notify socket."""

    def __init__(self, env: dict[str, str], tmp: Path, name: str) -> None:
        self.env = env
        self.out = tmp / f"{name}.child"
        self.log = tmp / f"{name}.log"
        with self.log.open("wb") as err:  # a file: a pipe left unread would block us
            self.proc = subprocess.Popen(
                [SUPERVISOR, "--", PYTHON, str(CHILDREN / "notify_pinger.py"), str(self.out)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        pid, self.address = wait_for_file(self.out, contains="\n").split()
        self.child_pid = int(pid)
        assert not self.address.startswith("@"), "the notify socket is a file"
        self.heartbeat = Path(self.address).parent / "heartbeat.json"

    def beat(self) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            try:
                return json.loads(self.heartbeat.read_text())  # type: ignore[no-any-return]
            except (FileNotFoundError, json.JSONDecodeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def check(self, *extra: str) -> tuple[int, str]:
        return probe(self.env, "--ready", "--heartbeat-file", str(self.heartbeat), *extra)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        for pid in (self.proc.pid, self.child_pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()


def probe(env: dict[str, str], *args: str) -> tuple[int, str]:
    """The real probe, as Docker runs it: a new process, with no configuration of its own."""
    proc = subprocess.run(
        [SUPERVISOR, "--check", *args],
        env={k: v for k, v in env.items() if not k.startswith("MCP_SUPERVISOR_")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.stderr == ""
    return proc.returncode, proc.stdout.strip()


def healthy(child_pid: int | str) -> str:
    return f"healthy: ready (serving), child pid {child_pid},"


@pytest.mark.parametrize(
    ("window", "settings"),
    [
        pytest.param(
            6.0,
            {"MCP_SUPERVISOR_WATCHDOG_SEC": "1", "MCP_SUPERVISOR_HEARTBEAT_INTERVAL": "0.5"},
            id="6s-watchdog-1s",
        ),
        pytest.param(60.0, {}, id="60s-defaults", marks=pytest.mark.slow),
    ],
)
def test_two_supervisors_with_default_settings_side_by_side(
    runtime_root: Path, tmp_path: Path, window: float, settings: dict[str, str]
) -> None:
    env = default_env(runtime_root, **settings)
    interval = float(settings.get("MCP_SUPERVISOR_HEARTBEAT_INTERVAL", "5"))
    a = Server(env, tmp_path, "a")
    b = Server(env, tmp_path, "b")
    try:
        deadline = time.monotonic() + window
        while True:
            for s in (a, b):
                beat = s.beat()
                assert beat["supervisor_pid"] == s.proc.pid, "another supervisor's heartbeat"
                assert beat["child_pid"] == s.child_pid, "the child was killed and replaced"
                assert beat["restarts"] == 0 and not beat["watchdog_missed"]
                assert time.time() - beat["last_watchdog_ping"] < 2 * interval + 1
                code, line = s.check()
                assert code == 0 and line.startswith(healthy(s.child_pid)), line
            if time.monotonic() > deadline:
                break
            time.sleep(min(interval, 2.0))
        assert a.heartbeat.parent != b.heartbeat.parent

        # The second one leaves: what it removes is its own, the first goes on being fed.
        assert b.stop() == 0
        assert not b.heartbeat.parent.exists()
        assert a.heartbeat.exists() and Path(a.address).exists()
        last = a.beat()["last_watchdog_ping"]
        deadline = time.monotonic() + 2 * interval + 5
        while a.beat()["last_watchdog_ping"] == last and time.monotonic() < deadline:
            time.sleep(0.1)
        assert a.beat()["last_watchdog_ping"] > last, "the first supervisor hears its child no more"
        assert a.check()[0] == 0
        assert a.stop() == 0
        assert not a.heartbeat.parent.exists()
    finally:
        a.kill()
        b.kill()
    for s in (a, b):
        assert "watchdog missed" not in s.log.read_text()


def test_check_without_a_path_takes_the_only_one_or_names_them(
    runtime_root: Path, tmp_path: Path
) -> None:
    env = default_env(runtime_root)
    code, line = probe(env)
    assert code == 1
    assert line.startswith("no heartbeat: no mcp-supervisor is running (yet) (looked in ")
    a = Server(env, tmp_path, "a")
    b = None
    try:
        a.beat()
        code, line = probe(env)
        assert code == 0 and line.startswith(healthy(a.child_pid)), line
        b = Server(env, tmp_path, "b")
        code, line = probe(env)
        assert code == 1
        assert line.startswith("2 mcp-supervisors are running here: choose one with ")
        assert str(a.heartbeat) in line and str(b.heartbeat) in line
        assert b.stop() == 0
        assert probe(env)[0] == 0
    finally:
        a.kill()
        if b is not None:
            b.kill()


def test_a_configured_heartbeat_in_use_is_refused(runtime_root: Path, tmp_path: Path) -> None:
    heartbeat = runtime_root / "shared" / "heartbeat.json"
    env = default_env(runtime_root, MCP_SUPERVISOR_HEARTBEAT_FILE=str(heartbeat))
    a = Server(env, tmp_path, "a")
    try:
        assert a.heartbeat == heartbeat
        a.beat()
        second = subprocess.run(
            [SUPERVISOR, "--", "sleep", "5"], env=env, capture_output=True, timeout=30
        )
        err = second.stderr.decode()
        assert second.returncode == 78, err
        assert f"{heartbeat} is in use by another running mcp-supervisor (pid {a.proc.pid})" in err
        assert "Traceback" not in err
        assert a.check()[0] == 0
        assert Path(a.address).exists()
        assert a.stop() == 0
        assert not heartbeat.exists()
    finally:
        a.kill()


def test_a_killed_supervisors_directory_is_removed_by_the_next(
    runtime_root: Path, tmp_path: Path
) -> None:
    env = default_env(runtime_root)
    a = Server(env, tmp_path, "a")
    a.beat()
    a.kill()  # SIGKILL: no clean-up of its own
    assert a.heartbeat.exists()
    code, line = probe(env)  # a dead supervisor's files do not count as a running one
    assert code == 1 and line.startswith("no heartbeat: no mcp-supervisor is running")
    b = Server(env, tmp_path, "b")
    try:
        assert not a.heartbeat.parent.exists()
        assert b.heartbeat.parent.exists()
        assert b.stop() == 0
    finally:
        b.kill()


# The probe as another user (`docker exec -u`): the interpreter cannot run as that user
# here (it lives under /root, which is private), so it loads what the probe may import
# and then drops to uid 65534 before it looks.
PROBE_AS_NOBODY = """
import _json, fcntl, json, os, sys
from mcp_supervisor.health import check, runtime, verdict
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
sys.exit(check.main())
"""


@needs_unshare
@pytest.mark.pid1
def test_check_in_a_container_needs_no_configuration(tmp_path: Path) -> None:
    """PID 1 of a PID namespace, probed the way `docker exec` runs it (in the namespace),
    with the defaults of a container (no XDG_RUNTIME_DIR, no TMPDIR): no path needed,
    whatever else runs on the machine, as root and as another user."""
    env = base_env()
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("TMPDIR", None)
    out = tmp_path / "child"
    sup = Supervised(
        [PYTHON, str(CHILDREN / "notify_pinger.py"), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        child_pid, address = wait_for_file(out, contains="\n").split()
        namespace = os.readlink(f"/proc/{sup.pid}/ns/pid")
        key = namespace.partition("[")[2].rstrip("]")
        assert Path(address).parent.name == f"{key}-1"
        wait_for_file(Path(address).parent / "heartbeat.json", contains='"ready":true')
        enter = ["nsenter", f"--target={sup.pid}", "--pid", "--mount", "--"]
        probe_env = {k: v for k, v in env.items() if not k.startswith("MCP_SUPERVISOR_")}
        for argv in (
            [SUPERVISOR, "--check", "--ready"],
            [PYTHON, "-c", PROBE_AS_NOBODY, "--check", "--ready"],
        ):
            proc = subprocess.run(
                [*enter, *argv], env=probe_env, capture_output=True, text=True, timeout=30
            )
            assert proc.stderr == ""
            # The child's pid as the namespace sees it: the probe's pid checks apply.
            assert proc.returncode == 0 and proc.stdout.startswith(healthy(child_pid)), proc.stdout
        sup.send(signal.SIGTERM)
        assert sup.wait() == 0
        assert not Path(address).parent.exists()
    finally:
        sup.kill()
