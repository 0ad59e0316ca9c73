"""The HNSW index on the embeddings in half precision.

`(embedding::halfvec(N)) halfvec_cosine_ops` instead of `embedding vector_cosine_ops`:
half the index's size (what has to stay in memory for fast searches) and cheaper distance
computations when building and inserting, for a change in ranking far below what the
approximate graph already makes. The column keeps full precision, and so do the scores.

A database with many chunks gets the new index built by the server after it starts (the
index is listed in deferred_indexes, see codebase_mcp/store/vector_index.py): a rebuild can
outlast the migration timeout, and the server answers meanwhile by exact search.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "chunks_embedding"
# Up to this many stored vectors, the index is rebuilt here and now (seconds at most).
BUILD_NOW_LIMIT = 20_000


def _definition(dims: int, half: bool) -> str:
    target = (
        f"((embedding::halfvec({dims})) halfvec_cosine_ops)"
        if half
        else "(embedding vector_cosine_ops)"
    )
    return f"CREATE INDEX {INDEX} ON chunks USING hnsw {target} WITH (m = 8, ef_construction = 32)"


def _replace(half: bool) -> None:
    bind = op.get_bind()
    dims = bind.execute(
        sa.text(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
        )
    ).scalar_one()
    definition = _definition(dims, half)
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
    vectors = bind.execute(
        sa.text("SELECT count(*) FROM chunks WHERE embedding IS NOT NULL")
    ).scalar_one()
    set_aside = bind.execute(
        sa.text("SELECT count(*) FROM deferred_indexes WHERE name = :name"), {"name": INDEX}
    ).scalar_one()
    if set_aside or vectors > BUILD_NOW_LIMIT:
        bind.execute(
            sa.text(
                "INSERT INTO deferred_indexes (name, definition) VALUES (:name, :definition) "
                "ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition"
            ),
            {"name": INDEX, "definition": definition},
        )
    else:
        # In one process: a parallel build needs shared memory (/dev/shm) that a container
        # caps at 64 MiB, and at this size a serial build takes seconds.
        op.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        op.execute(definition)


def upgrade() -> None:
    _replace(half=True)


def downgrade() -> None:
    _replace(half=False)
