"""Check the Flask question set against an unpacked copy of its sdist.

    pip download --no-deps --no-binary :all: flask==3.1.3 -d DIR
    tar -xzf DIR/flask-3.1.3.tar.gz -C DIR
    python -m benchmarks.retrieval.check_flask_set DIR/flask-3.1.3 --archive DIR/flask-3.1.3.tar.gz

Every accepted answer (the labelled one and its `also` list) must be a file the engine
indexes (its own ignore rules) that defines the symbol, and lie where its intent says: a test
in a tests/ directory for "tests", code outside one for "code". With --archive, the archive's
sha256 must be the one the set pins. Exit 1 and one line per problem on stderr otherwise.
The normal suite checks what needs no download (tests/benchmarks/test_retrieval_questions.py).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.retrieval.questions import (  # noqa: E402
    FLASK_QUESTIONS_FILE,
    Answer,
    Question,
    QuestionSet,
    definition_lines,
    load_question_set,
)


def is_test_path(path: str) -> bool:
    return "tests" in PurePosixPath(path).parts[:-1]


def intent_problems(question: Question) -> list[str]:
    """Where the answers of a question must lie for its intent (pure: paths and names only)."""
    found = []
    for answer in question.answers():
        where = f"{answer.path}:{answer.symbol} ({question.question!r})"
        first = answer.symbol.split(".", 1)[0]
        if question.intent == "tests":
            if not is_test_path(answer.path) or not first.lower().startswith("test"):
                found.append(f"{where}: a 'tests' answer must be a test in a tests/ directory")
        elif is_test_path(answer.path) or not answer.path.startswith(("src/", "examples/")):
            found.append(f"{where}: a 'code' answer must be in src/ or examples/, not in tests/")
    return found


def answer_problems(root: Path, answer: Answer, indexed: set[str]) -> list[str]:
    """The answer's file exists, the engine would index it, and it defines the symbol."""
    where = f"{answer.path}:{answer.symbol}"
    file = root / answer.path
    if not file.is_file():
        return [f"{where}: no such file under {root}"]
    if answer.path not in indexed:
        return [f"{where}: the engine's ignore rules leave this file out"]
    source = file.read_text(encoding="utf-8")
    line = definition_lines(source).get(answer.symbol)
    if line is None:
        return [f"{where}: the file does not define the symbol"]
    if not source.splitlines()[line - 1].lstrip().startswith(("def ", "class ", "async def ")):
        return [f"{where}: line {line} is not a def or class line"]
    return []


def indexed_files(root: Path) -> set[str]:
    """Paths (relative, "/"-separated) the engine's discovery yields for `root`."""
    from codebase_mcp.source.discover import discover_files

    return {f.rel_path for f in discover_files(root)}


def problems(qset: QuestionSet, root: Path) -> list[str]:
    indexed = indexed_files(root)
    found: list[str] = []
    for question in qset.questions:
        found += intent_problems(question)
        for answer in question.answers():
            found += answer_problems(root, answer, indexed)
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the unpacked sdist (e.g. DIR/flask-3.1.3)")
    parser.add_argument("--archive", type=Path, help="the downloaded archive to verify")
    parser.add_argument("--set", type=Path, default=FLASK_QUESTIONS_FILE, dest="qset")
    args = parser.parse_args(argv)
    qset = load_question_set(args.qset)
    found: list[str] = []
    if qset.source is None:
        found.append(f"{args.qset}: no 'source' to check against")
    elif args.archive is not None:
        digest = sha256_of(args.archive)
        if digest != qset.source.sha256:
            found.append(f"{args.archive}: sha256 {digest}, the set pins {qset.source.sha256}")
    if not args.root.is_dir():
        found.append(f"{args.root}: not a directory")
    else:
        found += problems(qset, args.root)
    for line in found:
        print(line, file=sys.stderr)
    answers = sum(len(q.answers()) for q in qset.questions)
    verdict = f"{len(found)} problem(s)" if found else "all present and defined"
    print(f"{len(qset.questions)} questions, {answers} accepted answers: {verdict}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
