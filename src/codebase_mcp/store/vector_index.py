"""Bulk loading: a model's HNSW index (embeddings.Model.index_name) is set aside while a
large index job loads, and built once afterwards.

An insert into an HNSW graph costs a search of the graph: on 2 cores, the 75,000 chunks
(768 dimensions) of Python's standard library take ~45 s of inserts but ~13-16 s to build
from scratch with enough maintenance_work_mem (pgvector: "load your initial data, then
create the index"). So a large job that brings at least half as many files as the
database holds drops the index first, and builds it again when the last such job ends.

Crash safety: the drop commits together with a row in `deferred_indexes` that holds the
index's definition, and the build commits together with that row's removal. Whatever is
listed there is built by the next job to end, or by the next server start.

Concurrency (replicas share one database): every loading job holds a shared advisory
lock on its own connection for as long as it loads; a build takes that lock exclusively
and without waiting, so it runs only when no job is loading, and the last loader to end
does it. Searches meanwhile still answer by vector, exactly (a sequential scan).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import asyncpg
import structlog

from codebase_mcp.store import db, embeddings

log = structlog.get_logger(__name__)

# Advisory-lock keys (two-int form): the first names this module's locks.
LOCK_SPACE = embeddings.INDEX_LOCK_SPACE
LOADERS = 1  # shared: a job is loading; exclusive: a build
DDL = 2  # serializes the drop and the build
# A drop waits this long for searches and writes in flight; else the job inserts as usual.
DROP_LOCK_TIMEOUT = "5s"
_MIB = 1 << 20


# --- decisions (pure) -----------------------------------------------------------------


def bulk_load_worthwhile(new_files: int, stored_files: int, min_files: int) -> bool:
    """Whether a job should load without the vector index: it brings at least `min_files`
    files to embed, and the build afterwards covers at most three times what it brings
    (a build costs about a third of the inserts per vector: up to there it is no slower,
    and a small job pays no build at all). `min_files` 0 never does."""
    return 0 < min_files <= new_files and stored_files <= 2 * new_files


def build_memory(vectors: int, dimensions: int) -> int:
    """maintenance_work_mem (bytes) for building the graph of `vectors`: a graph that fits
    builds several times faster than one that spills. Between 64 MiB and 1 GiB."""
    # A full-precision vector and its neighbour lists, with slack (a half-precision
    # index needs less: an over-estimate only costs memory the build may not touch).
    per_vector = dimensions * 4 + 512
    return max(64 * _MIB, min(1024 * _MIB, vectors * per_vector * 5 // 4))


def idempotent(definition: str) -> str:
    """pg_indexes.indexdef as a statement that does nothing when the index exists."""
    return re.sub(r"^CREATE (UNIQUE )?INDEX ", r"CREATE \1INDEX IF NOT EXISTS ", definition)


# --- database -------------------------------------------------------------------------


Announce = Callable[[int], Awaitable[None]]


@asynccontextmanager
async def bulk_load(
    pool: db.Pool,
    model: embeddings.Model | None,
    *,
    enabled: bool,
    build_after: Callable[[], bool],
    announce: Announce | None = None,
) -> AsyncIterator[bool]:
    """Around a job's writes: when `enabled`, set the vector index aside (yields whether
    the job loads without it). On exit, when `build_after()` says so (not after a stop:
    a build may outlast the grace window), build whatever is set aside if no other job
    is loading; `announce(vectors)` is awaited before a build starts."""
    if not enabled or model is None:
        yield False
        if build_after():
            await build_deferred(pool, announce)
        return
    async with pool.acquire() as loader:
        await loader.execute("SELECT pg_advisory_lock_shared($1, $2)", LOCK_SPACE, LOADERS)
        try:
            deferred = await _set_aside(loader, model.index_name)
            yield deferred
        finally:
            with anyio.CancelScope(shield=True):
                await loader.execute(
                    "SELECT pg_advisory_unlock_shared($1, $2)", LOCK_SPACE, LOADERS
                )
    if build_after():
        await build_deferred(pool, announce)


async def _set_aside(conn: db.Conn, index: str) -> bool:
    """Drop the vector index and remember its definition, in one transaction. True when
    the index is set aside (by us or by a job still loading)."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_SPACE, DDL)
            definition = await conn.fetchval(
                "SELECT indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND indexname = $1",
                index,
            )
            if definition is None:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM deferred_indexes WHERE name = $1", index
                    )
                )
            await conn.execute(
                "INSERT INTO deferred_indexes (name, definition) VALUES ($1, $2)",
                index,
                definition,
            )
            await conn.execute(f'DROP INDEX "{index}"')
    except asyncpg.LockNotAvailableError:
        log.info("vector index busy; this job updates it as it goes", index=index)
        return False
    log.info("vector index set aside for a bulk load", index=index)
    return True


async def build_deferred(pool: db.Pool, announce: Announce | None = None) -> bool:
    """Build every index set aside, unless a job is still loading (it builds them when it
    ends). True when something was built."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM deferred_indexes)"):
            return False
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_SPACE, LOADERS):
            return False
        try:
            return await _build(conn, announce)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_SPACE, LOADERS)


_MODEL_INDEX = re.compile(r"embeddings_hnsw_(\d+)$")


async def _build(conn: db.Conn, announce: Announce | None) -> bool:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_SPACE, DDL)
        rows = await conn.fetch("SELECT name, definition FROM deferred_indexes FOR UPDATE")
        if not rows:
            return False
        for row in rows:
            found = _MODEL_INDEX.match(row["name"])
            vectors, dimensions = 0, 0
            if found is not None:
                stats = await conn.fetchrow(
                    "SELECT count(e.*) AS n, m.dimensions FROM embedding_models m "
                    "LEFT JOIN embeddings e ON e.model_id = m.id WHERE m.id = $1 "
                    "GROUP BY m.dimensions",
                    int(found.group(1)),
                )
                if stats is not None:
                    vectors, dimensions = int(stats["n"]), int(stats["dimensions"])
            if announce is not None:
                await announce(vectors)
            memory = build_memory(vectors, dimensions)
            await conn.execute(f"SET LOCAL maintenance_work_mem = '{memory // 1024}kB'")
            # PostgreSQL sizes a build's workers by the table's main heap. Vectors of more
            # than ~1,000 dimensions (2 bytes each in half precision) go out of line to
            # TOAST, and the heap stays small: 75k full-precision 768-d vectors left ~5 MB,
            # under the 8 MB below which it builds in one process. In parallel, such a graph
            # builds in half the time.
            await conn.execute("SET LOCAL min_parallel_table_scan_size = 0")
            log.info("building the vector index", index=row["name"], vectors=vectors)
            await _create(conn, idempotent(row["definition"]))
            await conn.execute("DELETE FROM deferred_indexes WHERE name = $1", row["name"])
            log.info("vector index built", index=row["name"], vectors=vectors)
    return True


async def _create(conn: db.Conn, statement: str) -> None:
    """A parallel build keeps the graph in dynamic shared memory (/dev/shm), which a
    container caps at 64 MiB unless told otherwise: PostgreSQL then fails with "could not
    resize shared memory segment ... No space left on device" (SQLSTATE 53100). Build in
    one process instead, in its own memory: slower, but the index gets built."""
    try:
        async with conn.transaction():  # a savepoint: the retry runs in a clean state
            await conn.execute(statement)
    except asyncpg.DiskFullError as exc:
        log.warning(
            "parallel vector index build failed for lack of shared memory; building in one "
            "process (give PostgreSQL a larger /dev/shm, e.g. compose shm_size: 1g)",
            error=str(exc),
        )
        await conn.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        await conn.execute(statement)
