"""`docker run -it`: with a terminal on stdin, the child owns the foreground, reads the
terminal, gets Ctrl-C; SIGTTIN/SIGTTOU never stop the supervisor."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import time

import pytest

from tests.supervisor.harness import SUPERVISOR, base_env, can_unshare, proc_status


def _read_until(fd: int, needle: bytes, timeout: float = 15.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


@pytest.mark.parametrize(
    "pid1",
    [
        pytest.param(
            True, id="pid1", marks=pytest.mark.skipif(not can_unshare(), reason="needs unshare")
        ),
        pytest.param(False, id="subreaper"),
    ],
)
def test_child_reads_the_terminal_and_gets_ctrl_c(pid1: bool) -> None:
    script = 'read line; echo "got:$line"; echo waiting; sleep 100'
    argv = [SUPERVISOR, "--", "sh", "-c", script]
    if pid1:
        argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
    env = base_env()
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child: a session leader with the pty as its terminal
        os.execve(argv[0] if argv[0].startswith("/") else "/usr/bin/unshare", argv, env)
    try:
        # The supervisor hands the terminal over once the child runs; then typing reaches it.
        time.sleep(0.1)
        out = b""
        deadline = time.monotonic() + 15
        while b"got:hello" not in out and time.monotonic() < deadline:
            os.write(master, b"hello\n")
            out += _read_until(master, b"got:hello", timeout=1.0)
        assert b"got:hello" in out, out
        if b"waiting" not in out:
            out += _read_until(master, b"waiting")
        # The supervisor (or unshare's child) must not be stopped by job-control signals.
        sup_pid = _supervisor_pid(pid)
        for s in (signal.SIGTTIN, signal.SIGTTOU):
            os.kill(sup_pid, s)
        time.sleep(0.2)
        assert not proc_status(sup_pid).get("State", "").startswith("T"), "supervisor stopped"
        os.kill(sup_pid, signal.SIGCONT)  # the forwarded TTIN/TTOU may have stopped the child
        os.write(master, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.close(master)
    assert os.WIFEXITED(status), status
    assert os.WEXITSTATUS(status) == 130  # the child died of SIGINT


def _supervisor_pid(top: int) -> int:
    """`top` is the supervisor, or unshare whose only child is the supervisor."""
    from tests.supervisor.harness import children, cmdline

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "mcp_supervisor.pid1" in cmdline(top):
            return top
        kids = children(top)
        if kids and "mcp_supervisor.pid1" in cmdline(kids[0]):
            return kids[0]
        time.sleep(0.01)
    raise TimeoutError("no supervisor found")
