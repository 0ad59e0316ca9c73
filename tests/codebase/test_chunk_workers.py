"""Chunking processes: a group SIGTERM or Ctrl-C never kills them, from their first instant."""

from __future__ import annotations

import functools
import os
import signal
import time

from codebase_mcp.index.pipeline import make_executor
from tests.codebase.fixtures_engine import child_pids, chunking_processes


def test_a_chunking_process_survives_a_group_sigterm_while_it_is_still_starting() -> None:
    earlier = child_pids()
    executor = make_executor(2)
    try:
        futures = [executor.submit(time.sleep, 0.5) for _ in range(2)]
        # Both interpreters are still importing: nothing of ours has run in them yet.
        workers = chunking_processes(besides=earlier)
        assert len(workers) == 2
        for worker in workers:
            os.kill(worker.pid, signal.SIGTERM)
            os.kill(worker.pid, signal.SIGINT)
        for future in futures:
            future.result(timeout=60)
        assert all(w.is_running() for w in workers)
        # The stop signals were discarded, not left blocked: the mask is clean again.
        mask = executor.submit(functools.partial(signal.pthread_sigmask, signal.SIG_BLOCK, ()))
        assert mask.result(timeout=60) == set()
    finally:
        executor.shutdown()


def test_spawning_leaves_the_callers_signal_mask_as_it_was() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    executor = make_executor(2)
    try:
        executor.submit(os.getpid).result(timeout=60)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, ()) == before
    finally:
        executor.shutdown()
