"""Storage: the asyncpg pool and every query the indexer and the engine run.

pgvector values travel in pgvector's binary format through codecs registered on each
connection, so COPY (`copy_records_to_table`) can bulk-load chunks and embeddings.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import uuid
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from codebase_mcp.config import Settings
from codebase_mcp.errors import DatabaseConnectError, SchemaError
from codebase_mcp.models import FileError, JobInfo, JobState, RepositoryInfo
from codebase_mcp.store import stats
from mcp_supervisor.redact import redact_secret

# A pooled or a plain connection: queries take either.
if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:  # asyncpg's classes are generic only in the stubs
    Conn = asyncpg.Connection | PoolConnectionProxy
    Pool = asyncpg.Pool

# The alembic head this code expects (a test checks it against migrations/).
SCHEMA_HEAD = "0010"

_HEADER = struct.Struct(">HH")
_BIG_ENDIAN = sys.byteorder == "big"


def encode_vector(vector: Sequence[float] | bytes) -> bytes:
    """pgvector's binary send format: dims (int16), unused (int16), float4 big-endian.
    Bytes pass as they are (already encoded: how a vector travels inside an array)."""
    if isinstance(vector, bytes):
        return vector
    n = len(vector)
    return struct.pack(f">HH{n}f", n, 0, *vector)  # one C call; struct caches the format


def decode_vector(data: bytes) -> list[float]:
    dims, _ = _HEADER.unpack_from(data)
    values = array("f")
    values.frombytes(data[4 : 4 + 4 * dims])
    if not _BIG_ENDIAN:
        values.byteswap()
    return values.tolist()


def encode_half_python(vector: Sequence[float]) -> bytes | None:
    """pgvector's halfvec send format: dims (int16), unused (int16), IEEE half-precision
    big-endian, each value rounded to the nearest half (ties to even). None when a value
    is not finite or rounds beyond +-65504."""
    n = len(vector)
    try:
        # sum: one C loop, and NaN or infinity anywhere makes it not finite; packing
        # refuses a finite value out of range.
        return struct.pack(f">HH{n}e", n, 0, *vector) if math.isfinite(sum(vector)) else None
    except OverflowError:
        return None


encode_half: Callable[[Sequence[float]], bytes | None]
try:  # the compiled twin (src/codebase_mcp/_halfvec.c): the same bytes, ~6x faster
    from codebase_mcp._halfvec import encode as encode_half
except ImportError:  # pragma: no cover - built without a C compiler
    encode_half = encode_half_python


def decode_half(data: bytes) -> list[float]:
    dims, _ = _HEADER.unpack_from(data)
    return list(struct.unpack_from(f">{dims}e", data, 4))


def _halfvec_parameter(vector: Sequence[float] | bytes) -> bytes:
    if isinstance(vector, bytes):  # already encoded (embeddings.encode)
        return vector
    encoded = encode_half(vector)
    if encoded is None:
        raise ValueError("a halfvec value is not finite or beyond +-65504")
    return encoded


def _passthrough(data: bytes) -> bytes:
    return data


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    # tsvectors and term-frequency sparsevecs are built by the indexer in their binary
    # formats (tokens.chunk_vectors): send them as is.
    await conn.set_type_codec(
        "tsvector",
        schema="pg_catalog",
        encoder=_passthrough,
        decoder=_passthrough,
        format="binary",
    )
    schema = await conn.fetchval(
        "SELECT n.nspname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE t.typname = 'vector' LIMIT 1"
    )
    if schema is not None:
        await conn.set_type_codec(
            "vector",
            schema=schema,
            encoder=encode_vector,
            decoder=decode_vector,
            format="binary",
        )
        await conn.set_type_codec(
            "halfvec",
            schema=schema,
            encoder=_halfvec_parameter,
            decoder=decode_half,
            format="binary",
        )
        await conn.set_type_codec(
            "sparsevec",
            schema=schema,
            encoder=_passthrough,
            decoder=_passthrough,
            format="binary",
        )


async def create_pool(
    settings: Settings,
    application_name: str = "codebase-mcp",
    idle_in_transaction_timeout: float | None = None,
) -> Pool:
    """A pool with the vector codec; connection failures become a clear EngineError.
    `application_name` names its sessions (lease.evict finds a replica's by it);
    `idle_in_transaction_timeout` (s) lets PostgreSQL end a session whose client stopped
    inside a transaction (a hung replica's locks do not outlive it)."""
    server_settings = {"application_name": application_name}
    if idle_in_transaction_timeout:
        server_settings["idle_in_transaction_session_timeout"] = str(
            int(idle_in_transaction_timeout * 1000)
        )
    try:
        pool = await asyncpg.create_pool(
            settings.asyncpg_dsn,
            min_size=1,
            max_size=settings.db_pool_size,
            init=_init_connection,
            server_settings=server_settings,
            timeout=10,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseConnectError(
            f"cannot connect to PostgreSQL at {settings.database_url_masked}: "
            f"{type(exc).__name__}: {_scrub(str(exc), settings)}",
            getattr(exc, "sqlstate", None),
        ) from None
    assert pool is not None
    return pool


def _scrub(text: str, settings: Settings) -> str:
    from urllib.parse import urlsplit

    return redact_secret(text, urlsplit(settings.database_url).password)


async def check_schema(conn: Conn) -> None:
    """The schema must be at SCHEMA_HEAD. (Vectors of any size live in the embeddings
    store: no size to check since revision 0008.)"""
    try:
        version = await conn.fetchval("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        version = None
    if version != SCHEMA_HEAD:
        found = "no schema" if version is None else f"revision {version}"
        raise SchemaError(
            f"the database schema is not at head ({found}, expected {SCHEMA_HEAD}); run "
            "`mcp-supervisor migrate` or `alembic upgrade head` first"
        )


# --- repositories ---------------------------------------------------------------------


@dataclass(frozen=True)
class RepositoryRow:
    id: int
    path: str
    embedding_model: str | None
    embedding_dimensions: int | None


async def upsert_repository(conn: Conn, path: str) -> RepositoryRow:
    # Read first: a re-index of a known repository then writes nothing here (an upsert
    # that updates the row would make every job wait for one more WAL flush).
    row = await conn.fetchrow(
        "SELECT id, path, embedding_model, embedding_dimensions FROM repositories WHERE path = $1",
        path,
    )
    if row is None:
        row = await conn.fetchrow(
            "INSERT INTO repositories (path) VALUES ($1) "
            "ON CONFLICT (path) DO UPDATE SET path = EXCLUDED.path "
            "RETURNING id, path, embedding_model, embedding_dimensions",
            path,
        )
    assert row is not None
    return RepositoryRow(**dict(row))


async def mark_repository_indexed(
    conn: Conn,
    repository_id: int,
    model: str | None,
    dimensions: int | None,
    synced_at: datetime | None = None,
) -> None:
    """`model` and `dimensions` describe the vectors the repository holds (None: none);
    `synced_at`: when the run began to read the disk (the database's clock)."""
    await conn.execute(
        "UPDATE repositories SET last_indexed_at = now(), embedding_model = $2, "
        "embedding_dimensions = $3, synced_at = coalesce($4, synced_at) WHERE id = $1",
        repository_id,
        model,
        dimensions,
        synced_at,
    )


async def database_now(conn: Conn) -> datetime:
    value: datetime = await conn.fetchval("SELECT now()")
    return value


# The watch columns and the holder of the repository's watch lease (watch_manager.lease_name).
_REPO_SUMMARY = """
    SELECT r.path, r.last_indexed_at, r.embedding_model, r.embedding_dimensions,
           r.watch, r.synced_at, r.pending_changes, r.watch_error,
           (SELECT l.owner FROM leases l
            WHERE l.name = 'watch:' || r.path AND l.expires_at > now()) AS watcher,
           count(f.id) AS files, coalesce(sum(f.chunk_count), 0)::bigint AS chunks
    FROM repositories r LEFT JOIN files f ON f.repository_id = r.id
"""


def _repo_info(row: asyncpg.Record) -> RepositoryInfo:
    return RepositoryInfo(
        path=row["path"],
        files=int(row["files"]),
        chunks=int(row["chunks"]),
        last_indexed=row["last_indexed_at"],
        embedding_model=row["embedding_model"],
        embedding_dimensions=row["embedding_dimensions"],
        watch=row["watch"],
        watcher=row["watcher"],
        synced_at=row["synced_at"],
        pending_changes=row["pending_changes"] if row["watcher"] is not None else None,
        watch_error=row["watch_error"],
    )


async def list_repositories(conn: Conn) -> list[RepositoryInfo]:
    rows = await conn.fetch(_REPO_SUMMARY + " GROUP BY r.id ORDER BY r.path")
    return [_repo_info(r) for r in rows]


async def repository_paths(conn: Conn) -> list[str]:
    return [r["path"] for r in await conn.fetch("SELECT path FROM repositories ORDER BY path")]


async def repository_info(conn: Conn, path: str) -> RepositoryInfo | None:
    row = await conn.fetchrow(_REPO_SUMMARY + " WHERE r.path = $1 GROUP BY r.id", path)
    return None if row is None else _repo_info(row)


async def delete_repository(conn: Conn, path: str) -> bool:
    """Delete a repository; files and chunks go with it (ON DELETE CASCADE), and so do
    its statistics (stats.forget: no foreign key there, see migration 0005)."""
    async with conn.transaction():
        repository_id = await conn.fetchval("SELECT id FROM repositories WHERE path = $1", path)
        if repository_id is None:
            return False
        await stats.forget(conn, repository_id)
        await conn.execute("DELETE FROM repositories WHERE id = $1", repository_id)
    return True


# --- files and chunks -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileStat:
    """What the change check compares (size, mtime_ns, inode); `trusted`: the stat was
    taken long enough after the file's last write to vouch for its content (see
    changes.racily_clean)."""

    size: int
    mtime_ns: int | None
    inode: int | None
    trusted: bool = False


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: int
    content_hash: str
    stat: FileStat | None = None


async def stored_files(conn: Conn, repository_id: int) -> dict[str, StoredFile]:
    rows = await conn.fetch(
        "SELECT id, path, content_hash, size, mtime_ns, inode, stat_trusted "
        "FROM files WHERE repository_id = $1",
        repository_id,
    )
    return {
        r["path"]: StoredFile(
            r["id"],
            r["content_hash"],
            FileStat(r["size"], r["mtime_ns"], r["inode"], r["stat_trusted"]),
        )
        for r in rows
    }


async def update_file_stats(
    conn: Conn, repository_id: int, stats_by_path: Sequence[tuple[str, FileStat]]
) -> None:
    """Store the stat of files whose content did not change (touched, rewritten with the
    same bytes, or stored before their stat was kept)."""
    if not stats_by_path:
        return
    await conn.execute(
        """
        UPDATE files f SET size = s.size, mtime_ns = s.mtime_ns, inode = s.inode,
            stat_trusted = s.trusted
        FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bool[])
            AS s(path, size, mtime_ns, inode, trusted)
        WHERE f.repository_id = $1 AND f.path = s.path
        """,
        repository_id,
        [p for p, _ in stats_by_path],
        [st.size for _, st in stats_by_path],
        [st.mtime_ns for _, st in stats_by_path],
        [st.inode for _, st in stats_by_path],
        [st.trusted for _, st in stats_by_path],
    )


async def count_files(conn: Conn) -> int:
    """Files stored, over every repository."""
    return int(await conn.fetchval("SELECT count(*) FROM files"))


async def delete_files(conn: Conn, repository_id: int, paths: Sequence[str]) -> int:
    """Forget these files, their chunks and their share of the corpus statistics."""
    if not paths:
        return 0
    async with conn.transaction():
        removed = await stats.share_of(conn, repository_id, paths)
        deleted = await _delete_files(conn, repository_id, paths)
        await stats.record(conn, repository_id, stats.net(stats.NOTHING, removed))
    return deleted


async def _delete_files(conn: Conn, repository_id: int, paths: Sequence[str]) -> int:
    status = await conn.execute(
        "DELETE FROM files WHERE repository_id = $1 AND path = ANY($2::text[])",
        repository_id,
        list(paths),
    )
    return int(status.split()[-1])


@dataclass(frozen=True, slots=True)
class FileRow:
    path: str
    language: str | None
    content_hash: str
    size: int
    chunk_count: int
    mtime_ns: int | None = None
    inode: int | None = None
    stat_trusted: bool = False


CHUNK_COLUMNS = (
    "file_id",
    "repository_id",
    "path",
    "ordinal",
    "start_line",
    "end_line",
    "kind",
    "symbol",
    "language",
    "text",
    "tsv",
    "term_freqs",
    "body_length",
    "embed_hash",
)

# (ordinal, start_line, end_line, kind, symbol, language, text, tsv, term_freqs,
# body_length, embed_hash): the CHUNK_COLUMNS after file_id, repository_id and path. tsv
# and term_freqs are binary (tokens.chunk_vectors); embed_hash keys the chunk's vector in
# the embeddings store (embeddings.text_hash of index.pipeline.embedding_text).
ChunkRecord = tuple[
    int,
    int,
    int,
    str | None,
    str | None,
    str | None,
    str,
    bytes,
    bytes,
    int,
    bytes,
]


async def replace_files(
    conn: Conn,
    repository_id: int,
    files: Sequence[FileRow],
    chunks: Sequence[Sequence[ChunkRecord]],
    forget: Sequence[str] = (),
    *,
    added: stats.Share | None = None,
    replacing: bool = True,
) -> None:
    """Replace these files' rows and chunks, forget the files at `forget`, and keep the
    corpus statistics in step; call inside a transaction so a batch is all or nothing.
    `chunks[i]` belongs to `files[i]`. `added`: the new chunks' share when the caller
    counted it (else the database counts it); `replacing=False`: none of these files is
    stored yet."""
    paths = [f.path for f in files]
    removed = stats.NOTHING
    if replacing or forget:
        removed = await stats.share_of(conn, repository_id, [*paths, *forget])
        await _delete_files(conn, repository_id, [*paths, *forget])
    rows = await conn.fetch(
        """
        INSERT INTO files (repository_id, path, language, content_hash, size, chunk_count,
                           mtime_ns, inode, stat_trusted)
        SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[],
                                 $6::int[], $7::bigint[], $8::bigint[], $9::bool[])
        RETURNING id, path
        """,
        repository_id,
        paths,
        [f.language for f in files],
        [f.content_hash for f in files],
        [f.size for f in files],
        [f.chunk_count for f in files],
        [f.mtime_ns for f in files],
        [f.inode for f in files],
        [f.stat_trusted for f in files],
    )
    ids = {r["path"]: r["id"] for r in rows}
    records = [
        (ids[f.path], repository_id, f.path, *chunk)
        for f, file_chunks in zip(files, chunks, strict=True)
        for chunk in file_chunks
    ]
    if records:
        await conn.copy_records_to_table("chunks", records=records, columns=CHUNK_COLUMNS)
    if added is None:
        added = await stats.share_of_files(conn, list(ids.values()))
    await stats.record(conn, repository_id, stats.net(added, removed))


# --- jobs -----------------------------------------------------------------------------

JOB_COLUMNS = """id, repository_path, state, force, owner, files_total, files_done,
    files_unchanged, files_deleted, skipped, chunks_total, chunks_done, errors, message,
    created_at, started_at, finished_at"""

_SELECT_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"  # noqa: S608 - constants


def job_from_row(row: asyncpg.Record) -> JobInfo:
    errors = row["errors"]
    if isinstance(errors, str):
        errors = json.loads(errors)
    skipped = row["skipped"]
    if isinstance(skipped, str):
        skipped = json.loads(skipped)
    return JobInfo(
        id=str(row["id"]),
        repository=row["repository_path"],
        state=JobState(row["state"]),
        force=row["force"],
        files_total=row["files_total"],
        files_done=row["files_done"],
        files_unchanged=row["files_unchanged"],
        files_deleted=row["files_deleted"],
        skipped={str(k): int(v) for k, v in skipped.items()},
        chunks_total=row["chunks_total"],
        chunks_done=row["chunks_done"],
        errors=tuple(FileError(e["path"], e["error"]) for e in errors),
        message=row["message"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        replica=row["owner"],
    )


def parse_job_id(job_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(job_id))
    except ValueError:
        return None


async def get_job(conn: Conn, job_id: str) -> JobInfo | None:
    key = parse_job_id(job_id)
    if key is None:
        return None
    row = await conn.fetchrow(_SELECT_JOB, key)
    return None if row is None else job_from_row(row)


async def last_interrupted_job(conn: Conn, repository_path: str, other_than: str) -> str | None:
    """The id of the repository's latest job when that one was interrupted (a new job for
    the repository resumes it: unchanged files are skipped by their hashes)."""
    row = await conn.fetchrow(
        "SELECT id, state FROM jobs WHERE repository_path = $1 AND id <> $2 "
        "ORDER BY created_at DESC LIMIT 1",
        repository_path,
        uuid.UUID(other_than),
    )
    if row is None or row["state"] != JobState.INTERRUPTED.value:
        return None
    return str(row["id"])


async def job_counts(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
    return {r["state"]: int(r["n"]) for r in rows}


def now_utc() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)
