"""The engine's pure decisions (tokens, globs, fusion, plans, states, settings) and the
embedding client against the local Ollama-API server."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg
import pytest

from codebase_mcp.config import load_settings, normalize_database_url
from codebase_mcp.embed.clients import backoff_delay, create_embedder, task_prefixes
from codebase_mcp.errors import (
    ConfigError,
    EmbedderError,
    EmbedderUnavailableError,
    ModelMissingError,
)
from codebase_mcp.index.changes import plan_changes
from codebase_mcp.jobs.job_queue import ending
from codebase_mcp.models import JobState
from codebase_mcp.search.filters import GlobError, glob_to_regex, normalize_language
from codebase_mcp.search.hybrid import plan_mode
from codebase_mcp.source.discover import SourceFile
from codebase_mcp.source.tokens import (
    WEIGHT_A,
    WEIGHT_D,
    chunk_vectors,
    chunk_vectors_python,
    identifier_words,
    query_terms,
    term_dimension,
    tsquery_of,
)
from codebase_mcp.store import db, embeddings
from mcp_supervisor.redact import mask_url
from tests.support.fake_ollama import FakeOllama, hashed_bag_of_words

# --- tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "words"),
    [
        ("parseDate", ("parsedate", "parse", "date")),
        ("parse_date", ("parsedate", "parse", "date")),
        ("ParseDate", ("parsedate", "parse", "date")),
        ("PARSE_DATE", ("parsedate", "parse", "date")),
        ("HTTPServer", ("httpserver", "http", "server")),
        ("utf8_decode", ("utf8decode", "utf", "8", "decode")),
        ("__init__", ("init",)),
        ("x", ("x",)),
        ("a" * 65, ()),  # data, not a name
    ],
)
def test_identifier_words(identifier: str, words: tuple[str, ...]) -> None:
    assert identifier_words(identifier) == words


def test_every_spelling_of_a_name_makes_the_same_query() -> None:
    spellings = ["parseDate", "parse_date", "ParseDate", "PARSE_DATE"]
    assert {tuple(query_terms(s)) for s in spellings} == {("parsedate", "parse", "date")}
    assert query_terms("parse date") == ["parse", "date"]


def test_stop_words_are_dropped_unless_nothing_else_is_left() -> None:
    assert query_terms("where do we parse the date") == ["parse", "date"]
    assert query_terms("what is this") == ["what", "is", "this"]
    assert query_terms("?!") == []


ChunkVectors = Callable[[Sequence[tuple[str, int]]], tuple[bytes, bytes, int, tuple[str, ...]]]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "chunk_vectors", [chunk_vectors, chunk_vectors_python], ids=["compiled", "python"]
)
async def test_binary_vectors_read_back_as_postgresql_would_write_them(
    pg_url: str, chunk_vectors: ChunkVectors
) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        for name, schema in (("tsvector", "pg_catalog"), ("sparsevec", "public")):
            await conn.set_type_codec(
                name, schema=schema, encoder=lambda b: b, decoder=lambda b: b, format="binary"
            )
        data, freqs, body, lexemes = chunk_vectors(
            [("parse_date", WEIGHT_A), ("x = parse_date(s) or y or y", WEIGHT_D)]
        )
        text = await conn.fetchval("SELECT $1::tsvector::text", data)
        # PostgreSQL's own reading of the words and positions we mean
        expected = await conn.fetchval(
            "SELECT $1::text::tsvector::text",
            "'parsedate':1A,5 'parse':2A,6 'date':3A,7 'x':4 's':8 'or':9,11 'y':10,12",
        )
        assert text == expected
        assert body == 9
        assert lexemes == ("date", "or", "parse", "parsedate", "s", "x", "y")

        # pgvector's reading of the frequencies: `y` twice in the body, `parse` once in
        # the symbol (its own dimension) and once in the body
        def one_hot(word: str, weight: int = WEIGHT_D) -> str:
            return f"{{{term_dimension(word, weight) + 1}:1}}/1000000000"

        async def frequency(word: str, weight: int = WEIGHT_D) -> float:
            value = await conn.fetchval(
                "SELECT -($1::sparsevec <#> $2::text::sparsevec)", freqs, one_hot(word, weight)
            )
            return float(value)

        assert await frequency("y") == 2
        assert await frequency("parse") == 1
        assert await frequency("parse", WEIGHT_A) == 1
        assert await frequency("y", WEIGHT_A) == 0
        # PostgreSQL's limits: 256 positions per word, none past 16383
        huge = " ".join(["foo"] * 300 + [f"w{i}x" for i in range(20_000)] + ["late"])
        data_huge, freqs_huge, body_huge, _ = chunk_vectors([(huge, WEIGHT_D)])
        assert body_huge == 16383
        assert (
            await conn.fetchval(
                "SELECT array_length(positions, 1) FROM unnest($1::tsvector) WHERE lexeme = 'foo'",
                data_huge,
            )
            == 256
        )
        assert (
            await conn.fetchval(
                "SELECT max(p) FROM unnest($1::tsvector), unnest(positions) p", data_huge
            )
            <= 16383
        )
        assert not await conn.fetchval("SELECT $1::tsvector @@ 'late'::tsquery", data_huge)
        assert (
            await conn.fetchval(
                "SELECT -($1::sparsevec <#> $2::text::sparsevec)", freqs_huge, one_hot("foo")
            )
            == 300
        )
        matches = await conn.fetchval(
            "SELECT $1::tsvector @@ $2::tsquery", data, tsquery_of(query_terms("parseDate"))
        )
        assert matches is True
        # Non-ASCII words, as the query splits them
        data_u, _, _, _ = chunk_vectors([("# 名前を返す crème brûlée Straße", WEIGHT_D)])
        for word in ("名前", "crème", "straße"):
            assert await conn.fetchval(
                "SELECT $1::tsvector @@ $2::tsquery", data_u, tsquery_of(query_terms(word))
            ), word
    finally:
        await conn.close()


# --- search decisions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("glob", "matches", "misses"),
    [
        ("*.py", ["a.py", "pkg/a.py", "pkg/sub/b.py"], ["a.pyc", "a_py", "py"]),
        ("src/*.py", ["src/a.py"], ["src/sub/a.py", "lib/src/a.py"]),
        ("src/**/*.py", ["src/a.py", "src/x/y/a.py"], ["lib/a.py"]),
        ("**/test_*.py", ["test_a.py", "x/test_a.py"], ["x/atest_a.py"]),
        ("a?c.go", ["abc.go", "d/axc.go"], ["ac.go", "a/c.go"]),
        ("[ab]*.rs", ["a1.rs", "b.rs"], ["c.rs"]),
        ("app/%", ["app/%"], ["app/x"]),  # SQL wildcards are literal
        ("a.b(c)+", ["a.b(c)+"], ["aXb(c)+", "a.bcc"]),
        ("[!a]b", ["cb", "x/cb"], ["ab", "x//b"]),  # a negated class never matches /
        ("[]]x", ["]x"], ["ax"]),  # ] first in a class is a member
        ("[!]]x", ["ax"], ["]x"]),
        ("[a-c-]", ["a", "b", "-"], ["d"]),
        ("[[]id].tsx", ["[id].tsx"], ["i.tsx"]),
        ("caf\\xe9.py", ["caf\\xe9.py"], ["caf\u00e9.py"]),  # the text form of a name
    ],
)
def test_glob_to_regex(glob: str, matches: list[str], misses: list[str]) -> None:
    # PostgreSQL's ARE and Python's re agree on everything the translation emits.
    pattern = re.compile(glob_to_regex(glob))
    for path in matches:
        assert pattern.match(path), (glob, path)
    for path in misses:
        assert not pattern.match(path), (glob, path)


@pytest.mark.parametrize(
    ("glob", "message"),
    [
        ("[z-a]", "the range z-a in [z-a] is reversed"),
        ("[!]", "the character class '[!]' is never closed"),
        ("[]", "is never closed"),
        ("src/[", "is never closed"),
        ("*.[ch", "is never closed"),
    ],
)
def test_malformed_globs_are_refused_before_postgresql_sees_them(glob: str, message: str) -> None:
    with pytest.raises(GlobError, match=re.escape(message)):
        glob_to_regex(glob)


@pytest.mark.anyio
async def test_postgresql_accepts_every_glob_translation(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        globs = ["*.py", "[]]x", "[!]]x", "[a-c-]", "[%_]", "a[\\]b", "**/[!.]*/**", "[[]"]
        for glob in globs:
            await conn.fetchval("SELECT 'x' ~ $1", glob_to_regex(glob))
    finally:
        await conn.close()


def test_plan_mode() -> None:
    assert plan_mode(None, has_vector=True, has_words=True) == (True, True)
    assert plan_mode(None, has_vector=False, has_words=True) == (False, True)
    assert plan_mode(None, has_vector=True, has_words=False) == (True, False)
    assert plan_mode("lexical", has_vector=True, has_words=True) == (False, True)
    assert plan_mode("vector", has_vector=True, has_words=True) == (True, False)
    assert plan_mode("vector", has_vector=False, has_words=True) == (False, True)


# --- index and job decisions ----------------------------------------------------------


def source(path: str) -> SourceFile:
    return SourceFile(path, Path("/nonexistent") / path, 1, 0, "python")


def test_plan_changes_by_content_hash() -> None:
    stored = {
        "same.py": db.StoredFile(1, "h-same"),
        "edited.py": db.StoredFile(2, "h-old"),
        "gone.py": db.StoredFile(4, "h-gone"),
    }
    found = [source(p) for p in ("same.py", "edited.py", "new.py", "bad.py")]
    hashes = ["h-same", "h-new", "h-x", None]
    plan = plan_changes(found, hashes, stored, force=False)
    # chunks stored without vectors are the catch-up's, not a reason to index again
    assert [s.rel_path for s in plan.changed] == ["edited.py", "new.py", "bad.py"]
    assert plan.unchanged == 1
    assert plan.deleted == ["gone.py"]
    forced = plan_changes(found, hashes, stored, force=True)
    assert len(forced.changed) == 4 and forced.unchanged == 0


def test_how_a_run_ends() -> None:
    me = "host:1:abcd"
    assert ending(False, None, None, None, me) == (JobState.COMPLETED, None, True)
    assert ending(False, "note", None, None, me).message == "note"
    assert ending(None, None, None, "boom", me)[:2] == (JobState.FAILED, "boom")
    cancelled = ending(True, None, "cancel", None, me)
    assert cancelled.state is JobState.CANCELLED and "resume" in (cancelled.message or "")
    # a stop by shutdown hands the job back to the queue, hard-cancelled or not
    for stopped in (True, None):
        back = ending(stopped, None, "shutdown", None, me)
        assert back.state is JobState.QUEUED and back.record
        assert back.message is not None and me in back.message and "resumes" in back.message
    # cancelled from outside without a stop request: handed back too
    assert ending(None, None, None, None, me).state is JobState.QUEUED
    # an error while stopping is part of the stop
    stopping = ending(None, None, "shutdown", "BrokenProcessPool: gone", me)
    assert stopping.state is JobState.QUEUED and "BrokenProcessPool" in (stopping.message or "")
    # a lost lease: the job is another replica's now, nothing is recorded
    assert ending(None, None, "lost", "ConnectionDoesNotExistError", me).record is False
    assert ending(True, None, "lost", None, me).record is False


def test_vectors_round_trip_through_the_binary_codec() -> None:
    values = [0.5, -1.25, 3.0]
    assert db.decode_vector(db.encode_vector(values)) == values
    assert db.decode_half(db.encode_half(values)) == values
    assert db.decode_half(db.encode_half([0.1, 65504.0])) == [0.0999755859375, 65504.0]


@pytest.mark.parametrize(
    ("value", "holdable"),
    [
        (0.0, True),
        (-65504.0, True),
        (65519.0, True),  # rounds to 65504
        (1e-9, True),  # underflows to zero: still a number
        (65520.0, False),
        (-1e6, False),
        (float("inf"), False),
        (float("nan"), False),
    ],
)
def test_the_store_holds_finite_values_within_half_precision(value: float, holdable: bool) -> None:
    model = embeddings.Model(1, "some-model", 3)
    vector = [0.25, value, -0.5]
    assert embeddings.holdable(vector) is holdable
    if holdable:
        assert len(embeddings.encode(model, [vector])) == 1
    else:
        with pytest.raises(embeddings.VectorValueError, match=r"some-model.*65504"):
            embeddings.encode(model, [[0.5] * 3, vector])


# --- settings -------------------------------------------------------------------------


def test_settings_name_every_bad_value_and_never_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            env={
                "REGISTRY_DATABASE_URL": "mysql://u:hunter2@h/db",
                "EMBEDDING_PROVIDER": "cohere",
                "EMBEDDING_DIMENSIONS": "9000",
                "OLLAMA_BASE_URL": "ftp://x",
                "CODEBASE_EMBED_BATCH_SIZE": "zero",
            }
        )
    message = str(info.value)
    for name in (
        "REGISTRY_DATABASE_URL",
        "EMBEDDING_PROVIDER",
        "EMBEDDING_DIMENSIONS",
        "OLLAMA_BASE_URL",
        "CODEBASE_EMBED_BATCH_SIZE",
    ):
        assert name in message
    assert "hunter2" not in message
    with pytest.raises(ConfigError, match="REGISTRY_DATABASE_URL: is required"):
        load_settings(env={})


def test_settings_accept_both_url_spellings_and_root_lists(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    s = load_settings(
        env={
            "REGISTRY_DATABASE_URL": "postgresql+asyncpg://u:p%40ss@db:5432/x",
            "CODEBASE_ROOTS": f"{a},{b}",
        }
    )
    assert s.asyncpg_dsn == "postgresql://u:p%40ss@db:5432/x"
    assert s.sqlalchemy_url == "postgresql+asyncpg://u:p%40ss@db:5432/x"
    assert s.roots == [a, b]
    assert "p%40ss" not in repr(s)
    assert load_settings(
        env={"REGISTRY_DATABASE_URL": "postgresql://h/x", "CODEBASE_ROOTS": f'["{a}"]'}
    ).roots == [a]
    assert normalize_database_url("postgres://h/x", driver=None) == "postgresql://h/x"


def test_mask_url() -> None:
    assert mask_url("postgresql://u:secret@h:5/d") == "postgresql://u:***@h:5/d"
    assert mask_url("postgresql://h/d") == "postgresql://h/d"


# --- embedder -------------------------------------------------------------------------


def test_task_prefixes_only_for_nomic() -> None:
    assert task_prefixes("nomic-embed-text") == ("search_document: ", "search_query: ")
    assert task_prefixes("nomic-embed-text:v1.5") == ("search_document: ", "search_query: ")
    assert task_prefixes("all-minilm") == ("", "")


def test_backoff_is_bounded_and_grows() -> None:
    assert all(0 <= backoff_delay(0) <= 0.2 for _ in range(100))
    assert all(0 <= backoff_delay(10) <= 5.0 for _ in range(100))
    assert max(backoff_delay(4) for _ in range(200)) > 0.4


def embedder_env(fake: FakeOllama, **extra: str) -> dict[str, str]:
    return {
        "REGISTRY_DATABASE_URL": "postgresql://h/x",
        "OLLAMA_BASE_URL": fake.url,
        **extra,
    }


@pytest.mark.anyio
async def test_batches_concurrency_and_retries_on_transient_failures(
    fake_ollama: FakeOllama,
) -> None:
    calls = {"n": 0}
    real = hashed_bag_of_words(768)

    def flaky(texts: Sequence[str]) -> list[list[float]]:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("dropped connection")  # the server closes without answering
        return real(texts)

    fake_ollama.embed_fn = flaky
    settings = load_settings(
        env=embedder_env(fake_ollama, CODEBASE_EMBED_BATCH_SIZE="3", CODEBASE_EMBED_RETRIES="4")
    )
    embedder = create_embedder(settings)
    try:
        vectors = await embedder.embed_documents([f"text {i}" for i in range(7)])
    finally:
        await embedder.aclose()
    assert len(vectors) == 7 and all(len(v) == 768 for v in vectors)
    posts = [body for path, body in fake_ollama.requests if path == "POST /api/embed"]
    assert sorted(len(b["input"]) for b in posts[-3:]) == [1, 3, 3]  # batches of 3
    assert len(posts) == 5  # two dropped, then three batches
    assert all(t.startswith("search_document: ") for b in posts for t in b["input"])


@pytest.mark.anyio
async def test_embedder_errors_say_what_is_wrong(fake_ollama: FakeOllama) -> None:
    settings = load_settings(env=embedder_env(fake_ollama, OLLAMA_EMBEDDING_MODEL="absent"))
    embedder = create_embedder(settings)
    try:
        with pytest.raises(ModelMissingError, match=r"ollama pull absent"):
            await embedder.embed_query("q")
    finally:
        await embedder.aclose()

    fake_ollama.dims = 384  # the model answers with another size than configured
    embedder = create_embedder(
        load_settings(env=embedder_env(fake_ollama, EMBEDDING_DIMENSIONS="768"))
    )
    try:
        with pytest.raises(EmbedderError, match="384-dimensional vectors where 768"):
            await embedder.embed_query("q")
    finally:
        await embedder.aclose()
    # unconfigured, the size is learned from the first answer, then held to
    embedder = create_embedder(load_settings(env=embedder_env(fake_ollama)))
    try:
        assert embedder.dimensions is None
        await embedder.embed_query("q")
        assert embedder.dimensions == 384
        fake_ollama.dims = 768
        with pytest.raises(EmbedderError, match="768-dimensional vectors where 384"):
            await embedder.embed_query("q")
    finally:
        await embedder.aclose()

    url = fake_ollama.url
    fake_ollama.stop()
    settings = load_settings(
        env={"REGISTRY_DATABASE_URL": "postgresql://h/x", "OLLAMA_BASE_URL": url}
    )
    embedder = create_embedder(settings)
    try:
        with pytest.raises(EmbedderUnavailableError, match=r"127\.0\.0\.1:\d+ unavailable"):
            await embedder.embed_query("q")
        assert (await embedder.check())["ok"] is False
    finally:
        await embedder.aclose()


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("Python", "python"),
        ("py", "python"),
        ("ts", "typescript"),
        ("rs", "rust"),
        ("C#", "csharp"),
        ("golang", "go"),
        ("markdown", "markdown"),
        ("cpp", "cpp"),
    ],
)
def test_language_filter_names(typed: str, stored: str) -> None:
    assert normalize_language(typed) == stored
