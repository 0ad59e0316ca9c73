"""The compiled builder of a chunk's search vectors (codebase_mcp._tsvector) against its
reference, tokens.chunk_vectors_python: the same tsvector, term-frequency sparsevec and
body length for real code, for generated text aimed at the edges (capital runs, digits,
underscores, 64-character identifiers) and at PostgreSQL's and pgvector's limits; text
with non-ASCII characters is left to the reference. What the bytes mean to PostgreSQL is
checked in test_engine_units (both builders). A server without it logs why."""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import pytest

from codebase_mcp.logs import configure_logging
from codebase_mcp.source import tokens
from codebase_mcp.source.chunk import ChunkOptions, chunk_source
from codebase_mcp.source.tokens import WEIGHT_A, WEIGHT_B, WEIGHT_D, chunk_vectors_python
from tests.codebase.fixtures_engine import migrate_async, open_engine, settings_for
from tests.support.fake_ollama import FakeOllama

try:
    from codebase_mcp._tsvector import chunk_vectors as compiled
except ImportError:  # pragma: no cover - the suite's install always has a C compiler
    compiled = None

Sections = list[tuple[str, int]]


def test_the_compiled_builder_is_installed_and_used() -> None:
    # No silent fallback here: the suite's install (scripts/test) builds the extension.
    assert compiled is not None, "codebase_mcp._tsvector is missing: pip install -e . with gcc"
    assert tokens.COMPILED
    assert tokens._compiled_chunk_vectors is compiled


def assert_same_bytes(cases: list[Sections]) -> None:
    """The compiled builder gives the reference's bytes, or None for non-ASCII text (and
    then the public builder gives the reference's)."""
    assert compiled is not None
    for sections in cases:
        expected = chunk_vectors_python(sections)
        found = compiled(sections)
        if all(text.isascii() for text, _ in sections):
            assert found == expected, sections
        else:
            assert found is None, sections
        assert tokens.chunk_vectors(sections) == expected, sections


def stdlib_chunks(every: int) -> list[Sections]:
    """Every `every`-th Python file of the standard library, chunked as the indexer does."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py"))[::every]
    cases: list[Sections] = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = str(path.relative_to(root))
        for chunk in chunk_source(text, "python", ChunkOptions()):
            cases.append([(chunk.symbol or "", WEIGHT_A), (rel, WEIGHT_B), (chunk.text, WEIGHT_D)])
    return cases


def test_same_bytes_on_real_code() -> None:
    cases = stdlib_chunks(every=4)
    assert len(cases) > 1000
    assert sum(all(t.isascii() for t, _ in c) for c in cases) > 0.9 * len(cases)
    assert_same_bytes(cases)


# Characters chosen for the identifier rules: capital and lower-case letters (so runs like
# HTTPServer and aB occur often), digits, the underscore and separators.
ALPHABET = "ABZabz09_ _-.\n"
# Non-ASCII letters, a combining accent, an emoji and a lone surrogate (a file name that is
# not UTF-8): the reference's work, never the compiled builder's.
NON_ASCII = "\u00e9\u00c9\u4e2d\u0301\U0001f600\udc80"


def random_text(rng: random.Random, alphabet: str = ALPHABET) -> str:
    pieces = []
    for _ in range(rng.randrange(0, 40)):
        if rng.random() < 0.1:
            # identifiers around the 64-character limit
            pieces.append(rng.choice("aB_1") * rng.choice([63, 64, 65, 200]))
        else:
            pieces.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12))))
    return "".join(pieces)


def test_same_bytes_on_generated_text() -> None:
    rng = random.Random(20261121)
    cases = [
        [(random_text(rng), rng.randrange(4)) for _ in range(rng.randrange(0, 4))]
        for _ in range(5000)
    ]
    assert_same_bytes(cases)


def test_non_ascii_text_takes_the_reference_path() -> None:
    rng = random.Random(20261201)
    cases = [
        [(random_text(rng, ALPHABET + NON_ASCII), rng.randrange(4)) for _ in range(3)]
        for _ in range(500)
    ]
    cases = [c for c in cases if not all(t.isascii() for t, _ in c)]
    assert len(cases) > 400
    assert_same_bytes(cases)


def test_same_bytes_at_postgresqls_limits() -> None:
    many = " ".join(f"w{i}" for i in range(20_000))  # positions end at 16383
    repeated = " ".join(["self"] * 300)  # 256 positions per word at most

    # More distinct words than a sparsevec holds (16,000): the most frequent are kept.
    def letters(i: int) -> str:  # one lower-case word per number: one lexeme each
        out = ""
        while True:
            i, r = divmod(i, 26)
            out += chr(ord("a") + r)
            if i == 0:
                return "q" + out

    distinct = " ".join(letters(i) for i in range(16_300))
    assert_same_bytes(
        [
            [("", WEIGHT_A)],
            [],
            [(repeated, WEIGHT_D)],
            [("parse_date", WEIGHT_A), (many, WEIGHT_D), ("late", WEIGHT_D)],
            [(many, WEIGHT_A), (repeated, WEIGHT_B)],
            [(repeated + " " + many, WEIGHT_D), ("later", WEIGHT_A)],
            [(distinct, WEIGHT_D), ("self self", WEIGHT_A)],
        ]
    )
    _, sparse, _, _ = chunk_vectors_python([(distinct, WEIGHT_D)])
    assert int.from_bytes(sparse[4:8], "big") == tokens.SPARSE_MAX_NNZ


@pytest.mark.parametrize(
    ("sections", "error"),
    [
        (None, TypeError),
        ([("text",)], TypeError),
        ([["text", 0]], TypeError),
        ([(b"text", 0)], TypeError),
        ([("text", "A")], TypeError),
        ([("text", 4)], ValueError),
        ([("text", -1)], ValueError),
    ],
)
def test_bad_sections_are_refused(sections: object, error: type[Exception]) -> None:
    assert compiled is not None
    with pytest.raises(error):
        compiled(sections)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_server_without_the_compiled_builder_says_so(
    pg_url: str,
    fake_ollama: FakeOllama,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await migrate_async(pg_url)
    configure_logging("info", "console")
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)):
        pass
    assert "_tsvector is missing" not in capsys.readouterr().err
    monkeypatch.setattr(tokens, "COMPILED", False)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)):
        pass
    out, err = capsys.readouterr()
    assert out == ""
    assert "codebase_mcp._tsvector is missing (installed without a C compiler)" in err
