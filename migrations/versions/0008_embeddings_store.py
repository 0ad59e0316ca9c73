"""One embeddings store for every model: vectors keyed by (model, hash of the text embedded).

- embedding_models: each model a server has embedded with, and its size;
- embeddings: (model_id, text_hash) -> vector, in the model's own size (a `vector` without
  a fixed size), with one HNSW index per model (partial: `WHERE model_id = N`, over the
  half-precision cast of its size);
- chunks.embed_hash: the SHA-256 of the text a chunk is embedded as (its path, symbol and
  text: codebase_mcp.index.pipeline.embedding_text), replacing chunks.embedding;
  files.embedded goes.

So a chunk whose text did not change keeps its vector when its file changes, the same text
in another branch or repository (at the same path) is embedded once, several models live
side by side (switching the embedder re-embeds in the background while search answers),
and EMBEDDING_DIMENSIONS no longer has to be chosen when the database is created.

Existing vectors move into the store under the model their repository records; every
chunks row is rewritten, so its indexes are set aside and built again (revision 0005's
way; a large store's HNSW index is left to the server, listed in deferred_indexes).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Up to this many stored vectors, an HNSW index is built here and now (seconds at most).
BUILD_NOW_LIMIT = 20_000
# What index.pipeline.embedding_text makes of a chunk, in SQL.
_EMBEDDING_TEXT = (
    "CASE WHEN coalesce(symbol, '') <> '' THEN path || ' ' || symbol ELSE path END "
    "|| E'\\n' || text"
)


def index_definition(model_id: int, dimensions: int) -> str:
    """The model's HNSW index (codebase_mcp.store.embeddings.Model.index_definition says the
    same)."""
    return (
        f"CREATE INDEX embeddings_hnsw_{model_id} ON embeddings USING hnsw "
        f"((embedding::halfvec({dimensions})) halfvec_cosine_ops) "
        f"WITH (m = 8, ef_construction = 32) WHERE model_id = {model_id}"
    )


def _chunk_indexes(exclude: Sequence[str]) -> list[tuple[str, str]]:
    bind = op.get_bind()
    found = bind.execute(
        sa.text(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'chunks' AND indexname <> 'chunks_pkey'"
        )
    ).all()
    return [(name, definition) for name, definition in found if name not in exclude]


def _build(bind: sa.Connection, name: str, definition: str, vectors: int) -> None:
    if vectors > BUILD_NOW_LIMIT:
        bind.execute(
            sa.text(
                "INSERT INTO deferred_indexes (name, definition) VALUES (:name, :definition) "
                "ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition"
            ),
            {"name": name, "definition": definition},
        )
        return
    # In one process: a parallel build needs shared memory (/dev/shm) that a container
    # caps at 64 MiB, and at this size a serial build takes seconds.
    op.execute("SET LOCAL max_parallel_maintenance_workers = 0")
    op.execute(definition)


def upgrade() -> None:
    bind = op.get_bind()
    op.execute(
        """
        CREATE TABLE embedding_models (
            id         smallserial PRIMARY KEY,
            name       text NOT NULL UNIQUE,
            dimensions integer NOT NULL CHECK (dimensions BETWEEN 1 AND 4000),
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    # No foreign key: a per-row key check would cost every stored vector; the models are
    # never deleted while their vectors stay.
    op.execute(
        """
        CREATE TABLE embeddings (
            model_id  smallint NOT NULL,
            text_hash bytea NOT NULL,
            embedding vector NOT NULL,
            PRIMARY KEY (model_id, text_hash)
        )
        """
    )
    dims = bind.execute(
        sa.text(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
        )
    ).scalar()
    if dims and dims > 0:
        op.execute(
            f"""
            INSERT INTO embedding_models (name, dimensions)
            SELECT DISTINCT embedding_model, {int(dims)} FROM repositories
            WHERE coalesce(embedding_model, '') <> ''
            """
        )
    old_vector_index = ["chunks_embedding"]
    indexes = _chunk_indexes(exclude=old_vector_index)
    op.execute("DROP INDEX IF EXISTS chunks_embedding")
    op.execute("DELETE FROM deferred_indexes WHERE name = 'chunks_embedding'")
    for name, _ in indexes:
        op.execute(f'DROP INDEX "{name}"')
    op.execute("ALTER TABLE chunks ADD COLUMN embed_hash bytea")
    op.execute(f"UPDATE chunks SET embed_hash = sha256(convert_to({_EMBEDDING_TEXT}, 'UTF8'))")
    op.execute("ALTER TABLE chunks ALTER COLUMN embed_hash SET NOT NULL")
    op.execute(
        """
        INSERT INTO embeddings (model_id, text_hash, embedding)
        SELECT DISTINCT ON (m.id, c.embed_hash) m.id, c.embed_hash, c.embedding
        FROM chunks c
        JOIN repositories r ON r.id = c.repository_id
        JOIN embedding_models m ON m.name = r.embedding_model
        WHERE c.embedding IS NOT NULL
        ON CONFLICT DO NOTHING
        """
    )
    op.execute("ALTER TABLE chunks DROP COLUMN embedding")
    op.execute("ALTER TABLE files DROP COLUMN embedded")
    for _, definition in indexes:
        op.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        op.execute(definition)
    op.execute("CREATE INDEX chunks_embed_hash ON chunks (embed_hash)")
    models = bind.execute(sa.text("SELECT id, dimensions FROM embedding_models")).all()
    for model_id, dimensions in models:
        vectors = bind.execute(
            sa.text("SELECT count(*) FROM embeddings WHERE model_id = :m"), {"m": model_id}
        ).scalar_one()
        _build(bind, f"embeddings_hnsw_{model_id}", index_definition(model_id, dimensions), vectors)


def downgrade() -> None:
    """Back to one embedding column: the vectors of the model most repositories use."""
    bind = op.get_bind()
    model = bind.execute(
        sa.text(
            "SELECT m.id, m.dimensions FROM embedding_models m "
            "LEFT JOIN repositories r ON r.embedding_model = m.name "
            "GROUP BY m.id ORDER BY count(r.id) DESC, m.id LIMIT 1"
        )
    ).first()
    dims = model[1] if model is not None else 768
    for (name,) in bind.execute(
        sa.text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'embeddings_hnsw_%'")
    ).all():
        op.execute(f'DROP INDEX "{name}"')
    op.execute("DELETE FROM deferred_indexes WHERE name LIKE 'embeddings_hnsw_%'")
    op.execute(f"ALTER TABLE chunks ADD COLUMN embedding vector({int(dims)})")
    op.execute("ALTER TABLE files ADD COLUMN embedded boolean NOT NULL DEFAULT false")
    if model is not None:
        op.execute(
            f"""
            UPDATE chunks c SET embedding = e.embedding FROM embeddings e
            WHERE e.model_id = {int(model[0])} AND e.text_hash = c.embed_hash
            """
        )
        op.execute(
            """
            UPDATE files f SET embedded = NOT EXISTS (
                SELECT 1 FROM chunks c WHERE c.file_id = f.id AND c.embedding IS NULL
            )
            """
        )
    op.execute("DROP INDEX IF EXISTS chunks_embed_hash")
    op.execute("ALTER TABLE chunks DROP COLUMN embed_hash")
    op.execute("DROP TABLE embeddings")
    op.execute("DROP TABLE embedding_models")
    op.execute("SET LOCAL max_parallel_maintenance_workers = 0")
    op.execute(
        f"CREATE INDEX chunks_embedding ON chunks USING hnsw "
        f"((embedding::halfvec({int(dims)})) halfvec_cosine_ops) "
        "WITH (m = 8, ef_construction = 32)"
    )
