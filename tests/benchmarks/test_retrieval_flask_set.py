"""The Flask question set is sound as far as it can be told without its sdist.

No network: the sdist is fetched only by the benchmark. What needs the files (every answer
exists and defines its symbol) is `benchmarks/retrieval/check_flask_set.py`; its logic is
tested here on a small tree made on the spot.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath

import pytest
from benchmarks.retrieval import check_flask_set
from benchmarks.retrieval.questions import (
    FLASK_QUESTIONS_FILE,
    INTENTS,
    Answer,
    Question,
    QuestionSet,
    Source,
    load_question_set,
    spells_symbol,
    uses_symbol_words,
)

RAW = json.loads(FLASK_QUESTIONS_FILE.read_text(encoding="utf-8"))
QSET = load_question_set(FLASK_QUESTIONS_FILE)
REQUIRED = {"question", "path", "symbol", "names_symbol", "intent"}


def test_file_has_only_known_fields() -> None:
    assert set(RAW) == {"about", "source", "corpus", "questions"}
    assert set(RAW["source"]) == {"kind", "requirement", "archive", "sha256", "root"}
    for q in RAW["questions"]:
        assert REQUIRED <= set(q) <= REQUIRED | {"also"}, q
        assert isinstance(q["names_symbol"], bool), q
        for a in q.get("also", ()):
            assert set(a) == {"path", "symbol"}, q


def test_source_pins_flasks_sdist_by_its_sha256() -> None:
    assert QSET.source == Source(
        kind="sdist",
        requirement="flask==3.1.3",
        archive="flask-3.1.3.tar.gz",
        sha256=QSET.source.sha256 if QSET.source else "",
        root="flask-3.1.3",
    )
    assert re.fullmatch(r"[0-9a-f]{64}", QSET.source.sha256)
    assert QSET.corpus == (".",)


def test_enough_questions_none_twice_and_no_two_with_one_answer() -> None:
    assert len(QSET.questions) >= 60
    texts = [" ".join(q.question.lower().split()) for q in QSET.questions]
    assert len(set(texts)) == len(texts), "a question appears twice"
    answers = [(q.path, q.symbol) for q in QSET.questions]
    assert len(set(answers)) == len(answers), "two questions share one answer"
    for q in QSET.questions:
        assert len(set(q.answers())) == len(q.answers()), f"an answer is listed twice: {q}"


def test_intents_are_known_and_at_least_six_ask_for_tests() -> None:
    assert {q.intent for q in QSET.questions} <= set(INTENTS)
    assert sum(q.intent == "tests" for q in QSET.questions) >= 6
    assert sum(q.intent == "code" for q in QSET.questions) >= 40


def test_the_wording_is_mixed() -> None:
    # Named: uses a word of the symbol's name; short: typed as an identifier query.
    n = len(QSET.questions)
    named = sum(q.names_symbol for q in QSET.questions) / n
    assert 0.3 <= named <= 0.7
    short = sum(len(q.question.split()) <= 3 for q in QSET.questions) / n
    assert 0.15 <= short <= 0.35
    code = [q for q in QSET.questions if q.intent == "code"]
    descriptive = sum(not q.names_symbol for q in code) / len(code)
    assert descriptive >= 0.4


@pytest.mark.parametrize("question", QSET.questions, ids=lambda q: f"{q.path}:{q.symbol}")
def test_names_symbol_says_whether_the_question_uses_the_names_words(question: Question) -> None:
    assert question.names_symbol == uses_symbol_words(question.question, question.symbol)
    if not question.names_symbol:  # the stdlib set's check holds here too
        assert not spells_symbol(question.question, question.symbol)


@pytest.mark.parametrize("question", QSET.questions, ids=lambda q: f"{q.path}:{q.symbol}")
def test_answers_are_normalised_relative_paths_and_qualified_names(question: Question) -> None:
    for answer in question.answers():
        path = PurePosixPath(answer.path)
        assert not path.is_absolute() and "\\" not in answer.path, answer
        assert str(path) == answer.path and ".." not in path.parts, answer
        assert not answer.path.startswith(("./", "flask-3.1.3/")), answer
        assert path.suffix == ".py", answer
        assert re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", answer.symbol), answer
    assert check_flask_set.intent_problems(question) == []


# --- the checker that runs against the real sdist -------------------------------------------


def _tree(root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "app.py").write_text(
        "class App:\n    def run(self):\n        pass\n\n\ndef helper():\n    pass\n"
    )
    (root / "tests").mkdir()
    (root / "tests" / "test_app.py").write_text("def test_run():\n    pass\n")
    (root / "src" / "pkg" / "build").mkdir()  # the engine never indexes build/
    (root / "src" / "pkg" / "build" / "gen.py").write_text("def generated():\n    pass\n")


def _set(*questions: Question) -> QuestionSet:
    return QuestionSet(corpus=(".",), questions=questions)


def test_checker_passes_answers_that_exist_and_are_defined(tmp_path: Path) -> None:
    _tree(tmp_path)
    qset = _set(
        Question(
            "run it", "src/pkg/app.py", "App.run", False, also=(Answer("src/pkg/app.py", "App"),)
        ),
        Question("tests of run", "tests/test_app.py", "test_run", True, intent="tests"),
    )
    assert check_flask_set.problems(qset, tmp_path) == []


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (Answer("src/pkg/gone.py", "helper"), "no such file"),
        (Answer("src/pkg/app.py", "App.stop"), "does not define"),
        (Answer("src/pkg/app.py", "run"), "does not define"),  # a method needs its class
        (Answer("src/pkg/build/gen.py", "generated"), "ignore rules"),
    ],
)
def test_checker_names_each_bad_answer(tmp_path: Path, answer: Answer, complaint: str) -> None:
    _tree(tmp_path)
    good = Question("q", "src/pkg/app.py", "helper", False)
    bad = Question("q2", "src/pkg/app.py", "helper", False, also=(answer,))
    assert check_flask_set.problems(_set(good), tmp_path) == []
    found = check_flask_set.problems(_set(bad), tmp_path)
    assert len(found) == 1
    assert answer.path in found[0] and complaint in found[0]


def test_checker_holds_each_intent_to_its_place() -> None:
    code_in_tests = Question("q", "tests/test_app.py", "test_run", False)
    tests_in_src = Question("q", "src/pkg/app.py", "helper", False, intent="tests")
    helper_in_tests = Question("q", "tests/conftest.py", "client", False, intent="tests")
    nested_tests = Question(
        "q", "examples/app/tests/test_a.py", "TestA.test_b", True, intent="tests"
    )
    assert "'code' answer" in check_flask_set.intent_problems(code_in_tests)[0]
    assert "'tests' answer" in check_flask_set.intent_problems(tests_in_src)[0]
    assert "'tests' answer" in check_flask_set.intent_problems(helper_in_tests)[0]
    assert check_flask_set.intent_problems(nested_tests) == []


def test_checker_main_verifies_the_archive_and_exits_1_on_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "pkg-1.0"
    root.mkdir()
    _tree(root)
    archive = tmp_path / "pkg-1.0.tar.gz"
    archive.write_bytes(b"not really an archive")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    question = {
        "question": "q",
        "path": "src/pkg/app.py",
        "symbol": "helper",
        "names_symbol": False,
    }
    source = {
        "kind": "sdist",
        "requirement": "pkg==1.0",
        "archive": archive.name,
        "root": root.name,
    }

    def run(sha256: str, questions: list[dict[str, object]]) -> int:
        qfile = tmp_path / "set.json"
        qfile.write_text(
            json.dumps(
                {"corpus": ["."], "source": {**source, "sha256": sha256}, "questions": questions}
            )
        )
        return check_flask_set.main([str(root), "--archive", str(archive), "--set", str(qfile)])

    assert run(digest, [question]) == 0
    assert "1 questions, 1 accepted answers: all present and defined" in capsys.readouterr().out
    assert run("0" * 64, [question]) == 1
    assert f"sha256 {digest}, the set pins {'0' * 64}" in capsys.readouterr().err
    assert run(digest, [{**question, "symbol": "nothing"}]) == 1
    assert "does not define the symbol" in capsys.readouterr().err
