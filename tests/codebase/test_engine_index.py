"""Indexing and search through the engine, against a real PostgreSQL and the local
Ollama-API server."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from codebase_mcp.engine import EngineError, JobState
from codebase_mcp.source.discover import PathNotAllowedError
from tests.codebase.fixtures_engine import (
    index_and_wait,
    migrate_async,
    open_engine,
    settings_for,
    write_repo,
)
from tests.support.fake_ollama import FakeOllama

pytestmark = pytest.mark.anyio


async def indexed_paths(pg_url: str) -> set[str]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT path FROM files")
    finally:
        await conn.close()
    return {r["path"] for r in rows}


async def test_index_then_search_by_name_and_by_description(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED, job
        assert job.errors == ()
        assert job.files_done == job.files_total == 8  # with app/blob.py, skipped as binary
        assert job.chunks_done == job.chunks_total > 0
        # the model saw nomic's task prefix, with each chunk's path
        documents = list(fake_ollama.embedded_texts)
        assert len(documents) == job.chunks_done
        assert all(t.startswith("search_document: ") for t in documents)
        assert any(t.startswith("search_document: app/dates.py parse_date\n") for t in documents)

        # gitignored, binary and built-in-ignored files never reach the database
        assert await indexed_paths(pg_url) == {
            ".gitignore",
            "app/dates.py",
            "app/net.py",
            "web/cart.ts",
            "cmd/main.go",
            "src/lib.rs",
            "docs/guide.md",
        }

        # the symbol by its name, however the identifier is spelled
        for query in ("parseDate", "parse_date", "parse date", "ParseDate"):
            response = await engine.search(query)
            assert response.mode == "hybrid", (query, response)
            top = response.results[0]
            assert (top.path, top.symbol) == ("app/dates.py", "parse_date"), (query, response)
            assert top.start_line <= 6 <= top.end_line
            assert "fromisoformat" in top.snippet
            assert top.language == "python"
            assert top.repository == str(repo)

        # by a description of what it does
        response = await engine.search("connect a tcp socket to a remote server")
        assert response.results[0].symbol == "open_connection", response
        response = await engine.search("shopping cart rendering")
        assert response.results[0].path == "web/cart.ts", response

        assert fake_ollama.embedded_texts[-1] == "search_query: shopping cart rendering"

        repos = await engine.list_repositories()
        assert [(r.path, r.files, r.embedding_model) for r in repos] == [
            (str(repo), 7, "nomic-embed-text")
        ]
        assert repos[0].chunks == job.chunks_done
        assert repos[0].last_indexed is not None


async def test_filters_language_path_glob_and_repository(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    one, two = write_repo(tmp_path, "one"), write_repo(tmp_path, "two")
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        for repo in (one, two):
            assert (await index_and_wait(engine, repo)).state is JobState.COMPLETED

        everywhere = await engine.search("checksum", limit=50)
        assert {r.repository for r in everywhere.results} == {str(one), str(two)}

        only_two = await engine.search("checksum", repository=str(two), limit=50)
        assert only_two.results
        assert {r.repository for r in only_two.results} == {str(two)}
        by_name = await engine.search("checksum", repository="one", limit=50)
        assert {r.repository for r in by_name.results} == {str(one)}

        go = await engine.search("checksum data bytes", language="go", limit=50)
        assert go.results
        assert {r.language for r in go.results} == {"go"}

        globbed = await engine.search("def", path_glob="app/*.py", limit=50)
        assert globbed.results
        assert {r.path for r in globbed.results} <= {"app/dates.py", "app/net.py"}
        by_ext = await engine.search("reverse words", path_glob="*.rs", limit=50)
        assert {r.path for r in by_ext.results} == {"src/lib.rs"}
        # glob metacharacters of SQL are literal
        assert (await engine.search("parse", path_glob="app/%", limit=50)).results == ()


async def test_reindex_embeds_only_the_changed_file_and_drops_deleted_ones(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        first = await index_and_wait(engine, repo)
        assert first.state is JobState.COMPLETED

        fake_ollama.embedded_texts.clear()
        unchanged = await index_and_wait(engine, repo)
        assert unchanged.state is JobState.COMPLETED
        assert unchanged.files_total == 8
        assert unchanged.files_unchanged == 7  # the binary file is looked at again, never stored
        assert fake_ollama.embedded_texts == []

        (repo / "app" / "net.py").write_text(
            "def close_connection(sock):\n    '''Hang up a socket.'''\n    sock.close()\n"
        )
        (repo / "src" / "lib.rs").unlink()
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED
        assert job.files_unchanged == 5
        assert job.files_deleted == 1
        assert len(fake_ollama.embedded_texts) == job.chunks_done == 1
        assert "close_connection" in fake_ollama.embedded_texts[0]

        assert "src/lib.rs" not in await indexed_paths(pg_url)
        response = await engine.search("reverse_words")
        assert all(r.path != "src/lib.rs" for r in response.results)
        response = await engine.search("open_connection", mode="lexical")
        assert all(r.symbol != "open_connection" for r in response.results)
        response = await engine.search("close_connection")
        assert response.results[0].symbol == "close_connection"

        fake_ollama.embedded_texts.clear()
        forced = await index_and_wait(engine, repo, force=True)
        assert forced.files_unchanged == 0
        (info,) = await engine.list_repositories()
        # every file read and chunked again, no text embedded again: the store holds them
        assert forced.chunks_done == info.chunks == info.chunks_embedded
        assert fake_ollama.embedded_texts == []


async def test_lexical_fallback_when_the_embedder_fails_or_is_gone(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await index_and_wait(engine, repo)
        fake_ollama.fail_embed = True
        response = await engine.search("parseDate")
        assert response.mode == "lexical"
        assert response.notice is not None and "embedder unavailable" in response.notice
        assert response.results[0].symbol == "parse_date"
        assert {r.mode for r in response.results} == {"lexical"}
        health = await engine.health()
        assert health["status"] == "degraded"
        assert health["database"]["ok"] is True

    url = fake_ollama.url
    fake_ollama.stop()  # nothing listens there any more
    async with open_engine(settings_for(pg_url, url, tmp_path)) as engine:
        response = await engine.search("parse date")
        assert response.mode == "lexical"
        assert response.results[0].symbol == "parse_date"


async def test_embedder_down_while_indexing_stores_for_lexical_and_embeds_later(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        fake_ollama.fail_embed = True
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED
        assert job.message is not None and "embedder unavailable" in job.message
        response = await engine.search("parse date", mode="lexical")
        assert response.results[0].symbol == "parse_date"

        with anyio.fail_after(10):  # the catch-up after the job found the embedder down
            while True:
                if engine.catchup_progress.state == "waiting":
                    break
                await anyio.sleep(0.02)

        # The embedder answers again: a search notices, and the chunks get their vectors
        # in the background, with no index job.
        fake_ollama.fail_embed = False
        fake_ollama.embedded_texts.clear()
        response = await engine.search("parse date")
        with anyio.fail_after(10):
            while True:
                if (await engine.list_repositories())[0].chunks_embedded == job.chunks_done:
                    break
                await anyio.sleep(0.05)
        assert len(fake_ollama.embedded_texts) == job.chunks_done + 1  # and the query
        response = await engine.search("parse date")
        assert response.mode == "hybrid"
        assert response.results[0].symbol == "parse_date"
        health = await engine.health()
        assert health["embedder"]["vectors"]["chunks_embedded"] == job.chunks_done


async def test_missing_model_is_named_with_the_pull_command(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    fake_ollama.models.clear()
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED
        assert job.message is not None
        assert "model nomic-embed-text is not present" in job.message
        assert "ollama pull nomic-embed-text" in job.message
        health = await engine.health()
        assert health["embedder"]["ok"] is False
        assert "ollama pull" in health["embedder"]["error"]


async def test_openai_compatible_provider(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url, dimensions=384)
    fake_ollama.dims = 384
    fake_ollama.models.add("text-embedder:latest")
    repo = write_repo(tmp_path)
    settings = settings_for(
        pg_url,
        "http://127.0.0.1:9",  # Ollama is not used with this provider
        tmp_path,
        EMBEDDING_PROVIDER="openai",
        OPENAI_BASE_URL=fake_ollama.url + "/v1",
        OPENAI_API_KEY="sk-test",
        EMBEDDING_MODEL="text-embedder",
        EMBEDDING_DIMENSIONS="384",
    )
    async with open_engine(settings) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED and job.message is None
        response = await engine.search("parse date")
        assert response.mode == "hybrid"
        assert response.results[0].symbol == "parse_date"
    paths = {p for p, _ in fake_ollama.requests}
    assert "POST /v1/embeddings" in paths
    assert "POST /api/embed" not in paths
    # no task prefixes for a model that was not trained with them
    assert not any(t.startswith("search_") for t in fake_ollama.embedded_texts)


async def test_paths_outside_the_roots_and_bad_input_are_refused(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    allowed = tmp_path / "allowed"
    write_repo(allowed)
    outside = write_repo(tmp_path, "outside")
    async with open_engine(settings_for(pg_url, fake_ollama, allowed)) as engine:
        with pytest.raises(PathNotAllowedError, match="not under an allowed root"):
            await engine.start_index(str(outside))
        with pytest.raises(PathNotAllowedError):
            await engine.start_index(str(allowed / ".." / "outside"))
        with pytest.raises(EngineError, match="not a directory"):
            await engine.start_index(str(allowed / "repo" / "app" / "dates.py"))
        with pytest.raises(EngineError, match="empty"):
            await engine.search("   ")
        with pytest.raises(EngineError, match="no indexing job"):
            await engine.job_status("not-a-job")
        with pytest.raises(EngineError, match="no indexed repository"):
            await engine.remove_repository(str(outside))


async def test_remove_repository_deletes_its_rows(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await index_and_wait(engine, repo)
        removed = await engine.remove_repository(str(repo))
        assert removed.path == str(repo) and removed.files == 7
        assert await engine.list_repositories() == []
        assert await indexed_paths(pg_url) == set()
        assert (await engine.search("parse date")).results == ()


async def test_chunking_in_worker_processes(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_repo(tmp_path)
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_INDEX_WORKERS="2")
    async with open_engine(settings) as engine:
        job = await index_and_wait(engine, repo)
        assert job.state is JobState.COMPLETED and job.errors == ()
        assert job.files_done == 8
        assert (await engine.search("parseDate")).results[0].symbol == "parse_date"
