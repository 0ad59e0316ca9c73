"""Jobs count the files they skipped by reason; `files_skipped` becomes `files_unchanged`.

`files_skipped` held the files left alone because their content hash had not changed,
which the name did not say, while files skipped for a reason (too large, binary,
undecodable, unreadable, ...) appeared in no count. `skipped` maps each reason to its
count (codebase_mcp.source.discover.SkipReason values).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE jobs RENAME COLUMN files_skipped TO files_unchanged")
    op.execute("ALTER TABLE jobs ADD COLUMN skipped jsonb NOT NULL DEFAULT '{}'::jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN skipped")
    op.execute("ALTER TABLE jobs RENAME COLUMN files_unchanged TO files_skipped")
