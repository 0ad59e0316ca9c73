"""The embedded PostgreSQL dying while the supervisor prepares ends preparation at once
(exit 69) instead of waiting out the dependency deadline."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from mcp_supervisor.pg import share
from tests.supervisor.fixtures_deps import SUPERVISOR, dep_env
from tests.supervisor.test_embedded_pg import (  # noqa: F401
    postgres_processes,
    scratch,
    wait_until_gone,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_postgres_dying_while_waiting_for_ollama_exits_69_at_once(scratch: Path) -> None:  # noqa: F811
    data_dir = scratch / "data"
    marker = scratch / "child-ran"
    env = dep_env(
        MCP_SUPERVISOR_DATA_DIR=str(data_dir),
        MCP_SUPERVISOR_WAIT_FOR="postgres,ollama",
        MCP_SUPERVISOR_MIGRATE="false",
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="120",
        OLLAMA_BASE_URL=f"http://127.0.0.1:{_closed_port()}",  # never answers
    )
    sup = subprocess.Popen(
        [SUPERVISOR, "--", "touch", str(marker)],
        env=env,
        cwd=scratch,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pgdata = data_dir / "postgres"
        deadline = time.monotonic() + 60
        postmaster: list[psutil.Process] = []
        paths = share.Paths.for_data_dir(str(data_dir))
        while time.monotonic() < deadline:
            state = share.read_state(paths)
            if state is not None and state.phase == share.READY and state.postmaster_pid:
                postmaster = [psutil.Process(state.postmaster_pid)]
                break
            time.sleep(0.05)
        assert postmaster, "the embedded PostgreSQL never started"
        time.sleep(1.0)  # the wait for Ollama is under way
        killed = time.monotonic()
        postmaster[0].send_signal(signal.SIGKILL)
        _, err = sup.communicate(timeout=30)
        elapsed = time.monotonic() - killed
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    assert sup.returncode == 69, err
    assert elapsed < 10, f"took {elapsed:.1f} s: preparation waited for a dead PostgreSQL"
    assert "embedded PostgreSQL exited while preparing" in err
    assert not marker.exists()
    assert "Traceback" not in err
    wait_until_gone(pgdata)  # orphaned backends and the keeper too
