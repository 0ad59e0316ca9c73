"""`mcp-supervisor migrate` against real PostgreSQL: to head once across 5 replicas, a
failure is 70 and leaves nothing behind, and a stop signal or the timeout rolls a
blocked migration back and frees its backend at once."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import anyio
import asyncpg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from mcp_supervisor.prepare.migrate import MIGRATION_LOCK_KEY
from tests.support.pg import PASSWORD

from .fixtures_deps import REPO, dep_env, events, log_lines, run_cli, start_cli, start_supervisor


def head_revision() -> str:
    head = ScriptDirectory.from_config(Config(str(REPO / "alembic.ini"))).get_current_head()
    assert head is not None
    return head


def migrate_env(url: str, **extra: str) -> dict[str, str]:
    return dep_env(
        REGISTRY_DATABASE_URL=url,
        MCP_SUPERVISOR_WAIT_FOR="postgres",
        MCP_SUPERVISOR_DEPENDENCY_TIMEOUT="20",
        **extra,
    )


async def schema_state(url: str) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        version = None
        if await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL"):
            version = await conn.fetchval("SELECT version_num FROM alembic_version")
        return {
            "version": version,
            "vector": await conn.fetchval(
                "SELECT count(*) FROM pg_extension WHERE extname = 'vector'"
            ),
            "tables": sorted(
                await conn.fetchval(
                    "SELECT coalesce(array_agg(tablename::text), '{}') FROM pg_tables "
                    "WHERE schemaname = 'public'"
                )
            ),
        }
    finally:
        await conn.close()


def test_lock_key_matches_env_py() -> None:
    """We take env.py's advisory lock ourselves: the keys must be one and the same."""
    text = (REPO / "migrations" / "env.py").read_text()
    m = re.search(r"^MIGRATION_LOCK_KEY\s*=\s*(0x[0-9A-Fa-f]+|\d+)", text, re.MULTILINE)
    assert m is not None
    assert int(m.group(1), 0) == MIGRATION_LOCK_KEY


@pytest.mark.anyio
async def test_migrate_to_head_then_nothing_to_do(pg_url: str, tmp_path: Path) -> None:
    code, out, err, _ = await anyio.to_thread.run_sync(
        lambda: run_cli("migrate", migrate_env(pg_url), tmp_path)
    )
    assert code == 0, err
    assert out == ""
    (migrated,) = events(err, "migrated")
    assert migrated["from_revision"] == "base" and migrated["to_revision"] == head_revision()
    steps = [e["step"] for e in events(err, "step finished")]
    assert steps == ["postgres", "migrate"]
    state = await schema_state(pg_url)
    assert state["version"] == head_revision() and state["vector"] == 1
    assert {"repositories", "files", "chunks"} <= set(state["tables"])  # type: ignore[call-overload]

    code, _, err, _ = await anyio.to_thread.run_sync(
        lambda: run_cli("migrate", migrate_env(pg_url), tmp_path)
    )
    assert code == 0, err
    assert not events(err, "migrated") and events(err, "schema already at head")


@pytest.mark.slow
@pytest.mark.anyio
async def test_five_replicas_migrate_once(pg_url: str, tmp_path: Path) -> None:
    env = migrate_env(pg_url.replace("postgresql://", "postgresql+asyncpg://"))
    procs = [start_cli("migrate", env, tmp_path) for _ in range(5)]
    results = [
        await anyio.to_thread.run_sync(lambda p=p: p.communicate(timeout=120)) for p in procs
    ]
    assert [p.returncode for p in procs] == [0] * 5, [err for _, err in results]
    migrated = [e for _, err in results for e in events(err, "migrated")]
    at_head = [e for _, err in results for e in events(err, "schema already at head")]
    assert len(migrated) == 1 and migrated[0]["from_revision"] == "base"
    assert len(at_head) == 4
    state = await schema_state(pg_url)
    assert state["version"] == head_revision() and state["vector"] == 1


@pytest.mark.anyio
async def test_failed_migration_is_70_and_leaves_no_partial_schema(
    pg_url: str, tmp_path: Path
) -> None:
    # A table in the way of revision 0002 (after 0001 created the extension).
    conn = await asyncpg.connect(pg_url)
    await conn.execute("CREATE TABLE files (x int)")
    await conn.close()
    code, out, err, _ = await anyio.to_thread.run_sync(
        lambda: run_cli("migrate", migrate_env(pg_url), tmp_path)
    )
    assert code == 70, err
    assert out == ""
    errors = [e for e in log_lines(err) if e.get("level") == "error"]
    assert errors and "migration failed" in errors[-1]["event"]
    assert '"files" already exists' in errors[-1]["event"]
    assert "Traceback" not in err and PASSWORD not in err
    # One transaction: 0001's extension and 0002's first tables are gone with it.
    state = await schema_state(pg_url)
    assert state == {"version": None, "vector": 0, "tables": ["files"]}


async def _block_revision_0002(url: str) -> asyncpg.Connection:
    """Hold an uncommitted `repositories` table: 0002's CREATE TABLE waits on it."""
    blocker = await asyncpg.connect(url)
    await blocker.execute("BEGIN")
    await blocker.execute("CREATE TABLE repositories (id int)")
    return blocker


async def _wait_for_lock_wait(watch: asyncpg.Connection, database: str) -> int:
    for _ in range(600):
        pid = await watch.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            database,
        )
        if pid:
            return int(pid)
        await anyio.sleep(0.05)
    raise AssertionError("the migration never blocked")


async def _backend_gone(watch: asyncpg.Connection, pid: int) -> bool:
    for _ in range(40):
        if not await watch.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            return True
        await anyio.sleep(0.05)
    return False


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("via", "signum", "expected"),
    [
        ("migrate", signal.SIGTERM, 143),
        ("migrate", signal.SIGINT, 130),
        # The supervisor forwards the stop to its preparing step; the server never starts.
        ("supervisor", signal.SIGTERM, 143),
    ],
)
async def test_stop_signal_during_a_blocked_migration_rolls_back(
    pg_url: str, tmp_path: Path, via: str, signum: signal.Signals, expected: int
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    blocker = await _block_revision_0002(pg_url)
    watch = await asyncpg.connect(pg_url)
    marker = tmp_path / "server-started"
    proc: subprocess.Popen[str]
    if via == "migrate":
        proc = start_cli("migrate", migrate_env(pg_url), tmp_path)
    else:
        proc = start_supervisor(migrate_env(pg_url), tmp_path, "touch", str(marker))
    try:
        backend = await _wait_for_lock_wait(watch, database)
        sent = time.monotonic()
        proc.send_signal(signum)
        _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=8))
        stopped = time.monotonic() - sent
        assert proc.returncode == expected, err
        assert "Traceback" not in err
        assert "never retrieved" not in err, err  # asyncio's noise about the dropped link
        # ~50 ms when idle; the bound leaves room for a loaded machine, well inside the grace.
        assert stopped < 2.0, f"took {stopped:.2f} s"
        # Gone at once, while our lock is still held: not left waiting to run DDL later.
        assert await _backend_gone(watch, backend)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await blocker.execute("ROLLBACK")
        await blocker.close()
        await watch.close()
    state = await schema_state(pg_url)
    assert state == {"version": None, "vector": 0, "tables": []}
    assert not marker.exists()


@pytest.mark.anyio
async def test_migration_timeout_is_70_and_rolls_back(pg_url: str, tmp_path: Path) -> None:
    database = pg_url.rsplit("/", 1)[1]
    blocker = await _block_revision_0002(pg_url)
    watch = await asyncpg.connect(pg_url)
    try:
        proc = start_cli(
            "migrate", migrate_env(pg_url, MCP_SUPERVISOR_MIGRATION_TIMEOUT="1"), tmp_path
        )
        backend = await _wait_for_lock_wait(watch, database)
        _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
        assert proc.returncode == 70, err
        assert "did not finish within 1 s" in err
        assert "never retrieved" not in err, err
        assert await _backend_gone(watch, backend)
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
        await watch.close()
    state = await schema_state(pg_url)
    assert state == {"version": None, "vector": 0, "tables": []}
