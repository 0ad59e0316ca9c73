"""A tiny sd_notify client: READY=1, STATUS=..., STOPPING=1 and WATCHDOG=1 to $NOTIFY_SOCKET.

The supervisor (or systemd) owns a unix datagram socket and tells us its address in
NOTIFY_SOCKET; an address starting with '@' is in the abstract namespace. With no
NOTIFY_SOCKET every call is a no-op, so the server runs the same anywhere.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import anyio
import structlog

log = structlog.get_logger(__name__)


def socket_address(value: str) -> str | bytes | None:
    """The address to sendto() for a NOTIFY_SOCKET value; None when unusable."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other schemes are not ours to speak


def watchdog_period(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as systemd advises), or None.

    WATCHDOG_PID, when set, names the one process the watchdog is meant for."""
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(pid):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def message(**fields: str | int) -> bytes:
    """KEY=VALUE lines as sd_notify expects them (keys upper-cased, newlines stripped)."""
    lines = [f"{key.upper()}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()]
    return "\n".join(lines).encode()


class Notifier:
    """Sends notifications; never raises (a supervisor that went away must not stop us)."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(socket_address(env.get("NOTIFY_SOCKET", "")), watchdog_period(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        if self.address is None or not fields:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message(**fields), self.address)
        except OSError as exc:
            log.debug("sd_notify failed", error=str(exc))
            return False
        return True

    def ready(self, status: str = "serving") -> bool:
        return self.send(ready=1, status=status)

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def stopping(self, status: str = "stopping") -> bool:
        return self.send(stopping=1, status=status)

    def ping(self) -> bool:
        return self.send(watchdog=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def run_watchdog(self) -> None:
        """Ping every half period from the event loop until cancelled: a blocked loop
        stops pinging, which is exactly what the watchdog is there to notice."""
        if self.address is None or self.watchdog is None:
            return
        while True:
            self.ping()
            await anyio.sleep(self.watchdog)
