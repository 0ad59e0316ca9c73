"""Words for full-text search, with identifiers split so that `parseDate`, `parse_date`,
`ParseDate` and "parse date" all meet.

The indexer stores `search_text(chunk)` next to each chunk; PostgreSQL builds the tsvector
over it with the 'simple' configuration (no stemming, no stop words: code words stay
intact). Queries go through `tsquery_for()` so both sides split the same way. Pure
functions only.
"""

from __future__ import annotations

import re
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


def search_text(text: str) -> str:
    """The text as space-separated lower-case words, identifiers split (see module doc)."""
    words: list[str] = []
    extend = words.extend
    for identifier in _IDENTIFIER.findall(text):
        extend(identifier_words(identifier))
    return " ".join(words)


def query_groups(query: str) -> list[tuple[str, ...]]:
    """One group per query identifier: alternatives that each stand for it.

    `parseDate` -> [('parsedate', 'parse', 'date')] (the compound, or its parts together);
    stop words are dropped unless nothing else is left.
    """
    groups = [identifier_words(i) for i in _IDENTIFIER.findall(query)]
    groups = [g for g in groups if g]
    useful = [g for g in groups if not (len(g) == 1 and g[0] in STOP_WORDS)]
    return useful or groups


def _quote(word: str) -> str:
    # Words are [a-z0-9]+ by construction; quoting keeps to_tsquery from parsing them.
    return "'" + word + "'"


def _group_query(group: tuple[str, ...]) -> str:
    if len(group) == 1:
        return _quote(group[0])
    compound, *parts = group
    return "(" + _quote(compound) + " | (" + " & ".join(_quote(p) for p in parts) + "))"


def tsquery_for(query: str, *, match_all: bool) -> str | None:
    """A to_tsquery('simple', ...) expression for the query, or None when it has no words.

    match_all=True needs every word (precise, selective); False needs any (recall for
    natural-language questions; ts_rank_cd still favours chunks with more of them)."""
    groups = query_groups(query)
    if not groups:
        return None
    joiner = " & " if match_all else " | "
    unique = list(dict.fromkeys(_group_query(g) for g in groups))
    return joiner.join(unique)
