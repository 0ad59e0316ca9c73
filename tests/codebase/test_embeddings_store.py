"""The embeddings store (issues 12 and 13): vectors keyed by (model, hash of the text), so
an edit embeds only what it changed, a branch switch or another repository reuses what is
known, several models live side by side, the size of a server's model is learned, and
vectors nobody uses are collected. The Ollama-API test server counts what it embeds."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest

from codebase_mcp.engine import Engine, JobState
from codebase_mcp.store import embeddings
from tests.codebase.fixtures_engine import index_and_wait, migrate_async, open_engine, settings_for
from tests.support.fake_ollama import FakeOllama

pytestmark = pytest.mark.anyio


def functions(prefix: str, count: int, changed: int | None = None) -> str:
    """A module of `count` functions; `changed`: that one's body differs and is two lines
    longer (every function after it moves down)."""
    parts = []
    for i in range(count):
        body = "y = x\n    y = y * 2\n    return y" if i == changed else f"return x + {i}"
        parts.append(f"def {prefix}_{i}(x):\n    {body}\n")
    return "\n\n".join(parts)


def documents(fake: FakeOllama) -> list[str]:
    return [t for t in fake.embedded_texts if t.startswith("search_document: ")]


async def indexed(engine: Engine, path: Path) -> None:
    job = await index_and_wait(engine, path)
    assert job.state is JobState.COMPLETED, job


async def test_a_one_function_edit_embeds_that_function_only(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "big.py").write_text(functions("step", 60))
    await migrate_async(pg_url)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await indexed(engine, repo)
        assert len(documents(fake_ollama)) == 60
        fake_ollama.embedded_texts.clear()
        (repo / "big.py").write_text(functions("step", 60, changed=17))
        await indexed(engine, repo)
        changed = documents(fake_ollama)
        assert len(changed) == 1  # was 60: every chunk of the file
        assert "y = y * 2" in changed[0]
        response = await engine.search("step_17 doubles x", limit=3)
        assert response.mode == "hybrid"


async def test_a_branch_switch_and_another_checkout_reuse_what_is_known(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    main = {f"m{i}.py": functions(f"f{i}", 4) for i in range(5)}
    feature = dict(main) | {"m2.py": functions("f2", 4, changed=1), "new.py": functions("n", 2)}
    repo = tmp_path / "repo"
    clone = tmp_path / "clone"

    def checkout(where: Path, files: dict[str, str]) -> None:
        where.mkdir(exist_ok=True)
        for old in where.glob("*.py"):
            if old.name not in files:
                old.unlink()
        for name, text in files.items():
            (where / name).write_text(text)

    await migrate_async(pg_url)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        checkout(repo, main)
        await indexed(engine, repo)
        assert len(documents(fake_ollama)) == 20
        fake_ollama.embedded_texts.clear()
        checkout(repo, feature)  # git checkout feature
        await indexed(engine, repo)
        assert len(documents(fake_ollama)) == 1 + 2  # the changed function, the new file
        fake_ollama.embedded_texts.clear()
        checkout(repo, main)  # and back: every text is known
        await indexed(engine, repo)
        assert documents(fake_ollama) == []
        checkout(clone, feature)  # another checkout, the same paths: nothing new
        await indexed(engine, clone)
        assert documents(fake_ollama) == []
        hits = await engine.search("f2_1", mode="vector", repository=str(clone))
        assert hits.results and all(r.repository == str(clone) for r in hits.results)


async def test_models_live_side_by_side_and_a_switch_catches_up_while_search_answers(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for i in range(6):
        (repo / f"m{i}.py").write_text(functions(f"g{i}", 3))
    await migrate_async(pg_url)
    fake_ollama.models.add("small-model:latest")
    first = settings_for(pg_url, fake_ollama, tmp_path)
    async with open_engine(first) as engine:
        await indexed(engine, repo)
    # Another model, another size (no EMBEDDING_DIMENSIONS: learned from its answers).
    fake_ollama.dims = 384
    second = settings_for(
        pg_url, fake_ollama, tmp_path, OLLAMA_EMBEDDING_MODEL="small-model", EMBEDDING_DIMENSIONS=""
    )
    fake_ollama.embed_delay = 0.05
    async with open_engine(second) as engine:
        # Before any vector of the new model: search answers, by full text.
        response = await engine.search("g3_1")
        assert response.results and response.results[0].symbol == "g3_1"
        with anyio.fail_after(30):  # the catch-up embeds the 18 chunks for the new model
            while True:
                (info,) = await engine.list_repositories()
                if info.chunks_embedded == info.chunks:
                    break
                await engine.search("g3_1")  # never fails meanwhile
                await anyio.sleep(0.05)
        assert (info.embedding_model, info.embedding_dimensions) == ("small-model", 384)
        response = await engine.search("g3_1")
        assert response.mode == "hybrid" and response.results[0].symbol == "g3_1"
        assert (await engine.health())["embedder"]["vectors"]["chunks_embedded"] == 18
    fake_ollama.embed_delay = 0
    fake_ollama.dims = 768
    fake_ollama.embedded_texts.clear()
    async with open_engine(first) as engine:  # back to the first model: all still there
        await indexed(engine, repo)
        assert documents(fake_ollama) == []
        assert (await engine.search("g3_1")).mode == "hybrid"
    conn = await asyncpg.connect(pg_url)
    try:
        sizes = dict(await conn.fetch("SELECT name, dimensions FROM embedding_models"))
        assert sizes == {"nomic-embed-text": 768, "small-model": 384}
    finally:
        await conn.close()


def test_unused_vectors_are_collected_once_they_are_many() -> None:
    assert not embeddings.worth_collecting(100, 1000)  # a branch switched away from
    assert not embeddings.worth_collecting(5_000, 10_000)
    assert embeddings.worth_collecting(5_001, 10_000)
    assert not embeddings.worth_collecting(30_000, 200_000)  # under a fifth
    assert embeddings.worth_collecting(3, 10, minimum=0)


async def test_vectors_nobody_uses_are_collected(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text(functions("a", 3))
    (repo / "b.py").write_text(functions("b", 3))
    await migrate_async(pg_url)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        await indexed(engine, repo)
        (repo / "b.py").unlink()
        (repo / "a.py").write_text(functions("a", 3, changed=0))
        await indexed(engine, repo)
        async with engine.pool.acquire() as conn:
            # kept, few as they are: switching back would need them
            assert await conn.fetchval("SELECT count(*) FROM embeddings") == 7
            assert await embeddings.collect_garbage(conn, minimum=0) == 4
            assert await conn.fetchval("SELECT count(*) FROM embeddings") == 3
            assert not await conn.fetchval(
                "SELECT count(*) FROM embeddings e WHERE NOT EXISTS "
                "(SELECT 1 FROM chunks c WHERE c.embed_hash = e.text_hash)"
            )


async def test_the_size_of_a_servers_model_is_learned_before_its_first_job(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.py").write_text(functions("a", 2))
    await migrate_async(pg_url)
    fake_ollama.dims = 512
    settings = settings_for(pg_url, fake_ollama, tmp_path, EMBEDDING_DIMENSIONS="")
    assert settings.dimensions is None
    async with open_engine(settings) as engine:
        assert fake_ollama.embedded_texts == []  # nothing called out at start
        await indexed(engine, repo)
        (info,) = await engine.list_repositories()
        assert (info.embedding_dimensions, info.chunks_embedded) == (512, 2)
    # The embedder down at a first job: the chunks are stored, the job says why.
    fake_ollama.fail_embed = True
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.py").write_text(functions("o", 2))
    settings = settings_for(
        pg_url,
        fake_ollama,
        tmp_path,
        EMBEDDING_DIMENSIONS="",
        OLLAMA_EMBEDDING_MODEL="nomic-embed-text:v2",
    )
    fake_ollama.models.add("nomic-embed-text:v2")
    async with open_engine(settings) as engine:
        job = await index_and_wait(engine, other)
        assert job.state is JobState.COMPLETED
        assert job.message is not None and job.message.startswith("embedder unavailable")
        assert (await engine.search("o_1", mode="lexical")).results


async def test_two_writers_storing_the_same_text_keep_the_first_vector(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """Writers race between `known` and `store`: the fast path (COPY) meets a vector
    stored meanwhile, and the rest of the batch is still kept."""
    await migrate_async(pg_url)
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        model = engine.model
        assert model is not None
        first, second, third = (embeddings.text_hash(t) for t in ("one", "two", "three"))
        size = model.dimensions
        async with engine.pool.acquire() as conn, conn.transaction():
            await embeddings.store(conn, model, [second], embeddings.encode(model, [[0.5] * size]))
        async with engine.pool.acquire() as conn, conn.transaction():
            await embeddings.store(
                conn,
                model,
                [first, second, third],
                embeddings.encode(model, [[0.25] * size, [1.0] * size, [0.75] * size]),
            )
            kept = await conn.fetch(
                "SELECT text_hash, embedding FROM embeddings WHERE model_id = $1", model.id
            )
        values = {bytes(r["text_hash"]): r["embedding"][0] for r in kept}
        assert values == {first: 0.25, second: 0.5, third: 0.75}
