"""The retrieval benchmark's question set is sound, and its judge scores what it claims.

Fast and without torch or a database: the benchmark itself runs in its own environment
(benchmarks/retrieval/setup-env).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.retrieval.questions import (
    QUESTIONS_FILE,
    Hit,
    Question,
    corpus_files,
    definition_lines,
    first_hit_rank,
    is_hit,
    is_member_hit,
    load_question_set,
    score,
    stdlib_root,
)

QSET = load_question_set()


def test_at_least_25_questions_without_duplicates() -> None:
    assert len(QSET.questions) >= 25
    texts = [q.question.strip().lower() for q in QSET.questions]
    assert len(set(texts)) == len(texts), "a question appears twice"
    answers = [(q.path, q.symbol) for q in QSET.questions]
    assert len(set(answers)) == len(answers), "two questions share one answer"


def test_questions_mix_named_and_descriptive_wording() -> None:
    named = sum(q.names_symbol for q in QSET.questions)
    assert 0.2 <= named / len(QSET.questions) <= 0.6


def test_corpus_is_a_bounded_subset_of_this_interpreters_stdlib() -> None:
    files = corpus_files(stdlib_root(), QSET.corpus)
    assert 50 <= len(files) <= 150
    assert len(set(QSET.corpus)) == len(QSET.corpus)


@pytest.mark.parametrize("question", QSET.questions, ids=lambda q: f"{q.path}:{q.symbol}")
def test_every_answer_is_defined_in_a_corpus_file(question: Question) -> None:
    files = set(corpus_files(stdlib_root(), QSET.corpus))
    assert question.path in files, f"{question.path} is not in the corpus"
    source = (stdlib_root() / question.path).read_text(encoding="utf-8")
    line = definition_lines(source).get(question.symbol)
    assert line is not None, f"{question.symbol} is not defined in {question.path}"
    assert source.splitlines()[line - 1].lstrip().startswith(("def ", "class ", "async def "))


def test_descriptive_questions_do_not_spell_out_the_symbol() -> None:
    for q in QSET.questions:
        name = q.symbol.rsplit(".", 1)[-1].lower()
        if not q.names_symbol:
            assert name not in q.question.lower().replace(" ", "_"), q


def test_corpus_rejects_missing_entries(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_text("")
    (tmp_path / "b.py").write_text("")
    assert corpus_files(tmp_path, ["pkg/", "b.py"]) == ["b.py", "pkg/a.py"]
    with pytest.raises(FileNotFoundError, match=r"gone\.py"):
        corpus_files(tmp_path, ["gone.py"])
    with pytest.raises(FileNotFoundError, match="nodir/"):
        corpus_files(tmp_path, ["nodir/"])


def test_definition_lines_qualifies_methods_and_sees_into_if_and_try() -> None:
    source = (
        "import os\n"  # 1
        "@decorator\n"  # 2
        "def f():\n"  # 3
        "    def inner(): pass\n"  # 4
        "class C:\n"  # 5
        "    async def m(self): pass\n"  # 6
        "if os.name == 'nt':\n"  # 7
        "    def g(): pass\n"  # 8
        "else:\n"  # 9
        "    def g(): pass\n"  # 10
        "try:\n"  # 11
        "    class D: pass\n"  # 12
        "except ImportError:\n"  # 13
        "    pass\n"  # 14
    )
    assert definition_lines(source) == {"f": 3, "C": 5, "C.m": 6, "g": 8, "D": 12}


Q = Question("q", "a/b.py", "Sniffer.has_header", names_symbol=True)


def test_hit_needs_the_right_file() -> None:
    assert not is_hit(Hit("other.py", 1, 100, "Sniffer.has_header"), Q, 50)


def test_hit_by_symbol_name_or_by_covering_the_definition_line() -> None:
    assert is_hit(Hit("a/b.py", 1, 2, "Sniffer.has_header"), Q, 50)
    assert is_hit(Hit("a/b.py", 1, 2, "csv.Sniffer.has_header"), Q, 50)
    assert is_hit(Hit("a/b.py", 45, 60, "has_header"), Q, 50)
    assert is_hit(Hit("a/b.py", 50, 50, None), Q, 50)
    # A different symbol that merely ends with the same letters is not the answer.
    assert not is_hit(Hit("a/b.py", 1, 2, "XSniffer.has_header"), Q, 50)
    assert not is_hit(Hit("a/b.py", 51, 80, "Sniffer._guess"), Q, 50)
    assert not is_hit(Hit("a/b.py", 10, 49, None), Q, 50)


def test_first_hit_rank_and_scores() -> None:
    wrong = Hit("x.py", 1, 9, "x")
    right = Hit("a/b.py", 50, 60, None)
    assert first_hit_rank([wrong, wrong, right], Q, 50) == 3
    assert first_hit_rank([wrong], Q, 50) is None
    s = score([1, 3, None, 10], [5.0, 1.0, 2.0, 100.0])
    assert (s.hit_at_1, s.hit_at_3, s.hit_at_10) == (0.25, 0.5, 0.75)
    assert s.mrr == pytest.approx((1 + 1 / 3 + 1 / 10) / 4)
    assert s.median_ms == 3.5
    with pytest.raises(ValueError, match="no questions"):
        score([], [])


def test_question_file_is_valid_json_with_only_known_fields() -> None:
    data = json.loads(QUESTIONS_FILE.read_text(encoding="utf-8"))
    assert set(data) == {"about", "corpus", "questions"}
    for q in data["questions"]:
        assert set(q) == {"question", "path", "symbol", "names_symbol"}


def test_rrf_weights_ranks_and_keeps_first_seen_order_on_ties() -> None:
    from benchmarks.retrieval.fusion import rrf

    # b is in both lists: it wins; a and c tie at rank 1 of one list each: first seen first.
    assert rrf([["a", "b"], ["c", "b"]], [1.0, 1.0]) == ["b", "a", "c"]
    # Down-weighting the second list lets the first list's order through.
    assert rrf([["a", "b"], ["b", "c"]], [1.0, 0.0]) == ["a", "b", "c"]
    assert rrf([["x"], ["y"]], [1.0, 2.0], k=0) == ["y", "x"]


def test_member_hit_is_a_chunk_inside_the_expected_class() -> None:
    cls = Question("q", "m.py", "Handler", names_symbol=False)
    assert is_member_hit(Hit("m.py", 5, 9, "Handler.emit"), cls)
    assert is_member_hit(Hit("m.py", 5, 9, "mod.Handler.emit"), cls)
    assert not is_member_hit(Hit("m.py", 5, 9, "Handler"), cls)  # that one is a real hit
    assert not is_member_hit(Hit("m.py", 5, 9, "FileHandler.emit"), cls)
    assert not is_member_hit(Hit("other.py", 5, 9, "Handler.emit"), cls)
    assert not is_member_hit(Hit("m.py", 5, 9, None), cls)
