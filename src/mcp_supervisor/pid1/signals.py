"""Which signals the supervisor catches and forwards, and the mask dance around exec.

PID 1 gets no signal it has no handler for, so every catchable signal gets one. From the
first line of `main` until the runner's handlers are installed, signals stay *blocked*:
the kernel keeps them pending (even for PID 1, a blocked signal is never dropped) across
the re-exec into the lean runner, and they are delivered once the runner unblocks.

The fault signals (SEGV, BUS, FPE, ILL, TRAP) stay blocked for good and are read with
`sigwaitinfo`, which tells who sent them: one sent with kill(2) is forwarded like any
other, as dumb-init does. A real fault of ours never waits there: the kernel delivers a
synchronous fault to the faulting thread, and when the signal is blocked it unblocks it
and restores the default action first, so the supervisor still crashes (with a core
dump; a namespace's init too, which otherwise ignores signals it has no handler for).
"""

from __future__ import annotations

import os
import signal

# SIGKILL and SIGSTOP cannot be caught; SIGCHLD is ours (reaping), never forwarded.
UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})
NOT_FORWARDED = frozenset({signal.SIGCHLD})
# Synchronous, fault signals: a Python handler for a real one would return to the faulting
# instruction forever. Blocked, and waited for with their siginfo instead (see above).
FAULTS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP})


def catchable() -> list[signal.Signals]:
    """Every signal 1-31 we install a (Python) handler for."""
    return [
        s for s in signal.Signals if 1 <= s.value <= 31 and s not in UNCATCHABLE and s not in FAULTS
    ]


def forwarded() -> list[signal.Signals]:
    """Every signal the child may get from us: the handled ones and the faults from kill."""
    handled = [s for s in catchable() if s not in NOT_FORWARDED]
    return sorted([*handled, *FAULTS])


def block_all() -> None:
    """Hold every catchable signal pending (inherited across exec)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [*catchable(), *FAULTS])


def unblock_handled() -> None:
    """Let the handled signals in; the faults stay blocked (read by `wait_fault`)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, FAULTS)


def sent_by_a_process(si_code: int) -> bool:
    """kill, sigqueue, tgkill and the like (SI_USER 0, SI_QUEUE -1, SI_TKILL -6: the
    kernel's SI_FROMUSER is si_code <= 0), not the kernel reporting on us."""
    return si_code <= 0


def wait_fault() -> tuple[int, int, int]:
    """Block this thread until a fault signal is pending for the process: (signal,
    si_code, sender pid). Every signal is blocked in the calling thread first, so the
    handled ones keep going to the main thread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    info = signal.sigwaitinfo(FAULTS)
    return info.si_signo, info.si_code, info.si_pid


def crash() -> None:
    """A fault signal from the kernel itself reached the process (an asynchronous memory
    error, say): end as its default action would, with a core dump (abort(3) gets through
    to a namespace's init too)."""
    os.abort()


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"
