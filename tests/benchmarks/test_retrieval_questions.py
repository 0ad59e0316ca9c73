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
    Answer,
    Hit,
    Question,
    corpus_files,
    definition_lines,
    first_accepted_rank,
    first_hit_rank,
    identifier_words,
    is_hit,
    is_member_hit,
    load_question_set,
    score,
    spells_symbol,
    stdlib_root,
    uses_symbol_words,
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
        if not q.names_symbol:
            assert not spells_symbol(q.question, q.symbol), q


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


def test_the_fusion_study_replays_the_engines_own_ranking(tmp_path: Path) -> None:
    """fusion.py on a dumped list: its "hybrid (engine)" is what search.hybrid.fuse answers, so a
    variant judged there is a variant of the product, not of a copy."""
    from benchmarks.retrieval import fusion as study

    from codebase_mcp.search.hybrid import Hit as EngineHit
    from codebase_mcp.search.hybrid import fuse

    def row(key: int, path: str, symbol: str, score: float) -> list[object]:
        return [key, "/r", path, key * 10, key * 10 + 5, symbol, "function", "python", score]

    vector = [row(1, "a.py", "alpha", 0.9), row(2, "tests/test_a.py", "test_alpha", 0.8)]
    lexical = [row(3, "b.py", "beta", 7.0), row(2, "tests/test_a.py", "test_alpha", 6.0)]
    dump = {
        "set": "tiny",
        "questions": [
            {
                "question": "where is the beta value computed",
                "intent": "code",
                "names_symbol": False,
                "answers": [["b.py", "beta", 30]],
            }
        ],
        "ranks": {},
        "lists": [
            {
                "vector": vector,
                "lexical": lexical,
                "vector_extra": [[3, 0.5]],
                "lexical_extra": [[1, 2.0]],
            }
        ],
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(dump), encoding="utf-8")
    _, cases = study.load(path)
    replayed = study.hybrid(study.Params())(cases[0])

    def hits(rows: list[list[object]]) -> list[EngineHit]:
        keys = (
            "id",
            "repository",
            "path",
            "start_line",
            "end_line",
            "symbol",
            "kind",
            "language",
            "score",
        )
        return [
            EngineHit(int(r[0]), float(r[8]), {**dict(zip(keys, r, strict=True)), "text": ""})
            for r in rows
        ]

    engine = fuse(
        hits(vector),
        hits(lexical),
        "where is the beta value computed",
        10,
        "hybrid",
        extra=({3: 0.5}, {1: 2.0}),
    )
    assert [(r.path, r.score) for r in replayed] == [
        (r.path, pytest.approx(r.score, abs=1e-6)) for r in engine
    ]
    assert study.rank_of(replayed, cases[0]) == [r.path for r in engine].index("b.py") + 1


def test_member_hit_is_a_chunk_inside_the_expected_class() -> None:
    cls = Question("q", "m.py", "Handler", names_symbol=False)
    assert is_member_hit(Hit("m.py", 5, 9, "Handler.emit"), cls)
    assert is_member_hit(Hit("m.py", 5, 9, "mod.Handler.emit"), cls)
    assert not is_member_hit(Hit("m.py", 5, 9, "Handler"), cls)  # that one is a real hit
    assert not is_member_hit(Hit("m.py", 5, 9, "FileHandler.emit"), cls)
    assert not is_member_hit(Hit("other.py", 5, 9, "Handler.emit"), cls)
    assert not is_member_hit(Hit("m.py", 5, 9, None), cls)


def test_spells_symbol_reads_spaces_as_underscores_and_ignores_the_class() -> None:
    assert spells_symbol("copy a directory tree with copytree", "copytree")
    assert spells_symbol("the Has Header check", "Sniffer.has_header")
    assert not spells_symbol("is the first row a header", "Sniffer.has_header")


def test_identifier_words_split_identifiers_and_keep_unicode_letters() -> None:
    assert identifier_words("BlueprintSetupState") == ["blueprint", "setup", "state"]
    assert identifier_words("JSONTag.to_json") == ["json", "tag", "to", "json"]
    assert identifier_words("get_json(silent=True), 名前 crème") == [
        *("get", "json", "silent", "true", "名前", "crème"),
    ]


@pytest.mark.parametrize(
    ("question", "symbol"),
    [
        ("url_for", "url_for"),
        ("what does BlueprintSetupState hold", "BlueprintSetupState"),
        ("registering a new user", "register"),  # another form of the verb
        ("a blueprint registered twice", "Blueprint.register"),
        ("retry a failed call", "retries"),  # y -> ies, both ways
        ("how many retries", "retry"),
        ("serving static files", "serve_file"),  # e dropped
        ("keep running", "run"),  # consonant doubled
        ("dispatch an incoming request", "Flask.full_dispatch_request"),
        ("run it with the app context", "with_appcontext"),  # compound run together
        ("copy tree", "copytree"),
    ],
)
def test_uses_symbol_words_sees_words_of_the_name_in_any_form(question: str, symbol: str) -> None:
    assert uses_symbol_words(question, symbol)


@pytest.mark.parametrize(
    ("question", "symbol"),
    [
        ("how does the app find the view function for an incoming URL", "Flask.dispatch_request"),
        ("tests for the request body size limit", "test_max_content_length"),  # "test" prefix
        ("get the body as parsed data", "get_json"),  # accessor prefix only
        ("build a link to another page", "url_for"),  # "for" is a function word
        ("how long does a permanent session last", "get_expiration_time"),
        ("the route format", "url_for"),  # "for" inside a word is no word
    ],
)
def test_uses_symbol_words_ignores_function_words_prefixes_and_other_words(
    question: str, symbol: str
) -> None:
    assert not uses_symbol_words(question, symbol)


def test_uses_symbol_words_includes_the_stdlib_sets_spelling_check() -> None:
    # Whatever spells the name out names it, so a set labelled with uses_symbol_words also
    # passes the stdlib set's check.
    for q in QSET.questions:
        if spells_symbol(q.question, q.symbol):
            assert uses_symbol_words(q.question, q.symbol), q


def test_loader_reads_intent_also_source_and_about_and_defaults_them(tmp_path: Path) -> None:
    path = tmp_path / "set.json"
    path.write_text(
        json.dumps(
            {
                "about": "a set",
                "source": {
                    "kind": "sdist",
                    "requirement": "pkg==1.0",
                    "archive": "pkg-1.0.tar.gz",
                    "sha256": "0" * 64,
                    "root": "pkg-1.0",
                },
                "corpus": ["."],
                "questions": [
                    {"question": "q1", "path": "a.py", "symbol": "f", "names_symbol": False},
                    {
                        "question": "q2",
                        "path": "tests/test_a.py",
                        "symbol": "test_f",
                        "names_symbol": True,
                        "intent": "tests",
                        "also": [{"path": "tests/test_b.py", "symbol": "TestB.test_f"}],
                    },
                ],
            }
        )
    )
    qset = load_question_set(path)
    assert qset.about == "a set"
    assert qset.source is not None
    assert (qset.source.requirement, qset.source.root) == ("pkg==1.0", "pkg-1.0")
    first, second = qset.questions
    assert (first.intent, first.also) == ("code", ())
    assert first.answers() == (Answer("a.py", "f"),)
    assert second.intent == "tests"
    assert second.answers() == (
        Answer("tests/test_a.py", "test_f"),
        Answer("tests/test_b.py", "TestB.test_f"),
    )
    assert QSET.source is None  # the stdlib set has none: its corpus is this interpreter's


def test_loader_rejects_an_unknown_intent(tmp_path: Path) -> None:
    path = tmp_path / "set.json"
    question = {"question": "q", "path": "a.py", "symbol": "f", "names_symbol": False}
    path.write_text(json.dumps({"corpus": ["."], "questions": [{**question, "intent": "docs"}]}))
    with pytest.raises(ValueError, match="unknown intent 'docs'"):
        load_question_set(path)


def test_first_accepted_rank_accepts_any_listed_answer() -> None:
    q = Question("q", "a.py", "f", names_symbol=False, also=(Answer("b.py", "C.g"),))
    lines = {Answer("a.py", "f"): 10, Answer("b.py", "C.g"): 20}
    wrong = Hit("c.py", 1, 99, "f")
    assert first_accepted_rank([wrong, Hit("b.py", 18, 25, None)], q, lines) == 2
    assert first_accepted_rank([Hit("a.py", 1, 2, "f"), wrong], q, lines) == 1
    assert first_accepted_rank([wrong, Hit("b.py", 1, 5, "C.h")], q, lines) is None
    # Without `also`, the same as first_hit_rank.
    plain = Question("q", "a.py", "f", names_symbol=False)
    hits = [wrong, Hit("a.py", 9, 12, None)]
    assert first_accepted_rank(hits, plain, lines) == first_hit_rank(hits, plain, 10) == 2
