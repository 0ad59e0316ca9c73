"""What an index must look like however many replicas wrote it: every count the indexer
keeps agrees with the rows, and nothing is stored twice. Used by the takeover tests and
scripts/scale-out-test."""

from __future__ import annotations

from typing import Any

import asyncpg

CHECKS: dict[str, str] = {
    # file rows whose chunk_count is not their number of chunk rows
    "files_with_wrong_chunk_count": """
        SELECT count(*) FROM files f
        WHERE f.chunk_count <> (SELECT count(*) FROM chunks c WHERE c.file_id = f.id)""",
    # one chunk per (file, ordinal), and per (repository, path, ordinal)
    "duplicate_chunks": """
        SELECT count(*) FROM (SELECT 1 FROM chunks GROUP BY file_id, ordinal
                              HAVING count(*) > 1) d""",
    "duplicate_chunks_by_path": """
        SELECT count(*) FROM (SELECT 1 FROM chunks GROUP BY repository_id, path, ordinal
                              HAVING count(*) > 1) d""",
    "duplicate_files": """
        SELECT count(*) FROM (SELECT 1 FROM files GROUP BY repository_id, path
                              HAVING count(*) > 1) d""",
    # BM25's N and total length per repository (folded in, plus deltas not yet folded)
    "repositories_with_wrong_chunk_count": """
        SELECT count(*) FROM repositories r
        LEFT JOIN (SELECT repository_id, sum(chunks) AS chunks,
                          sum(body_length) AS body_length
                   FROM corpus_deltas GROUP BY repository_id) d ON d.repository_id = r.id
        WHERE r.chunk_count + coalesce(d.chunks, 0)
                <> (SELECT count(*) FROM chunks c WHERE c.repository_id = r.id)
           OR r.body_length_sum + coalesce(d.body_length, 0)
                <> (SELECT coalesce(sum(body_length), 0) FROM chunks c
                    WHERE c.repository_id = r.id)""",
    # document frequencies kept per word (the same way): equal to a recount over the chunks
    "wrong_document_frequencies": """
        WITH recount AS (
            SELECT c.repository_id, l AS lexeme, count(*)::int AS df
            FROM chunks c, unnest(tsvector_to_array(c.tsv)) AS l
            GROUP BY c.repository_id, l
        ), kept AS (
            SELECT repository_id, lexeme, sum(df)::int AS df FROM (
                SELECT repository_id, lexeme, df FROM lexeme_stats
                UNION ALL SELECT repository_id, lexeme, delta FROM lexeme_deltas
            ) k GROUP BY repository_id, lexeme HAVING sum(df) <> 0
        )
        SELECT count(*) FROM recount r
        FULL JOIN kept s
            ON s.repository_id = r.repository_id AND s.lexeme = r.lexeme COLLATE "C"
        WHERE r.df IS DISTINCT FROM s.df""",
    # chunks without a vector of a model that embedded others (every model in the store
    # is an active embedder's; a job with a working embedder leaves none without)
    "chunks_without_vector": """
        SELECT count(*) FROM chunks c CROSS JOIN embedding_models m
        WHERE NOT EXISTS (SELECT 1 FROM embeddings e
                          WHERE e.model_id = m.id AND e.text_hash = c.embed_hash)""",
    # one vector per (model, text)
    "duplicate_vectors": """
        SELECT count(*) FROM (SELECT 1 FROM embeddings GROUP BY model_id, text_hash
                              HAVING count(*) > 1) d""",
}


async def integrity(url: str) -> dict[str, Any]:
    """{"files", "chunks", "vector_index", "deferred", **CHECKS: counts that must be 0}."""
    conn = await asyncpg.connect(url)
    try:
        found: dict[str, Any] = {
            "files": await conn.fetchval("SELECT count(*) FROM files"),
            "chunks": await conn.fetchval("SELECT count(*) FROM chunks"),
            # one HNSW index per model in the store
            "vector_index": await conn.fetchval(
                "SELECT count(*) - (SELECT count(*) FROM embedding_models) FROM pg_indexes "
                "WHERE indexname LIKE 'embeddings_hnsw_%'"
            )
            + 1,
            "deferred": await conn.fetchval("SELECT count(*) FROM deferred_indexes"),
        }
        for name, sql in CHECKS.items():
            found[name] = await conn.fetchval(sql)
    finally:
        await conn.close()
    return found


def problems(found: dict[str, Any]) -> dict[str, Any]:
    """The checks that are not 0, and a vector index that is missing or still set aside."""
    bad = {name: found[name] for name in CHECKS if found[name]}
    if found["vector_index"] != 1 or found["deferred"]:
        bad["vector_index"] = (found["vector_index"], found["deferred"])
    return bad
