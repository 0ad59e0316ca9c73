"""The embeddings store keeps its vectors in half precision (`halfvec`).

The HNSW indexes already searched half-precision casts; the exact score is now computed
from the stored half-precision vector (against the query at full precision). What it
buys: a 768-dimensional vector fits in its row (1.5 kB; 3 kB went out of line to TOAST,
a second heap and index insert per vector), storing a vector costs PostgreSQL ~2.5x less,
and the store is half the size.

The column's type changes in place (a rewrite of the table); each model's HNSW index is
dropped first and built again here when small, else listed in deferred_indexes for the
server to build (revision 0008's way). The indexes' definitions do not change.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Up to this many stored vectors, an HNSW index is built here and now (seconds at most).
BUILD_NOW_LIMIT = 20_000


def _retype(target: str) -> None:
    bind = op.get_bind()
    indexes = bind.execute(
        sa.text(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'embeddings' AND indexname LIKE 'embeddings_hnsw_%'"
        )
    ).all()
    for name, _ in indexes:
        op.execute(f'DROP INDEX "{name}"')
    op.execute(
        f"ALTER TABLE embeddings ALTER COLUMN embedding TYPE {target} USING embedding::{target}"
    )
    for name, definition in indexes:
        model_id = int(name.removeprefix("embeddings_hnsw_"))
        vectors = bind.execute(
            sa.text("SELECT count(*) FROM embeddings WHERE model_id = :m"), {"m": model_id}
        ).scalar_one()
        if vectors > BUILD_NOW_LIMIT:
            bind.execute(
                sa.text(
                    "INSERT INTO deferred_indexes (name, definition) "
                    "VALUES (:name, :definition) "
                    "ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition"
                ),
                {"name": name, "definition": definition},
            )
            continue
        # In one process: a parallel build needs shared memory (/dev/shm) that a container
        # caps at 64 MiB, and at this size a serial build takes seconds.
        op.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        op.execute(definition)


def upgrade() -> None:
    # Every stored value is within half precision's range: each model's HNSW index holds
    # (or, deferred, is built from) the same cast of every vector.
    _retype("halfvec")


def downgrade() -> None:
    _retype("vector")
