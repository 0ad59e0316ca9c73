"""Hybrid search: pgvector cosine top-k and BM25 top-k (lexical.py), each list's scores
completed for the other's candidates, fused (fusion.py), then shaped into the list a
client sees (results.py).

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

from codebase_mcp.errors import first_cause
from codebase_mcp.models import SearchMode, SearchResponse, SearchResult
from codebase_mcp.search import fusion
from codebase_mcp.search.filters import Filters
from codebase_mcp.search.lexical import LexicalQuery, lexical_rows, lexical_scores, prepare
from codebase_mcp.search.results import Ranked, finish
from codebase_mcp.source.tokens import query_terms
from codebase_mcp.store import db
from codebase_mcp.store.embeddings import Model

# HNSW candidate list per query: above pgvector's default 40 because the index is built
# lean (m=8, ef_construction=32); the benchmark prints the recall this gives.
EF_SEARCH = 100
MAX_LIMIT = 100


def candidates_for(limit: int) -> int:
    """How many hits each list contributes to the fusion: enough beyond `limit` for the
    per-file cap and the merging of pieces to leave a full list."""
    return min(max(limit * 3, 30), 300)


# No sequential or bitmap scan of the model's vectors (or of the chunks the filters pick)
# to compute every distance: that is what the HNSW index is there to avoid, and what the
# planner picks when its statistics are young.
VECTOR_SETTINGS = (
    "SET LOCAL hnsw.iterative_scan = relaxed_order; SET LOCAL enable_seqscan = off; "
    "SET LOCAL enable_bitmapscan = off"
)

# The vector top k: the model's vectors nearest first (its HNSW index), each joined to the
# chunks embedded as that text (filters apply to them), then the repository's path.
_VECTOR_TOP = """
    WITH top AS MATERIALIZED (
        SELECT c.id, c.repository_id, c.path, c.start_line, c.end_line, c.language,
               c.symbol, c.kind, c.text, 1 - (e.embedding::vector <=> $1::vector) AS score
        FROM embeddings e JOIN chunks c ON c.embed_hash = e.text_hash
        WHERE e.model_id = {model}{where}
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


def vector_sql(model: Model, filters: Filters) -> tuple[str, list[Any]]:
    """The vector top-k query ($1 the vector, $2 k) and its filter parameters. It orders
    by the expression the model's HNSW index is built on; the score is the cosine
    similarity of the stored (half-precision) vector to the full-precision query. The
    model's id is written into the text, not passed: a generic plan could not prove the
    partial index's `WHERE model_id = N` and would scan every vector."""
    where, params = filters.sql(3)
    half = model.half()
    sql = _VECTOR_TOP.format(
        model=int(model.id),
        where=where,
        order=f"(e.embedding::{half}) <=> ($1::vector::{half})",
    )
    return sql, params


async def vector_hits(
    conn: db.Conn, model: Model, vector: Sequence[float], filters: Filters, k: int
) -> list[Hit]:
    sql, params = vector_sql(model, filters)
    async with conn.transaction():
        # ef_search: enough candidates for k. iterative_scan: with filters, keep walking
        # the graph until k rows pass them (pgvector >= 0.8).
        await conn.execute(
            f"SET LOCAL hnsw.ef_search = {max(EF_SEARCH, min(k, 1000))}; " + VECTOR_SETTINGS
        )
        rows = await conn.fetch(sql, vector, k, *params)
    return [Hit(r["id"], float(r["score"]), r) for r in rows]


async def vector_scores(
    conn: db.Conn, model: Model, vector: Sequence[float], ids: Sequence[int]
) -> dict[int, float]:
    """The cosine similarity of these chunks to the query (chunks without a vector of the
    model: none)."""
    if not ids:
        return {}
    rows = await conn.fetch(
        "SELECT c.id, 1 - (e.embedding::vector <=> $1::vector) AS score FROM chunks c "
        "JOIN embeddings e ON e.model_id = $3 AND e.text_hash = c.embed_hash "
        "WHERE c.id = ANY($2::bigint[])",
        vector,
        list(ids),
        model.id,
    )
    return {r["id"]: float(r["score"]) for r in rows}


async def lexical_hits(
    conn: db.Conn, query: str, filters: Filters, k: int, exact: int | None = None
) -> list[Hit]:
    """The BM25 top k (lexical.py), best first; the first `exact` proven exact."""
    return (await _lexical(conn, query, filters, k, exact))[0]


async def _lexical(
    conn: db.Conn, query: str, filters: Filters, k: int, exact: int | None
) -> tuple[list[Hit], LexicalQuery | None]:
    prepared = await prepare(conn, query, filters)
    if prepared is None:
        return [], None
    rows = await lexical_rows(conn, prepared, filters, k, exact)
    return [Hit(r["id"], float(r["score"]), r) for r in rows], prepared


async def complete_scores(
    pool: db.Pool,
    model: Model,
    vector: Sequence[float],
    *,
    prepared: LexicalQuery | None,
    vector_list: Sequence[Hit],
    lexical_list: Sequence[Hit],
) -> tuple[dict[int, float], dict[int, float]]:
    """Each list's scores for the other list's candidates, so that fusion weighs every
    candidate by both its scores (a candidate missing from a list is not worth 0 there:
    it only fell below that list's cut-off). Returns (vector, lexical) extra scores."""
    in_vector = {h.id for h in vector_list}
    in_lexical = {h.id for h in lexical_list}
    need_vector = [h.id for h in lexical_list if h.id not in in_vector]
    need_lexical = [h.id for h in vector_list if h.id not in in_lexical]
    extra_vector: dict[int, float] = {}
    extra_lexical: dict[int, float] = {}

    async def vector_side() -> None:
        nonlocal extra_vector
        if need_vector:
            async with pool.acquire() as conn:
                extra_vector = await vector_scores(conn, model, vector, need_vector)

    async def lexical_side() -> None:
        nonlocal extra_lexical
        if need_lexical and prepared is not None:
            async with pool.acquire() as conn:
                extra_lexical = await lexical_scores(conn, prepared, need_lexical)

    async with anyio.create_task_group() as tg:
        tg.start_soon(vector_side)
        tg.start_soon(lexical_side)
    return extra_vector, extra_lexical


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
    vector: list[Hit],
    lexical: list[Hit],
    query: str,
    limit: int,
    mode: SearchMode,
    *,
    extra: tuple[dict[int, float], dict[int, float]] = ({}, {}),
) -> list[SearchResult]:
    """The response's results for the lists that ran (`mode` says which); `extra` holds
    each list's scores of the other list's candidates (complete_scores)."""
    if mode == "vector":
        ranked = [_ranked(h, h.score) for h in vector]
    elif mode == "lexical":
        ranked = [_ranked(h, h.score) for h in lexical]
    else:
        by_id = {h.id: h for h in lexical} | {h.id: h for h in vector}
        extra_vector, extra_lexical = extra
        fused = fusion.fuse(
            [(h.id, h.score) for h in vector] + list(extra_vector.items()),
            [(h.id, h.score) for h in lexical] + list(extra_lexical.items()),
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
    model: Model | None = None,
    want: SearchMode | None = None,
    notice: str | None = None,
) -> SearchResponse:
    """Search with the query vector of `model` when there is one (None: no embedder
    answered, and `notice` says why). `want` forces one retrieval (the retrieval benchmark
    compares them); None picks hybrid when it can."""
    if model is None:
        vector = None
    started = time.perf_counter()
    limit = max(1, min(limit, MAX_LIMIT))
    k = candidates_for(limit)
    has_words = bool(query_terms(query))
    run_vector, run_lexical = plan_mode(want, vector is not None, has_words)
    vector_list: list[Hit] = []
    lexical_list: list[Hit] = []
    prepared: LexicalQuery | None = None

    async def run_vector_list() -> None:
        nonlocal vector_list
        if run_vector and vector is not None and model is not None:
            async with pool.acquire() as conn:
                vector_list = await vector_hits(conn, model, vector, filters, k)

    async def run_lexical_list() -> None:
        nonlocal lexical_list, prepared
        if run_lexical:
            async with pool.acquire() as conn:
                # The list's head must be right; its tail only feeds the fusion.
                lexical_list, prepared = await _lexical(conn, query, filters, k, limit)

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
    extra: tuple[dict[int, float], dict[int, float]] = ({}, {})
    if mode == "hybrid" and vector is not None and model is not None:
        try:
            extra = await complete_scores(
                pool,
                model,
                vector,
                prepared=prepared,
                vector_list=vector_list,
                lexical_list=lexical_list,
            )
        except ExceptionGroup as group:
            raise first_cause(group) from None
    results = fuse(vector_list, lexical_list, query, limit, mode, extra=extra)
    return SearchResponse(
        query=query,
        mode=mode,
        results=tuple(results),
        notice=notice,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )
