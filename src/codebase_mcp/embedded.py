"""`codebase-mcp index|search` beside a server, with no URL to type.

With no REGISTRY_DATABASE_URL these commands use the embedded PostgreSQL of the
supervisor's data directory ($MCP_SUPERVISOR_DATA_DIR, default
~/.local/share/codebase-mcp), the way a second supervisor does (mcp_supervisor.pg.share):
they join the one that runs, as a user for as long as the command lasts, so it does not
stop under them; when none runs they start it (and migrate a fresh database), and it
stops again once its last user has gone.
"""

from __future__ import annotations

import os
from typing import Any

import structlog

from codebase_mcp.errors import DatabaseConnectError

log = structlog.get_logger("codebase-mcp")

JOIN_TIMEOUT = 120.0  # a first use includes initdb (~1 s) on a slow disk
MIGRATION_TIMEOUT = 300.0

# Our use of the shared PostgreSQL: a lock held until this process ends.
_membership: Any = None


def data_dir() -> str:
    from mcp_supervisor.pg.share import default_data_dir

    return os.environ.get("MCP_SUPERVISOR_DATA_DIR", "").strip() or default_data_dir()


def database_url() -> str:
    """The URL of the data directory's embedded PostgreSQL, ready and migrated.
    Raises DatabaseConnectError (exit 69) when it cannot be had."""
    global _membership
    from mcp_supervisor.pg import share

    where = data_dir()

    def progress(phase: str) -> None:
        if phase == share.INITDB:
            log.info("creating the embedded PostgreSQL (first use)", data_dir=where)
        elif phase == share.STARTING:
            log.info("starting the embedded PostgreSQL", data_dir=where)

    try:
        member = share.join(where, timeout=JOIN_TIMEOUT, on_phase=progress)
    except share.JoinError as exc:
        raise DatabaseConnectError(str(exc)) from None
    _membership = member
    import anyio

    anyio.run(_migrate_if_behind, member.url)
    return str(member.url)


async def _migrate_if_behind(url: str) -> None:
    import asyncpg

    from codebase_mcp.store.db import SCHEMA_HEAD

    conn = await asyncpg.connect(url, timeout=30)
    try:
        version = await conn.fetchval("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        version = None
    finally:
        await conn.close()
    if version == SCHEMA_HEAD:
        return
    from codebase_mcp.config import find_alembic_ini
    from mcp_supervisor.prepare.migrate import MigrationFailed, upgrade_head

    log.info("migrating the embedded database", from_revision=version or "base")
    try:
        await upgrade_head(url, time_limit=MIGRATION_TIMEOUT, alembic_ini=find_alembic_ini())
    except MigrationFailed as exc:
        raise DatabaseConnectError(str(exc)) from None
