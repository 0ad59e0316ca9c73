"""Hybrid fusion of the vector and the lexical lists (pure functions).

Each list is (id, score) pairs, best first. `fuse` combines them by the scores themselves,
normalised per list (each list's best is 1), weighted by how much the query looks like a
name (lean lexical) or like a question (lean vector). `rrf` is the rank-only alternative
the benchmark compares it with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from codebase_mcp.source.tokens import STOP_WORDS, query_terms

# Reciprocal rank fusion's constant (see rrf).
RRF_K = 10
# The vector list's share of the fused score: for a question in plain words, for a
# query that looks like a name, and in between.
VECTOR_WEIGHT_QUESTION = 0.7
VECTOR_WEIGHT_NAME = 0.35
VECTOR_WEIGHT_MIXED = 0.55

Scored = Sequence[tuple[int, float]]

_NAME_SHAPE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*[._:][A-Za-z_]|[a-z][A-Z]|_|\(|^[A-Z]{2,}")


def looks_like_name(query: str) -> bool:
    """A query typed as code: one or two tokens with an identifier's shape (parseDate,
    parse_date, os.path.join, Foo::bar, send_file()), or a single word."""
    tokens = query.split()
    if not tokens:
        return False
    if len(tokens) == 1:
        return True
    return len(tokens) <= 2 and any(_NAME_SHAPE.search(t) for t in tokens)


def vector_weight(query: str) -> float:
    """How much the vector list counts for this query (0..1)."""
    if looks_like_name(query):
        return VECTOR_WEIGHT_NAME
    content = [w for w in query.lower().split() if w not in STOP_WORDS]
    if len(query_terms(query)) >= 3 or len(content) >= 3:
        return VECTOR_WEIGHT_QUESTION
    return VECTOR_WEIGHT_MIXED


# How a list's scores are brought to one scale: "max" divides by the best (relative
# strengths survive, as cosine similarities and BM25 scores are both ratio scales);
# "minmax" also sends the list's last to 0.
NORMALISATION = "max"


def normalise(scored: Scored, method: str = NORMALISATION) -> dict[int, float]:
    """Scores scaled so that the list's best is 1 (see NORMALISATION)."""
    if not scored:
        return {}
    top = max(s for _, s in scored)
    bottom = min(s for _, s in scored) if method == "minmax" else 0.0
    span = top - bottom
    if span <= 0:
        return {i: 1.0 for i, _ in scored}
    return {i: max(0.0, (s - bottom) / span) for i, s in scored}


def fuse(
    vector: Scored, lexical: Scored, vector_share: float, method: str = NORMALISATION
) -> list[tuple[int, float]]:
    """Weighted sum of the normalised scores; an id missing from a list scores 0 there.
    Best first, ties broken by the vector list's order, then the lexical list's."""
    v, lex = normalise(vector, method), normalise(lexical, method)
    order = {i: n for n, (i, _) in enumerate([*vector, *lexical])}
    scores = {
        i: vector_share * v.get(i, 0.0) + (1.0 - vector_share) * lex.get(i, 0.0) for i in order
    }
    return sorted(scores.items(), key=lambda item: (-item[1], order[item[0]]))


def rrf(
    lists: Sequence[Sequence[int]], k: int = RRF_K, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each id scores sum(w / (k + rank)) over the lists it is in
    (rank 1-based); best first, ties broken by the first list's order."""
    scores: dict[int, float] = {}
    for n, ids in enumerate(lists):
        w = weights[n] if weights is not None else 1.0
        for rank, chunk_id in enumerate(ids, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])
