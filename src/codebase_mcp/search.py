"""Hybrid search: pgvector cosine top-k and BM25 top-k (lexical.py), fused (fusion.py),
then shaped into the list a client sees (results.py).

Filters (repository, language, path glob) apply inside both queries. Without a reachable
embedder or without stored embeddings, the lexical list answers alone and the response
says so (mode "lexical" and a notice).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg

from codebase_mcp import db, fusion
from codebase_mcp.errors import first_cause
from codebase_mcp.filters import Filters
from codebase_mcp.lexical import lexical_rows
from codebase_mcp.models import SearchMode, SearchResponse, SearchResult
from codebase_mcp.results import Ranked, finish
from codebase_mcp.tokens import query_terms

# HNSW candidate list per query: above pgvector's default 40 because the index is built
# lean (m=8, ef_construction=32); the benchmark prints the recall this gives.
EF_SEARCH = 100
MAX_LIMIT = 100


def candidates_for(limit: int) -> int:
    """How many hits each list contributes to the fusion: enough beyond `limit` for the
    per-file cap and the merging of pieces to leave a full list."""
    return min(max(limit * 3, 30), 300)


# The vector top k from chunks alone, then the repository's path for those k.
_VECTOR_TOP = """
    WITH top AS MATERIALIZED (
        SELECT c.id, c.repository_id, c.path, c.start_line, c.end_line, c.language,
               c.symbol, c.kind, c.text, 1 - (c.embedding <=> $1) AS score
        FROM chunks c
        WHERE c.embedding IS NOT NULL{where}
        ORDER BY {order} LIMIT $2
    )
    SELECT top.*, r.path AS repository FROM top JOIN repositories r ON r.id = top.repository_id
    ORDER BY top.score DESC, top.id
"""


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    row: asyncpg.Record


def vector_sql(dimensions: int, filters: Filters) -> tuple[str, list[Any]]:
    """The vector top-k query ($1 the vector, $2 k) and its filter parameters. It orders
    by the expression the HNSW index is built on (half precision: half the memory and
    faster distances, migration 0004); the score is the exact cosine similarity."""
    where, params = filters.sql(3)
    half = f"halfvec({int(dimensions)})"
    sql = _VECTOR_TOP.format(where=where, order=f"(c.embedding::{half}) <=> ($1::vector::{half})")
    return sql, params


async def vector_hits(
    conn: db.Conn, vector: Sequence[float], filters: Filters, k: int
) -> list[Hit]:
    sql, params = vector_sql(len(vector), filters)
    async with conn.transaction():
        # ef_search: enough candidates for k. iterative_scan: with filters, keep walking
        # the graph until k rows pass them (pgvector >= 0.8). No sequential scan: an exact
        # distance over every row is what the HNSW index is there to avoid.
        await conn.execute(
            f"SET LOCAL hnsw.ef_search = {max(EF_SEARCH, min(k, 1000))}; "
            "SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL enable_seqscan = off"
        )
        rows = await conn.fetch(sql, vector, k, *params)
    return [Hit(r["id"], float(r["score"]), r) for r in rows]


async def lexical_hits(conn: db.Conn, query: str, filters: Filters, k: int) -> list[Hit]:
    """The BM25 top k (lexical.py), best first."""
    rows = await lexical_rows(conn, query, filters, k)
    return [Hit(r["id"], float(r["score"]), r) for r in rows]


def _ranked(hit: Hit, score: float) -> Ranked:
    r = hit.row
    return Ranked(
        key=hit.id,
        repository=r["repository"],
        path=r["path"],
        start_line=r["start_line"],
        end_line=r["end_line"],
        symbol=r["symbol"],
        kind=r["kind"],
        language=r["language"],
        text=r["text"],
        score=score,
    )


def _result(item: Ranked, mode: SearchMode) -> SearchResult:
    return SearchResult(
        repository=item.repository,
        path=item.path,
        start_line=item.start_line,
        end_line=item.end_line,
        language=item.language,
        symbol=item.symbol,
        kind=item.kind,
        snippet=item.text,
        score=round(item.score, 6),
        mode=mode,
    )


def fuse(
    vector: list[Hit], lexical: list[Hit], query: str, limit: int, mode: SearchMode
) -> list[SearchResult]:
    """The response's results for the lists that ran (`mode` says which)."""
    if mode == "vector":
        ranked = [_ranked(h, h.score) for h in vector]
    elif mode == "lexical":
        ranked = [_ranked(h, h.score) for h in lexical]
    else:
        by_id = {h.id: h for h in lexical} | {h.id: h for h in vector}
        fused = fusion.fuse(
            [(h.id, h.score) for h in vector],
            [(h.id, h.score) for h in lexical],
            fusion.vector_weight(query),
        )
        ranked = [_ranked(by_id[i], s) for i, s in fused]
    return [_result(item, mode) for item in finish(ranked, query, limit)]


def plan_mode(want: SearchMode | None, has_vector: bool, has_words: bool) -> tuple[bool, bool]:
    """(run the vector list, run the lexical list) for a request (pure)."""
    if want == "lexical" or not has_vector:
        return False, has_words
    if want == "vector" or not has_words:
        return True, False
    return True, True


async def run_search(
    pool: db.Pool,
    query: str,
    vector: Sequence[float] | None,
    filters: Filters,
    limit: int,
    *,
    want: SearchMode | None = None,
    notice: str | None = None,
) -> SearchResponse:
    """Search with the query vector when there is one (None: no embedder answered, and
    `notice` says why). `want` forces one retrieval (the retrieval benchmark compares
    them); None picks hybrid when it can."""
    started = time.perf_counter()
    limit = max(1, min(limit, MAX_LIMIT))
    k = candidates_for(limit)
    has_words = bool(query_terms(query))
    run_vector, run_lexical = plan_mode(want, vector is not None, has_words)
    vector_list: list[Hit] = []
    lexical_list: list[Hit] = []

    async def run_vector_list() -> None:
        nonlocal vector_list
        if run_vector and vector is not None:
            async with pool.acquire() as conn:
                vector_list = await vector_hits(conn, vector, filters, k)

    async def run_lexical_list() -> None:
        nonlocal lexical_list
        if run_lexical:
            async with pool.acquire() as conn:
                lexical_list = await lexical_hits(conn, query, filters, k)

    # Both retrievals at once, on two connections: latency is the slower one, not the sum.
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_vector_list)
            tg.start_soon(run_lexical_list)
    except ExceptionGroup as group:
        raise first_cause(group) from None

    mode: SearchMode = (
        "hybrid" if run_vector and run_lexical else "vector" if run_vector else "lexical"
    )
    if mode == "hybrid" and not vector_list and lexical_list:
        mode = "lexical"
        notice = notice or "no embeddings stored yet: answered by full-text search only"
    results = fuse(vector_list, lexical_list, query, limit, mode)
    return SearchResponse(
        query=query,
        mode=mode,
        results=tuple(results),
        notice=notice,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )
