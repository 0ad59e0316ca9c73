"""The supervisor's side of the systemd notify protocol (sd_notify): readiness and watchdog.

The supervisor owns a unix datagram socket and tells the child where it is through
NOTIFY_SOCKET (and the watchdog period through WATCHDOG_USEC). It understands READY=1,
STATUS=..., WATCHDOG=1, WATCHDOG=trigger, STOPPING=1 and EXTEND_TIMEOUT_USEC=...

A child that never speaks sd_notify is judged by liveness alone: the watchdog is armed by
the first WATCHDOG=1, and from then on a child silent for longer than the period (its event
loop blocked) is unhealthy; the runner is told through `on_miss` and, under a restart
policy, kills and restarts it. `parse`, `apply` and `overdue` are the pure core.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import structlog

from mcp_supervisor.spec import RunSpec
from mcp_supervisor.state import SupervisorState

log = structlog.get_logger("mcp-supervisor")

SOCKET_NAME = "notify.sock"
MAX_DATAGRAM = 4096  # systemd's messages are a few lines; longer ones are truncated
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
_UCRED = 12  # struct ucred: pid, uid, gid as 32-bit ints


# -- the pure core -------------------------------------------------------------------


def parse(datagram: bytes) -> dict[str, str]:
    """KEY=VALUE lines to a dict (the last value of a repeated key wins, as in systemd);
    lines without '=' or with an empty key are ignored."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key:
            fields[key] = value.strip()
    return fields


@dataclass
class Watchdog:
    """The watchdog deadline of one child (monotonic seconds). Unarmed (None) until the
    child's first WATCHDOG=1; forgotten when another child takes its place."""

    period: float
    child_pid: int | None = None
    deadline: float | None = None

    def follow(self, child_pid: int | None) -> None:
        if child_pid != self.child_pid:
            self.child_pid = child_pid
            self.deadline = None


@dataclass(frozen=True)
class Applied:
    """What a message changed: `changed` is worth a heartbeat now; `miss` is a reason when
    the child asked for the watchdog action itself (WATCHDOG=trigger)."""

    changed: bool = False
    miss: str | None = None


def _usec(value: str) -> float | None:
    try:
        usec = int(value)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


def apply(
    state: SupervisorState,
    watchdog: Watchdog,
    fields: dict[str, str],
    *,
    now: float,
    wall: float,
) -> Applied:
    """Apply one message from the current child to `state` and `watchdog`. `now` is the
    monotonic clock (deadlines), `wall` the wall clock (what the heartbeat shows)."""
    watchdog.follow(state.child_pid)
    if state.child_pid is None:
        return Applied()  # a late word from a child that is gone
    changed = False
    miss = None
    if fields.get("READY") == "1" and not state.ready:
        state.ready = True
        changed = True
    if "STATUS" in fields and fields["STATUS"] != state.status_text:
        state.status_text = fields["STATUS"] or None
        changed = True
    if fields.get("STOPPING") == "1" and state.ready:
        # It is on its way out: no longer ready; liveness is judged by its exit.
        state.ready = False
        changed = True
    ping = fields.get("WATCHDOG")
    if ping == "1":
        first = state.last_watchdog_ping is None
        state.last_watchdog_ping = wall
        watchdog.deadline = max(watchdog.deadline or now, now + watchdog.period)
        changed = changed or first
    elif ping == "trigger":
        miss = "the child asked for it (WATCHDOG=trigger)"
    extend = _usec(fields.get("EXTEND_TIMEOUT_USEC", ""))
    if extend is not None and watchdog.deadline is not None:
        # A child busy with something long (a big index, a migration) asks for more time.
        watchdog.deadline = max(watchdog.deadline, now + extend)
    return Applied(changed=changed, miss=miss)


def overdue(state: SupervisorState, watchdog: Watchdog, now: float) -> bool:
    """The armed watchdog's deadline has passed (and the miss is not yet known)."""
    watchdog.follow(state.child_pid)
    if state.child_pid is None or state.watchdog_missed or watchdog.deadline is None:
        return False
    return now > watchdog.deadline


def socket_path(spec: RunSpec) -> str:
    """Next to the heartbeat, in the supervisor's runtime directory."""
    if spec.heartbeat_file is None:
        raise ValueError("no runtime directory: it is claimed first")
    directory = os.path.dirname(spec.heartbeat_file) or "."  # noqa: PTH120
    return os.path.join(directory, SOCKET_NAME)  # noqa: PTH118


def env_for_child(address: str, watchdog_sec: float) -> dict[str, str]:
    """NOTIFY_SOCKET and WATCHDOG_USEC as systemd sets them ('@' marks an abstract name)."""
    return {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(round(watchdog_sec * 1_000_000))}


# Set for a supervisor's own caller (e.g. systemd) but wrong for our child: the child's
# watchdog is ours, and WATCHDOG_PID would name a process that is not the child.
INHERITED_TO_DROP = ("WATCHDOG_PID",)


# -- the IO shell ----------------------------------------------------------------------


def _descends_from(pid: int, ancestor: int) -> bool | None:
    """Whether pid is `ancestor` or one of its descendants (walks /proc parents, bounded);
    None when it cannot tell (the sender already gone, e.g. a short-lived helper)."""
    for _ in range(64):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:  # noqa: PTH123
                stat = f.read()
            pid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return False


def _inode(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)  # noqa: PTH116
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _stale_socket(path: str) -> bool:
    """A socket file nobody receives on any more (connecting is refused). A live one, or
    anything else at the path, is not ours to remove."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False  # cannot tell (e.g. no permission): leave it
    finally:
        probe.close()
    return False


def _bind(path: str) -> tuple[socket.socket, str]:
    """A datagram socket at `path`, or in the abstract namespace when the path cannot be
    used (too long, read-only directory). Returns the socket and its NOTIFY_SOCKET value."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        if len(os.fsencode(path)) <= _UNIX_PATH_MAX:
            try:
                os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)  # noqa: PTH103, PTH120
                if _stale_socket(path):
                    os.unlink(path)  # left by a supervisor that is gone  # noqa: PTH108
                sock.bind(path)  # EADDRINUSE for a live one: never taken over
            except OSError as exc:
                log.warning("notify socket falls back to the abstract namespace", error=str(exc))
            else:
                return sock, path
        name = f"mcp-supervisor/{os.getpid()}/{os.urandom(4).hex()}"  # secrets: heavier import
        sock.bind("\0" + name)
        return sock, "@" + name
    except BaseException:
        sock.close()
        raise


class NotifyServer:
    """Receives the child's notifications and watches its watchdog.

    `on_change()` is called after anything the heartbeat shows changed; `on_miss(reason)`
    is awaited once per child when its watchdog expires (or it sends WATCHDOG=trigger)."""

    def __init__(
        self,
        spec: RunSpec,
        state: SupervisorState,
        *,
        on_change: Callable[[], None] = lambda: None,
        on_miss: Callable[[str], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.state = state
        self.watchdog = Watchdog(spec.watchdog_sec)
        self.on_change = on_change
        self.on_miss = on_miss
        self._clock = clock
        self._wall = wall_clock
        self._sock: socket.socket | None = None
        self._path: str | None = None
        self._inode: tuple[int, int] | None = None
        self.address: str | None = None

    def open(self) -> str:
        """Bind the socket (before the child is spawned: its env names the address)."""
        if self._sock is None:
            self._sock, self.address = _bind(socket_path(self.spec))
            self._path = None if self.address.startswith("@") else self.address
            self._inode = _inode(self._path)
        assert self.address is not None
        return self.address

    def child_env(self) -> dict[str, str]:
        return env_for_child(self.open(), self.spec.watchdog_sec)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # Only our own socket file: another supervisor given the same runtime directory
        # may have replaced it since.
        if self._path is not None and _inode(self._path) == self._inode:
            with contextlib.suppress(OSError):
                os.unlink(self._path)  # noqa: PTH108
        self._path = None

    async def serve(self) -> None:
        """Receive and watch until cancelled; the socket is closed on the way out."""
        self.open()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._receive_loop)
                tg.start_soon(self._watch_loop)
        finally:
            self.close()

    def _sender_ok(self, sender: int | None) -> bool:
        """Only the main child and its descendants speak for it (a wrapper such as
        `uv run` may sit between us and the server)."""
        child = self.state.child_pid
        if sender is None or child is None:
            return True  # nothing to check against (apply() ignores a childless state)
        return _descends_from(sender, child) is not False

    async def _receive_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            await anyio.wait_readable(sock)
            while True:  # drain: a burst arrives behind one wake-up
                try:
                    data, ancdata, _flags, _addr = sock.recvmsg(
                        MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED)
                    )
                except (BlockingIOError, InterruptedError):
                    break
                await self.handle(data, _sender(ancdata))

    async def handle(self, data: bytes, sender: int | None = None) -> None:
        fields = parse(data)
        if not fields:
            return
        if not self._sender_ok(sender):
            log.debug("notification from outside the child's tree ignored", sender=sender)
            return
        result = apply(self.state, self.watchdog, fields, now=self._clock(), wall=self._wall())
        if "READY" in fields or "STATUS" in fields or "STOPPING" in fields:
            log.info(
                "child notification",
                ready=self.state.ready,
                status=self.state.status_text,
                stopping=fields.get("STOPPING") == "1" or None,
            )
        if result.changed:
            self.on_change()
        if result.miss is not None:
            await self._missed(result.miss)

    async def _watch_loop(self) -> None:
        # Polling a few times per period is simpler than re-arming a timer on every ping
        # and costs nothing measurable (one comparison per tick).
        tick = min(1.0, max(0.01, self.spec.watchdog_sec / 10))
        while True:
            await anyio.sleep(tick)
            if overdue(self.state, self.watchdog, self._clock()):
                await self._missed(f"no WATCHDOG=1 within {self.spec.watchdog_sec:g} s")

    async def _missed(self, reason: str) -> None:
        if self.state.watchdog_missed or self.state.child_pid is None:
            return
        self.state.watchdog_missed = True
        log.warning("watchdog missed: the child is unhealthy", reason=reason)
        self.on_change()
        if self.on_miss is not None:
            await self.on_miss(reason)


def _sender(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The sender's pid from SCM_CREDENTIALS (the kernel fills it in with SO_PASSCRED)."""
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 4:
            return int.from_bytes(payload[:4], sys.byteorder, signed=True) or None
    return None
