"""The ranking's pure decisions: BM25's terms and candidate plans, the fusion, and the
shape of the result list (roles, names, merged pieces, per-file cap, order)."""

from __future__ import annotations

import math

import pytest

from codebase_mcp.search import bm25, fusion, results
from codebase_mcp.search.results import Ranked, Shaping
from codebase_mcp.source.tokens import WEIGHT_A, WEIGHT_D, identifier_words, term_dimension, words

# --- words ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("crème brûlée", ["crème", "brûlée"]),
        ("crèmeBrûlée", ["crèmebrûlée", "crème", "brûlée"]),
        ("Straße", ["straße"]),
        ("名前", ["名前"]),
        ("名前を返す", ["名前を返す", "名前", "前を", "を返", "返す"]),
        ("cre\u0300me", ["crème"]),  # decomposed: NFC makes it one word
        ("ΑΒΓδ", ["αβγδ", "αβ", "γδ"]),  # a capital run gives back a word's capital
        ("HTTPServer", ["httpserver", "http", "server"]),
    ],
)
def test_words_are_unicode_letters_and_digits(text: str, expected: list[str]) -> None:
    assert list(words(text)) == expected


def test_term_dimensions_tell_sections_apart() -> None:
    assert term_dimension("parse") != term_dimension("parse", WEIGHT_A)
    assert term_dimension("parse", WEIGHT_D) == term_dimension("parse")
    assert 0 <= term_dimension("x" * 64) < 1_000_000_000
    assert identifier_words("a" * 65) == ()


# --- BM25 -----------------------------------------------------------------------------


def test_idf_falls_with_document_frequency_and_never_goes_negative() -> None:
    assert bm25.idf(1, 1000) > bm25.idf(10, 1000) > bm25.idf(900, 1000) > 0
    assert bm25.idf(1000, 1000) > 0
    assert bm25.idf(5, 100) == pytest.approx(math.log(1 + 95.5 / 5.5))


def test_derived_forms_add_and_remove_common_suffixes() -> None:
    assert "recovery" in bm25.derived_forms("recover")
    assert "recover" in bm25.derived_forms("recovery")
    assert {"parser", "parsers"} <= set(bm25.derived_forms("parse"))
    assert bm25.derived_forms("get") == []  # too short
    assert bm25.derived_forms("utf8") == []  # not a plain word
    assert "retry" not in bm25.derived_forms("retry")


@pytest.mark.parametrize(
    ("word", "forms"),
    [
        ("retry", {"retries", "retried", "retrying"}),
        ("retries", {"retry", "retried"}),
        ("parse", {"parses", "parsed", "parsing", "parser"}),
        ("parsing", {"parse", "parsed"}),
        ("stopping", {"stop", "stopped"}),
        ("compute", {"computation", "computing", "computes"}),
        ("normalize", {"normalization", "normalized", "normalizer"}),
    ],
)
def test_inflection_candidates_cover_regular_english(word: str, forms: set[str]) -> None:
    found = bm25.inflection_candidates(word)
    assert forms <= set(found)
    assert word not in found
    assert bm25.inflection_candidates("42") == bm25.inflection_candidates("ab") == []


def test_terms_keep_the_closest_relation_and_drop_unknown_words() -> None:
    rows = [
        ("retry", "retry", bm25.EXACT, 10),
        ("retry", "retries", bm25.STEM, 30),
        ("retry", "retries", bm25.DERIVED, 30),
        ("zzz", "zzz", bm25.EXACT, 0),
    ]
    (term,) = bm25.build_terms(["retry", "zzz"], rows, 1000)
    assert [(f.lexeme, f.relation) for f in term.forms] == [
        ("retry", bm25.EXACT),
        ("retries", bm25.STEM),
    ]
    assert term.df == 30  # the largest of its forms', as Lucene's synonyms
    assert term.idf == pytest.approx(bm25.idf(30, 1000))
    # The exact form weighs most; each section by its field weight.
    vector = dict(term.vector())
    symbol = bm25.FIELD_WEIGHTS[WEIGHT_A]
    assert vector[term_dimension("retry", WEIGHT_A)] == pytest.approx(symbol)
    assert vector[term_dimension("retries", WEIGHT_A)] == pytest.approx(bm25.STEM_WEIGHT * symbol)
    assert list(vector) == sorted(vector)


def term(word: str, df: int, n: int = 100_000) -> bm25.Term:
    return bm25.Term(word, (bm25.Form(word, bm25.EXACT, df),), bm25.idf(df, n))


def test_rare_words_pick_the_candidates_and_common_ones_only_score() -> None:
    rare, mid, common = term("frobnicate", 3), term("widget", 1500), term("get", 60_000)
    plan = bm25.first_plan([common, rare, mid])
    assert plan.tsquery == "'frobnicate' | 'widget'"
    assert plan.essential == {"frobnicate", "widget"}
    assert plan.bound == pytest.approx(common.upper_bound)
    assert not plan.exhaustive
    # exact when the k-th candidate scores what a chunk with only 'get' could reach
    assert bm25.next_plan([common, rare, mid], plan, [9.0, 8.0, common.upper_bound], 3) is None


def test_an_unproven_ranking_takes_every_word_that_could_still_matter() -> None:
    a, b, c = term("alpha", 1500), term("beta", 3000), term("gamma", 5000)
    d = term("delta", 20_000)
    plan = bm25.first_plan([a, b, c, d])
    assert plan.essential == {"alpha"}  # the budget holds the rarest alone
    # theta lets only delta (the smallest bound) stay out
    theta = d.upper_bound + 0.01
    wider = bm25.next_plan([a, b, c, d], plan, [10.0, theta], 2)
    assert wider is not None
    assert wider.essential == {"alpha", "beta", "gamma"}
    assert wider.bound == pytest.approx(d.upper_bound)
    # and that plan needs no other: its k-th score is at least theta
    assert bm25.next_plan([a, b, c, d], wider, [10.0, theta], 2) is None
    # too few candidates: nothing may stay out
    every = bm25.next_plan([a, b, c, d], plan, [10.0], 2)
    assert every is not None and every.exhaustive


def test_past_the_cap_candidates_must_hold_every_word_or_the_name() -> None:
    a, b = term("self", 50_000), term("return", 45_000)
    assert bm25.first_plan([a, b]).tsquery == "('return') & ('self')"
    single = bm25.first_plan([a])
    assert single.tsquery == "'self':AB"
    assert single.exhaustive
    # the cap is a count of rows to read: just under it, every holder is ranked
    assert bm25.first_plan([term("sort", bm25.CANDIDATE_CAP)]).tsquery == "'sort'"
    assert bm25.first_plan([term("sort", bm25.CANDIDATE_CAP + 1)]).tsquery == "'sort':AB"


# --- fusion ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("url_for", True),
        ("parseDate", True),
        ("os.path.join", True),
        ("config from_prefixed_env", True),
        ("send_file()", True),
        ("jsonify", True),
        ("how does the app find the view function", False),
        ("parse date", False),
    ],
)
def test_queries_that_look_like_names(query: str, name: bool) -> None:
    assert fusion.looks_like_name(query) is name


def test_a_name_leans_lexical_and_a_question_leans_vector() -> None:
    assert (
        fusion.vector_weight("url_for")
        < 0.5
        < fusion.vector_weight("where is the session cookie signed with the secret key")
    )
    assert fusion.vector_weight("parse date") == fusion.VECTOR_WEIGHT_MIXED


def test_fusion_weighs_normalised_scores_and_keeps_both_lists_order_on_ties() -> None:
    vector = [(1, 0.8), (2, 0.4)]
    lexical = [(3, 10.0), (1, 5.0)]
    fused = dict(fusion.fuse(vector, lexical, 0.5))
    assert fused[1] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert fused[2] == pytest.approx(0.5 * 0.5)
    assert fused[3] == pytest.approx(0.5 * 1.0)
    assert [i for i, _ in fusion.fuse(vector, lexical, 0.5)] == [1, 3, 2]
    # min-max sends each list's last to 0
    minmax = dict(fusion.fuse(vector, lexical, 0.5, "minmax"))
    assert minmax[2] == 0.0
    assert fusion.fuse([], [], 0.5) == []


def test_reciprocal_rank_fusion() -> None:
    fused = fusion.rrf([[1, 2, 3], [3, 4, 1]], k=60)
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 63)


# --- the result list ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("src/flask/helpers.py", "code"),
        ("tests/test_helpers.py", "test"),
        ("pkg/helpers_test.go", "test"),
        ("web/app.spec.ts", "test"),
        ("conftest.py", "test"),
        ("docs/api.rst", "docs"),
        ("README.md", "docs"),
        ("api/service_pb2.py", "generated"),
        ("proto/service.pb.go", "generated"),
        ("contest.py", "code"),
    ],
)
def test_path_roles(path: str, role: str) -> None:
    assert results.path_role(path) == role


def item(key: int, path: str, score: float, **kw: object) -> Ranked:
    fields: dict[str, object] = {
        "repository": "/r",
        "start_line": key * 10,
        "end_line": key * 10 + 5,
        "symbol": f"s{key}",
        "kind": "function",
        "language": "python",
        "text": f"t{key}",
    }
    fields.update(kw)
    return Ranked(key=key, path=path, score=score, **fields)  # type: ignore[arg-type]


def test_roles_weigh_less_unless_the_query_asks_for_them() -> None:
    items = [item(1, "tests/test_a.py", 1.0), item(2, "a.py", 0.9)]
    assert [r.key for r in results.finish(items, "alpha beta", 10)] == [2, 1]
    assert [r.key for r in results.finish(items, "tests for alpha beta", 10)] == [1, 2]


def test_a_definition_the_query_names_gains_the_bonus() -> None:
    items = [
        item(1, "docs/api.md", 1.0, symbol="url_for", kind="window"),
        item(2, "src/helpers.py", 0.8, symbol="Flask.url_for", kind="method"),
        item(3, "src/other.py", 0.9, symbol="UrlForm", kind="class"),
    ]
    assert [r.key for r in results.finish(items, "url_for", 10)] == [2, 3, 1]
    # a question in words names nothing
    assert results.spelled_names("where is the url for a view built") == frozenset()


def test_pieces_of_one_definition_merge_keeping_the_files_lines() -> None:
    pieces = [
        item(1, "a.py", 0.5, symbol="big", start_line=1, end_line=10, text="L1\nL10"),
        item(2, "a.py", 0.9, symbol="big", start_line=12, end_line=20, text="L12\nL20"),
        item(3, "a.py", 0.7, symbol="other", start_line=21, end_line=25),
    ]
    merged = results.merge_adjacent(sorted(pieces, key=lambda r: -r.score))
    assert [(r.symbol, r.start_line, r.end_line, r.score) for r in merged] == [
        ("big", 1, 20, 0.9),
        ("other", 21, 25, 0.7),
    ]
    assert merged[0].text.splitlines() == ["L1", "L10", "", "L12", "L20"]


def test_a_file_yields_at_most_a_few_results_and_scores_fall() -> None:
    items = [item(i, "busy.py", 1.0 - i / 100) for i in range(8)]
    items += [item(10 + i, f"f{i}.py", 0.5 - i / 100) for i in range(8)]
    out = results.finish(items, "anything at all here", 10)
    assert sum(r.path == "busy.py" for r in out) == results.MAX_PER_FILE
    assert len(out) == 10
    assert [r.score for r in out] == sorted((r.score for r in out), reverse=True)
    unlimited = results.finish(items, "anything", 10, Shaping(max_per_file=None))
    assert sum(r.path == "busy.py" for r in unlimited) == 8
