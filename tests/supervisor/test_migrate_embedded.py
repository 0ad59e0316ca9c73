"""`mcp-supervisor migrate|wait` with no database URL: a user of the data directory's
embedded PostgreSQL for the command's duration (what `scripts/run --setup` runs). Real
processes, the bundled PostgreSQL, the project's migrations."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import pytest

from codebase_mcp.store.db import SCHEMA_HEAD
from mcp_supervisor.pg import share
from tests.supervisor.fixtures_deps import REPO, dep_env, events, log_lines, run_cli, start_cli
from tests.supervisor.test_embedded_pg import keepers, scratch, wait_until_gone  # noqa: F401
from tests.supervisor.test_shared_pg import (  # noqa: F401
    finish,
    home,
    start_supervisor,
    wait_marker,
)


@pytest.fixture
def base(home: Path) -> Path:  # noqa: F811 - test_shared_pg's, which cleans up after us
    """A scratch directory for the data directory (and a running supervisor's marker)."""
    return home


def env_for(base: Path, **extra: str) -> dict[str, str]:
    return dep_env(
        MCP_SUPERVISOR_DATA_DIR=str(base / "data"),
        CODEBASE_MCP_ALEMBIC_INI=str(REPO / "alembic.ini"),
        **extra,
    )


def schema_version(base: Path, port: int) -> str | None:
    password = (base / "data" / "postgres.password").read_text().strip()

    async def read() -> str | None:
        conn = await asyncpg.connect(share.database_url(password, port))
        try:
            return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
        finally:
            await conn.close()

    return asyncio.run(read())


@pytest.mark.slow
def test_migrate_initialises_the_embedded_postgres_and_leaves_nothing_running(
    base: Path,
) -> None:
    code, out, err, _ = run_cli("migrate", env_for(base), base)
    assert code == 0, err
    assert out == ""
    assert [e["data_dir"] for e in events(err, "initialising embedded PostgreSQL")] == [
        str(base / "data")
    ]
    (started,) = events(err, "embedded PostgreSQL started")
    assert started["url"].startswith("postgresql://postgres:***@127.0.0.1:")
    assert [e["to_revision"] for e in events(err, "migrated")] == [SCHEMA_HEAD]
    # It started PostgreSQL for itself alone: stopped before the command returns.
    assert events(err, "embedded PostgreSQL stopped")
    assert keepers(base / "data") == []
    wait_until_gone(base / "data" / "postgres", timeout=1)
    password = (base / "data" / "postgres.password").read_text().strip()
    assert password not in err

    # Again: the cluster is there and at head; nothing to initialise or migrate.
    code, out, err, _ = run_cli("migrate", env_for(base), base)
    assert code == 0, err
    assert out == ""
    assert events(err, "initialising embedded PostgreSQL") == []
    assert [e["revision"] for e in events(err, "schema already at head")] == [SCHEMA_HEAD]
    wait_until_gone(base / "data" / "postgres", timeout=1)


@pytest.mark.slow
def test_migrate_beside_a_running_supervisor_joins_and_leaves_it_running(base: Path) -> None:
    server = start_supervisor(base, base / "a", stay=60)
    try:
        port = wait_marker(base / "a", server)
        code, out, err, _ = run_cli("migrate", env_for(base), base)
        assert code == 0, err
        assert out == ""
        (joined,) = events(err, "embedded PostgreSQL joined")
        assert joined["url"].endswith(f"127.0.0.1:{port}/postgres")
        assert events(err, "embedded PostgreSQL started") == []
        assert events(err, "embedded PostgreSQL stopped") == []
        # Still serving the supervisor's child, migrated by the command.
        assert schema_version(base, port) == SCHEMA_HEAD
        state = share.read_state(share.Paths.for_data_dir(str(base / "data")))
        assert state is not None and state.phase == share.READY and state.port == port
    finally:
        server.send_signal(signal.SIGTERM)
        finish(server)
    wait_until_gone(base / "data" / "postgres")


@pytest.mark.slow
def test_wait_alone_uses_the_embedded_postgres_too(base: Path) -> None:
    code, out, err, _ = run_cli("wait", env_for(base, MCP_SUPERVISOR_WAIT_FOR="postgres"), base)
    assert code == 0, err
    assert out == ""
    assert events(err, "embedded PostgreSQL started")
    assert events(err, "migrated") == []
    wait_until_gone(base / "data" / "postgres", timeout=5)


@pytest.mark.slow
def test_an_unusable_data_directory_is_named_with_exit_69(base: Path) -> None:
    (base / "data").write_text("not a directory")
    code, out, err, _ = run_cli("migrate", env_for(base), base)
    assert code == 69, err
    assert out == ""
    error = [e for e in log_lines(err) if e.get("level") == "error"][-1]
    assert str(base / "data") in error["event"], error
    assert "Traceback" not in err


@pytest.mark.slow
def test_sigterm_while_initialising_stops_at_once_and_leaves_nothing(base: Path) -> None:
    proc = start_cli("migrate", env_for(base), base)
    try:
        deadline = time.monotonic() + 60
        state_file = base / "data" / "postgres.state.json"
        while not (state_file.exists() and '"initdb"' in state_file.read_text()):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "initdb never started"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert out == ""
    # The keeper finishes the cluster it was making, starts no PostgreSQL for nobody.
    wait_until_gone(base / "data" / "postgres")
    code, _, err, _ = run_cli("migrate", env_for(base), base)
    assert code == 0, err
