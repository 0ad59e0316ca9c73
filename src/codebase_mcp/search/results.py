"""What a result list looks like once the retrievals have spoken (pure functions).

- Tests, docs and generated files that mention a name weigh less than code that defines
  it, unless the query asks for tests or docs; a definition whose name the query spells
  weighs more.
- Adjacent chunks of one definition (an oversized function split at statement
  boundaries) become one result.
- A file yields at most MAX_PER_FILE results, so that one file cannot fill the list.
- Scores fall as the rank grows: the list is sorted by the score it shows.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from codebase_mcp.search.fusion import looks_like_name
from codebase_mcp.source.tokens import words

Role = Literal["code", "test", "docs", "generated"]

MAX_PER_FILE = 4
# How much a result of each role keeps of its score when the query does not ask for it.
ROLE_WEIGHTS: dict[Role, float] = {"code": 1.0, "test": 0.75, "docs": 0.8, "generated": 0.6}
# A code definition named as the query spells a name (url_for, UrlFor) gains this much.
NAME_BONUS = 1.25
# Chunk kinds that are not definitions (source/chunk.py): code between definitions, windows.
_NOT_DEFINITIONS = frozenset({"gap", "window"})

_TEST_DIRS = frozenset({"test", "tests", "testing", "__tests__", "spec", "specs", "testdata"})
_DOC_DIRS = frozenset({"doc", "docs", "documentation"})
_DOC_SUFFIXES = (".md", ".rst", ".txt", ".adoc", ".asciidoc", ".markdown", ".org")
_TEST_FILE = re.compile(
    r"(^test_.*|.*_tests?\.[^.]+$|.*\.(test|spec)\.[^.]+$|.*Tests?\.[^.]+$|^conftest\.py$)"
)
_GENERATED_FILE = re.compile(
    r"(.*_pb2(_grpc)?\.pyi?$|.*\.pb\.go$|.*\.pb\.(cc|h)$|.*_generated\.[^.]+$"
    r"|.*\.generated\.[^.]+$|.*\.gen\.[^.]+$|.*_gen\.go$|.*\.g\.dart$|.*\.designer\.cs$)"
)
_TEST_WORDS = frozenset({"test", "tests", "testing", "tested", "spec", "specs", "unittest"})
_TEST_WORDS |= frozenset({"pytest", "fixture", "fixtures"})
_DOC_WORDS = frozenset({"doc", "docs", "documentation", "documented", "readme", "guide"})
_DOC_WORDS |= frozenset({"tutorial", "changelog", "manual"})


def path_role(path: str) -> Role:
    """What a file is, from its path alone."""
    parts = path.replace("\\", "/").split("/")
    name = parts[-1]
    dirs = {p.lower() for p in parts[:-1]}
    if _GENERATED_FILE.match(name):
        return "generated"
    if _TEST_FILE.match(name) or dirs & _TEST_DIRS:
        return "test"
    if name.lower().endswith(_DOC_SUFFIXES) or dirs & _DOC_DIRS:
        return "docs"
    return "code"


def wanted_roles(query: str) -> frozenset[Role]:
    """The roles a query asks for besides code ("where are the tests for ...")."""
    found = set(words(query))
    wanted: set[Role] = set()
    if found & _TEST_WORDS:
        wanted.add("test")
    if found & _DOC_WORDS:
        wanted.add("docs")
    return frozenset(wanted)


@dataclass(frozen=True)
class Ranked:
    """One result on its way out: where it is, what it says, and its score."""

    key: int  # the chunk id (the first one's, for merged chunks)
    repository: str
    path: str
    start_line: int
    end_line: int
    symbol: str | None
    kind: str | None
    language: str | None
    text: str
    score: float


@dataclass(frozen=True)
class Shaping:
    """How results are weighed and grouped (the benchmark's fusion study varies these)."""

    role_weights: Mapping[Role, float] = field(default_factory=lambda: dict(ROLE_WEIGHTS))
    name_bonus: float = NAME_BONUS
    max_per_file: int | None = MAX_PER_FILE
    merge: bool = True


def _squashed(name: str) -> str:
    return name.replace("_", "").lower()


def spelled_names(query: str) -> frozenset[str]:
    """The identifiers a query typed as code spells, case and underscores aside (url_for
    -> urlfor); none for a question in words, whose every word would name something."""
    if not looks_like_name(query):
        return frozenset()
    return frozenset(_squashed(token) for token in re.findall(r"\w+", query))


def names_definition(item: Ranked, names: frozenset[str]) -> bool:
    """The item defines (in code) a name the query spells."""
    if not names or not item.symbol or item.kind in _NOT_DEFINITIONS:
        return False
    return _squashed(re.split(r"[.:#]", item.symbol)[-1]) in names


def weigh(items: Sequence[Ranked], query: str, shaping: Shaping | None = None) -> list[Ranked]:
    """Scale each score by its file's role (unless the query asks for that role), and a
    code definition of a name the query spells by the name bonus."""
    shaping = shaping or Shaping()
    wanted = wanted_roles(query)
    names = spelled_names(query)
    out = []
    for item in items:
        role = path_role(item.path)
        factor = 1.0 if role in wanted else shaping.role_weights[role]
        if role == "code" and names_definition(item, names):
            factor *= shaping.name_bonus
        out.append(item if factor == 1.0 else replace(item, score=item.score * factor))
    return out


def _adjacent(a: Ranked, b: Ranked) -> bool:
    """b continues a: same file and definition, starting where a ends (blank lines
    between pieces were trimmed away)."""
    return (
        a.repository == b.repository
        and a.path == b.path
        and a.symbol is not None
        and a.symbol == b.symbol
        and a.kind == b.kind
        and a.end_line < b.start_line <= a.end_line + 3
    )


def merge_adjacent(items: Sequence[Ranked]) -> list[Ranked]:
    """Adjacent pieces of one definition as one result, at the best piece's score and
    rank. The snippet keeps the file's line numbering (trimmed blank lines come back)."""
    by_file: dict[tuple[str, str], list[int]] = {}
    for i, item in enumerate(items):
        by_file.setdefault((item.repository, item.path), []).append(i)
    merged_into: dict[int, int] = {}
    groups: dict[int, list[int]] = {}
    for indexes in by_file.values():
        ordered = sorted(indexes, key=lambda i: items[i].start_line)
        run = [ordered[0]]
        for i in ordered[1:]:
            if _adjacent(items[run[-1]], items[i]):
                run.append(i)
                continue
            _close(run, items, merged_into, groups)
            run = [i]
        _close(run, items, merged_into, groups)
    out = []
    for i, item in enumerate(items):
        if i in groups:
            out.append(_join([items[j] for j in groups[i]], item.score))
        elif i not in merged_into:
            out.append(item)
    return out


def _close(
    run: list[int],
    items: Sequence[Ranked],
    merged_into: dict[int, int],
    groups: dict[int, list[int]],
) -> None:
    if len(run) < 2:
        return
    best = min(run, key=lambda i: (-items[i].score, i))
    groups[best] = run
    for i in run:
        if i != best:
            merged_into[i] = best


def _join(pieces: Sequence[Ranked], score: float) -> Ranked:
    text = pieces[0].text
    for prev, piece in itertools.pairwise(pieces):
        text += "\n" * (piece.start_line - prev.end_line) + piece.text
    first = pieces[0]
    return replace(first, end_line=pieces[-1].end_line, text=text, score=score)


def cap_per_file(items: Sequence[Ranked], cap: int = MAX_PER_FILE) -> list[Ranked]:
    """At most `cap` results per file, the best ones (items come best first)."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for item in items:
        key = (item.repository, item.path)
        if seen.get(key, 0) < cap:
            seen[key] = seen.get(key, 0) + 1
            out.append(item)
    return out


def finish(
    items: Sequence[Ranked], query: str, limit: int, shaping: Shaping | None = None
) -> list[Ranked]:
    """The list a client sees: weighed, best first, pieces merged, files capped."""
    shaping = shaping or Shaping()
    shaped = sorted(weigh(items, query, shaping), key=lambda r: (-r.score, r.key))
    if shaping.merge:
        shaped = merge_adjacent(shaped)
    if shaping.max_per_file is not None:
        shaped = cap_per_file(shaped, shaping.max_per_file)
    return shaped[:limit]
