"""Exit codes of mcp-supervisor (the README's table) and the mapping from a wait status."""

from __future__ import annotations

import errno
import os

OK = 0
USAGE = 2  # bad command line (argparse)
UNAVAILABLE = 69  # EX_UNAVAILABLE: a dependency still unavailable at the deadline
SOFTWARE = 70  # EX_SOFTWARE: migration failed / internal error / restart limit reached
CONFIG = 78  # EX_CONFIG: invalid configuration
NOT_EXECUTABLE = 126  # the command exists but cannot be executed
NOT_FOUND = 127  # the command was not found
SIGNAL_BASE = 128  # 128+N: died of signal N


def from_wait_status(status: int) -> int:
    """The shell's convention: the exit code, or 128+N for death by signal N."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return SIGNAL_BASE + os.WTERMSIG(status)
    # Stopped/continued statuses are not terminations; callers only pass terminations.
    raise ValueError(f"not a termination status: {status:#x}")


def from_spawn_error(err: OSError) -> int:
    """127 when the command does not exist, 126 when it exists but cannot run."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return NOT_FOUND
    return NOT_EXECUTABLE


def for_signal(signum: int) -> int:
    return SIGNAL_BASE + signum
