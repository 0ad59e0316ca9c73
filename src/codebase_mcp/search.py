"""Hybrid search: pgvector cosine top-k and full-text top-k fused by reciprocal rank.

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

from codebase_mcp import db
from codebase_mcp.errors import first_cause
from codebase_mcp.languages import detect_language
from codebase_mcp.models import SearchMode, SearchResponse, SearchResult
from codebase_mcp.tokens import lexical_tiers_weighted, tsquery_for

# Reciprocal rank fusion's constant. 60 (the literature's default, for long lists) lets an
# item that is mediocre in both lists outrank each list's best; over the 30-odd candidates
# a list contributes here, 10 keeps the top ranks decisive. With the tier weights of
# tokens.TIER_WEIGHTS it took hybrid above vector alone on every measure, on the
# benchmark's blind questions too (benchmarks/retrieval: hit@3 0.61 -> 0.68).
RRF_K = 10
# HNSW candidate list per query: above pgvector's default 40 because the index is built
# lean (m=8, ef_construction=32); the benchmark prints the recall this gives.
EF_SEARCH = 100
# Rows ranked per lexical tier: ranking reads each row's tsvector, so a word found in
# thousands of chunks would otherwise cost hundreds of milliseconds.
RANK_CANDIDATES = 1000
MAX_LIMIT = 100


# --- pure parts -----------------------------------------------------------------------


class GlobError(ValueError):
    """A path glob that is not well formed; the message says where and why."""


def glob_to_regex(glob: str) -> str:
    """A PostgreSQL regular expression (ARE) for a path glob, anchored at both ends.

    `*` stays within a path segment, `**` crosses segments (`**/` also matches nothing),
    `?` is one character, `[...]` a class (`[!...]` or `[^...]` negated; a `]` right
    after the opening `[` or `[!` is a member; `a-z` a range). A glob without `/`
    matches the file name at any depth (as in .gitignore). Every other character is
    literal: escaped with `\\`, which in an ARE makes any non-alphanumeric character
    literal. Raises GlobError for a class that is never closed or a reversed range
    (PostgreSQL would reject the expression).
    """
    pattern = glob.strip().lstrip("/")
    anchored_anywhere = "/" not in pattern
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "[":
            regex, i = _glob_class(pattern, i)
            out.append(regex)
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch.isalnum():
            out.append(ch)
        else:
            out.append("\\" + ch)
        i += 1
    prefix = "(.*/)?" if anchored_anywhere else ""
    return "^" + prefix + "".join(out) + "$"


def _glob_class(pattern: str, start: int) -> tuple[str, int]:
    """The ARE bracket expression for the class opening at `start`, and the index after
    it. Members are escaped; a negated class never matches `/` (as `*` does not)."""
    i = start + 1
    negate = pattern.startswith(("!", "^"), i)
    if negate:
        i += 1
    close = pattern.find("]", i + 1)  # a `]` in first place is a member
    if close == -1:
        raise GlobError(
            f"the character class {pattern[start : start + 20]!r} is never closed (a ] right "
            "after [ or [! is a member; write [[] for a literal [)"
        )
    body = pattern[i:close]
    members: list[str] = []
    j = 0
    while j < len(body):
        if j + 2 < len(body) and body[j + 1] == "-":
            low, high = body[j], body[j + 2]
            if low > high:
                raise GlobError(
                    f"the range {low}-{high} in {pattern[start : close + 1]} is reversed "
                    f"(write {high}-{low})"
                )
            members.append(_class_member(low) + "-" + _class_member(high))
            j += 3
        else:
            members.append(_class_member(body[j]))
            j += 1
    return "[" + ("^/" if negate else "") + "".join(members) + "]", close + 1


def _class_member(ch: str) -> str:
    return ch if ch.isalnum() else "\\" + ch


_LANGUAGE_ALIASES = {"c#": "csharp", "cs": "csharp", "golang": "go", "shell": "bash", "sh": "bash"}


def normalize_language(name: str) -> str:
    """The stored language name for what a user typed: `Python`, `py`, `ts`, `c#`."""
    lowered = name.strip().lower()
    if lowered in _LANGUAGE_ALIASES:
        return _LANGUAGE_ALIASES[lowered]
    # An extension names its language (py, ts, rs); a full name is not an extension.
    return detect_language(f"file.{lowered}") or lowered


def rrf_fuse(
    ranked: Sequence[Sequence[int]],
    k: int = RRF_K,
    weights: Sequence[Sequence[float]] | None = None,
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each id scores sum(w / (k + rank)) over the lists it is in
    (rank 1-based; w is the item's weight in that list, 1 without `weights`); best first,
    ties broken by the first list's order."""
    scores: dict[int, float] = {}
    for n, ids in enumerate(ranked):
        for rank, chunk_id in enumerate(ids, start=1):
            w = weights[n][rank - 1] if weights is not None else 1.0
            scores[chunk_id] = scores.get(chunk_id, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


@dataclass(frozen=True)
class Filters:
    """`repository`: an indexed repository's exact path (the engine resolves what users
    type); `path_glob`: see glob_to_regex."""

    repository: str | None = None
    language: str | None = None
    path_glob: str | None = None

    def sql(self, first_param: int) -> tuple[str, list[Any]]:
        """` AND ...` conditions on chunks c alone (path and repository_id live there
        too), so each retrieval stays a one-table index scan."""
        parts: list[str] = []
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${first_param + len(params) - 1}"

        if self.repository:
            # only $n placeholders are interpolated; values travel as parameters
            in_repo = (
                "c.repository_id IN (SELECT id FROM repositories "  # noqa: S608
                f"WHERE path = {param(self.repository)})"
            )
            parts.append(in_repo)
        if self.language:
            parts.append(f"c.language = {param(normalize_language(self.language))}")
        if self.path_glob:
            parts.append(f"c.path ~ {param(glob_to_regex(self.path_glob))}")
        return "".join(" AND " + p for p in parts), params


def candidates_for(limit: int) -> int:
    """How many hits each list contributes to the fusion."""
    return min(max(limit * 3, 30), 300)


# --- queries --------------------------------------------------------------------------

# The top k of one retrieval from chunks alone, then the repository's path for those k.
_TOP = """
    WITH top AS MATERIALIZED (
        SELECT c.id, c.repository_id, c.path, c.start_line, c.end_line, c.language,
               c.symbol, c.kind, c.text, {score} AS score
        FROM chunks c{extra_from}
        WHERE {where}
        ORDER BY {order} LIMIT $2
    )
    SELECT top.*, r.path AS repository FROM top JOIN repositories r ON r.id = top.repository_id
"""


# Lexical top k: the matching rows (at most $3 of them, by the GIN index), ranked.
_LEXICAL = """
    WITH q AS (SELECT to_tsquery('simple', $1) AS q),
    matched AS MATERIALIZED (
        SELECT c.id FROM chunks c, q WHERE c.tsv @@ q.q{where} LIMIT $3
    ),
    top AS MATERIALIZED (
        SELECT c.id, c.repository_id, c.path, c.start_line, c.end_line, c.language,
               c.symbol, c.kind, c.text, ts_rank_cd(c.tsv, q.q) AS score
        FROM matched m JOIN chunks c ON c.id = m.id, q
        ORDER BY score DESC, c.id LIMIT $2
    )
    SELECT top.*, r.path AS repository FROM top JOIN repositories r ON r.id = top.repository_id
"""


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    row: asyncpg.Record
    weight: float = 1.0  # its weight in the fusion (lexical: by the tier it matched)


def vector_sql(dimensions: int, filters: Filters) -> tuple[str, list[Any]]:
    """The vector top-k query ($1 the vector, $2 k) and its filter parameters. It orders
    by the expression the HNSW index is built on (half precision: half the memory and
    faster distances, migration 0004); the score is the exact cosine similarity."""
    where, params = filters.sql(3)
    half = f"halfvec({int(dimensions)})"
    sql = _TOP.format(
        score="1 - (c.embedding <=> $1)",
        extra_from="",
        where="c.embedding IS NOT NULL" + where,
        order=f"(c.embedding::{half}) <=> ($1::vector::{half})",
    )
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
    hits = [Hit(r["id"], float(r["score"]), r) for r in rows]
    hits.sort(key=lambda h: -h.score)  # relaxed_order may be slightly out of order
    return hits


async def lexical_hits(conn: db.Conn, query: str, filters: Filters, k: int) -> list[Hit]:
    """Tiers from precise to broad (tokens.lexical_tiers) until k hits: a name match in
    the symbol first, then every word, any two, any one. ts_rank_cd orders each tier
    (more of the words, closer together, in the symbol or path rather than the body);
    it reads every matching row, so each tier ranks at most RANK_CANDIDATES of them."""
    hits: list[Hit] = []
    seen: set[int] = set()
    where, params = filters.sql(4)
    sql = _LEXICAL.format(where=where)
    for tsquery, weight in lexical_tiers_weighted(query):
        for r in await conn.fetch(sql, tsquery, k, RANK_CANDIDATES, *params):
            if r["id"] not in seen and len(hits) < k:
                seen.add(r["id"])
                hits.append(Hit(r["id"], float(r["score"]), r, weight))
        if len(hits) >= k:
            break
    return hits


def _result(hit: Hit, score: float, mode: SearchMode) -> SearchResult:
    r = hit.row
    return SearchResult(
        repository=r["repository"],
        path=r["path"],
        start_line=r["start_line"],
        end_line=r["end_line"],
        language=r["language"],
        symbol=r["symbol"],
        kind=r["kind"],
        snippet=r["text"],
        score=round(score, 6),
        mode=mode,
    )


def fuse(vector: list[Hit], lexical: list[Hit], limit: int, mode: SearchMode) -> list[SearchResult]:
    """The response's results for the lists that ran (`mode` says which)."""
    if mode == "vector":
        return [_result(h, h.score, mode) for h in vector[:limit]]
    if mode == "lexical":
        return [_result(h, h.score, mode) for h in lexical[:limit]]
    by_id = {h.id: h for h in lexical} | {h.id: h for h in vector}
    fused = rrf_fuse(
        [[h.id for h in vector], [h.id for h in lexical]],
        weights=[[h.weight for h in vector], [h.weight for h in lexical]],
    )
    return [_result(by_id[i], s, mode) for i, s in fused[:limit]]


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
    has_words = tsquery_for(query, match_all=False) is not None
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
    results = fuse(vector_list, lexical_list, limit, mode)
    return SearchResponse(
        query=query,
        mode=mode,
        results=tuple(results),
        notice=notice,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )
