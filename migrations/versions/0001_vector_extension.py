"""The pgvector extension.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NO_PGVECTOR = (
    "the PostgreSQL server has no pgvector extension (the `vector` extension is not "
    "available): use a PostgreSQL with pgvector installed, e.g. the pgvector/pgvector:pg17 "
    "image, or install pgvector into this server (https://github.com/pgvector/pgvector)"
)


def upgrade() -> None:
    bind = op.get_bind()
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    if available is None:
        raise RuntimeError(NO_PGVECTOR)
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")


def downgrade() -> None:
    op.execute("DROP EXTENSION IF EXISTS vector")
