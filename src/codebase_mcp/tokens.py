"""Words for full-text search, with identifiers split so that `parseDate`, `parse_date`,
`ParseDate` and "parse date" all meet.

The indexer stores each chunk's words as a tsvector built here (`tsvector_binary`: no
stemming, no stop words, so code words stay intact; the symbol and the path weigh more
than the body). Queries go through `tsquery_for()` (for to_tsquery('simple', ...)) so
both sides split the same way. Pure functions only.

`tsvector_binary` is the compiled `codebase_mcp._tsvector` (C, ~6x faster: it was the
largest cost of indexing left in Python) when the package was built with a C compiler,
else `tsvector_binary_python`, the reference it must match byte for byte.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+")
# Parts of one identifier: Capitalised or lower words, ACRONYMS (HTTPServer -> HTTP,
# Server), digit runs.
_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")

# Words that say nothing about code in a natural-language question; never used alone.
STOP_WORDS: frozenset[str] = frozenset(
    """a an and are as at be by can do does for from how i in into is it its me my of on or
    so that the their there this to under use used uses using we what when where which
    who why will with you your""".split()  # noqa: SIM905
)
# Identifiers longer than this are data (hashes, base64), not names.
_MAX_WORD = 64


@lru_cache(maxsize=65536)
def identifier_words(identifier: str) -> tuple[str, ...]:
    """Lower-case words for one identifier: the compound first (when it has several
    parts), then its parts. `parse_date` -> ('parsedate', 'parse', 'date')."""
    if len(identifier) > _MAX_WORD:
        return ()
    parts = [p.lower() for p in _PART.findall(identifier)]
    if not parts:
        return ()
    if len(parts) == 1:
        return (parts[0],)
    return ("".join(parts), *parts)


def words(text: str) -> Iterator[str]:
    """The text's lower-case words in order, identifiers split (see module doc)."""
    for identifier in _IDENTIFIER.findall(text):
        yield from identifier_words(identifier)


def search_text(text: str) -> str:
    """The text as space-separated lower-case words, identifiers split."""
    return " ".join(words(text))


# tsvector weights (two bits above the 14-bit position) and PostgreSQL's limits.
WEIGHT_A, WEIGHT_B, WEIGHT_C, WEIGHT_D = 3, 2, 1, 0
_MAX_POSITION = 16383
_MAX_POSITIONS_PER_WORD = 256
_INT32 = struct.Struct(">i")
_NUL = b"\0"


_WORDS_CACHE: dict[str, tuple[str, ...]] = {}


def tsvector_positions(sections: Sequence[tuple[str, int]]) -> dict[str, list[int]]:
    """word -> its positions (weight bits included) over the sections, numbered on from
    one section to the next; none past 16383, as in PostgreSQL (tsvector_binary keeps the
    first 256 of each word). The hot loop of indexing: kept flat on purpose."""
    positions: dict[str, list[int]] = {}
    get = positions.get
    cache = _WORDS_CACHE
    if len(cache) > 500_000:
        cache.clear()
    pos = 0
    for text, weight in sections:
        bits = weight << 14
        section: list[str] = []
        extend = section.extend
        for identifier in _IDENTIFIER.findall(text):
            found_words = cache.get(identifier)
            if found_words is None:
                found_words = cache[identifier] = identifier_words(identifier)
            extend(found_words)
        budget = _MAX_POSITION - pos
        if len(section) > budget:
            section = section[:budget]
        for word in section:
            pos += 1
            found = get(word)
            if found is None:
                positions[word] = [bits | pos]
            else:
                found.append(bits | pos)
    return positions


_PACKERS: dict[int, Callable[..., bytes]] = {}


def _packer(n: int) -> Callable[..., bytes]:
    pack = _PACKERS.get(n)
    if pack is None:
        pack = _PACKERS[n] = struct.Struct(f">H{n}H").pack
    return pack


def tsvector_binary_python(sections: Sequence[tuple[str, int]]) -> bytes:
    """A tsvector in PostgreSQL's binary wire format (what tsvectorrecv reads): built
    here, in the indexing workers, instead of by to_tsvector() in the database, which
    was the largest single cost of indexing. Sections are (text, weight)."""
    positions = tsvector_positions(sections)
    out = [_INT32.pack(len(positions))]
    append = out.append
    for word in sorted(positions):  # ASCII words: str order is PostgreSQL's byte order
        pos = positions[word]
        n = len(pos)
        if n > _MAX_POSITIONS_PER_WORD:
            pos = pos[:_MAX_POSITIONS_PER_WORD]
            n = _MAX_POSITIONS_PER_WORD
        append(word.encode())
        append(_NUL)
        append(_packer(n)(n, *pos))
    return b"".join(out)


tsvector_binary: Callable[[Sequence[tuple[str, int]]], bytes]
try:
    from codebase_mcp._tsvector import tsvector_binary as _compiled_tsvector_binary
except ImportError:  # installed without a C compiler: same bytes, slower
    COMPILED = False
    tsvector_binary = tsvector_binary_python
else:
    COMPILED = True
    tsvector_binary = _compiled_tsvector_binary


def query_groups(query: str) -> list[tuple[str, ...]]:
    """One group per query identifier: alternatives that each stand for it.

    `parseDate` -> [('parsedate', 'parse', 'date')] (the compound, or its parts together);
    stop words are dropped unless nothing else is left.
    """
    groups = [identifier_words(i) for i in _IDENTIFIER.findall(query)]
    groups = [g for g in groups if g]
    useful = [g for g in groups if not (len(g) == 1 and g[0] in STOP_WORDS)]
    return useful or groups


def _quote(word: str, weights: str = "") -> str:
    # Words are [a-z0-9]+ by construction; quoting keeps to_tsquery from parsing them.
    return "'" + word + "'" + (":" + weights if weights else "")


def _group_query(group: tuple[str, ...], weights: str = "") -> str:
    if len(group) == 1:
        return _quote(group[0], weights)
    compound, *parts = group
    return (
        "("
        + _quote(compound, weights)
        + " | ("
        + " & ".join(_quote(p, weights) for p in parts)
        + "))"
    )


def tsquery_for(query: str, *, match_all: bool, weights: str = "") -> str | None:
    """A to_tsquery('simple', ...) expression for the query, or None when it has no words.

    match_all=True needs every word (precise, selective); False needs any (recall for
    natural-language questions; ts_rank_cd still favours chunks with more of them).
    weights ("A": the symbol) restricts where the words may match."""
    groups = query_groups(query)
    if not groups:
        return None
    joiner = " & " if match_all else " | "
    unique = list(dict.fromkeys(_group_query(g, weights) for g in groups))
    return joiner.join(unique)


def tsquery_pairs(query: str) -> str | None:
    """Any two of the query's words together, for queries of three words or more: the
    middle ground between every word (often nothing) and any word (often thousands)."""
    groups = list(dict.fromkeys(_group_query(g) for g in query_groups(query)))
    if len(groups) < 3:
        return None
    pairs = [f"({a} & {b})" for i, a in enumerate(groups) for b in groups[i + 1 :]]
    return " | ".join(pairs)


# How much a hit of each tier counts when lexical results are fused with vector ones: a
# chunk holding every word of the question is strong evidence; one holding any two or any
# one word of a long question is weak, and at full weight it outvotes the vector list's
# best answer (benchmarks/retrieval: hybrid fell below vector alone).
TIER_WEIGHTS = (1.0, 1.0, 0.25, 0.1)


def lexical_tiers_weighted(query: str) -> list[tuple[str, float]]:
    """The tsqueries to try in order, most precise first, with their fusion weight: every
    word in the symbol, every word anywhere, any two words, any word. Empty tiers are
    dropped; a tier equal to an earlier one keeps the earlier (higher) weight."""
    tiers = [
        tsquery_for(query, match_all=True, weights="A"),
        tsquery_for(query, match_all=True),
        tsquery_pairs(query),
        tsquery_for(query, match_all=False),
    ]
    weighted: dict[str, float] = {}
    for tsquery, weight in zip(tiers, TIER_WEIGHTS, strict=True):
        if tsquery is not None and tsquery not in weighted:
            weighted[tsquery] = weight
    return list(weighted.items())


def lexical_tiers(query: str) -> list[str]:
    """The tsqueries of lexical_tiers_weighted, without their weights."""
    return [tsquery for tsquery, _ in lexical_tiers_weighted(query)]
