"""The real supervisor runner (what `mcp-supervisor` re-executes into, its spec on a pipe),
except that SIGUSR1 makes it fault for real in its main thread (a NULL read): a genuine
fault must crash the supervisor, never pass for a signal to forward.
usage: faulting_supervisor.py SPEC_FD"""

import faulthandler
import signal
import sys

from mcp_supervisor.pid1 import runner

forward = runner.Supervisor.on_signal


def on_signal(self: runner.Supervisor, signum: int) -> None:
    if signum == signal.SIGUSR1:
        faulthandler._read_null()  # SIGSEGV from the MMU, not from kill; no core file
    forward(self, signum)


runner.Supervisor.on_signal = on_signal  # type: ignore[method-assign]
sys.exit(runner.main(["--spec-fd", sys.argv[1]], hard_exit=True))
