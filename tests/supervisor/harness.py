"""Run the real mcp-supervisor as PID 1 of a new PID namespace (or as a plain subreaper),
with real processes and real signals."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
SUPERVISOR = str(VENV_BIN / "mcp-supervisor")
PYTHON = sys.executable
CHILDREN = Path(__file__).parent / "children"


def can_unshare() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MCP_SUPERVISOR_", "REGISTRY_DATABASE_URL", "LOG_"))
    }
    env.update(
        MCP_SUPERVISOR_WAIT_FOR="none",
        MCP_SUPERVISOR_MIGRATE="false",
        LOG_FORMAT="json",
        LOG_LEVEL="debug",
    )
    env.update(extra)
    return env


class Supervised:
    """A running supervisor; `pid` is its pid as seen from here (the host namespace)."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        pid1: bool = True,
        options: Sequence[str] = (),
        env: dict[str, str] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | None = subprocess.PIPE,
        cwd: str | Path | None = None,
    ) -> None:
        argv = [SUPERVISOR, *options, "--", *command]
        if pid1:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
        self.pid1 = pid1
        self.proc = subprocess.Popen(
            argv,
            env=env or base_env(),
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=cwd,
        )
        self.pid = self._find_supervisor_pid() if pid1 else self.proc.pid

    def _find_supervisor_pid(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = children(self.proc.pid)
            if kids:
                return kids[0]
            time.sleep(0.005)
        raise TimeoutError("unshare did not fork the supervisor")

    def wait_handlers(self, timeout: float = 10.0) -> None:
        """Until the runner's handlers are in and signals are unblocked."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = proc_status(self.pid)
            caught = int(st.get("SigCgt", "0"), 16)
            blocked = int(st.get("SigBlk", "0"), 16)
            term = 1 << (signal.SIGTERM - 1)
            if caught & term and not blocked & term and "mcp_supervisor.pid1" in cmdline(self.pid):
                return
            time.sleep(0.005)
        raise TimeoutError("supervisor never installed its handlers")

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        self.stdout_data, self.stderr_data = self.proc.communicate(timeout=timeout)
        rc = self.proc.returncode
        # unshare re-raises the child's fatal signal on itself; the supervisor never dies
        # of a signal, but report it the shell's way if it did.
        return rc if rc >= 0 else 128 - rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for t in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out.extend(int(c) for c in (t / "children").read_text().split())
    except OSError:
        pass
    return out


def proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for_file(path: Path, timeout: float = 10.0, contains: str | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if contains is None or contains in text:
                return text
        time.sleep(0.01)
    raise TimeoutError(f"{path} never appeared" + (f" with {contains!r}" if contains else ""))


def alive(pid: int) -> bool:
    st = proc_status(pid)
    return bool(st) and not st.get("State", "").startswith("Z")
