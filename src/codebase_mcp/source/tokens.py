"""Words for full-text search, with identifiers split so that `parseDate`, `parse_date`,
`ParseDate` and "parse date" all meet.

The indexer stores two things per chunk, both built here (`chunk_vectors`):
- a tsvector (PostgreSQL's binary format): the chunk's distinct words, for the GIN index
  that finds candidates. No stemming and no stop words, so code words stay intact; the
  symbol (weight A) and the path (B) are told apart from the body (D).
- a sparse vector (pgvector's `sparsevec`) of term frequencies: one dimension per
  (word, section), the hash of the word, the value how often it occurs there. Search
  reads a query word's frequency in a chunk as a dot product (`search/lexical.py`), which lets
  PostgreSQL compute BM25 without unpacking the tsvector.
Queries split words the same way (`query_terms`).

Words: runs of Unicode letters, digits and underscores are identifiers; an identifier
gives its parts (`HTTPServer` -> http, server; `utf8_decode` -> utf, 8, decode) and, with
two parts or more, the compound (httpserver). Text is NFC-normalised, words lower-cased.

`chunk_vectors` is the compiled `codebase_mcp._tsvector` for ASCII text (C: building these
was the largest cost of indexing left in Python) when the package was built with a C
compiler, with `chunk_vectors_python` as the reference it must match byte for byte; text
with any non-ASCII character always takes the Python path. Pure functions only.
"""

from __future__ import annotations

import re
import struct
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

_IDENTIFIER = re.compile(r"\w+")
# Parts of an ASCII identifier: Capitalised or lower words, ACRONYMS (HTTPServer -> HTTP,
# Server), digit runs. Non-ASCII identifiers follow the same rules with Unicode classes
# (`_unicode_parts`).
_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")

# Words that say nothing about code in a natural-language question; never used alone.
STOP_WORDS: frozenset[str] = frozenset(
    """a an and are as at be by can do does for from how i in into is it its me my of on or
    so that the their there this to under use used uses using we what when where which
    who why will with you your""".split()  # noqa: SIM905
)
# Identifiers longer than this are data (hashes, base64), not names.
_MAX_WORD = 64


def _char_class(ch: str) -> str:
    """'u'pper, 'l'ower, 'd'igit, 'o'ther letter (no case: CJK, ...), '_' separator."""
    if ch == "_":
        return "_"
    if ch.isdigit():
        return "d"
    if ch.isupper():
        return "u"
    if ch.islower():
        return "l"
    return "o"


def _unicode_parts(identifier: str) -> list[str]:
    """`_PART`'s rules over Unicode classes, plus runs of caseless letters as one part."""
    classes = [_char_class(c) for c in identifier]
    parts: list[str] = []
    n = len(identifier)
    k = 0
    while k < n:
        c = classes[k]
        e = k + 1
        if c == "_":
            k += 1
            continue
        if c == "u" and e < n and classes[e] == "l":  # Capitalised word
            while e < n and classes[e] == "l":
                e += 1
        elif c == "u":  # a capital run gives back the capital of a following word
            while e < n and classes[e] == "u":
                e += 1
            if e < n and classes[e] == "l" and e - k > 1:
                e -= 1
        else:
            while e < n and classes[e] == c:
                e += 1
        parts.append(identifier[k:e].lower())
        k = e
    return parts


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return (
        0x3040 <= code <= 0x30FF  # kana
        or 0x3400 <= code <= 0x9FFF  # Han
        or 0xAC00 <= code <= 0xD7AF  # Hangul
        or 0xF900 <= code <= 0xFAFF
    )


def _bigrams(part: str) -> list[str]:
    """Scripts written without spaces run whole phrases together (名前を返す): their
    character pairs are words too, so that 名前 finds it."""
    if len(part) < 3 or not all(_is_cjk(c) for c in part):
        return []
    return [part[i : i + 2] for i in range(len(part) - 1)]


@lru_cache(maxsize=65536)
def identifier_words(identifier: str) -> tuple[str, ...]:
    """Lower-case words for one identifier: the compound first (when it has several
    parts), then its parts. `parse_date` -> ('parsedate', 'parse', 'date')."""
    if len(identifier) > _MAX_WORD:
        return ()
    if identifier.isascii():
        parts = [p.lower() for p in _PART.findall(identifier)]
        bigrams: list[str] = []
    else:
        parts = _unicode_parts(identifier)
        bigrams = [b for p in parts for b in _bigrams(p)]
    if not parts:
        return ()
    if len(parts) == 1:
        return (parts[0], *bigrams)
    return ("".join(parts), *parts, *bigrams)


def _identifiers(text: str) -> list[str]:
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return _IDENTIFIER.findall(text)


def words(text: str) -> Iterator[str]:
    """The text's lower-case words in order, identifiers split (see module doc)."""
    for identifier in _identifiers(text):
        yield from identifier_words(identifier)


# tsvector weights (two bits above the 14-bit position) and PostgreSQL's limits.
WEIGHT_A, WEIGHT_B, WEIGHT_C, WEIGHT_D = 3, 2, 1, 0
_MAX_POSITION = 16383
_MAX_POSITIONS_PER_WORD = 256
_INT32 = struct.Struct(">i")
_NUL = b"\0"

# The term-frequency vectors: pgvector's sparsevec of this many dimensions (its limit is
# 10^9), at most SPARSE_MAX_NNZ entries (its limit is 16,000).
SPARSE_DIMENSIONS = 1_000_000_000
SPARSE_MAX_NNZ = 16_000
_FNV_OFFSET, _FNV_PRIME = 2166136261, 16777619


def fnv1a(data: bytes, h: int = _FNV_OFFSET) -> int:
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


@lru_cache(maxsize=65536)
def term_dimension(word: str, weight: int = WEIGHT_D) -> int:
    """The sparsevec dimension of a word in a section: the 32-bit FNV-1a hash of its UTF-8
    bytes, followed by a NUL and the section's weight outside the body (a word never holds
    a NUL), modulo SPARSE_DIMENSIONS. A collision merges two words' counts in the chunks
    that hold both: rare (~10^-9 per pair) and harmless to ranking."""
    h = fnv1a(word.encode())
    if weight != WEIGHT_D:
        h = fnv1a(bytes((0, weight)), h)
    return h % SPARSE_DIMENSIONS


_WORDS_CACHE: dict[str, tuple[str, ...]] = {}


def tsvector_positions(sections: Sequence[tuple[str, int]]) -> dict[str, list[int]]:
    """word -> its positions (weight bits included) over the sections, numbered on from
    one section to the next; none past 16383, as in PostgreSQL (the tsvector keeps the
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
        for identifier in _identifiers(text):
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


def _tsvector_bytes(positions: dict[str, list[int]]) -> bytes:
    """A tsvector in PostgreSQL's binary wire format (what tsvectorrecv reads)."""
    out = [_INT32.pack(len(positions))]
    append = out.append
    # PostgreSQL orders lexemes by their bytes; for UTF-8 that is code point order.
    for word in sorted(positions):
        pos = positions[word]
        n = len(pos)
        if n > _MAX_POSITIONS_PER_WORD:
            pos = pos[:_MAX_POSITIONS_PER_WORD]
            n = _MAX_POSITIONS_PER_WORD
        append(word.encode())
        append(_NUL)
        append(_packer(n)(n, *pos))
    return b"".join(out)


def term_counts(positions: dict[str, list[int]]) -> tuple[list[tuple[int, int]], int]:
    """The term frequencies as sorted (dimension, count) entries, and the body's length in
    words. Frequencies count every position a word got, per section weight."""
    counts: dict[int, int] = {}
    body = 0
    for word, pos in positions.items():
        per_weight = [0, 0, 0, 0]
        for p in pos:
            per_weight[p >> 14] += 1
        body += per_weight[WEIGHT_D]
        for weight, count in enumerate(per_weight):
            if count:
                dim = term_dimension(word, weight)
                counts[dim] = counts.get(dim, 0) + count
    entries = sorted(counts.items())
    if len(entries) > SPARSE_MAX_NNZ:  # the most frequent words, then the lower dimensions
        entries = sorted(sorted(entries, key=lambda e: (-e[1], e[0]))[:SPARSE_MAX_NNZ])
    return entries, body


def sparsevec_binary(entries: Sequence[tuple[int, float]]) -> bytes:
    """pgvector's binary sparsevec (sparsevec_recv): dimensions, entry count, 0, the
    0-based indices, then the float4 values, big-endian. Entries sorted, no zero value."""
    n = len(entries)
    return struct.pack(
        f">iii{n}i{n}f", SPARSE_DIMENSIONS, n, 0, *(d for d, _ in entries), *(v for _, v in entries)
    )


def sparsevec_text(entries: Sequence[tuple[int, float]]) -> str:
    """The same in pgvector's text format (1-based indices): `{i:v,...}/dimensions`."""
    body = ",".join(f"{d + 1}:{v:g}" for d, v in entries)
    return "{" + body + "}/" + str(SPARSE_DIMENSIONS)


ChunkVectorsResult = tuple[bytes, bytes, int, tuple[str, ...]]


def chunk_vectors_python(sections: Sequence[tuple[str, int]]) -> ChunkVectorsResult:
    """(tsvector, term-frequency sparsevec, body length, distinct words in byte order) for
    a chunk's (text, weight) sections: the reference the compiled builder matches."""
    positions = tsvector_positions(sections)
    entries, body = term_counts(positions)
    return (
        _tsvector_bytes(positions),
        sparsevec_binary(entries),
        body,
        tuple(sorted(positions)),
    )


def tsvector_binary_python(sections: Sequence[tuple[str, int]]) -> bytes:
    """The tsvector alone (tests and tools)."""
    return _tsvector_bytes(tsvector_positions(sections))


ChunkVectors = Callable[[Sequence[tuple[str, int]]], ChunkVectorsResult]
chunk_vectors: ChunkVectors
try:
    from codebase_mcp._tsvector import chunk_vectors as _compiled_chunk_vectors
except ImportError:  # installed without a C compiler: same bytes, slower
    COMPILED = False
    chunk_vectors = chunk_vectors_python
else:
    COMPILED = True

    def chunk_vectors(sections: Sequence[tuple[str, int]]) -> ChunkVectorsResult:
        """The compiled builder for ASCII text, the Python reference for the rest."""
        found = _compiled_chunk_vectors(sections)
        return chunk_vectors_python(sections) if found is None else found


# --- queries ---------------------------------------------------------------------------


def query_terms(query: str) -> list[str]:
    """The query's distinct words in order, identifiers split as in the index; stop words
    are dropped unless nothing else is left. `parseDate` -> ['parsedate', 'parse', 'date']."""
    found = list(dict.fromkeys(words(query)))
    useful = [w for w in found if w not in STOP_WORDS]
    return useful or found


def tsquery_of(alternatives: Sequence[str], weights: str = "") -> str:
    """A to_tsquery('simple', ...) expression matching any of these words (quoted, so
    to_tsquery does not parse them; a quote inside a word is doubled)."""
    suffix = ":" + weights if weights else ""
    return " | ".join("'" + w.replace("'", "''") + "'" + suffix for w in alternatives)
