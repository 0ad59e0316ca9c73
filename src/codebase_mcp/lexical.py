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

from collections.abc import Sequence
from dataclasses import dataclass
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


def _score(terms: int) -> str:
    """BM25 of a chunk c ($1 k1, $2 b, $3 avgdl; then per term its idf and its vector):
    each term's weighted frequency is a dot product with the chunk's term frequencies."""
    norm = "$1::float8 * (1 - $2::float8 + $2::float8 * c.body_length / $3::float8)"
    parts = []
    for i in range(terms):
        idf, vector = f"${4 + 2 * i}::float8", f"${5 + 2 * i}::sparsevec"
        freq = f"(-(c.term_freqs <#> {vector}))"
        parts.append(f"{idf} * ({freq} * ($1::float8 + 1) / ({freq} + {norm}))")
    return " + ".join(parts)


def _top_sql(terms: int, where: str) -> str:
    """The top k candidates (a tsquery) by BM25, best first, with the rows a result
    needs; parameters after the score's: the tsquery, k, then `where`'s."""
    tsquery, k = f"${4 + 2 * terms}", f"${5 + 2 * terms}"
    # only $n placeholders and generated expressions are interpolated
    return f"""
        WITH top AS MATERIALIZED (
            SELECT c.id, {_score(terms)} AS score
            FROM chunks c WHERE c.tsv @@ {tsquery}::tsquery{where}
            ORDER BY score DESC, c.id LIMIT {k}
        )
        SELECT c.id, c.repository_id, c.path, c.start_line, c.end_line, c.language,
               c.symbol, c.kind, c.text, top.score, r.path AS repository
        FROM top JOIN chunks c ON c.id = top.id JOIN repositories r ON r.id = c.repository_id
        ORDER BY top.score DESC, c.id
    """  # noqa: S608


def _scores_sql(terms: int) -> str:
    """BM25 of the chunks whose ids are the parameter after the score's."""
    return f"SELECT c.id, {_score(terms)} AS score FROM chunks c WHERE c.id = ANY(${4 + 2 * terms}::bigint[])"  # noqa: S608, E501


@dataclass(frozen=True)
class LexicalQuery:
    """A query's BM25 terms (rarest first) with their statistics in the scope searched."""

    terms: list[bm25.Term]
    avgdl: float

    def params(self) -> list[Any]:
        out: list[Any] = [bm25.K1, bm25.B, self.avgdl]
        for term in self.terms:
            out += [term.idf, sparsevec_binary(term.vector())]
        return out


async def prepare(conn: db.Conn, query: str, filters: Filters) -> LexicalQuery | None:
    """The query's terms and statistics; None when no word of it is indexed in scope."""
    terms, avgdl = await lexical_terms(conn, query, filters)
    return LexicalQuery(bm25.by_rarity(terms), avgdl) if terms else None


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


async def lexical_rows(
    conn: db.Conn, prepared: LexicalQuery, filters: Filters, k: int
) -> list[asyncpg.Record]:
    """The top k chunks by BM25 under the filters, best first."""
    terms = prepared.terms
    where, where_params = filters.sql(6 + 2 * len(terms))
    sql = _top_sql(len(terms), where)
    params = prepared.params()
    plan = bm25.candidate_plan(terms)
    while True:
        rows = await conn.fetch(sql, *params, plan.tsquery, k, *where_params)
        scores = [float(r["score"]) for r in rows]
        if bm25.ranking_is_exact(plan, scores, k) or plan.essential >= len(terms):
            return list(rows)
        plan = bm25.candidate_plan(terms, plan.essential + 1)


async def lexical_scores(
    conn: db.Conn, prepared: LexicalQuery, ids: Sequence[int]
) -> dict[int, float]:
    """BM25 of these chunks (0 for a chunk holding none of the words)."""
    if not ids:
        return {}
    rows = await conn.fetch(_scores_sql(len(prepared.terms)), *prepared.params(), list(ids))
    return {r["id"]: float(r["score"]) for r in rows}
