"""`alembic upgrade head`, run programmatically, cancellable, serialized across replicas.

We open the connection ourselves (SQLAlchemy on asyncpg) and hand it to the project's
async env.py through `config.attributes["connection"]`, so the migration runs inside our
event loop: a SIGTERM cancels it like any other await (asyncpg sends PostgreSQL a cancel
request) and the one transaction the whole upgrade runs in rolls back, leaving no partial
schema. Handing env.py a connection means we take its advisory lock ourselves, with its
key (a test keeps the two equal), so N replicas still migrate once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import structlog

from mcp_supervisor.redact import redact_secret

log = structlog.get_logger("mcp_supervisor.prepare.migrate")

# Must equal MIGRATION_LOCK_KEY in migrations/env.py (tests/supervisor/test_migrate.py
# checks): the same lock serializes us, env.py's own path and `alembic upgrade` by hand.
MIGRATION_LOCK_KEY = 0x63626D63702D6D69


class MigrationFailed(Exception):
    """The upgrade failed or timed out; the message is for the user (no password)."""


@dataclass(frozen=True)
class MigrationResult:
    before: str | None  # the revision found (None: empty database)
    after: str | None
    lock_wait: float  # seconds spent waiting for another replica's migration

    @property
    def ran(self) -> bool:
        return self.before != self.after


def asyncpg_url(url: str) -> str:
    parts = urlsplit(url.strip())
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


class AlembicIniNotFound(Exception):
    """No alembic.ini where the setting or the usual places say (invalid configuration)."""


def find_alembic_ini(configured: str | Path | None = None) -> Path:
    """The server's alembic.ini: the setting (CODEBASE_MCP_ALEMBIC_INI, --alembic-ini),
    else the first of ./alembic.ini, the source checkout's and /app's (where the image
    keeps it) that has migrations/env.py beside it. Looked up here, not asked of the
    server's package: the supervisor is a generic PID 1 and imports nothing of it."""
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise AlembicIniNotFound(
                f"CODEBASE_MCP_ALEMBIC_INI (--alembic-ini): {path} does not exist"
            )
        return path
    candidates = [
        Path.cwd() / "alembic.ini",
        Path(__file__).resolve().parents[3] / "alembic.ini",
        Path("/app/alembic.ini"),
    ]
    for path in candidates:
        if path.is_file() and (path.parent / "migrations" / "env.py").is_file():
            return path
    raise AlembicIniNotFound(
        "alembic.ini not found (looked in "
        + ", ".join(str(p) for p in candidates)
        + "); set CODEBASE_MCP_ALEMBIC_INI"
    )


async def upgrade_head(
    url: str, *, time_limit: float, alembic_ini: str | Path | None = None
) -> MigrationResult:
    """Upgrade the database at `url` to head within `time_limit` seconds.

    Raises MigrationFailed; cancellation (a stop signal) propagates after the connection
    is gone, so the transaction is rolled back by then.
    """
    from sqlalchemy import pool, text
    from sqlalchemy.ext.asyncio import create_async_engine

    password = urlsplit(url).password
    ini = find_alembic_ini(alembic_ini)
    engine = create_async_engine(asyncpg_url(url), poolclass=pool.NullPool)
    backend_pid: int | None = None
    try:
        with anyio.fail_after(time_limit):
            async with engine.connect() as conn:
                backend_pid = await conn.scalar(text("SELECT pg_backend_pid()"))
                started = time.monotonic()
                await conn.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                await conn.commit()
                lock_wait = time.monotonic() - started
                try:
                    before = await conn.run_sync(_current_revision)
                    await conn.commit()
                    await conn.run_sync(_upgrade, str(ini))
                    await conn.commit()
                    after = await conn.run_sync(_current_revision)
                    await conn.commit()
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                        if conn.in_transaction():
                            await conn.rollback()
                        await conn.execute(
                            text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                        )
                        await conn.commit()
        return MigrationResult(before=before, after=after, lock_wait=lock_wait)
    except TimeoutError:
        await _terminate(engine, backend_pid)
        raise MigrationFailed(
            f"the migration did not finish within {time_limit:g} s "
            "(MCP_SUPERVISOR_MIGRATION_TIMEOUT); it was rolled back"
        ) from None
    except anyio.get_cancelled_exc_class():
        await _terminate(engine, backend_pid)
        raise
    except MigrationFailed:
        raise
    except Exception as exc:
        await _terminate(engine, backend_pid)
        raise MigrationFailed(f"migration failed: {_describe(exc, password)}") from None
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            await engine.dispose()


async def _terminate(engine: Any, backend_pid: int | None) -> None:
    """Make sure the migrating backend is gone (its transaction rolled back, its lock
    freed) even when it sits in a lock wait, where a dropped client goes unnoticed."""
    if backend_pid is None:
        return
    from sqlalchemy import text

    with anyio.CancelScope(shield=True), anyio.move_on_after(3.0):
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend_pid})
        except Exception as exc:
            log.debug("could not terminate the migration's backend", error=type(exc).__name__)


def _describe(exc: BaseException, password: str | None) -> str:
    # SQLAlchemy appends a "(Background on this error at: https://sqlalche.me/...)" line
    # and the statement; keep the database's own words.
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).split("\n(Background on this error")[0]
    return redact_secret(" ".join(text.split()), password)


def _current_revision(connection: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Any, ini: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(ini)
    config.attributes["connection"] = connection
    # Our structlog setup stays: env.py must not re-configure logging from the ini.
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")
