"""`mcp-supervisor wait` end to end: real PostgreSQL clusters started late, never, with a
wrong password or without pgvector; the Ollama-API server without the model; signals."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mcp_supervisor.prepare.steps import Mode, steps_for
from mcp_supervisor.spec import Dependency, RunSpec
from tests.support.fake_ollama import FakeOllama
from tests.support.pg import PASSWORD, PostgresCluster, free_port, running_cluster, system_bin_dir

from .fixtures_deps import dep_env, events, log_lines, run_cli, start_cli, start_supervisor


@pytest.fixture
def pg_base() -> Iterator[Path]:
    """A directory PostgreSQL (run as nobody when we are root) can reach."""
    base = Path(tempfile.mkdtemp(prefix="cbmcp-deps-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _final_error(stderr: str) -> str:
    return str(_final_error_event(stderr)["event"])


def _final_error_event(stderr: str) -> dict[str, Any]:
    errors = [e for e in log_lines(stderr) if e.get("level") == "error"]
    assert errors, stderr
    return errors[-1]


@pytest.mark.parametrize(
    ("wait_for", "mode", "steps"),
    [
        (("postgres", "ollama"), "wait", ["postgres", "ollama"]),
        (("ollama", "postgres"), "wait", ["postgres", "ollama"]),
        ((), "wait", []),
        (("ollama",), "wait", ["ollama"]),
        # A migration needs PostgreSQL, whatever WAIT_FOR says.
        ((), "migrate", ["postgres", "migrate"]),
        (("ollama",), "migrate", ["postgres", "ollama", "migrate"]),
    ],
)
def test_steps_for(wait_for: tuple[Dependency, ...], mode: Mode, steps: list[str]) -> None:
    assert steps_for(RunSpec(wait_for=wait_for), mode) == steps


@pytest.mark.slow
def test_postgres_starting_late_is_met_within_300_ms(pg_base: Path, tmp_path: Path) -> None:
    cluster = PostgresCluster(datadir=pg_base / "data")
    cluster.init()
    env = dep_env(
        REGISTRY_DATABASE_URL=cluster.url(),
        MCP_SUPERVISOR_WAIT_FOR="postgres",
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="30",
    )
    proc = start_cli("wait", env, tmp_path)
    try:
        time.sleep(3.0)
        assert proc.poll() is None, "the waiter gave up before PostgreSQL started"
        cluster.start(wait=False)
        ready = _accepting(cluster.port)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        cluster.stop()
    assert proc.returncode == 0, err
    assert out == ""
    assert any(e.get("cause") == "refused" for e in events(err, "dependency not ready"))
    finished = events(err, "step finished")
    assert finished and finished[0]["step"] == "postgres" and "duration_ms" in finished[0]
    proceeded = datetime.fromisoformat(finished[0]["timestamp"].replace("Z", "+00:00"))
    lag = proceeded.timestamp() - ready
    assert lag < 0.3, f"proceeded {lag:.3f} s after PostgreSQL accepted connections"


def _accepting(port: int, timeout: float = 30.0) -> float:
    """Poll (every 10 ms) until PostgreSQL completes a connection and a query; returns
    that moment (wall clock, like the log's timestamps)."""

    async def once() -> bool:
        try:
            conn = await asyncpg.connect(
                f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres", timeout=1
            )
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.fetchval("SELECT 1")
        await conn.close()
        return True

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if asyncio.run(once()):
            return time.time()
        time.sleep(0.01)
    raise TimeoutError("PostgreSQL did not start")


def test_postgres_that_never_starts_gives_69_at_the_deadline(tmp_path: Path) -> None:
    port = free_port()
    env = dep_env(
        REGISTRY_DATABASE_URL=f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/app",
        MCP_SUPERVISOR_WAIT_FOR="postgres",
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="2",
    )
    code, out, err, seconds = run_cli("wait", env, tmp_path)
    assert code == 69, err
    assert out == ""
    assert seconds >= 2.0
    final = _final_error_event(err)
    assert final["step"] == "postgres" and final["duration_ms"] >= 1900
    message = str(final["event"])
    assert f"127.0.0.1:{port}" in message
    assert "deadline" in message and "refused" in message and "Connect call failed" in message
    assert PASSWORD not in err
    assert "Traceback" not in err


def test_wrong_password_fails_fast_without_the_password(
    pg_cluster: PostgresCluster, tmp_path: Path
) -> None:
    wrong = "Wr0ng-pa55-xyz"
    env = dep_env(
        REGISTRY_DATABASE_URL=pg_cluster.url(password=wrong),
        MCP_SUPERVISOR_WAIT_FOR="postgres",
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="30",
    )
    code, out, err, seconds = run_cli("wait", env, tmp_path)
    assert code == 69, err
    assert seconds < 15, "an authentication failure must not be retried until the deadline"
    assert "authentication" in _final_error(err)
    assert wrong not in err and wrong not in out
    assert PASSWORD not in err
    assert "Traceback" not in err


def test_postgres_without_pgvector_says_what_to_do(pg_base: Path, tmp_path: Path) -> None:
    bin_dir = system_bin_dir()
    if bin_dir is None:
        pytest.skip("no system PostgreSQL (without pgvector) on this machine")
    with running_cluster(pg_base, bin_dir=bin_dir) as cluster:
        env = dep_env(
            REGISTRY_DATABASE_URL=cluster.url(),
            MCP_SUPERVISOR_WAIT_FOR="postgres",
            MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="20",
        )
        code, _out, err, seconds = run_cli("wait", env, tmp_path)
    assert code == 69, err
    assert seconds < 15  # no retrying: the extension will not appear
    message = _final_error(err)
    assert "pgvector" in message
    assert "pgvector/pgvector:pg17" in message
    assert f"postgresql-{bin_dir.parent.name}-pgvector" in message


def test_missing_model_is_pulled_with_progress_on_stderr(tmp_path: Path) -> None:
    with FakeOllama(models=set(), pull_steps=5, pull_delay=0.05) as server:
        env = dep_env(
            OLLAMA_BASE_URL=server.url,
            OLLAMA_EMBEDDING_MODEL="nomic-embed-text",
            MCP_SUPERVISOR_WAIT_FOR="ollama",
            MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="10",
        )
        code, out, err, _ = run_cli("wait", env, tmp_path)
        assert server.has_model("nomic-embed-text")
    assert code == 0, err
    assert out == ""
    percents = [e["percent"] for e in events(err, "pull progress") if "percent" in e]
    assert percents and percents[-1] == 100.0
    assert events(err, "model pulled")


def test_missing_model_with_pulling_off_is_69(tmp_path: Path) -> None:
    with FakeOllama(models=set()) as server:
        env = dep_env(
            OLLAMA_BASE_URL=server.url,
            MCP_SUPERVISOR_WAIT_FOR="ollama",
            MCP_SUPERVISOR_PULL_MODEL="false",
            MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="1",
        )
        code, _, err, _ = run_cli("wait", env, tmp_path)
        assert not server.has_model("nomic-embed-text")
    assert code == 69
    assert "ollama pull nomic-embed-text" in _final_error(err)


def test_both_dependencies_are_waited_for(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    env = dep_env(
        REGISTRY_DATABASE_URL=pg_url,
        OLLAMA_BASE_URL=fake_ollama.url,
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="10",
    )
    code, out, err, _ = run_cli("wait", env, tmp_path)
    assert code == 0, err
    assert out == ""
    assert {e["step"] for e in events(err, "step finished")} == {"postgres", "ollama"}
    assert not events(err, "migrated")  # wait never migrates


def test_wait_for_none_waits_for_nothing(tmp_path: Path) -> None:
    env = dep_env(MCP_SUPERVISOR_WAIT_FOR="none", OLLAMA_BASE_URL="http://127.0.0.1:1")
    code, out, err, _ = run_cli("wait", env, tmp_path)
    assert code == 0, err
    assert out == ""
    assert not events(err, "step started")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_during_the_wait_exits_at_once(
    signum: signal.Signals, code: int, tmp_path: Path
) -> None:
    env = dep_env(
        REGISTRY_DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{free_port()}/app",
        MCP_SUPERVISOR_WAIT_FOR="postgres",
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="60",
    )
    proc = start_cli("wait", env, tmp_path)
    try:
        assert proc.stderr is not None
        # Signal once it is really waiting: its first failure is logged.
        for line in proc.stderr:
            if "dependency not ready" in line:
                break
        sent = time.monotonic()
        proc.send_signal(signum)
        proc.wait(timeout=8)  # the grace window
        stopped = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code
    # ~50 ms when idle; the bound leaves room for a loaded machine, well inside the grace.
    assert stopped < 2.0, f"took {stopped:.2f} s to stop"


# --- the same steps inside `mcp-supervisor` (run): the child starts only when ready ------


def test_supervisor_never_starts_the_child_when_a_dependency_is_missing(tmp_path: Path) -> None:
    marker = tmp_path / "child-ran"
    env = dep_env(
        REGISTRY_DATABASE_URL=f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/app",
        MCP_SUPERVISOR_WAIT_FOR="postgres",
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="1",
    )
    proc = start_supervisor(env, tmp_path, "touch", str(marker))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 69, err
    assert not marker.exists()
    assert out == "" and PASSWORD not in err


def test_supervisor_never_starts_the_child_when_the_migration_fails(
    pg_url: str, tmp_path: Path
) -> None:
    asyncio.run(_create_table(pg_url, "chunks"))  # in revision 0002's way
    marker = tmp_path / "child-ran"
    env = dep_env(REGISTRY_DATABASE_URL=pg_url, MCP_SUPERVISOR_WAIT_FOR="postgres")
    proc = start_supervisor(env, tmp_path, "touch", str(marker))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 70, err
    assert not marker.exists()
    assert out == ""


async def _create_table(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    await conn.execute(f"CREATE TABLE {name} (x int)")
    await conn.close()


def test_supervisor_stops_at_once_on_sigterm_while_waiting(tmp_path: Path) -> None:
    marker = tmp_path / "child-ran"
    env = dep_env(
        REGISTRY_DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{free_port()}/app",
        MCP_SUPERVISOR_WAIT_FOR="postgres",
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="60",
    )
    proc = start_supervisor(env, tmp_path, "touch", str(marker))
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "dependency not ready" in line:
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=8)
        stopped = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    # ~50 ms when idle; the bound leaves room for a loaded machine, well inside the grace.
    assert stopped < 2.0, f"took {stopped:.2f} s to stop"
    assert not marker.exists()
