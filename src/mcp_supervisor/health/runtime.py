"""Per-instance runtime files: each supervisor keeps its heartbeat and notify socket in a
directory of its own, locked (flock) for its whole lifetime.

Two supervisors on one machine (two MCP clients each starting a server, a CLI beside a
server) must never touch each other's files. The directory is named after the PID
namespace and the pid, `<namespace inode>-<pid>` (e.g. `4026531836-4711`), under the first
usable base of `$XDG_RUNTIME_DIR/mcp-supervisor`, `${TMPDIR:-/tmp}/mcp-supervisor` (shared
by every user, sticky like /tmp) and `${TMPDIR:-/tmp}/mcp-supervisor-<uid>`. The lock
proves that the owner lives: the kernel drops it when the owner dies, however it dies. A
directory whose lock can be taken is stale and may be removed; one whose lock cannot is
never touched. An explicit heartbeat path locks its directory the same way, and a second
supervisor given the same directory is refused instead of sharing it.

`--check` with no path finds the supervisor that is PID 1 of its own namespace (a
container, probed with `docker exec`) by name alone; elsewhere the only live one.

On the `--check` path: only `os`, `stat` and `time` at import time (a bare interpreter has both);
`fcntl` is imported when a lock is actually taken or tested.
"""

import os
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

APP = "mcp-supervisor"
HEARTBEAT_NAME = "heartbeat.json"
# A probe or a cleaner holds a directory's lock for microseconds: the owner waits this long
# for its own directory before it takes another name.
OWN_LOCK_PATIENCE = 0.5
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class InUse(Exception):
    """An explicitly configured heartbeat directory is held by another live supervisor."""

    def __init__(self, heartbeat_file: str, owner_pid: int | None) -> None:
        owner = f" (pid {owner_pid})" if owner_pid else ""
        super().__init__(
            f"{heartbeat_file} is in use by another running mcp-supervisor{owner}: its "
            "directory holds that supervisor's heartbeat and notify socket. Leave "
            "MCP_SUPERVISOR_HEARTBEAT_FILE (--heartbeat-file) unset for a directory of this "
            "instance's own, or choose another directory"
        )
        self.heartbeat_file = heartbeat_file
        self.owner_pid = owner_pid


# -- names and choices (pure) ---------------------------------------------------------


def namespace_key(namespace: str | None) -> str:
    """'pid:[4026531836]' -> '4026531836' ('0' when /proc cannot tell)."""
    if namespace:
        inner = namespace.partition("[")[2].partition("]")[0]
        if inner.isdigit():
            return inner
    return "0"


def instance_name(key: str, pid: int, suffix: str = "") -> str:
    return f"{key}-{pid}-{suffix}" if suffix else f"{key}-{pid}"


def parse_instance_name(name: str) -> tuple[str, int] | None:
    """(namespace key, pid) of an instance directory's name, None for anything else."""
    parts = name.split("-")
    if len(parts) not in (2, 3) or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    if len(parts) == 3 and not parts[2].isalnum():
        return None
    return parts[0], int(parts[1])


def candidates(env: "Mapping[str, str]", uid: int) -> list[tuple[str, bool]]:
    """(base, shared) in the order a supervisor prefers them: a shared base is one every
    user's supervisors may use (sticky, like /tmp)."""
    out = []
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/"):
        out.append((os.path.join(xdg, APP), False))  # the user's own, mode 0700 already
    tmp = env.get("TMPDIR", "")
    tmp = tmp if tmp.startswith("/") else "/tmp"  # noqa: S108 - a runtime dir, like /run
    out.append((os.path.join(tmp, APP), True))
    out.append((os.path.join(tmp, f"{APP}-{uid}"), False))  # when the shared one is not usable
    return out


def bases(env: "Mapping[str, str]", uid: int) -> list[str]:
    """Where instance directories live (the probe looks in all of them)."""
    return [base for base, _shared in candidates(env, uid)]


def choose(live: "list[tuple[str, str, int]]", key: str) -> "list[tuple[str, str, int]]":
    """The live instances (directory, namespace key, pid) `--check` may mean when given no
    path: those of the probe's own namespace if any, else all. One is the answer; none or
    several are for the caller to say."""
    ours = [i for i in live if i[1] == key]
    return ours or live


# -- the lock -------------------------------------------------------------------------


def _lock(fd: int, *, exclusive: bool, patience: float = 0.0) -> bool:
    import fcntl

    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, op)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)


def is_live(directory: str) -> bool:
    """Whether a supervisor holds `directory` (its lock cannot be shared)."""
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError:
        return False
    try:
        return not _lock(fd, exclusive=False)
    finally:
        os.close(fd)  # drops our shared lock, if we got it


def _same_inode(fd: int, path: str) -> bool:
    """`fd` is still what `path` names (a cleaner may have removed it meanwhile)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _empty(fd: int) -> None:
    """Remove the files in a directory we hold locked (never what is below a subdirectory:
    nothing of ours is)."""
    for name in os.listdir(fd):
        try:
            os.unlink(name, dir_fd=fd)
        except OSError:
            pass


# -- the supervisor's side ------------------------------------------------------------


class Claim:
    """A runtime directory held for this process's lifetime (the lock goes with the fd)."""

    def __init__(self, directory: str, heartbeat_file: str, fd: int, *, owned: bool) -> None:
        self.directory = directory
        self.heartbeat_file = heartbeat_file
        self.fd = fd
        self.owned = owned  # made for this instance: removed with everything in it at the end

    def release(self) -> None:
        """At the very end: the heartbeat and the socket are gone by now (their writers
        remove them); an instance directory goes too, while still locked."""
        if self.fd < 0:
            return
        try:
            if self.owned and _same_inode(self.fd, self.directory):
                _empty(self.fd)
                os.rmdir(self.directory)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1


def claim(
    heartbeat_file: str | None,
    *,
    env: "Mapping[str, str] | None" = None,
    pid: int | None = None,
    uid: int | None = None,
) -> Claim:
    """This instance's runtime directory, locked. With `heartbeat_file` (configured), its
    directory: InUse when another live supervisor holds it. Without, a directory of this
    instance's own under the first usable base, after removing stale ones there.
    OSError when no base can be used (a read-only /tmp)."""
    if heartbeat_file:
        return _claim_configured(heartbeat_file)
    env = os.environ if env is None else env
    pid = os.getpid() if pid is None else pid
    uid = os.geteuid() if uid is None else uid
    key = namespace_key(pid_namespace())
    error: OSError | None = None
    for base, shared in candidates(env, uid):
        try:
            if not _usable_base(base, uid, shared=shared):
                continue
            remove_stale(base)
            return _claim_in(base, key, pid, uid)
        except OSError as exc:
            error = exc
    raise error or OSError(f"no usable runtime directory among {', '.join(bases(env, uid))}")


def unclaimed_heartbeat_file(env: "Mapping[str, str]", pid: int, uid: int) -> str:
    """Where the heartbeat of a supervisor that could claim no directory would be."""
    key = namespace_key(pid_namespace())
    return os.path.join(bases(env, uid)[0], instance_name(key, pid), HEARTBEAT_NAME)


def _claim_configured(heartbeat_file: str) -> Claim:
    path = os.path.abspath(heartbeat_file)
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if not _lock(fd, exclusive=True, patience=OWN_LOCK_PATIENCE):
        os.close(fd)
        raise InUse(path, _owner_pid(path))
    return Claim(directory, path, fd, owned=False)


def _owner_pid(heartbeat_file: str) -> int | None:
    import json

    try:
        with open(heartbeat_file, "rb") as f:
            pid = json.loads(f.read(1 << 20)).get("supervisor_pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def _usable_base(base: str, uid: int, *, shared: bool) -> bool:
    """Create `base` if needed; whether this user may keep instance directories there.
    A shared base is sticky and world-writable like /tmp; another user's is trusted by no
    root (its owner could swap our directory for a symlink) and by others only if sticky."""
    try:
        os.mkdir(base, 0o755)
        created = True
    except FileExistsError:
        created = False
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode):  # a symlink or a file squats the name
        return False
    if st.st_uid == uid:
        if shared and created:
            # Other users' supervisors keep their directories here too, as in /tmp.
            os.chmod(base, 0o1777)  # noqa: S103
        return os.access(base, os.W_OK | os.X_OK)
    sticky_public = st.st_mode & 0o1002 == 0o1002
    return shared and uid != 0 and sticky_public and os.access(base, os.W_OK | os.X_OK)


def _claim_in(base: str, key: str, pid: int, uid: int) -> Claim:
    name = instance_name(key, pid)
    for _ in range(8):
        path = os.path.join(base, name)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        try:
            fd = os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            continue  # a cleaner removed it between our mkdir and open: again
        except OSError:  # not a directory (a symlink squats the name): take another
            name = instance_name(key, pid, os.urandom(4).hex())
            continue
        if os.fstat(fd).st_uid != uid or not _lock(fd, exclusive=True, patience=OWN_LOCK_PATIENCE):
            os.close(fd)  # another user's, or held: never ours to touch
            name = instance_name(key, pid, os.urandom(4).hex())
            continue
        if not _same_inode(fd, path):
            os.close(fd)  # removed as stale after our mkdir, before our lock: again
            continue
        _empty(fd)  # what a dead predecessor with this pid left
        return Claim(path, os.path.join(path, HEARTBEAT_NAME), fd, owned=True)
    raise OSError(f"could not claim a runtime directory in {base}")


def remove_stale(base: str) -> list[str]:
    """Remove the instance directories in `base` whose owner is gone (their lock can be
    taken); never one that is held. Returns what was removed."""
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        if parse_instance_name(name) is None:
            continue
        path = os.path.join(base, name)
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError:
            continue
        try:
            if _lock(fd, exclusive=True) and _same_inode(fd, path):
                _empty(fd)
                os.rmdir(path)
                removed.append(path)
        except OSError:
            pass  # another user's: not ours to remove
        finally:
            os.close(fd)
    return removed


# -- the probe's side -----------------------------------------------------------------


def pid_namespace() -> str | None:
    """Our PID namespace, e.g. 'pid:[4026531836]'."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def find_heartbeat(env: "Mapping[str, str]", uid: int) -> tuple[str | None, str]:
    """The heartbeat `--check` means when no path is given: (path, "") or (None, why)."""
    key = namespace_key(pid_namespace())
    where = bases(env, uid)
    # A container: the supervisor is PID 1 of the probe's namespace; its name says so.
    for base in where:
        directory = os.path.join(base, instance_name(key, 1))
        if os.path.isdir(directory):
            return os.path.join(directory, HEARTBEAT_NAME), ""
    live = []
    for base in where:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in sorted(names):
            parsed = parse_instance_name(name)
            directory = os.path.join(base, name)
            if parsed is not None and is_live(directory):
                live.append((directory, parsed[0], parsed[1]))
    chosen = choose(live, key)
    if len(chosen) == 1:
        return os.path.join(chosen[0][0], HEARTBEAT_NAME), ""
    if not chosen:
        return None, (
            f"no heartbeat: no mcp-supervisor is running (yet) (looked in {', '.join(where)})"
        )
    paths = ", ".join(os.path.join(d, HEARTBEAT_NAME) for d, _k, _p in chosen)
    return None, (
        f"{len(chosen)} mcp-supervisors are running here: choose one with "
        f"--heartbeat-file PATH ({paths})"
    )
