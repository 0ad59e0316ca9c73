"""Lexical retrieval: BM25 computed inside PostgreSQL (see bm25.py for the ranking).

Two round trips: the query words' forms with their document frequencies (and the corpus
size and average length) for the repositories searched, then the candidates the GIN
index finds, ranked by BM25 from their term-frequency vectors, best first. When the
first candidates cannot prove the ranking exact, the next rarest word joins them.

No extension does this in both PostgreSQLs we support: the embedded one (pixeltable-
pgserver) ships only plpgsql and pgvector, and the compose files' pgvector image has no
pg_search or VectorChord-bm25 either; so it is built on the tsvectors and pgvector's
sparse vectors we store, with statistics the indexer keeps (db.py).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from codebase_mcp import bm25, db
from codebase_mcp.filters import Filters
from codebase_mcp.tokens import query_terms, sparsevec_binary

# The query words' forms with their document frequencies over the repositories searched
# ({scope}: a condition on s.repository_id, or true): the word itself, the words sharing
# its English stem (the vocabulary), and its derived forms ($2, $3: bm25.derived_forms).
_FORMS = """
    WITH w AS (
        SELECT word, coalesce((ts_lexize('english_stem', word))[1], word) AS stem
        FROM unnest($1::text[]) AS word
    ), v AS (
        SELECT word, lexeme, min(relation) AS relation FROM (
            SELECT word, word AS lexeme, 0 AS relation FROM w
            UNION ALL
            SELECT w.word, voc.lexeme, 1 FROM w
            JOIN vocabulary voc ON voc.stem = w.stem COLLATE "C"
            UNION ALL
            SELECT word, lexeme, 2 FROM unnest($2::text[], $3::text[]) AS f(word, lexeme)
        ) found GROUP BY word, lexeme
    )
    SELECT v.word, v.lexeme, v.relation, d.df FROM v
    CROSS JOIN LATERAL (
        SELECT sum(s.df)::bigint AS df FROM lexeme_stats s
        WHERE s.lexeme = v.lexeme COLLATE "C" AND {scope}
    ) d
    WHERE d.df > 0
"""

_CORPUS = """
    SELECT coalesce(sum(chunk_count), 0)::bigint AS n,
           coalesce(sum(body_length_sum), 0)::bigint AS total
    FROM repositories s WHERE {scope}
"""


def _score_sql(terms: int, where: str) -> str:
    """Candidates ($1 a tsquery) ranked by BM25 ($2 k, $3 k1, $4 b, $5 avgdl; then per
    term its idf and its vector), best first, with the rows a result needs."""
    first = 6
    freqs = ", ".join(
        f"-(c.term_freqs <#> ${first + 2 * i + 1}::sparsevec) AS f{i}" for i in range(terms)
    )
    norm = "$3::float8 * (1 - $4::float8 + $4::float8 * body_length / $5::float8)"
    score = " + ".join(
        f"${first + 2 * i}::float8 * (f{i} * ($3::float8 + 1) / (f{i} + {norm}))"
        for i in range(terms)
    )
    # only $n placeholders and generated column names are interpolated
    return f"""
        WITH candidates AS MATERIALIZED (
            SELECT c.id, c.body_length, {freqs}
            FROM chunks c WHERE c.tsv @@ $1::tsquery{where}
        ), top AS MATERIALIZED (
            SELECT id, {score} AS score FROM candidates ORDER BY score DESC, id LIMIT $2
        )
        SELECT c.id, c.repository_id, c.path, c.start_line, c.end_line, c.language,
               c.symbol, c.kind, c.text, top.score, r.path AS repository
        FROM top JOIN chunks c ON c.id = top.id JOIN repositories r ON r.id = c.repository_id
        ORDER BY top.score DESC, c.id
    """  # noqa: S608


async def lexical_terms(
    conn: db.Conn, query: str, filters: Filters
) -> tuple[list[bm25.Term], float]:
    """The query's terms with their statistics over the repositories searched, and the
    average body length there (no terms: no word of the query is indexed)."""
    words = query_terms(query)
    if not words:
        return [], 0.0
    derived = [(w, form) for w in words for form in bm25.derived_forms(w)]
    scope, scope_params = filters.repository_condition("s.repository_id", 4)
    rows = await conn.fetch(
        _FORMS.format(scope=scope),
        words,
        [w for w, _ in derived],
        [f for _, f in derived],
        *scope_params,
    )
    scope, scope_params = filters.repository_condition("s.id", 1)
    corpus = await conn.fetchrow(_CORPUS.format(scope=scope), *scope_params)
    assert corpus is not None
    n, total = int(corpus["n"]), int(corpus["total"])
    if n == 0:
        return [], 0.0
    forms = [(r["word"], r["lexeme"], int(r["relation"]), int(r["df"])) for r in rows]
    return bm25.build_terms(words, forms, n), max(total / n, 1.0)


async def lexical_rows(conn: db.Conn, query: str, filters: Filters, k: int) -> list[asyncpg.Record]:
    """The top k chunks by BM25 for the query under the filters, best first."""
    terms, avgdl = await lexical_terms(conn, query, filters)
    if not terms:
        return []
    ordered = bm25.by_rarity(terms)
    where, where_params = filters.sql(6 + 2 * len(ordered))
    sql = _score_sql(len(ordered), where)
    vectors = [sparsevec_binary(t.vector()) for t in ordered]
    plan = bm25.candidate_plan(ordered)
    while True:
        params: list[Any] = [plan.tsquery, k, bm25.K1, bm25.B, avgdl]
        for term, vector in zip(ordered, vectors, strict=True):
            params += [term.idf, vector]
        rows = await conn.fetch(sql, *params, *where_params)
        scores = [float(r["score"]) for r in rows]
        if bm25.ranking_is_exact(plan, scores, k) or plan.essential >= len(ordered):
            return list(rows)
        plan = bm25.candidate_plan(ordered, plan.essential + 1)
