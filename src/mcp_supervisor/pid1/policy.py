"""The supervisor's decisions as pure functions: which action follows which event in which
phase, and the stop sequence. The runner (imperative shell) carries them out."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import StrEnum

from mcp_supervisor.state import Phase

# Signals that mean "stop the container" (docker stop, Ctrl-C, Ctrl-\).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


class SignalAction(StrEnum):
    REAP = "reap"  # SIGCHLD: collect exit statuses
    FORWARD = "forward"  # pass the signal to the child (or its group)
    STOP = "stop"  # forward, then start the grace window and the stop sequence
    EXIT = "exit"  # nothing running that could take it: stop at once with 128+N
    IGNORE = "ignore"  # nothing to deliver it to, and it is no reason to stop


def on_signal(phase: Phase, signum: int) -> SignalAction:
    """What a signal means in a phase."""
    if signum == signal.SIGCHLD:
        return SignalAction.REAP
    stop = signum in STOP_SIGNALS
    if phase is Phase.RUNNING:
        return SignalAction.STOP if stop else SignalAction.FORWARD
    if phase is Phase.STOPPING:
        # Already stopping: a second Ctrl-C still reaches the child; the window stays.
        return SignalAction.FORWARD
    if phase is Phase.PREPARING:
        # The preparation child (waiting, migrating) stops at once on TERM/INT/QUIT and
        # exits 128+N; other signals would only kill it, so they are not passed on.
        return SignalAction.STOP if stop else SignalAction.IGNORE
    if phase in (Phase.STARTING, Phase.RESTARTING):
        return SignalAction.EXIT if stop else SignalAction.IGNORE
    return SignalAction.IGNORE


@dataclass(frozen=True)
class Outcome:
    """How the supervisor ends once its main child is gone."""

    exit_code: int
    reason: str


def outcome_after_child(child_code: int, stop_signal: int | None) -> Outcome:
    """The supervisor's exit code is the child's own: 0 after a clean stop, 128+N when the
    child died of signal N (also when that signal was ours, e.g. 137 after the grace
    window's SIGKILL)."""
    if stop_signal is None:
        return Outcome(child_code, "child exited")
    return Outcome(child_code, f"stopped by {signal.Signals(stop_signal).name}")


def resume_after(signum: int) -> bool:
    """Follow a stop signal with SIGCONT, as systemd does: a child stopped by SIGTSTP (or
    SIGSTOP) would otherwise hold the stop signal pending until the grace window's SIGKILL."""
    return signum in STOP_SIGNALS


def forward_target(child_pid: int, *, signal_group: bool) -> int:
    """The pid for os.kill: the child, or (negative) its whole process group."""
    return -child_pid if signal_group else child_pid
