"""Process IO at the edge: spawn with clean signal state, hand over the terminal, reap every
child (one owner for all of waitpid), find and kill what is left.

No `subprocess`, no asyncio child watcher: those reap behind our back or lose statuses to
our `waitpid(-1)` (the Python PID-1 trap). Every exit status comes through `reap()`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans of our tree come to us even when we are not PID 1 (prctl); False if refused."""
    import ctypes  # only off PID 1; ctypes.util would pull in subprocess and friends

    try:
        libc = ctypes.CDLL(None, use_errno=True)  # libc is already mapped into us
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _all_signals() -> list[int]:
    uncatchable = (signal.SIGKILL, signal.SIGSTOP)
    return [int(s) for s in signal.valid_signals() if s not in uncatchable]


@dataclass(frozen=True)
class Spawned:
    pid: int
    pgid: int


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    new_group: bool = True,
    run_as: tuple[int, int] | None = None,
) -> Spawned:
    """Start argv with fds 0-2 inherited (no pipes), an empty signal mask and default
    dispositions for every signal, in its own process group (tini's child setup).

    `run_as` (uid, gid) drops privileges, e.g. for PostgreSQL, which refuses to run as root.
    Inheritable fds (os.set_inheritable) pass through; all others are closed on exec.
    Raises OSError (ENOENT, EACCES, ...) when the command cannot be started.

    Not posix_spawn: glibc's sets the internal signals 32 and 33 to SIG_IGN in the child,
    and ignored dispositions survive exec. Not Popen: it resets neither mask nor
    dispositions. fork() is safe here: the runner's only other thread (the fault-signal
    watcher) waits in sigwaitinfo holding no lock, and the child only resets and execs.
    """
    path = _which(argv[0], env)
    # An exec failure travels back on a close-on-exec pipe, so the caller gets the OSError.
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(rfd)
            if new_group:
                os.setpgid(0, 0)
            for s in _all_signals():
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(s, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            if run_as is not None:
                uid, gid = run_as
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            os.execve(path, list(argv), dict(env))
        except OSError as exc:
            os.write(wfd, str(exc.errno or errno.EIO).encode())
        finally:
            os._exit(127)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        err = r.read()
    if err:
        os.waitpid(pid, 0)
        code = int(err)
        raise OSError(code, os.strerror(code), argv[0])
    return Spawned(pid, pid if new_group else os.getpgrp())


def _which(cmd: str, env: Mapping[str, str]) -> str:
    """Resolve cmd on the child's PATH; raise like exec would (ENOENT, EACCES)."""
    if "/" in cmd:
        return cmd
    denied = False
    for d in env.get("PATH", os.defpath).split(os.pathsep):
        cand = os.path.join(d or ".", cmd)
        if os.path.isfile(cand):
            if os.access(cand, os.X_OK):
                return cand
            denied = True
    raise OSError(
        errno.EACCES if denied else errno.ENOENT,
        os.strerror(errno.EACCES if denied else errno.ENOENT),
        cmd,
    )


def hand_terminal_to(pgid: int) -> bool:
    """Make pgid the foreground process group of our terminal (stdin), as tini does, so the
    child can read it and Ctrl-C reaches it. SIGTTOU is blocked meanwhile: a background
    tcsetpgrp would otherwise signal us."""
    try:
        if not os.isatty(0):
            return False
        old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTTOU])
        try:
            os.tcsetpgrp(0, pgid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return True
    except OSError:
        # Not our controlling terminal (e.g. started without a session): nothing to hand over.
        return False


def reap() -> list[tuple[int, int]]:
    """Collect every exited child without blocking: [(pid, wait status)]."""
    out: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        except InterruptedError:  # pragma: no cover - PEP 475 retries; defensive
            continue
        if pid == 0:
            return out
        out.append((pid, status))


def children_of(pid: int) -> list[int]:
    """Direct children of pid, from /proc (no psutil in PID 1)."""
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids.extend(int(c) for c in _read(f"/proc/{pid}/task/{tid}/children").split())
        return kids
    except OSError:
        pass
    # Kernels without /proc/PID/task/TID/children: scan every process's parent.
    for name in os.listdir("/proc"):
        if name.isdigit() and _ppid(int(name)) == pid:
            kids.append(int(name))
    return kids


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _ppid(pid: int) -> int | None:
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    # The comm field may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[1])


def descendants(pid: int) -> list[int]:
    """Every living descendant of pid (children first)."""
    seen: list[int] = []
    frontier = children_of(pid)
    while frontier:
        nxt: list[int] = []
        for p in frontier:
            if p not in seen:
                seen.append(p)
                nxt.extend(children_of(p))
        frontier = nxt
    return seen


def group_of(pid: int) -> int | None:
    """pid's process group, or None when it is gone."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def signal_pid(pid: int, signum: int) -> bool:
    """kill(2) that tolerates a process that is already gone. False when it was gone."""
    try:
        os.kill(pid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def signal_group(pgid: int, signum: int) -> bool:
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False
