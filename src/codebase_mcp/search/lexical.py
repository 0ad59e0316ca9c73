"""Lexical retrieval: BM25 computed inside PostgreSQL (see bm25.py for the ranking).

Two round trips: the query words' forms with their document frequencies (and the corpus
size and average length) for the repositories searched, then the candidates the GIN
index finds, ranked by BM25 from their term-frequency vectors, best first. When the
first candidates cannot prove the ranking exact, the next rarest word joins them.

No extension does this in both PostgreSQLs we support: the embedded one (pixeltable-
pgserver) ships only plpgsql and pgvector, and the compose files' pgvector image has no
pg_search or VectorChord-bm25 either; so it is built on the tsvectors and pgvector's
sparse vectors we store, with statistics the indexer keeps (store/db.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from codebase_mcp.search import bm25
from codebase_mcp.search.filters import Filters
from codebase_mcp.source.tokens import query_terms, sparsevec_binary
from codebase_mcp.store import db, stats

# The forms of the query words ($1) the index holds, with their document frequencies over
# the repositories searched (stats.DOCUMENT_FREQUENCY): of each candidate form ($2 word,
# $3 form, $4 whether it is a derived form) found, the relation to its word: 0 the word
# itself, 1 the same English stem, 2 a derived form (others: NULL, dropped).
_FORMS = """
    WITH w AS (
        SELECT word, coalesce((ts_lexize('english_stem', word))[1], word) AS stem
        FROM unnest($1::text[]) AS word
    ), related AS MATERIALIZED (
        SELECT * FROM (
            SELECT f.word, f.lexeme, CASE
                WHEN f.lexeme = f.word THEN 0
                WHEN coalesce((ts_lexize('english_stem', f.lexeme))[1], f.lexeme) = w.stem
                    THEN 1
                WHEN f.derived THEN 2
            END AS relation
            FROM unnest($2::text[], $3::text[], $4::bool[]) AS f(word, lexeme, derived)
            JOIN w ON w.word = f.word
        ) candidates WHERE relation IS NOT NULL
    )
    SELECT f.word, f.lexeme, f.relation, d.df FROM related f
    CROSS JOIN LATERAL (<df>) d(df)
    WHERE d.df > 0
""".replace("<df>", stats.DOCUMENT_FREQUENCY.replace("{lexeme}", "f.lexeme"))


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
    candidates: dict[tuple[str, str], bool] = {}
    for word in words:
        candidates[(word, word)] = False
        for form in bm25.inflection_candidates(word):
            candidates[(word, form)] = False
        for form in bm25.derived_forms(word):
            candidates[(word, form)] = True
    on_stats, scope_params = filters.repository_condition("s.repository_id", 5)
    on_deltas, _ = filters.repository_condition("d.repository_id", 5)
    rows = await conn.fetch(
        _FORMS.format(scope_stats=on_stats, scope_deltas=on_deltas),
        words,
        [w for w, _ in candidates],
        [f for _, f in candidates],
        list(candidates.values()),
        *scope_params,
    )
    on_repositories, scope_params = filters.repository_condition("r.id", 1)
    on_deltas, _ = filters.repository_condition("d.repository_id", 1)
    corpus = await conn.fetchrow(
        stats.CORPUS.format(scope_repositories=on_repositories, scope_deltas=on_deltas),
        *scope_params,
    )
    assert corpus is not None
    n, total = int(corpus["n"]), int(corpus["total"])
    if n == 0:
        return [], 0.0
    forms = [
        (r["word"], r["lexeme"], int(r["relation"]), int(r["df"]))
        for r in rows
        if r["relation"] is not None
    ]
    return bm25.build_terms(words, forms, n), max(total / n, 1.0)


async def lexical_rows(
    conn: db.Conn, prepared: LexicalQuery, filters: Filters, k: int, exact: int | None = None
) -> list[asyncpg.Record]:
    """The top k chunks by BM25 under the filters, best first; the first `exact` of them
    (default: all k) are proven to be the corpus' best (bm25.next_plan)."""
    terms = prepared.terms
    where, where_params = filters.sql(6 + 2 * len(terms))
    sql = _top_sql(len(terms), where)
    params = prepared.params()
    plan: bm25.CandidatePlan | None = bm25.first_plan(terms)
    rows: list[asyncpg.Record] = []
    while plan is not None:
        rows = await conn.fetch(sql, *params, plan.tsquery, k, *where_params)
        scores = [float(r["score"]) for r in rows]
        following = bm25.next_plan(terms, plan, scores, min(exact or k, k))
        plan = following if following is not None and following != plan else None
    return list(rows)


async def lexical_scores(
    conn: db.Conn, prepared: LexicalQuery, ids: Sequence[int]
) -> dict[int, float]:
    """BM25 of these chunks (0 for a chunk holding none of the words)."""
    if not ids:
        return {}
    rows = await conn.fetch(_scores_sql(len(prepared.terms)), *prepared.params(), list(ids))
    return {r["id"]: float(r["score"]) for r in rows}
