"""One embedded PostgreSQL per data directory, shared by every process that uses it.

Users (supervisors, `codebase-mcp index|search`) and one owner (`keeper`, the process
that runs PostgreSQL) meet through files beside the data, in the data directory:

    postgres.users.lock   every user holds a shared flock for its lifetime
    postgres.owner.lock   the owner holds an exclusive flock for its lifetime
    postgres.state.json   the owner's word: phase, port, postmaster pid, start time
    postgres.log          a detached owner's and its PostgreSQL's output

Liveness is only ever proven by a lock, which the kernel drops when its holder dies, so
a crash (SIGKILL included) can never leave a user or an owner counted. The rules:

- a user takes its shared lock first, then looks for the owner. When the owner lock is
  free, no owner lives: the user takes it, removes a stale state file, and hands the
  locked file to a new owner it starts (the lock passes with the open file, so two
  newcomers can never both start one);
- the owner waits until it can take the users lock exclusively (the last user has gone),
  then stops PostgreSQL, removes the state file and exits, releasing its owner lock
  before the users lock. A newcomer arriving meanwhile cannot take its shared lock; it
  waits for the stop to finish and then starts a new owner;
- only the holder of the owner lock writes the state file, so a user who sees the owner
  lock held and the state "ready" reads the living owner's port.

A detached owner runs in its own session, outside every user's process group (a client
that SIGKILLs its server's group leaves it alone), and is never a child of a supervisor
(it would count as the supervisor's descendant and be swept at its exit). Standard
library only: the supervisor's runner and the keeper import this.
"""

# os.path, not pathlib (PID 1's memory): see embedded.
# ruff: noqa: PTH100, PTH103, PTH105, PTH108, PTH111, PTH118, PTH123, PTH202
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

DB_USER = "postgres"
DB_NAME = "postgres"
STATE_VERSION = 1
LOG_ROTATE_BYTES = 4 * 1024 * 1024

# Phases the owner goes through; users wait for READY.
STARTING = "starting"  # orphans, the filesystem
INITDB = "initdb"  # making a new cluster (first use)
LAUNCHING = "launching"  # PostgreSQL started, not yet accepting connections
READY = "ready"
STOPPING = "stopping"  # the owner is stopping PostgreSQL (a stop signal)
FAILED = "failed"  # the owner gave up; `error` says why (it exits next)


class JoinError(Exception):
    """The shared PostgreSQL cannot be had; the message says why (no password)."""


def default_data_dir() -> str:
    """$XDG_DATA_HOME/codebase-mcp, else ~/.local/share/codebase-mcp."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "codebase-mcp")


@dataclass(frozen=True)
class Paths:
    data_dir: str

    @classmethod
    def for_data_dir(cls, data_dir: str) -> Paths:
        if not data_dir:
            raise JoinError("MCP_SUPERVISOR_DATA_DIR is empty")
        return cls(os.path.abspath(os.path.expanduser(data_dir)))

    def _file(self, name: str) -> str:
        return os.path.join(self.data_dir, name)

    @property
    def pgdata(self) -> str:
        return self._file("postgres")

    @property
    def password_file(self) -> str:
        return self._file("postgres.password")

    @property
    def state_file(self) -> str:
        return self._file("postgres.state.json")

    @property
    def users_lock(self) -> str:
        return self._file("postgres.users.lock")

    @property
    def owner_lock(self) -> str:
        return self._file("postgres.owner.lock")

    @property
    def log_file(self) -> str:
        return self._file("postgres.log")


@dataclass(frozen=True)
class State:
    """What the owner says about its PostgreSQL (no secret in here)."""

    phase: str
    keeper_pid: int
    port: int | None = None
    postmaster_pid: int | None = None
    started_at: float | None = None  # wall clock, when PostgreSQL became ready
    error: str | None = None

    def to_json(self) -> str:
        data = {"version": STATE_VERSION, **self.__dict__}
        return json.dumps({k: v for k, v in data.items() if v is not None})

    @classmethod
    def from_json(cls, text: str) -> State | None:
        try:
            raw = json.loads(text)
            return cls(
                phase=str(raw["phase"]),
                keeper_pid=int(raw["keeper_pid"]),
                port=_int_or_none(raw.get("port")),
                postmaster_pid=_int_or_none(raw.get("postmaster_pid")),
                started_at=raw.get("started_at"),
                error=raw.get("error"),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _int_or_none(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def read_state(paths: Paths) -> State | None:
    try:
        with open(paths.state_file) as f:
            return State.from_json(f.read())
    except OSError:
        return None


def write_state(paths: Paths, state: State) -> None:
    """Atomically (a reader never sees half a file)."""
    tmp = f"{paths.state_file}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(state.to_json() + "\n")
    os.replace(tmp, paths.state_file)


def remove_state(paths: Paths) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.state_file)


def open_lock(path: str) -> int:
    """An fd on a lock file (created 0600), close-on-exec."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def try_lock(fd: int, exclusive: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def owner_alive(paths: Paths) -> bool:
    """An owner holds its lock (checked without disturbing it)."""
    try:
        fd = open_lock(paths.owner_lock)
    except OSError:
        return False
    try:
        # A shared lock is granted unless someone holds an exclusive one: the owner.
        return not try_lock(fd, exclusive=False)
    finally:
        os.close(fd)


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_password(paths: Paths) -> str | None:
    try:
        with open(paths.password_file) as f:
            return f.read().strip() or None
    except OSError:
        return None


def database_url(password: str, port: int) -> str:
    return f"postgresql://{DB_USER}:{password}@127.0.0.1:{port}/{DB_NAME}"


def safe_database_url(port: int) -> str:
    return f"postgresql://{DB_USER}:***@127.0.0.1:{port}/{DB_NAME}"


@dataclass
class Membership:
    """This process uses the shared PostgreSQL: a shared lock on the users lock file,
    held until `close()` or the process ends (children that inherit the fd hold it too).
    """

    paths: Paths
    fd: int
    state: State
    password: str = field(repr=False)
    started_owner: bool  # this join started the owner (a fresh PostgreSQL)

    @property
    def port(self) -> int:
        assert self.state.port is not None
        return self.state.port

    @property
    def url(self) -> str:
        return database_url(self.password, self.port)

    @property
    def safe_url(self) -> str:
        return safe_database_url(self.port)

    def alive(self) -> bool:
        """Its PostgreSQL still runs (the owner lives, its postmaster too)."""
        return owner_alive(self.paths) and pid_alive(self.state.postmaster_pid)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class Joining:
    """The user's side of the protocol, one non-blocking `step()` at a time, so that a
    synchronous caller (the CLI) and the supervisor's event loop share it.

    `spawn(paths, owner_fd)` starts an owner that inherits `owner_fd` (locked
    exclusively); it must not return before the owner holds its own reference."""

    def __init__(self, paths: Paths, spawn: Callable[[Paths, int], None]) -> None:
        self.paths = paths
        self.spawn = spawn
        self.users_fd: int | None = None
        self.spawned = False
        self.phase = "waiting for the users lock"  # for progress messages

    def step(self) -> Membership | None:
        """A Membership once PostgreSQL is ready; None: call again a little later.
        Raises JoinError when the owner this join started gave up."""
        try:
            return self._step()
        except OSError as exc:
            self.abandon()
            raise JoinError(
                f"cannot use the embedded PostgreSQL's data directory {self.paths.data_dir}: "
                f"{exc.strerror or exc}"
            ) from None

    def _step(self) -> Membership | None:
        if self.users_fd is None:
            os.makedirs(self.paths.data_dir, mode=0o700, exist_ok=True)
            fd = open_lock(self.paths.users_lock)
            if not try_lock(fd, exclusive=False):
                os.close(fd)  # the owner is stopping PostgreSQL: wait for it
                self.phase = "waiting for the previous PostgreSQL to stop"
                return None
            self.users_fd = fd
        owner_fd = open_lock(self.paths.owner_lock)
        if try_lock(owner_fd, exclusive=True):
            try:
                # No owner lives. Whatever the state file says is stale.
                if self.spawned:
                    raise JoinError(self._owner_gave_up())
                remove_state(self.paths)
                self.spawn(self.paths, owner_fd)
                self.spawned = True
                self.phase = STARTING
            finally:
                os.close(owner_fd)  # the owner holds the lock through its own reference
            return None
        os.close(owner_fd)
        state = read_state(self.paths)
        if state is None:
            return None
        self.phase = state.phase
        if state.phase != READY or not state.port:
            return None
        # A state file left by a killed owner may still be read in the instant after a
        # newcomer took the owner lock and before it removed the file: its keeper is dead.
        if not (pid_alive(state.keeper_pid) and pid_alive(state.postmaster_pid)):
            return None
        password = read_password(self.paths)
        if password is None:
            raise JoinError(
                f"the embedded PostgreSQL's password file {self.paths.password_file} is "
                "missing or empty"
            )
        fd, self.users_fd = self.users_fd, None
        return Membership(self.paths, fd, state, password, started_owner=self.spawned)

    def _owner_gave_up(self) -> str:
        state = read_state(self.paths)
        where = f"its log is {self.paths.log_file}"
        if state is not None and state.phase == FAILED and state.error:
            return f"the embedded PostgreSQL did not start: {state.error} ({where})"
        return f"the embedded PostgreSQL's keeper exited before PostgreSQL was ready ({where})"

    def abandon(self) -> None:
        if self.users_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.users_fd)
            self.users_fd = None


def join(
    data_dir: str,
    *,
    timeout: float,
    spawn: Callable[[Paths, int], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    interval: float = 0.02,
) -> Membership:
    """Use the data directory's running PostgreSQL, starting its owner when none runs;
    blocks until it is ready. Raises JoinError (also at the deadline)."""
    joining = Joining(Paths.for_data_dir(data_dir), spawn or spawn_detached_keeper)
    deadline = time.monotonic() + timeout
    seen = ""
    while True:
        member = joining.step()
        if member is not None:
            return member
        if on_phase is not None and joining.phase != seen:
            seen = joining.phase
            on_phase(seen)
        if time.monotonic() >= deadline:
            joining.abandon()
            raise JoinError(
                f"the embedded PostgreSQL in {joining.paths.data_dir} was not ready within "
                f"{timeout:g} s (last phase: {joining.phase}; its log is "
                f"{joining.paths.log_file})"
            )
        time.sleep(interval)


# --- starting a detached owner --------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


def keeper_argv(data_dir: str, lock_fd: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mcp_supervisor.pg.keeper",
        "--data-dir",
        data_dir,
        "--lock-fd",
        str(lock_fd),
    ]


def keeper_env() -> dict[str, str]:
    """Nothing of the user's settings (no URL, no notify socket) reaches the keeper."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C", "LANG": "C"}
    for key in ("PYTHONPATH", "TMPDIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def spawn_detached_keeper(paths: Paths, owner_fd: int) -> None:
    """Start `keeper` in its own session, not as our child: fork, setsid, fork again,
    exec; the middle process exits at once, and the keeper is re-parented to init (our
    own subreaper flag is off meanwhile, or it would come back to us). Its fds: stdin
    /dev/null, stdout and stderr onto postgres.log, 3 the owner lock; nothing else (no
    MCP pipe may stay open in a process that outlives the client)."""
    _rotate(paths.log_file)
    log_fd = os.open(paths.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    argv = keeper_argv(paths.data_dir, 3)
    env = keeper_env()
    subreaper = _subreaper(None)
    if subreaper:
        _subreaper(False)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
                os.dup2(null_fd, 0)
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                if owner_fd == 3:
                    os.set_inheritable(3, True)
                else:
                    os.dup2(owner_fd, 3)
                os.closerange(4, 65536)
                _default_signals()
                os.chdir("/")
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        _wait_for(pid)
    finally:
        if subreaper:
            _subreaper(True)
        os.close(log_fd)
        os.close(null_fd)


def _wait_for(pid: int) -> None:
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue
        except ChildProcessError:
            return


def _default_signals() -> None:  # pragma: no cover - runs in the forked child
    for s in signal.valid_signals():
        if s in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _subreaper(value: bool | None) -> bool:
    """Read (value None) or set PR_SET_CHILD_SUBREAPER; False where prctl is refused."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if value is None:
            flag = ctypes.c_int(0)
            if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
                return False
            return bool(flag.value)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, int(value), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _rotate(path: str) -> None:
    """Keep the log bounded: past LOG_ROTATE_BYTES it moves to PATH.1 (one generation)."""
    try:
        if os.path.getsize(path) > LOG_ROTATE_BYTES:
            os.replace(path, path + ".1")
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
