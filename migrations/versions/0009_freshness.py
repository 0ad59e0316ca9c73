"""Freshness: each file's stat for a cheap change check, and watches kept with their
repository.

`files.size`, `mtime_ns` and `inode` are the stat the indexer saw; a re-index trusts a
file whose stat still matches (`stat_trusted`) without reading it, as git's index does.
A stat taken within moments of the file's last write is stored untrusted ("racily
clean" in git's words: a second write in the same timestamp tick would leave it equal),
so the next run hashes that file once more. Rows from before this revision have no stat:
they are hashed once, then their stat is stored.

`repositories.watch`: true or false when asked for (`index_repository(watch=...)`), NULL
to follow CODEBASE_WATCH. `synced_at`: when the last completed index job began to read
the disk (the index holds the disk as it was then). `pending_changes` and `watch_error`
are written by the replica holding the repository's `watch:<path>` lease
(codebase_mcp/jobs/watch.py): changes it saw that no finished job has applied yet, and why it
cannot watch (NULL: none, or nobody watches).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE files ADD COLUMN mtime_ns bigint, ADD COLUMN inode bigint, "
        "ADD COLUMN stat_trusted boolean NOT NULL DEFAULT false"
    )
    op.execute(
        "ALTER TABLE repositories ADD COLUMN watch boolean, "
        "ADD COLUMN synced_at timestamptz, ADD COLUMN pending_changes integer, "
        "ADD COLUMN watch_error text"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE repositories DROP COLUMN IF EXISTS watch_error, "
        "DROP COLUMN IF EXISTS pending_changes, DROP COLUMN IF EXISTS synced_at, "
        "DROP COLUMN IF EXISTS watch"
    )
    op.execute(
        "ALTER TABLE files DROP COLUMN IF EXISTS stat_trusted, DROP COLUMN IF EXISTS inode, "
        "DROP COLUMN IF EXISTS mtime_ns"
    )
