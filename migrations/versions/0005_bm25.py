"""BM25: term frequencies per chunk and corpus statistics kept up to date by the indexer.

- chunks.term_freqs: a sparsevec of how often each word occurs in the chunk's symbol,
  path and body (tokens.chunk_vectors); search reads a word's frequency as a dot product.
- chunks.body_length: the body's length in words (BM25's document length).
- repositories.chunk_count, .body_length_sum: for the average length and N.
- lexeme_stats: per repository, how many chunks hold each word (document frequency).
- lexeme_deltas, corpus_deltas: what each committed batch of an index job added and took
  away, appended in the batch's transaction (cheap, and no two writers ever wait on each
  other's rows); folded into lexeme_stats and repositories when a job ends (store/stats.py).
These tables hold no foreign key: a row-by-row key check cost a first index of the
standard library ~1 s per table; removing a repository removes its rows (stats.forget).

Existing chunks are filled in from their tsvectors (frequencies then count the positions
the tsvector kept, at most 256 per word: re-indexed files get exact counts). Every row is
rewritten, so the chunks' indexes are dropped first and built once afterwards; with many
vectors the HNSW index is left to the server to build after it starts (deferred_indexes,
as in revision 0004), and searches answer by exact vector scan meanwhile.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 2000
_WEIGHTS = {"A": 3, "B": 2, "C": 1, "D": 0}
_NO_WORDS = "'{}/1000000000'::sparsevec"
VECTOR_INDEX = "chunks_embedding"
# Up to this many stored vectors, the HNSW index is rebuilt here and now (seconds at most).
BUILD_NOW_LIMIT = 20_000


def _set_indexes_aside() -> list[tuple[str, str]]:
    """Drop the chunks' indexes but the primary key; returns (name, definition) pairs."""
    bind = op.get_bind()
    found = bind.execute(
        sa.text(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'chunks' AND indexname <> 'chunks_pkey'"
        )
    ).all()
    for name, _ in found:
        op.execute(f'DROP INDEX "{name}"')
    return [(name, definition) for name, definition in found]


def _build_again(indexes: list[tuple[str, str]]) -> None:
    bind = op.get_bind()
    vectors = bind.execute(
        sa.text("SELECT count(*) FROM chunks WHERE embedding IS NOT NULL")
    ).scalar_one()
    for name, definition in indexes:
        if name == VECTOR_INDEX and vectors > BUILD_NOW_LIMIT:
            bind.execute(
                sa.text(
                    "INSERT INTO deferred_indexes (name, definition) "
                    "VALUES (:name, :definition) "
                    "ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition"
                ),
                {"name": name, "definition": definition},
            )
            continue
        # In one process: a parallel build needs shared memory (/dev/shm) that a
        # container caps at 64 MiB, and at this size a serial build takes seconds.
        op.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        op.execute(definition)


def _backfill() -> None:
    from codebase_mcp.source.tokens import sparsevec_text, term_counts

    bind = op.get_bind()
    after = 0
    while True:
        rows = bind.execute(
            sa.text(
                """
                SELECT c.id, array_agg(u.lexeme) AS lexemes,
                       array_agg(array_to_string(u.weights, '')) AS weights
                FROM (SELECT id, tsv FROM chunks WHERE id > :after ORDER BY id LIMIT :n) c,
                     unnest(c.tsv) u
                GROUP BY c.id ORDER BY c.id
                """
            ),
            {"after": after, "n": _BATCH},
        ).all()
        if not rows:
            break
        ids, vectors, lengths = [], [], []
        for chunk_id, lexemes, weights in rows:
            positions = {
                lexeme: [_WEIGHTS[w] << 14 for w in letters]
                for lexeme, letters in zip(lexemes, weights, strict=True)
            }
            entries, body = term_counts(positions)
            ids.append(chunk_id)
            vectors.append(sparsevec_text([(d, float(c)) for d, c in entries]))
            lengths.append(body)
        bind.execute(
            sa.text(
                """
                UPDATE chunks c SET term_freqs = v.tf::sparsevec, body_length = v.bl
                FROM unnest(CAST(:ids AS bigint[]), CAST(:tfs AS text[]), CAST(:bls AS int[]))
                     AS v(id, tf, bl)
                WHERE c.id = v.id
                """
            ),
            {"ids": ids, "tfs": vectors, "bls": lengths},
        )
        after = ids[-1]
    # Chunks whose tsvector holds no word at all.
    op.execute(f"UPDATE chunks SET term_freqs = {_NO_WORDS} WHERE term_freqs IS NULL")


def upgrade() -> None:
    op.execute("ALTER TABLE chunks ADD COLUMN term_freqs sparsevec")
    op.execute("ALTER TABLE chunks ADD COLUMN body_length integer NOT NULL DEFAULT 0")
    op.execute(
        "ALTER TABLE repositories ADD COLUMN chunk_count bigint NOT NULL DEFAULT 0, "
        "ADD COLUMN body_length_sum bigint NOT NULL DEFAULT 0"
    )
    op.execute(
        """
        CREATE TABLE lexeme_stats (
            lexeme        text COLLATE "C" NOT NULL,
            repository_id bigint NOT NULL,
            df            integer NOT NULL,
            PRIMARY KEY (lexeme, repository_id)
        )
        """
    )
    # Updated in place when deltas are folded in: room on each page for HOT updates.
    op.execute("ALTER TABLE lexeme_stats SET (fillfactor = 70)")
    op.execute(
        """
        CREATE TABLE lexeme_deltas (
            repository_id bigint NOT NULL,
            lexeme        text COLLATE "C" NOT NULL,
            delta         integer NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX lexeme_deltas_lexeme ON lexeme_deltas (lexeme)")
    op.execute(
        """
        CREATE TABLE corpus_deltas (
            repository_id bigint NOT NULL,
            chunks        integer NOT NULL,
            body_length   bigint NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX corpus_deltas_repository ON corpus_deltas (repository_id)")
    indexes = _set_indexes_aside()
    _backfill()
    op.execute(
        f"ALTER TABLE chunks ALTER COLUMN term_freqs SET DEFAULT {_NO_WORDS}, "
        "ALTER COLUMN term_freqs SET NOT NULL"
    )
    _build_again(indexes)
    op.execute(
        """
        INSERT INTO lexeme_stats (lexeme, repository_id, df)
        SELECT l, repository_id, count(*)
        FROM chunks, unnest(tsvector_to_array(tsv)) AS l GROUP BY 1, 2
        """
    )
    op.execute(
        """
        UPDATE repositories r SET chunk_count = s.n, body_length_sum = s.total
        FROM (SELECT repository_id, count(*) AS n, sum(body_length) AS total
              FROM chunks GROUP BY 1) s
        WHERE r.id = s.repository_id
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS corpus_deltas")
    op.execute("DROP TABLE IF EXISTS lexeme_deltas")
    op.execute("DROP TABLE IF EXISTS lexeme_stats")
    op.execute("ALTER TABLE repositories DROP COLUMN chunk_count, DROP COLUMN body_length_sum")
    op.execute("ALTER TABLE chunks DROP COLUMN term_freqs, DROP COLUMN body_length")
