"""The alembic migrations against real PostgreSQL: up, down, N replicas at once, the
embedding size, and the message for a server without pgvector."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import asyncpg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from codebase_mcp.config import find_alembic_ini, load_settings
from codebase_mcp.index.pipeline import embedding_text
from codebase_mcp.source.tokens import (
    WEIGHT_A,
    WEIGHT_B,
    WEIGHT_D,
    sparsevec_text,
    term_counts,
    tsvector_positions,
)
from codebase_mcp.store import db, embeddings, vector_index
from tests.codebase.fixtures_engine import ALEMBIC_INI, downgrade, migrate
from tests.support.pg import running_cluster, system_bin_dir

TABLES = {
    "repositories",
    "files",
    "chunks",
    "jobs",
    "deferred_indexes",
    "lexeme_stats",
    "lexeme_deltas",
    "corpus_deltas",
    "leases",
    "embedding_models",
    "embeddings",
}


async def schema(url: str) -> dict[str, object]:
    conn = await asyncpg.connect(url)
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        indexes = {
            r["indexname"]: r["indexdef"]
            for r in await conn.fetch("SELECT indexname, indexdef FROM pg_indexes")
        }
        versions = (
            [r[0] for r in await conn.fetch("SELECT version_num FROM alembic_version")]
            if "alembic_version" in tables
            else []
        )
        extensions = {r[0] for r in await conn.fetch("SELECT extname FROM pg_extension")}
        dims = (
            await conn.fetchval(
                "SELECT atttypmod FROM pg_attribute "
                "WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
            )
            if "chunks" in tables
            else None
        )
    finally:
        await conn.close()
    return {
        "tables": tables - {"alembic_version"},
        "indexes": indexes,
        "versions": versions,
        "extensions": extensions,
        "dims": dims,
    }


def test_head_is_what_the_engine_expects() -> None:
    script = ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))
    assert script.get_current_head() == db.SCHEMA_HEAD


def test_find_alembic_ini(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # not from the working directory: from the checkout
    assert find_alembic_ini() == ALEMBIC_INI
    monkeypatch.setenv("CODEBASE_MCP_ALEMBIC_INI", str(tmp_path / "missing.ini"))
    with pytest.raises(Exception, match="CODEBASE_MCP_ALEMBIC_INI"):
        find_alembic_ini()


@pytest.mark.anyio
async def test_upgrade_to_head_and_down_to_base(pg_url: str) -> None:
    await anyio.to_thread.run_sync(migrate, pg_url)
    state = await schema(pg_url)
    assert state["tables"] == TABLES
    assert state["versions"] == [db.SCHEMA_HEAD]
    assert "vector" in state["extensions"]  # type: ignore[operator]
    assert state["dims"] is None  # vectors of any size live in the embeddings store
    indexes = state["indexes"]
    assert isinstance(indexes, dict)
    assert "chunks_embedding" not in indexes
    assert "(embed_hash)" in indexes["chunks_embed_hash"]
    assert "USING gin (tsv)" in indexes["chunks_tsv"]
    assert "WHERE (state = 'running'::text)" in indexes["jobs_one_running_per_repository"]

    await anyio.to_thread.run_sync(downgrade, pg_url)
    state = await schema(pg_url)
    assert state["tables"] == set()
    assert state["versions"] == []
    assert "vector" not in state["extensions"]  # type: ignore[operator]

    await anyio.to_thread.run_sync(migrate, pg_url)
    assert (await schema(pg_url))["versions"] == [db.SCHEMA_HEAD]


@pytest.mark.anyio
async def test_the_store_holds_models_of_any_size_each_with_its_own_index(pg_url: str) -> None:
    await anyio.to_thread.run_sync(migrate, pg_url)
    pool = await db.create_pool(load_settings(env={"REGISTRY_DATABASE_URL": pg_url}))
    try:
        async with pool.acquire() as conn:
            small = await embeddings.register(conn, "small-model", 384)
            large = await embeddings.register(conn, "large-model", 1024)
            assert await embeddings.register(conn, "small-model", 384) == small
            with pytest.raises(embeddings.ModelSizeError, match="384"):
                await embeddings.register(conn, "small-model", 768)
            key = embeddings.text_hash("def f(): pass")
            await embeddings.store(conn, small, [key], embeddings.encode(small, [[0.1] * 384]))
            await embeddings.store(conn, large, [key], embeddings.encode(large, [[0.2] * 1024]))
            await embeddings.store(
                conn, small, [key], embeddings.encode(small, [[0.9] * 384])
            )  # kept as it was
            assert await embeddings.known(conn, small, [key, b"x"]) == {key}
            value = await conn.fetchval(
                "SELECT embedding FROM embeddings WHERE model_id = $1", small.id
            )
            assert value[:2] == pytest.approx([0.1, 0.1], rel=1e-3)  # half precision
    finally:
        await pool.close()
    indexes = (await schema(pg_url))["indexes"]
    assert isinstance(indexes, dict)
    assert "halfvec(384)" in indexes[small.index_name]
    assert f"WHERE (model_id = {large.id})" in indexes[large.index_name]


def tsvector_text(sections: list[tuple[str, int]]) -> str:
    """The tsvector literal the indexer's words make for these sections."""
    letters = "DCBA"
    return " ".join(
        "'" + word + "':" + ",".join(f"{p & 0x3FFF}{letters[p >> 14]}" for p in positions)
        for word, positions in sorted(tsvector_positions(sections).items())
    )


def run_alembic(url: str, cwd: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EMBEDDING_", "OLLAMA_", "OPENAI_"))
    }
    env.update(extra)
    env["REGISTRY_DATABASE_URL"] = url.replace("postgresql://", "postgresql+asyncpg://")
    return subprocess.Popen(
        [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.anyio
async def test_five_replicas_migrating_at_once_run_it_once(pg_url: str, tmp_path: Path) -> None:
    procs = [run_alembic(pg_url, tmp_path, "upgrade", "head") for _ in range(5)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out == ""  # stdout is MCP's: alembic logs to stderr
        assert "s3cret" not in err
    logs = "".join(err for _, err in outputs)
    assert logs.count("Running upgrade  -> 0001") == 1, logs
    assert logs.count("Running upgrade 0001 -> 0002") == 1, logs
    assert logs.count("Running upgrade 0002 -> 0003") == 1, logs
    assert logs.count("Running upgrade 0003 -> 0004") == 1, logs
    assert logs.count("Running upgrade 0004 -> 0005") == 1, logs
    assert logs.count("Running upgrade 0005 -> 0006") == 1, logs
    assert logs.count("Running upgrade 0006 -> 0007") == 1, logs
    assert logs.count("Running upgrade 0007 -> 0008") == 1, logs
    assert logs.count("Running upgrade 0008 -> 0009") == 1, logs
    state = await schema(pg_url)
    assert state["versions"] == [db.SCHEMA_HEAD]
    assert state["tables"] == TABLES


@pytest.mark.skipif(system_bin_dir() is None, reason="no PostgreSQL without pgvector here")
def test_a_server_without_pgvector_gets_a_message_that_says_what_to_do() -> None:
    bin_dir = system_bin_dir()
    assert bin_dir is not None
    base = Path(tempfile.mkdtemp(prefix="cbmcp-novec-", dir="/tmp"))
    with running_cluster(base, bin_dir) as cluster:
        proc = run_alembic(cluster.url(), base, "upgrade", "head")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "no pgvector extension" in err
        assert "pgvector/pgvector" in err
        assert cluster.password not in err
        assert cluster.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == "0"


@pytest.mark.anyio
async def test_revision_0005_fills_in_bm25_data_for_chunks_indexed_before(pg_url: str) -> None:
    """Chunks stored at revision 0004 get the term frequencies, body lengths and corpus
    statistics the indexer now keeps, computed from their tsvectors."""
    await anyio.to_thread.run_sync(migrate, pg_url, "0004")
    conn = await asyncpg.connect(pg_url)
    try:
        repo = await conn.fetchval("INSERT INTO repositories (path) VALUES ('/r') RETURNING id")
        file_id = await conn.fetchval(
            "INSERT INTO files (repository_id, path, content_hash, size) "
            "VALUES ($1, 'pkg/dates.py', 'h', 10) RETURNING id",
            repo,
        )
        sections = [
            [("parse_date", WEIGHT_A), ("pkg/dates.py", WEIGHT_B), ("parse it parse", WEIGHT_D)],
            [("", WEIGHT_A), ("pkg/dates.py", WEIGHT_B), ("", WEIGHT_D)],
        ]
        for ordinal, chunk in enumerate(sections):
            words = tsvector_text(chunk)
            await conn.execute(
                "INSERT INTO chunks (file_id, repository_id, path, ordinal, start_line, "
                "end_line, text, tsv) VALUES ($1, $2, 'pkg/dates.py', $3, 1, 2, 'x', $4::tsvector)",
                file_id,
                repo,
                ordinal,
                words,
            )
    finally:
        await conn.close()
    await anyio.to_thread.run_sync(migrate, pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT term_freqs::text AS tf, body_length FROM chunks ORDER BY ordinal"
        )
        for row, chunk in zip(rows, sections, strict=True):
            entries, body = term_counts(tsvector_positions(chunk))
            assert row["tf"] == sparsevec_text([(d, float(c)) for d, c in entries])
            assert row["body_length"] == body
        assert rows[0]["body_length"] == 3
        stats = dict(await conn.fetch("SELECT lexeme, df FROM lexeme_stats"))
        assert stats["parse"] == 1
        assert stats["pkg"] == 2
        repo_row = await conn.fetchrow("SELECT chunk_count, body_length_sum FROM repositories")
        assert tuple(repo_row) == (2, 3)
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_jobs_of_older_servers_are_interrupted_by_the_lease_migration(pg_url: str) -> None:
    """Older servers marked a job running before waiting for the repository's lock, so
    two rows of one repository could be running: the unique index needs them gone, and
    no lease covers them."""
    await anyio.to_thread.run_sync(lambda: migrate(pg_url, "0006"))
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO jobs (id, repository_path, state) VALUES "
            "(gen_random_uuid(), '/r', 'running'), (gen_random_uuid(), '/r', 'running'), "
            "(gen_random_uuid(), '/s', 'queued'), (gen_random_uuid(), '/s', 'completed')"
        )
        await anyio.to_thread.run_sync(migrate, pg_url)
        rows = await conn.fetch("SELECT repository_path, state, message FROM jobs ORDER BY 1, 2")
    finally:
        await conn.close()
    assert [(r["repository_path"], r["state"]) for r in rows] == [
        ("/r", "interrupted"),
        ("/r", "interrupted"),
        ("/s", "completed"),
        ("/s", "interrupted"),
    ]
    assert all("again to resume" in r["message"] for r in rows if r["state"] == "interrupted")


@pytest.mark.anyio
async def test_revision_0008_moves_vectors_into_the_store_keyed_as_the_indexer_keys_them(
    pg_url: str,
) -> None:
    """Chunks embedded at revision 0007 keep their vectors: the store holds one per
    text under the repository's model, keyed by the very hash the indexer computes (SQL
    and Python must agree, or every chunk would be embedded again)."""
    await anyio.to_thread.run_sync(migrate, pg_url, "0007")
    conn = await asyncpg.connect(pg_url)
    chunks = [
        ("pkg/a b.py", "parse_date", "def parse_date(s):\n    return s  # ü"),
        ("pkg/a b.py", None, "import os"),
        ("docs/x.md", "", "# Title"),
    ]
    try:
        await conn.execute(
            "INSERT INTO repositories (path, embedding_model, embedding_dimensions) "
            "VALUES ('/r', 'some-model', 3)"
        )
        await conn.execute(
            "INSERT INTO files (repository_id, path, content_hash, size) "
            "VALUES (1, 'pkg/a b.py', 'h', 1), (1, 'docs/x.md', 'h', 1)"
        )
        dims = await conn.fetchval(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
        )
        for ordinal, (path, symbol, text) in enumerate(chunks):
            await conn.execute(
                "INSERT INTO chunks (file_id, repository_id, path, ordinal, start_line, "
                "end_line, symbol, text, tsv, embedding) VALUES "
                "((SELECT id FROM files WHERE path = $1), 1, $1, $2, 1, 1, $3, $4, '', "
                f"array_fill($5::real, ARRAY[{dims}])::vector)",
                path,
                ordinal,
                symbol,
                text,
                float(ordinal + 1),
            )
    finally:
        await conn.close()
    await anyio.to_thread.run_sync(migrate, pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT path, symbol, text, embed_hash FROM chunks ORDER BY ordinal"
        )
        for row in rows:
            expected = embeddings.text_hash(embedding_text(row["path"], row["symbol"], row["text"]))
            assert bytes(row["embed_hash"]) == expected, row["path"]
        models = await conn.fetch("SELECT name, dimensions FROM embedding_models")
        assert [tuple(m) for m in models] == [("some-model", dims)]
        assert await conn.fetchval("SELECT count(*) FROM embeddings") == len(chunks)
        assert await conn.fetchval(
            "SELECT count(*) FROM chunks c JOIN embeddings e ON e.text_hash = c.embed_hash"
        ) == len(chunks)
    finally:
        await conn.close()


async def embedding_type(conn: asyncpg.Connection) -> str:
    return str(
        await conn.fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'embeddings'::regclass AND attname = 'embedding'"
        )
    )


@pytest.mark.anyio
async def test_revision_0010_keeps_every_vector_in_half_precision_with_its_index(
    pg_url: str,
) -> None:
    """Vectors stored at full precision (revision 0009) are kept in half precision; a
    small model's HNSW index is built again at once, a large one's is left to the server
    (deferred_indexes); downgrading brings full-precision columns back with the values."""
    await anyio.to_thread.run_sync(migrate, pg_url, "0009")
    small, large = embeddings.Model(1, "small", 3), embeddings.Model(2, "large", 2)
    conn = await asyncpg.connect(pg_url)
    try:
        for model in (small, large):
            await conn.execute(
                "INSERT INTO embedding_models (id, name, dimensions) VALUES ($1, $2, $3)",
                model.id,
                model.name,
                model.dimensions,
            )
        await conn.execute(
            "INSERT INTO embeddings VALUES (1, 'a', '[0.1, -0.3333333, 1000.5]'), "
            "(1, 'b', '[1, 0, 0]')"
        )
        # Past the migration's limit for building an index there and then.
        await conn.execute(
            "INSERT INTO embeddings SELECT 2, int4send(i), ARRAY[i % 7, 1]::real[]::vector "
            "FROM generate_series(1, 20001) i"
        )
        for model in (small, large):
            await conn.execute(model.index_definition())
    finally:
        await conn.close()

    await anyio.to_thread.run_sync(migrate, pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        assert await embedding_type(conn) == "halfvec"
        value = await conn.fetchval("SELECT embedding::text FROM embeddings WHERE text_hash = 'a'")
        assert value == "[0.099975586,-0.33325195,1000.5]"
        assert await conn.fetchval("SELECT count(*) FROM embeddings") == 20003
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes")}
        assert small.index_name in indexes
        assert large.index_name not in indexes
        assert await conn.fetchval("SELECT count(*) FROM deferred_indexes") == 1
    finally:
        await conn.close()
    # What the server does with it: the index is built as it was defined.
    pool = await db.create_pool(load_settings(env={"REGISTRY_DATABASE_URL": pg_url}))
    try:
        assert await vector_index.build_deferred(pool)
        async with pool.acquire() as conn:
            built = await conn.fetchval(
                "SELECT indexdef FROM pg_indexes WHERE indexname = $1", large.index_name
            )
            assert "hnsw (((embedding)::halfvec(2)) halfvec_cosine_ops)" in built
            assert built.endswith("WHERE (model_id = 2)")
    finally:
        await pool.close()

    await anyio.to_thread.run_sync(downgrade, pg_url, "0009")
    conn = await asyncpg.connect(pg_url)
    try:
        value = await conn.fetchval("SELECT embedding::text FROM embeddings WHERE text_hash = 'a'")
        assert value == "[0.099975586,-0.33325195,1000.5]"
        assert await embedding_type(conn) == "vector"
        assert await conn.fetchval("SELECT name FROM deferred_indexes") == large.index_name
        assert small.index_name in {
            r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes")
        }
    finally:
        await conn.close()
