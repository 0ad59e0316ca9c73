"""BM25 for lexical search: the pure part (parameters, word forms, which candidates to
rank). `lexical.py` runs it in PostgreSQL.

Okapi BM25 with fields (BM25F): a query word's frequency in a chunk is the sum over the
chunk's sections of (count x section weight), the symbol counting most; it saturates
with k1 and is normalised by the body's length against the average (b). Each word counts
by its inverse document frequency over the repositories searched.

Word forms: a query word also matches the other forms the index holds of it, at a lower
weight so that the exact form ranks above them:
- its inflections that share its English (Snowball) stem: retry, retries, retried,
  retrying (candidates from `inflection_candidates`, the stem from PostgreSQL);
- derived forms the stemmer keeps apart: the word with a common suffix added or removed
  (recover <-> recovery, parse -> parser).
Their frequencies add into the word's own, as Lucene does for synonyms; the word's
document frequency is the largest of its forms'.

Candidates: ranking reads each candidate's row, so rare words pick the candidates and
common ones only score them, as in MaxScore. First the rarest words pick them, until their
document frequencies add up to CANDIDATE_BUDGET; a chunk holding none of them scores at
most the sum of the other words' upper bounds (idf x (k1 + 1)), so when the k-th best
candidate already scores that much, the top k is exact. When it does not, that k-th score
says which words may still be left out (those whose bounds add up to no more than it) and
one more query with every other word makes it exact. Past CANDIDATE_CAP rows, candidates
must hold every word (or, for one word, hold it in the symbol or the path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from codebase_mcp.source.tokens import WEIGHT_A, WEIGHT_B, WEIGHT_D, term_dimension, tsquery_of

K1 = 1.2
B = 0.75
# How much an occurrence counts by section: the symbol is what a chunk is named.
FIELD_WEIGHTS: dict[int, float] = {WEIGHT_A: 3.0, WEIGHT_B: 1.0, WEIGHT_D: 1.0}
STEM_WEIGHT = 0.5
DERIVED_WEIGHT = 0.35
# Suffixes that make derived forms, and the shortest word they apply to.
SUFFIXES = ("s", "es", "d", "ed", "ing", "er", "ers", "or", "y", "ion", "able", "al", "ment")
DERIVED_MIN_LENGTH = 4
CANDIDATE_BUDGET = 2_000
# Ranking reads every candidate's row (~3 us each: random heap pages); past this many the
# candidates must hold every word. Measured at 1M chunks: lexical p95 85 ms with 40,000,
# 34 ms with 10,000, the exact top 10 kept for 163 of 165 queries. No smaller corpus
# of the retrieval benchmark reaches it.
CANDIDATE_CAP = 10_000

# How a form relates to the query word (lexical.py's look-up returns these).
EXACT, STEM, DERIVED = 0, 1, 2
RELATION_WEIGHTS = {EXACT: 1.0, STEM: STEM_WEIGHT, DERIVED: DERIVED_WEIGHT}


def idf(df: int, n: int) -> float:
    """BM25's inverse document frequency, Lucene's variant (never negative)."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


# Inflections: what English adds to a word (parse -> parses, parsed, parsing, parser),
# and what it may have added to the word the query holds (retries -> retry).
_ENDINGS = (
    *("s", "es", "ed", "d", "ing", "ings", "er", "ers", "or", "ors", "ion", "ions"),
    *("ation", "ations", "ational", "ment", "ments", "ness", "ity", "ities", "al", "ally"),
    *("ly", "ive", "ize", "izes", "ized", "izing", "izer", "ise", "ised", "able", "ably"),
)
_Y_ENDINGS = ("ies", "ied", "ier", "iers", "ily", "iness")
# Endings that start with a vowel: a base's final e goes (compute -> computation).
_VOWEL_ENDINGS = tuple(e for e in _ENDINGS if e[0] in "aeiou")


def _bases(word: str) -> list[str]:
    """Words the query word may be an inflection of (retries -> retry, parsing -> parse,
    stopping -> stop)."""
    out = []
    for ending in (*_ENDINGS, *_Y_ENDINGS):
        if not word.endswith(ending) or len(word) - len(ending) < 3:
            continue
        base = word[: -len(ending)]
        if ending in _Y_ENDINGS:
            out.append(base + "y")
            continue
        out += [base, base + "e"]
        if len(base) >= 4 and base[-1] == base[-2]:
            out.append(base[:-1])  # stopp -> stop
    return out


def inflection_candidates(word: str) -> list[str]:
    """Forms the index may hold of the word: its bases and their inflections. Which of
    them share its stem, PostgreSQL's english_stem decides (lexical.py); the others are
    dropped unless they are derived forms."""
    if len(word) < 3 or not word.isalpha():
        return []
    found: list[str] = []
    for base in [word, *_bases(word)]:
        found.append(base)
        found += [base + ending for ending in _ENDINGS]
        if base.endswith("y"):
            found += [base[:-1] + ending for ending in _Y_ENDINGS]
        if base.endswith("e"):
            found += [base[:-1] + ending for ending in _VOWEL_ENDINGS]
        elif len(base) >= 3 and base[-1] not in "aeiouwxy":
            found += [base + base[-1] + ending for ending in ("ing", "ed", "er")]
    return [f for f in dict.fromkeys(found) if f != word]


def derived_forms(word: str) -> list[str]:
    """The word with each suffix added, and without the one it ends with (alphabetic
    words of DERIVED_MIN_LENGTH letters or more; what remains keeps as many)."""
    if len(word) < DERIVED_MIN_LENGTH or not word.isalpha():
        return []
    forms = [word + suffix for suffix in SUFFIXES]
    if word.endswith("e"):  # parse -> parser, parsers
        forms += [word + "r", word + "rs"]
    forms += [
        word[: -len(suffix)]
        for suffix in SUFFIXES
        if word.endswith(suffix) and len(word) - len(suffix) >= DERIVED_MIN_LENGTH
    ]
    return [f for f in dict.fromkeys(forms) if f != word]


@dataclass(frozen=True)
class Form:
    lexeme: str
    relation: int  # EXACT, STEM or DERIVED
    df: int


@dataclass(frozen=True)
class Term:
    """One query word with the forms of it that the index holds."""

    word: str
    forms: tuple[Form, ...]
    idf: float

    @property
    def df(self) -> int:
        return max(f.df for f in self.forms)

    def vector(self) -> list[tuple[int, float]]:
        """The sparse vector whose dot product with a chunk's term frequencies is this
        word's weighted frequency in the chunk (sorted by dimension, no duplicates)."""
        entries: dict[int, float] = {}
        for form in self.forms:
            weight = RELATION_WEIGHTS[form.relation]
            for section, field_weight in FIELD_WEIGHTS.items():
                dim = term_dimension(form.lexeme, section)
                entries[dim] = entries.get(dim, 0.0) + weight * field_weight
        return sorted(entries.items())

    @property
    def upper_bound(self) -> float:
        """The most this word can add to a chunk's score."""
        return self.idf * (K1 + 1.0)


def build_terms(
    words: Sequence[str], forms: Sequence[tuple[str, str, int, int]], n: int
) -> list[Term]:
    """Terms for the query's words from the look-up's (word, lexeme, relation, df) rows;
    words the index does not hold in any form are left out."""
    by_word: dict[str, dict[str, Form]] = {w: {} for w in words}
    for word, lexeme, relation, df in forms:
        if word not in by_word or df <= 0:
            continue
        known = by_word[word].get(lexeme)
        if known is None or relation < known.relation:
            by_word[word][lexeme] = Form(lexeme, relation, df)
    terms = []
    for word in words:
        found = by_word[word]
        if not found:
            continue
        ordered = tuple(sorted(found.values(), key=lambda f: (f.relation, f.lexeme)))
        terms.append(Term(word, ordered, idf(max(f.df for f in ordered), n)))
    return terms


@dataclass(frozen=True)
class CandidatePlan:
    """Which chunks to rank: those matching `tsquery`, which holds the forms of the
    `essential` terms; `bound` is the most a chunk outside them can score (0: none can)."""

    tsquery: str
    bound: float
    essential: frozenset[str]  # the words of the terms that pick candidates
    exhaustive: bool = field(default=False)


def by_rarity(terms: Sequence[Term]) -> list[Term]:
    return sorted(terms, key=lambda t: (t.df, t.word))


def plan_for(terms: Sequence[Term], essential: frozenset[str]) -> CandidatePlan:
    """Candidates holding any form of an essential term; past CANDIDATE_CAP rows, those
    holding every term (for one term: holding it in the symbol or the path)."""
    chosen = [t for t in terms if t.word in essential]
    rest = [t for t in terms if t.word not in essential]
    if not chosen:
        raise ValueError("no essential term")
    if sum(t.df for t in chosen) > CANDIDATE_CAP:
        return _capped_plan(by_rarity(terms))
    forms = [f.lexeme for t in chosen for f in t.forms]
    bound = sum(t.upper_bound for t in rest)
    return CandidatePlan(tsquery_of(forms), bound, essential, exhaustive=not rest)


def first_plan(terms: Sequence[Term]) -> CandidatePlan:
    """The rarest terms while their document frequencies add up to CANDIDATE_BUDGET (at
    least one term): most queries are proven exact with these alone."""
    ordered = by_rarity(terms)
    if not ordered:
        raise ValueError("no terms")
    chosen: list[str] = []
    rows = 0
    for term in ordered:
        if chosen and rows + term.df > CANDIDATE_BUDGET:
            break
        chosen.append(term.word)
        rows += term.df
    return plan_for(ordered, frozenset(chosen))


def next_plan(
    terms: Sequence[Term], plan: CandidatePlan, scores: Sequence[float], k: int
) -> CandidatePlan | None:
    """None when no chunk outside the plan's candidates can enter the top k (scores: the
    candidates' best first); else the plan that proves it: with theta the k-th score so
    far, the terms left out are those of smallest upper bound whose bounds add up to no
    more than theta, every other term picks candidates. Its own k-th score is at least
    theta, so it needs no further plan."""
    if plan.exhaustive or plan.bound <= 0.0:
        return None
    theta = scores[k - 1] if len(scores) >= k else 0.0
    if plan.bound <= theta:
        return None
    left_out: set[str] = set()
    total = 0.0
    for term in sorted(terms, key=lambda t: (t.upper_bound, t.word)):
        if total + term.upper_bound > theta:
            break
        left_out.add(term.word)
        total += term.upper_bound
    essential = frozenset(t.word for t in terms if t.word not in left_out)
    return plan_for(terms, essential)


def _capped_plan(ordered: Sequence[Term]) -> CandidatePlan:
    words = frozenset(t.word for t in ordered)
    if len(ordered) == 1:
        forms = [f.lexeme for f in ordered[0].forms]
        return CandidatePlan(tsquery_of(forms, weights="AB"), 0.0, words, exhaustive=True)
    every = " & ".join("(" + tsquery_of([f.lexeme for f in t.forms]) + ")" for t in ordered)
    return CandidatePlan(every, 0.0, words, exhaustive=True)
