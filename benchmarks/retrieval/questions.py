"""The retrieval question set and how answers are judged: pure functions, no database, no model.

The corpus is a fixed subset of the running interpreter's standard library (code nobody here
wrote). Each question names the definition that answers it: a path relative to the stdlib and
a symbol, qualified by its class for methods (`Sniffer.has_header`).
"""

from __future__ import annotations

import ast
import json
import statistics
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

QUESTIONS_FILE = Path(__file__).with_name("questions.json")


@dataclass(frozen=True)
class Question:
    question: str
    path: str  # relative to the corpus root, "/"-separated
    symbol: str  # "name" or "Class.name"
    names_symbol: bool  # the question uses words of the symbol's name


@dataclass(frozen=True)
class QuestionSet:
    corpus: tuple[str, ...]  # "dir/" (every .py below it) or "file.py", relative to the stdlib
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class Hit:
    """What the judge needs of one search result."""

    path: str
    start_line: int
    end_line: int
    symbol: str | None


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def load_question_set(path: Path = QUESTIONS_FILE) -> QuestionSet:
    raw = json.loads(path.read_text(encoding="utf-8"))
    questions = tuple(
        Question(
            question=q["question"],
            path=q["path"],
            symbol=q["symbol"],
            names_symbol=bool(q["names_symbol"]),
        )
        for q in raw["questions"]
    )
    return QuestionSet(corpus=tuple(raw["corpus"]), questions=questions)


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


def is_hit(hit: Hit, question: Question, definition_line: int) -> bool:
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
