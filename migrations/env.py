"""Alembic environment: async, on asyncpg, serialized across replicas.

The URL comes from `-x url=...`, else `sqlalchemy.url` (set by a programmatic caller),
else REGISTRY_DATABASE_URL; postgresql:// and postgresql+asyncpg:// are both accepted.
Before migrating, the connection takes a session-level PostgreSQL advisory lock, so when N
replicas start together one migrates while the others wait, then find the schema at head
and do nothing. The whole upgrade runs in one transaction: an interrupted run leaves no
partial schema behind.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from urllib.parse import urlsplit, urlunsplit

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

# Any fixed 64-bit key works as long as every replica uses the same one ("cbmcp-mig").
MIGRATION_LOCK_KEY = 0x63626D63702D6D69

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    # Keep the caller's loggers (the supervisor's structlog setup) alive.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = None


def _database_url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("REGISTRY_DATABASE_URL")
    )
    if not url:
        raise RuntimeError(
            "no database URL: set REGISTRY_DATABASE_URL or pass -x url=postgresql://..."
        )
    parts = urlsplit(url.strip())
    if parts.scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
        raise RuntimeError("the database URL must start with postgresql:// (or +asyncpg)")
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_locked(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _migrate(connection: AsyncConnection) -> None:
    # Session-level lock: held across the migration's own transaction. Waiters block
    # here until the first replica commits (or its connection dies, which frees it).
    await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    await connection.commit()
    try:
        await connection.run_sync(_run_locked)
        await connection.commit()
    finally:
        if connection.in_transaction():
            await connection.rollback()
        await connection.execute(
            text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )
        await connection.commit()


async def run_async_migrations() -> None:
    engine = create_async_engine(_database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await _migrate(connection)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    existing = config.attributes.get("connection")
    if existing is not None:
        # A caller handed us a (sync-facing) connection from run_sync: use it as is.
        _run_locked(existing)
        return
    asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
