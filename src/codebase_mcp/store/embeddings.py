"""The embeddings store: vectors keyed by (model, SHA-256 of the exact text embedded).

A chunk points at its vector through `chunks.embed_hash`; `embeddings` holds one vector
per (model, text). So:
- a chunk whose text did not change keeps its vector when its file changes (an edit
  re-embeds the chunks it touched, not the whole file, and not the chunks it moved);
- the same text in another branch, or another repository at the same path, is embedded
  once;
- several models live side by side, each with its own HNSW index (partial, `WHERE
  model_id = N`, over the cast to its size): switching the embedder re-embeds in the
  background (index/catchup.py) while search answers from what exists;
- vectors are kept in half precision (`halfvec`, migration 0010), what the HNSW index
  already searched: a 768-dimensional vector then fits in its row (1.5 kB, where 3 kB
  went out of line to TOAST), which halves the store and made storing a vector ~2.5x
  cheaper for PostgreSQL;
- vectors no chunk uses any more are collected once there are enough of them (a branch
  switched away from and back is not embedded twice).

The embedded text carries the chunk's path (index.pipeline.embedding_text): on the Flask question
set, vector search without it scored 0.044 NDCG@10 less, so a text moved to another
path is embedded again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import cast

import asyncpg

from codebase_mcp.errors import EmbedderError
from codebase_mcp.store import db

# pgvector's HNSW limit for half-precision vectors.
MAX_DIMENSIONS = 4000
# vector_index.LOCK_SPACE (its DDL lock orders index drops and builds).
INDEX_LOCK_SPACE = 0x6369


def text_hash(text: str) -> bytes:
    """The key of an embedded text (the database computes the same in migration 0008)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class Model:
    id: int
    name: str
    dimensions: int

    @property
    def index_name(self) -> str:
        return f"embeddings_hnsw_{self.id}"

    def index_definition(self) -> str:
        """Its HNSW index: m=8, ef_construction=32 (a lean graph: every stored vector pays
        an insert; search makes up with a larger ef_search, see search/hybrid.py)."""
        return (
            f"CREATE INDEX {self.index_name} ON embeddings USING hnsw "
            f"((embedding::halfvec({self.dimensions})) halfvec_cosine_ops) "
            f"WITH (m = 8, ef_construction = 32) WHERE model_id = {self.id}"
        )

    def half(self) -> str:
        return f"halfvec({self.dimensions})"


class ModelSizeError(EmbedderError):
    """A model name seen before with another size: not the same model."""


async def register(conn: db.Conn, name: str, dimensions: int) -> Model:
    """The model (registered on first use, with its HNSW index). Raises ModelSizeError
    when the name is known with another size."""
    if not 1 <= dimensions <= MAX_DIMENSIONS:
        raise EmbedderError(
            f"model {name} makes {dimensions}-dimensional vectors; the store holds 1 to "
            f"{MAX_DIMENSIONS} (pgvector's HNSW limit in half precision)"
        )
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO embedding_models (name, dimensions) VALUES ($1, $2) "
            "ON CONFLICT (name) DO NOTHING",
            name,
            dimensions,
        )
        row = await conn.fetchrow(
            "SELECT id, name, dimensions FROM embedding_models WHERE name = $1", name
        )
        assert row is not None
        model = Model(int(row["id"]), row["name"], int(row["dimensions"]))
        if model.dimensions != dimensions:
            raise ModelSizeError(
                f"model {name} now makes {dimensions}-dimensional vectors, but the store "
                f"holds {model.dimensions}-dimensional ones under that name: give the new "
                "model another name (e.g. its tag)"
            )
        present = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE indexname = $1) "
            "OR EXISTS (SELECT 1 FROM deferred_indexes WHERE name = $1)",
            model.index_name,
        )
        if not present:
            # A new model: its index, empty, now (serialised with the bulk loads of
            # vector_index.py by their DDL lock).
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", INDEX_LOCK_SPACE, 2)
            # A new model has (next to) no vectors: no parallel build, which would need
            # shared memory a container may not have (vector_index.py).
            await conn.execute("SET LOCAL max_parallel_maintenance_workers = 0")
            await conn.execute(
                model.index_definition().replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS")
            )
    return model


async def find(conn: db.Conn, name: str) -> Model | None:
    row = await conn.fetchrow(
        "SELECT id, name, dimensions FROM embedding_models WHERE name = $1", name
    )
    return None if row is None else Model(int(row["id"]), row["name"], int(row["dimensions"]))


async def known(conn: db.Conn, model: Model, hashes: Sequence[bytes]) -> set[bytes]:
    """Which of these texts the store holds for the model."""
    if not hashes:
        return set()
    rows = await conn.fetch(
        "SELECT text_hash FROM embeddings WHERE model_id = $1 AND text_hash = ANY($2::bytea[])",
        model.id,
        list(hashes),
    )
    return {bytes(r["text_hash"]) for r in rows}


class VectorValueError(EmbedderError):
    """A vector the store cannot hold: a value that is not finite, or beyond half
    precision."""


def holdable(vector: Sequence[float]) -> bool:
    """Whether every value is a finite number that half precision holds (within
    +-65504 once rounded)."""
    return db.encode_half(vector) is not None


def bad_values(model: Model) -> VectorValueError:
    return VectorValueError(
        f"model {model.name} returned a vector with a value that is not a finite number "
        "within +-65504 (half precision, what the store keeps)"
    )


def encode(model: Model, vectors: Sequence[Sequence[float]]) -> list[bytes]:
    """The vectors in the store's form (half precision). Raises VectorValueError, naming
    the model, for a value `holdable` refuses: an embedder that returns one is broken,
    and no chunk should get such a vector."""
    encoded = [db.encode_half(vector) for vector in vectors]
    if any(e is None for e in encoded):
        raise bad_values(model)
    return cast("list[bytes]", encoded)


async def store(
    conn: db.Conn, model: Model, hashes: Sequence[bytes], vectors: Sequence[bytes]
) -> None:
    """Keep these vectors (`encode`d; a text stored meanwhile by another writer is left as
    it is). Call inside a transaction. Writers embed only texts the store lacked, so a
    COPY almost always goes through: it costs PostgreSQL less than an INSERT ... ON
    CONFLICT (a speculative insertion per row), ~2 s of a first index of the standard
    library. When another writer stored one of the texts meanwhile, the COPY's savepoint
    rolls back and the insert skips what is there."""
    if not hashes:
        return
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "embeddings",
                records=zip(repeat(model.id, len(hashes)), hashes, vectors, strict=True),
                columns=("model_id", "text_hash", "embedding"),
            )
        return
    except asyncpg.UniqueViolationError:
        pass
    await conn.execute(
        "INSERT INTO embeddings (model_id, text_hash, embedding) "
        "SELECT $1, * FROM unnest($2::bytea[], $3::halfvec[]) ON CONFLICT DO NOTHING",
        model.id,
        list(hashes),
        list(vectors),
    )


async def missing(conn: db.Conn, model: Model, after_id: int, limit: int) -> list[asyncpg.Record]:
    """Chunks after `after_id` (in id order) whose text the model has no vector for:
    id, embed_hash, path, symbol, text (the background catch-up embeds them)."""
    return list(
        await conn.fetch(
            """
            SELECT c.id, c.embed_hash, c.path, c.symbol, c.text FROM chunks c
            WHERE c.id > $2 AND NOT EXISTS (
                SELECT 1 FROM embeddings e WHERE e.model_id = $1 AND e.text_hash = c.embed_hash
            )
            ORDER BY c.id LIMIT $3
            """,
            model.id,
            after_id,
            limit,
        )
    )


async def coverage(
    conn: db.Conn, model: Model, repository_id: int | None = None
) -> tuple[int, int]:
    """(chunks with a vector of the model, chunks), in one repository or in all."""
    row = await conn.fetchrow(
        """
        SELECT count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM embeddings e
                   WHERE e.model_id = $1 AND e.text_hash = c.embed_hash)) AS embedded,
               count(*) AS total
        FROM chunks c WHERE $2::bigint IS NULL OR c.repository_id = $2
        """,
        model.id,
        repository_id,
    )
    assert row is not None
    return int(row["embedded"]), int(row["total"])


async def coverage_by_repository(conn: db.Conn, model: Model) -> dict[str, int]:
    """Repository path -> its chunks with a vector of the model (repositories with none
    left out)."""
    rows = await conn.fetch(
        """
        SELECT r.path, count(*) AS n FROM chunks c
        JOIN repositories r ON r.id = c.repository_id
        WHERE EXISTS (SELECT 1 FROM embeddings e
                      WHERE e.model_id = $1 AND e.text_hash = c.embed_hash)
        GROUP BY r.path
        """,
        model.id,
    )
    return {r["path"]: int(r["n"]) for r in rows}


async def held_by(conn: db.Conn, repository_id: int, prefer: Model | None = None) -> Model | None:
    """A model whose vectors the repository's chunks have: `prefer` when they have any,
    else the most recently registered one they have; None when they have none. One
    EXISTS per model, each stopping at its first match (counting every chunk's vectors
    cost an unchanged re-index of the standard library 90 ms, a third of its time)."""
    rows = await conn.fetch(
        "SELECT id, name, dimensions FROM embedding_models ORDER BY id = $1 DESC, id DESC",
        prefer.id if prefer is not None else -1,
    )
    for row in rows:
        has = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM chunks c JOIN embeddings e "
            "ON e.model_id = $2 AND e.text_hash = c.embed_hash WHERE c.repository_id = $1)",
            repository_id,
            row["id"],
        )
        if has:
            return Model(int(row["id"]), row["name"], int(row["dimensions"]))
    return None


async def count(conn: db.Conn, model: Model) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM embeddings WHERE model_id = $1", model.id))


# Vectors no chunk uses are kept until there are this many, and this share of the store:
# a branch switched away from and back costs nothing to embed again, and garbage stays
# bounded.
GARBAGE_MIN = 5_000
GARBAGE_SHARE = 0.2


def worth_collecting(unused: int, total: int, minimum: int = GARBAGE_MIN) -> bool:
    return unused > max(minimum, GARBAGE_SHARE * total)


async def collect_garbage(conn: db.Conn, minimum: int = GARBAGE_MIN) -> int:
    """Drop the vectors no chunk uses any more (of every model) once there are enough of
    them to be worth it (`worth_collecting`); returns how many went."""
    unused = await conn.fetchval(
        "SELECT count(*) FROM embeddings e "
        "WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.embed_hash = e.text_hash)"
    )
    total = await conn.fetchval("SELECT count(*) FROM embeddings")
    if not worth_collecting(int(unused), int(total), minimum):
        return 0
    status = await conn.execute(
        "DELETE FROM embeddings e "
        "WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.embed_hash = e.text_hash)"
    )
    return int(status.split()[-1])
