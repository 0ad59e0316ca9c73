"""Which signals the supervisor catches and forwards, and the mask dance around exec.

PID 1 gets no signal it has no handler for, so every catchable signal gets one. From the
first line of `main` until the runner's handlers are installed, signals stay *blocked*:
the kernel keeps them pending (even for PID 1, a blocked signal is never dropped) across
the re-exec into the lean runner, and they are delivered once the runner unblocks.
"""

from __future__ import annotations

import signal

# SIGKILL and SIGSTOP cannot be caught; SIGCHLD is ours (reaping), never forwarded.
UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
NOT_FORWARDED = frozenset({signal.SIGCHLD})
# Synchronous, fault signals: delivered by the kernel for our own faults; never block them.
FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP})


def catchable() -> list[signal.Signals]:
    """Every signal 1-31 we install a handler for."""
    return [
        s for s in signal.Signals if 1 <= s.value <= 31 and s not in UNCATCHABLE and s not in FAULTS
    ]


def forwarded() -> list[signal.Signals]:
    return [s for s in catchable() if s not in NOT_FORWARDED]


def block_all() -> None:
    """Hold every catchable signal pending (inherited across exec)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, catchable())


def unblock_all() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"
