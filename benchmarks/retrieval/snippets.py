"""A generated question set in the style of public text-to-code benchmarks (CodeSearchNet,
CoSQA): many small snippets, each one function without its docstring; the question is the
first sentence of that docstring. It guards against tuning search to hand-written wording.

The builder is pure and deterministic: the same package sources and seed give the same
snippets, file names and questions. It takes the public module-level functions and methods
of pinned packages (networkx and sympy, see requirements.txt) whose docstring opens with a
sentence of at least MIN_WORDS words, writes each as its own file `snippets/sNNNNN.py`
(numbered in a seeded shuffle, so neither the name nor the neighbours give the answer away)
and samples up to `sample` questions among the snippets whose sentence no other snippet
shares (one right answer each).

    benchmarks/.venv-retrieval/bin/python -m benchmarks.retrieval.snippets \\
        --corpus DIR --questions FILE         # DIR gets snippets/; FILE stays outside DIR
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.retrieval.questions import Question, uses_symbol_words  # noqa: E402

# networkx alone gives ~1,200 snippets; sympy brings the corpus to ~6,700, the size of the
# public benchmarks' (both are pure Python and already in the benchmark's environment).
PACKAGES = ("networkx", "sympy")
MIN_WORDS = 5
SAMPLE = 500
SEED = 20261121
SNIPPET_DIR = "snippets"

# A period after these does not end a sentence.
_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "cf", "resp", "al", "approx", "fig", "eq"})


@dataclass(frozen=True)
class Function:
    """One public function or method as found in its module."""

    module: str  # the module's path relative to the package's parent ("pkg/mod.py")
    qualname: str  # "name" or "Class.name"
    text: str  # its source without the docstring, dedented, ending in a newline
    summary: str  # the first sentence of its docstring


@dataclass(frozen=True)
class Snippet:
    path: str  # "snippets/s00001.py", relative to the corpus root
    text: str
    symbol: str  # the function's own name: in its file it is a module-level def
    summary: str
    origin: str  # "pkg/mod.py:Class.name", for reading results; never in the corpus


@dataclass(frozen=True)
class SnippetSet:
    snippets: tuple[Snippet, ...]  # the corpus, in file-name order
    questions: tuple[Question, ...]  # sorted by path

    def files(self) -> dict[str, str]:
        return {s.path: s.text for s in self.snippets}


def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, whitespace collapsed. A period
    ends it when followed by a space or the end, unless it closes an abbreviation ("e.g.")
    or an initial ("A. Hagberg")."""
    paragraph = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    for match in re.finditer(r"[.!?](?=\s|$)", text):
        before = text[: match.start()]
        word = before.rsplit(" ", 1)[-1].lower()
        if match.group() == "." and (word in _ABBREVIATIONS or re.fullmatch(r"[a-z]", word)):
            continue
        return text[: match.end()]
    return text


def is_public_module(module: str) -> bool:
    """A module a user imports: no private part, no tests or conftest."""
    parts = PurePosixPath(module).parts
    if any(p in ("tests", "test", "testing") for p in parts[:-1]):
        return False
    name = parts[-1]
    if name == "conftest.py" or name.startswith("test_"):
        return False
    return all(not p.startswith("_") for p in parts[:-1]) and (
        name == "__init__.py" or not name.startswith("_")
    )


def _without_docstring(
    lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef
) -> str | None:
    """The function's lines from its `def` (decorators left out) without the docstring,
    dedented; None when the docstring shares a line with code or nothing else is left."""
    doc = node.body[0]
    if len(node.body) < 2 or doc.end_lineno is None or node.end_lineno is None:
        return None
    first, last = doc.lineno - 1, doc.end_lineno - 1  # 0-based, inclusive
    if lines[first][: doc.col_offset].strip() or lines[last][doc.end_col_offset :].strip():
        return None
    kept = lines[node.lineno - 1 : first] + lines[last + 1 : node.end_lineno]
    text = textwrap.dedent("".join(kept)).rstrip() + "\n"
    try:
        ast.parse(text)
    except SyntaxError:  # a string literal at column 0 kept a method indented
        return None
    return text


def extract_functions(module: str, source: str, min_words: int = MIN_WORDS) -> list[Function]:
    """Public module-level functions and public methods of public module-level classes
    whose docstring's first sentence has at least `min_words` words, in source order.
    A module that does not parse yields nothing."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines(keepends=True)
    found: list[Function] = []

    def take(node: ast.FunctionDef | ast.AsyncFunctionDef, prefix: str) -> None:
        if node.name.startswith("_"):
            return
        doc = ast.get_docstring(node)
        if not doc:
            return
        summary = first_sentence(doc)
        if len(summary.split()) < min_words:
            return
        text = _without_docstring(lines, node)
        if text is not None:
            found.append(Function(module, prefix + node.name, text, summary))

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            take(node, "")
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for child in node.body:
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    take(child, node.name + ".")
    return found


def build_snippet_set(
    sources: Iterable[tuple[str, str]],
    *,
    sample: int = SAMPLE,
    seed: int = SEED,
    min_words: int = MIN_WORDS,
) -> SnippetSet:
    """Snippets of every extracted function of the public modules among `sources`
    ((module path, source text) pairs, any order) and up to `sample` questions.

    A function whose text repeats an earlier one's (a copy in another module) is left out:
    it would be a second right answer. Questions come only from snippets whose sentence
    is their own, for the same reason."""
    functions: list[Function] = []
    seen: set[str] = set()
    for module, source in sorted(sources):
        if not is_public_module(module):
            continue
        for function in extract_functions(module, source, min_words):
            if function.text not in seen:
                seen.add(function.text)
                functions.append(function)

    rng = random.Random(seed)
    order = list(range(len(functions)))
    rng.shuffle(order)
    width = max(5, len(str(len(functions))))
    snippets = sorted(
        (
            Snippet(
                path=f"{SNIPPET_DIR}/s{number + 1:0{width}d}.py",
                text=f.text,
                symbol=f.qualname.rsplit(".", 1)[-1],
                summary=f.summary,
                origin=f"{f.module}:{f.qualname}",
            )
            for number, f in zip(order, functions, strict=True)
        ),
        key=lambda s: s.path,
    )

    counts = Counter(s.summary.lower() for s in snippets)
    pool = [s for s in snippets if counts[s.summary.lower()] == 1]
    chosen = sorted(rng.sample(pool, min(sample, len(pool))), key=lambda s: s.path)
    questions = tuple(
        Question(
            question=s.summary,
            path=s.path,
            symbol=s.symbol,
            names_symbol=uses_symbol_words(s.summary, s.symbol),
        )
        for s in chosen
    )
    return SnippetSet(tuple(snippets), questions)


# --- the imperative shell: read an installed package, write the corpus ---------------------


def package_sources(package_dir: Path) -> list[tuple[str, str]]:
    """(path relative to the package's parent, text) of every .py file of a package."""
    base = package_dir.parent
    return [
        (p.relative_to(base).as_posix(), p.read_text(encoding="utf-8"))
        for p in sorted(package_dir.rglob("*.py"))
        if "__pycache__" not in p.parts
    ]


def installed_package(name: str, version: str | None) -> Path:
    """The directory of an installed package; refuses a version other than `version`."""
    import importlib.metadata
    import importlib.util

    installed = importlib.metadata.version(name)
    if version is not None and installed != version:
        raise SystemExit(f"{name} {installed} is installed; the snippet set pins {version}")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not an installed package")
    return Path(next(iter(spec.submodule_search_locations)))


def pinned_version(name: str, requirements: Path | None = None) -> str | None:
    """The version `requirements.txt` beside this file pins for `name`, if any."""
    path = requirements or Path(__file__).with_name("requirements.txt")
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(rf"\s*{re.escape(name)}==(\S+)\s*(#.*)?", line, flags=re.IGNORECASE)
        if match:
            return match.group(1)
    return None


def write_corpus(snippet_set: SnippetSet, root: Path) -> None:
    for path, text in snippet_set.files().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def questions_document(snippet_set: SnippetSet, requirements: Iterable[str]) -> dict[str, object]:
    """The questions in the format of the other sets (`questions.load_question_set` reads
    it), each with its `origin`. Keep it outside the corpus directory."""
    origin = {s.path: s.origin for s in snippet_set.snippets}
    return {
        "about": (
            f"Generated from {', '.join(requirements)}: each question is the first sentence "
            "of a function's docstring, its answer that function without the docstring "
            f"({len(snippet_set.snippets)} snippets)."
        ),
        "corpus": ["."],
        "questions": [
            {
                "question": q.question,
                "path": q.path,
                "symbol": q.symbol,
                "names_symbol": q.names_symbol,
                "intent": q.intent,
                "origin": origin[q.path],
            }
            for q in snippet_set.questions
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="directory to write into")
    parser.add_argument("--questions", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--package", action="append", help=f"repeatable; default: {' '.join(PACKAGES)}"
    )
    parser.add_argument("--sample", type=int, default=SAMPLE)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    corpus, questions = args.corpus.resolve(), args.questions.resolve()
    if questions.is_relative_to(corpus):
        parser.error("the questions file must not be inside the corpus directory")
    sources: list[tuple[str, str]] = []
    requirements = []
    for package in args.package or PACKAGES:
        version = pinned_version(package)
        sources += package_sources(installed_package(package, version))
        requirements.append(f"{package}=={version}" if version else package)
    snippet_set = build_snippet_set(sources, sample=args.sample, seed=args.seed)
    write_corpus(snippet_set, corpus)
    document = questions_document(snippet_set, requirements)
    questions.parent.mkdir(parents=True, exist_ok=True)
    questions.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", "utf-8")
    named = sum(q.names_symbol for q in snippet_set.questions)
    print(
        f"{len(snippet_set.snippets)} snippets in {corpus / SNIPPET_DIR}, "
        f"{len(snippet_set.questions)} questions ({named} name their symbol) in {questions}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
