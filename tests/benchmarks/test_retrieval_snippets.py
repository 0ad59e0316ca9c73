"""The generated snippet set's builder, on a small package made of source text here.

No network and no networkx: the builder is pure, so it is fed source text.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from benchmarks.retrieval.questions import definition_lines, load_question_set, uses_symbol_words
from benchmarks.retrieval.snippets import (
    PACKAGES,
    SnippetSet,
    build_snippet_set,
    extract_functions,
    first_sentence,
    installed_package,
    is_public_module,
    pinned_version,
    questions_document,
    write_corpus,
)

MODULE = '''"""A module."""
import functools


@functools.cache
def shortest_path(graph, source, target):
    """Return the shortest path between two nodes of a graph.

    Longer description that is never part of the question.
    """
    if source == target:  # trivial
        return [source]

    def inner():
        """An inner helper is part of its parent, never a snippet of its own."""
        return graph[source]

    return inner()


def _private_helper(x):
    """Compute something for internal use only, not public."""
    return x


def short_doc(x):
    """Too short to ask."""
    return x


def no_doc(x):
    return x


def only_a_docstring():
    """This function has nothing but a docstring in it."""


def same_line():
    """The docstring shares its line with code here."""; return 1


async def fetch_all(urls):
    """Fetch every page of the list concurrently, e.g. for a crawl."""
    return [await u for u in urls]


class Graph:
    """A graph."""

    def __init__(self):
        """Initialise an empty graph with no nodes at all."""
        self.nodes = {}

    def add_node(self, node):
        """Add a single node to the graph, unless already present."""
        self.nodes.setdefault(node, {})

    def banner(self):
        """Return a banner that starts at column zero when printed."""
        return """
banner at column 0
"""


class _Hidden:
    def visible(self):
        """A public method of a private class is never taken."""
        return 1
'''


def test_first_sentence_ends_at_a_period_outside_abbreviations_and_initials() -> None:
    assert first_sentence("Return the sum.  And more.") == "Return the sum."
    assert first_sentence("Use a key, e.g. a name. Then go.") == "Use a key, e.g. a name."
    assert first_sentence("Due to A. Hagberg and others. Later.") == "Due to A. Hagberg and others."
    assert first_sentence("Is it done? Yes.") == "Is it done?"
    assert first_sentence("Compute the\n    value of x.\n\nDetails.") == "Compute the value of x."
    assert first_sentence("No period at all\nacross lines\n\nSecond paragraph.") == (
        "No period at all across lines"
    )
    assert first_sentence("Version 3.5 of the algorithm.") == "Version 3.5 of the algorithm."


@pytest.mark.parametrize(
    ("module", "public"),
    [
        ("pkg/__init__.py", True),
        ("pkg/algorithms/flow.py", True),
        ("pkg/_private.py", False),
        ("pkg/_impl/flow.py", False),
        ("pkg/algorithms/tests/test_flow.py", False),
        ("pkg/tests/helpers.py", False),
        ("pkg/conftest.py", False),
        ("pkg/test_something.py", False),
    ],
)
def test_public_modules(module: str, public: bool) -> None:
    assert is_public_module(module) is public


def test_extract_takes_public_documented_functions_without_their_docstrings() -> None:
    found = {f.qualname: f for f in extract_functions("pkg/graph.py", MODULE)}
    assert list(found) == ["shortest_path", "fetch_all", "Graph.add_node"]

    path = found["shortest_path"]
    assert path.summary == "Return the shortest path between two nodes of a graph."
    assert path.module == "pkg/graph.py"
    assert path.text.startswith("def shortest_path(graph, source, target):\n    if source")
    assert "@functools" not in path.text  # decorators left out, as the def node's span
    assert "Longer description" not in path.text and "shortest path between" not in path.text
    assert "    if source == target:  # trivial\n" in path.text  # comments and body kept
    assert '"""An inner helper' in path.text  # only the function's own docstring goes

    method = found["Graph.add_node"]
    assert method.text == "def add_node(self, node):\n    self.nodes.setdefault(node, {})\n"
    assert (
        found["fetch_all"].summary == "Fetch every page of the list concurrently, e.g. for a crawl."
    )
    for function in found.values():
        ast.parse(function.text)


def test_extract_skips_a_module_that_does_not_parse() -> None:
    assert extract_functions("pkg/broken.py", "def f(:\n") == []


def _sources() -> list[tuple[str, str]]:
    sources = [("pkg/graph.py", MODULE), ("pkg/tests/test_graph.py", MODULE)]
    for i in range(30):
        sources.append(
            (
                f"pkg/gen/m{i:02d}.py",
                f'def make_{i}(n):\n    """Build generated graph number {i} with n nodes."""\n'
                f"    return {i} * n\n\n\n"
                f'def size_{i}(g):\n    """Return the number of nodes in the graph."""\n'
                f"    return len(g) + {i}\n",
            )
        )
    sources.append(("pkg/other/graph_copy.py", MODULE))  # the same again: the first path wins
    return sources


def test_build_is_deterministic_and_names_files_without_giving_answers_away() -> None:
    first = build_snippet_set(_sources(), sample=10, seed=7)
    again = build_snippet_set(list(reversed(_sources())), sample=10, seed=7)
    assert first == again
    other = build_snippet_set(_sources(), sample=10, seed=8)
    assert {s.text for s in other.snippets} == {s.text for s in first.snippets}
    assert first.files() != other.files()  # another seed, another numbering

    n = len(first.snippets)
    assert n == 3 + 60  # graph.py's three, 30 x 2 generated; tests/ and the copy left out
    assert [s.path for s in first.snippets] == [f"snippets/s{i:05d}.py" for i in range(1, n + 1)]
    origins = [s.origin for s in first.snippets]
    assert len(set(origins)) == n
    assert not any("tests/" in o or o.startswith("pkg/other/") for o in origins)
    order = sorted(first.snippets, key=lambda s: s.origin)
    assert [s.path for s in order] != sorted(s.path for s in order)  # numbering is shuffled


def test_questions_are_sampled_from_snippets_with_a_sentence_of_their_own() -> None:
    built = build_snippet_set(_sources(), sample=10, seed=7)
    by_path = {s.path: s for s in built.snippets}
    assert len(built.questions) == 10
    assert [q.path for q in built.questions] == sorted(q.path for q in built.questions)
    for q in built.questions:
        snippet = by_path[q.path]
        assert q.question == snippet.summary
        assert q.question != "Return the number of nodes in the graph."  # shared by 30
        assert q.symbol == snippet.symbol and q.symbol not in q.path
        assert definition_lines(snippet.text)[q.symbol] == 1
        assert q.question not in snippet.text
        assert q.names_symbol == uses_symbol_words(q.question, q.symbol)
        assert q.intent == "code" and q.also == ()
    everything = build_snippet_set(_sources(), sample=1000, seed=7)
    assert len(everything.questions) == 3 + 30  # every snippet with a sentence of its own


def test_questions_document_loads_as_a_question_set_and_corpus_holds_only_snippets(
    tmp_path: Path,
) -> None:
    built: SnippetSet = build_snippet_set(_sources(), sample=5, seed=1)
    write_corpus(built, tmp_path / "corpus")
    written = sorted(p.relative_to(tmp_path / "corpus").as_posix() for p in tmp_path.rglob("*.py"))
    assert written == sorted(built.files())
    qfile = tmp_path / "questions.json"
    qfile.write_text(json.dumps(questions_document(built, ["pkg==1.0"])))
    loaded = load_question_set(qfile)
    assert loaded.questions == built.questions
    assert loaded.corpus == (".",)
    assert "pkg==1.0" in loaded.about and f"{len(built.snippets)} snippets" in loaded.about
    origins = [q["origin"] for q in json.loads(qfile.read_text())["questions"]]
    assert all(re.fullmatch(r"pkg/[\w/]+\.py:[\w.]+", o) for o in origins)


def test_the_benchmark_pins_the_packages_it_builds_from(tmp_path: Path) -> None:
    for package in PACKAGES:
        assert pinned_version(package) is not None, package
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# comment\ntorch==2.13.0\nNetworkX==3.6.1  # pinned\nsympy\n")
    assert pinned_version("networkx", reqs) == "3.6.1"
    assert pinned_version("sympy", reqs) is None


def test_installed_package_refuses_another_version() -> None:
    with pytest.raises(SystemExit, match=r"pathspec .* is installed; the snippet set pins 0\.0\.0"):
        installed_package("pathspec", "0.0.0")
    assert (installed_package("pathspec", None) / "__init__.py").is_file()
