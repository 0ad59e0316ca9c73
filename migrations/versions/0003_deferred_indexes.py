"""Indexes set aside during a bulk load, to be built again afterwards.

A large first index drops the HNSW index, loads the chunks, then builds the index once:
far cheaper than an insert into the graph per chunk (pgvector's own advice for loading).
The drop and the row that remembers the index's definition commit together, and so do
the build and the row's removal, so a crash in between loses nothing: the next server
start (or job) builds what is listed here. See codebase_mcp/store/vector_index.py.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE deferred_indexes (
            name        text PRIMARY KEY,
            definition  text NOT NULL,  -- pg_indexes.indexdef at the time of the drop
            deferred_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    # Whatever is still set aside is built again first: a downgrade must not lose it.
    op.execute(
        """
        DO $$
        DECLARE d record;
        BEGIN
            FOR d IN SELECT definition FROM deferred_indexes LOOP
                EXECUTE replace(d.definition, 'CREATE INDEX ', 'CREATE INDEX IF NOT EXISTS ');
            END LOOP;
        END $$
        """
    )
    op.execute("DROP TABLE deferred_indexes")
