"""Repositories, files, chunks (embedding + full-text) and jobs.

The embedding column's size N was fixed here: `-x dimensions=N`, else 768 (nomic-embed-text).
0008 moves the vectors into the embeddings store, which knows each model's size, and drops
the column: a database made today never holds a vector in it, so the environment's
EMBEDDING_DIMENSIONS is not read here (a bad value there is the server's to report, exit 78,
not a migration crash).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_HNSW_DIMENSIONS = 2000


def _dimensions() -> int:
    raw = context.get_x_argument(as_dictionary=True).get("dimensions") or "768"
    try:
        dims = int(raw)
    except ValueError:
        raise RuntimeError(f"-x dimensions must be an integer, got {raw!r}") from None
    if not 1 <= dims <= MAX_HNSW_DIMENSIONS:
        raise RuntimeError(
            f"-x dimensions must be between 1 and {MAX_HNSW_DIMENSIONS} "
            f"(pgvector's HNSW limit), got {dims}"
        )
    return dims


def upgrade() -> None:
    dims = _dimensions()
    op.execute(
        """
        CREATE TABLE repositories (
            id                   bigserial PRIMARY KEY,
            path                 text NOT NULL UNIQUE,
            embedding_model      text,
            embedding_dimensions integer,
            created_at           timestamptz NOT NULL DEFAULT now(),
            last_indexed_at      timestamptz
        )
        """
    )
    op.execute(
        """
        CREATE TABLE files (
            id            bigserial PRIMARY KEY,
            repository_id bigint NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
            path          text NOT NULL,
            language      text,
            content_hash  text NOT NULL,
            size          bigint NOT NULL,
            chunk_count   integer NOT NULL DEFAULT 0,
            -- false: stored while the embedder was down (lexical only); re-embedded next run
            embedded      boolean NOT NULL DEFAULT true,
            indexed_at    timestamptz NOT NULL DEFAULT now(),
            UNIQUE (repository_id, path)
        )
        """
    )
    # tsv: the full-text vector of the chunk: its symbol (weight A), its file path (B)
    # and its text (D) as lower-case words with identifiers split (parseDate ->
    # parsedate parse date). The indexer builds it (codebase_mcp.source.tokens) and sends it in
    # binary: computing it with to_tsvector() in a generated column cost more than all the
    # rest of indexing, and the 'simple'-style words (no stemming, no stop words) are
    # what code needs. Queries split identifiers the same way (tokens.tsquery_for).
    # path and repository_id repeat the file's so search filters stay on this table.
    op.execute(
        f"""
        CREATE TABLE chunks (
            id            bigserial PRIMARY KEY,
            file_id       bigint NOT NULL REFERENCES files(id) ON DELETE CASCADE,
            repository_id bigint NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
            path          text NOT NULL,
            ordinal       integer NOT NULL,
            start_line    integer NOT NULL,
            end_line      integer NOT NULL,
            kind          text,
            symbol        text,
            language      text,
            text          text NOT NULL,
            tsv           tsvector NOT NULL,
            embedding     vector({dims})
        )
        """
    )
    op.execute("CREATE INDEX chunks_file_id ON chunks (file_id)")
    op.execute("CREATE INDEX chunks_repository_language ON chunks (repository_id, language)")
    op.execute("CREATE INDEX chunks_tsv ON chunks USING gin (tsv)")
    # m=8, ef_construction=32 instead of pgvector's 16/64: every chunk written pays an
    # HNSW insert, the largest cost of indexing; measured ~4x cheaper inserts at 768
    # dimensions. Search compensates with a larger hnsw.ef_search (see search/hybrid.py); the
    # benchmark prints the recall against exact search.
    op.execute(
        "CREATE INDEX chunks_embedding ON chunks USING hnsw (embedding vector_cosine_ops) "
        "WITH (m = 8, ef_construction = 32)"
    )
    op.execute(
        """
        CREATE TABLE jobs (
            id              uuid PRIMARY KEY,
            repository_path text NOT NULL,
            state           text NOT NULL CHECK (state IN ('queued', 'running', 'completed',
                                'failed', 'cancelled', 'interrupted')),
            force           boolean NOT NULL DEFAULT false,
            owner           text,  -- host:pid of the process running it
            files_total     integer NOT NULL DEFAULT 0,
            files_done      integer NOT NULL DEFAULT 0,
            files_skipped   integer NOT NULL DEFAULT 0,
            files_deleted   integer NOT NULL DEFAULT 0,
            chunks_total    integer NOT NULL DEFAULT 0,
            chunks_done     integer NOT NULL DEFAULT 0,
            errors          jsonb NOT NULL DEFAULT '[]'::jsonb,
            message         text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            started_at      timestamptz,
            finished_at     timestamptz,
            updated_at      timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX jobs_repository_path ON jobs (repository_path, created_at DESC)")
    op.execute("CREATE INDEX jobs_active ON jobs (state) WHERE state IN ('queued', 'running')")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS jobs")
    op.execute("DROP TABLE IF EXISTS chunks")
    op.execute("DROP TABLE IF EXISTS files")
    op.execute("DROP TABLE IF EXISTS repositories")
