"""Chunks keep their embedding inline: STORAGE MAIN, toast_tuple_target 8160.

pgvector stores a vector EXTERNAL: out of line once a row passes PostgreSQL's ~2 kB
threshold, which a 768-float vector (3 kB) always does. Every chunk then cost two rows in
the TOAST table, each with its own index entry, after a compression attempt on its text;
every read (an HNSW build, an exact scan) fetched them back. Measured on the standard
library (75,671 chunks): ~1.5 core-seconds less of PostgreSQL per first index, ~1 s of 9
on 2 cores; an HNSW build reading the heap alone is ~25% faster in one process, and the
heap is large enough for PostgreSQL to build it in parallel; the table grows ~8% (a row
of ~4 kB often fills a page alone), where TOAST's two pieces per vector cost ~35%.

Rows past 8160 bytes (a long chunk) are still compressed and moved out of line, text
first, so nothing fails. Existing rows keep their layout until rewritten: no table
rewrite here, a metadata change only.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE MAIN")
    # 8160: the largest allowed; below it the toaster leaves a row alone.
    op.execute("ALTER TABLE chunks SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    # EXTERNAL is the vector type's own storage, what 0002 created the column with.
    op.execute("ALTER TABLE chunks ALTER COLUMN embedding SET STORAGE EXTERNAL")
    op.execute("ALTER TABLE chunks RESET (toast_tuple_target)")
