"""A server that feeds its watchdog: write "<pid> <NOTIFY_SOCKET>" to OUT, send READY=1,
then WATCHDOG=1 four times per WATCHDOG_USEC until SIGTERM, and exit 0 on it.
usage: notify_pinger.py OUT"""

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

address = os.environ["NOTIFY_SOCKET"]
period = int(os.environ["WATCHDOG_USEC"]) / 1_000_000
target = "\0" + address[1:] if address.startswith("@") else address
stop = False


def on_term(_signum: int, _frame: object) -> None:
    global stop
    stop = True


def notify(message: bytes) -> None:
    # As sd_notify does: a supervisor that cannot be reached is not our failure.
    with contextlib.suppress(OSError):
        sock.sendto(message, target)


signal.signal(signal.SIGTERM, on_term)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify(b"READY=1\nSTATUS=serving")
Path(sys.argv[1]).write_text(f"{os.getpid()} {address}\n")
while not stop:
    notify(b"WATCHDOG=1")
    time.sleep(min(period / 4, 1.0))
sys.exit(0)
