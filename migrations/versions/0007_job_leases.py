"""Leases: work any replica may claim, held by one at a time (codebase_mcp/store/lease.py).

A lease names a piece of work (`job:<id>` for an index job; later one file watcher per
repository), its holder and when it expires unless renewed. Index jobs become a queue
any replica claims from; `cancel_requested` carries a cancel to whichever replica runs
the job. At most one job per repository runs at a time across all replicas: a partial
unique index says so.

Jobs left queued or running by servers older than this revision are not leased: they are
marked interrupted (indexing the repository again resumes them), which also clears the
way for the unique index (an older server marked a job running before it waited for its
turn).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE leases (
            name        text PRIMARY KEY,
            owner       text NOT NULL,         -- the holding process (host:pid:token)
            expires_at  timestamptz NOT NULL,  -- the database's clock, never a replica's
            acquired_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX leases_owner ON leases (owner)")
    op.execute("ALTER TABLE jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false")
    op.execute(
        """
        UPDATE jobs SET state = 'interrupted', finished_at = now(), updated_at = now(),
            message = 'interrupted by a server upgrade; index the repository again to resume'
        WHERE state IN ('queued', 'running')
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX jobs_one_running_per_repository ON jobs (repository_path) "
        "WHERE state = 'running'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS jobs_one_running_per_repository")
    op.execute("ALTER TABLE jobs DROP COLUMN IF EXISTS cancel_requested")
    op.execute("DROP TABLE IF EXISTS leases")
