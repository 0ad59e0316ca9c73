"""The retrieval question sets and how answers are judged: pure functions, no database, no model.

Each question names the definition that answers it: a path relative to its corpus root and a
symbol, qualified by its class for methods (`Sniffer.has_header`), plus any equally right
definitions (`also`). Sets: `questions.json` (a subset of the running interpreter's standard
library), `questions_flask.json` (Flask's sdist, fetched by the runner and checked against
its sha256), and the generated snippet set (`snippets.py`).
"""

from __future__ import annotations

import ast
import json
import re
import statistics
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUESTIONS_FILE = Path(__file__).with_name("questions.json")
FLASK_QUESTIONS_FILE = Path(__file__).with_name("questions_flask.json")

# What a question asks for: a definition in the code, or the tests of something (the engine
# may rank tests first only for the latter).
INTENTS = ("code", "tests")


@dataclass(frozen=True)
class Answer:
    path: str  # relative to the corpus root, "/"-separated
    symbol: str  # "name" or "Class.name"


@dataclass(frozen=True)
class Question:
    question: str
    path: str  # relative to the corpus root, "/"-separated
    symbol: str  # "name" or "Class.name"
    names_symbol: bool  # the question uses words of the symbol's name
    intent: str = "code"  # one of INTENTS
    also: tuple[Answer, ...] = ()  # other definitions the judge accepts as well

    def answers(self) -> tuple[Answer, ...]:
        """Every accepted answer, the labelled one first."""
        return (Answer(self.path, self.symbol), *self.also)


@dataclass(frozen=True)
class Source:
    """Where a set's corpus comes from when it is not this interpreter's stdlib: a pinned
    package-registry archive, verified by its sha256 and unpacked to `root`."""

    kind: str  # "sdist"
    requirement: str  # "flask==3.1.3"
    archive: str  # file name of the downloaded archive
    sha256: str
    root: str  # the directory the archive unpacks to; question paths are relative to it


@dataclass(frozen=True)
class QuestionSet:
    # "dir/" (every .py below it) or "file.py", relative to the stdlib; or ["."]: every file
    # of the unpacked source (the engine's own ignore rules apply).
    corpus: tuple[str, ...]
    questions: tuple[Question, ...]
    source: Source | None = None  # None: the running interpreter's stdlib
    about: str = ""


@dataclass(frozen=True)
class Hit:
    """What the judge needs of one search result."""

    path: str
    start_line: int
    end_line: int
    symbol: str | None


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _question(q: Mapping[str, Any]) -> Question:
    intent = q.get("intent", "code")
    if intent not in INTENTS:
        raise ValueError(f"unknown intent {intent!r} (known: {', '.join(INTENTS)}): {q}")
    return Question(
        question=q["question"],
        path=q["path"],
        symbol=q["symbol"],
        names_symbol=bool(q["names_symbol"]),
        intent=intent,
        also=tuple(Answer(a["path"], a["symbol"]) for a in q.get("also", ())),
    )


def load_question_set(path: Path = QUESTIONS_FILE) -> QuestionSet:
    """A set from its JSON file; `intent`, `also`, `source` and `about` are optional."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    source = raw.get("source")
    return QuestionSet(
        corpus=tuple(raw["corpus"]),
        questions=tuple(_question(q) for q in raw["questions"]),
        source=Source(**source) if source is not None else None,
        about=raw.get("about", ""),
    )


# --- does a question use the words of its answer's name? ------------------------------------

# Function words, the accessor prefixes every other name starts with, and the prefix of
# every test's name: sharing one of these with a name does not name it.
_NOT_NAMING = frozenset(
    {
        *("a", "an", "and", "as", "at", "be", "by", "do", "for", "from", "if", "in", "into"),
        *("is", "it", "its", "of", "on", "onto", "or", "the", "to", "with"),
        *("get", "set", "has", "test"),
    }
)
# Endings that make another form of the same word: register -> registered, registering;
# retry -> retries; serve -> serving; run -> running.
_INFLECTIONS = ("s", "es", "d", "ed", "ing", "er", "ers", "ies", "ied", "ion", "ions")


def identifier_words(text: str) -> list[str]:
    """Lower-case words of a text or identifier: split at anything not a letter or digit
    and at camelCase humps (`BlueprintSetupState` -> blueprint setup state; `JSONTag` ->
    json tag)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    return [w.lower() for w in re.findall(r"[^\W_]+", spaced)]


def _forms_of(word: str, form: str) -> bool:
    """`form` is `word` with an inflection: `registering` of `register`, `retries` of
    `retry`, `serving` of `serve`, `running` of `run`."""
    bases = {word, word + word[-1]}
    if word.endswith(("e", "y")):
        bases.add(word[:-1])
    return any(
        len(base) >= 3 and form.startswith(base) and form[len(base) :] in _INFLECTIONS
        for base in bases
    )


def spells_symbol(question: str, symbol: str) -> bool:
    """The question spells out the symbol's (unqualified) name, spaces read as underscores:
    the first check the stdlib set was labelled against."""
    name = symbol.rsplit(".", 1)[-1].lower()
    return name in question.lower().replace(" ", "_")


def uses_symbol_words(question: str, symbol: str) -> bool:
    """True when the question uses a word of the symbol's (unqualified) name, in any
    inflection ("registering" for `register`), or runs its compound words together
    ("app context" for `with_appcontext`), or spells the name out. What `names_symbol`
    means for the Flask and the generated sets."""
    if spells_symbol(question, symbol):
        return True
    q_words = identifier_words(question)
    run_together = "".join(q_words)
    for s in identifier_words(symbol.rsplit(".", 1)[-1]):
        if s in _NOT_NAMING:
            continue
        if len(s) >= 6 and s in run_together:
            return True
        for w in q_words:
            if w not in _NOT_NAMING and (w == s or _forms_of(s, w) or _forms_of(w, s)):
                return True
    return False


def corpus_files(root: Path, corpus: Iterable[str]) -> list[str]:
    """The corpus' .py files relative to `root`, sorted; raises FileNotFoundError for an entry
    that does not exist (the stdlib moved a module)."""
    found: set[str] = set()
    for entry in corpus:
        target = root / entry
        if entry.endswith("/"):
            if not target.is_dir():
                raise FileNotFoundError(f"corpus directory {entry!r} not in {root}")
            for file in target.rglob("*.py"):
                rel = file.relative_to(root)
                if "__pycache__" not in rel.parts and "test" not in rel.parts:
                    found.add(rel.as_posix())
        else:
            if not target.is_file():
                raise FileNotFoundError(f"corpus file {entry!r} not in {root}")
            found.add(entry)
    return sorted(found)


def definition_lines(source: str) -> dict[str, int]:
    """Qualified name -> line of its `def`/`class` (decorators excluded), for module-level
    definitions and methods, including those under module-level `if`/`try` blocks. The first
    definition of a name wins (later ones are fallbacks such as pure-Python twins)."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                found.setdefault(name, child.lineno)
                if isinstance(child, ast.ClassDef):
                    visit(child, name + ".")
            elif isinstance(child, ast.If | ast.Try):
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def is_hit(hit: Hit, question: Question | Answer, definition_line: int) -> bool:
    """Right file, and the chunk is the defining one: its symbol is the expected name (or ends
    with it, as `Class.method` does), or its lines cover the `def` line."""
    if hit.path != question.path:
        return False
    if hit.symbol and (hit.symbol == question.symbol or hit.symbol.endswith("." + question.symbol)):
        return True
    return hit.start_line <= definition_line <= hit.end_line


def is_member_hit(hit: Hit, question: Question) -> bool:
    """A chunk inside the expected definition (a method of the expected class): not the
    defining chunk, so no hit, but reported apart, as it points the user to the answer."""
    return (
        hit.path == question.path
        and hit.symbol is not None
        and (
            hit.symbol.startswith(question.symbol + ".")
            or ("." + question.symbol + ".") in hit.symbol
        )
    )


def first_hit_rank(hits: Sequence[Hit], question: Question, definition_line: int) -> int | None:
    """1-based rank of the first correct result, None if none of them is."""
    for rank, hit in enumerate(hits, start=1):
        if is_hit(hit, question, definition_line):
            return rank
    return None


def first_accepted_rank(
    hits: Sequence[Hit], question: Question, definition_lines: Mapping[Answer, int]
) -> int | None:
    """1-based rank of the first result that is any accepted answer (`Question.answers`),
    None if none is. `definition_lines` maps each answer to its `def`/`class` line."""
    answers = question.answers()
    for rank, hit in enumerate(hits, start=1):
        if any(is_hit(hit, a, definition_lines[a]) for a in answers):
            return rank
    return None


@dataclass(frozen=True)
class Scores:
    hit_at_1: float
    hit_at_3: float
    hit_at_10: float
    mrr: float
    median_ms: float


def score(ranks: Sequence[int | None], latencies_ms: Sequence[float]) -> Scores:
    """Hit rates and mean reciprocal rank over the questions' first-hit ranks."""
    n = len(ranks)
    if n == 0:
        raise ValueError("no questions")

    def rate(k: int) -> float:
        return sum(1 for r in ranks if r is not None and r <= k) / n

    mrr = sum(1.0 / r for r in ranks if r is not None) / n
    median = statistics.median(latencies_ms) if latencies_ms else float("nan")
    return Scores(rate(1), rate(3), rate(10), mrr, median)
