"""Bulk loading: a large index job sets its model's HNSW index aside and builds it once at
the end; nothing is lost to a stop, a crash or a downgrade."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import asyncpg
import pytest

from codebase_mcp.config import Settings
from codebase_mcp.engine import JobState
from codebase_mcp.search.filters import Filters
from codebase_mcp.search.hybrid import VECTOR_SETTINGS, vector_sql
from codebase_mcp.store import embeddings, vector_index
from codebase_mcp.store.db import Pool, create_pool
from tests.codebase.fixtures_engine import (
    downgrade,
    index_and_wait,
    migrate,
    migrate_async,
    open_engine,
    settings_for,
    wait_for_progress,
    write_modules,
)
from tests.support.fake_ollama import FakeOllama
from tests.support.pg import running_cluster

pytestmark = pytest.mark.anyio

# --- decisions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "stored", "min_files", "expected"),
    [
        (500, 0, 500, True),  # a first index of a large repository
        (499, 0, 500, False),  # too small to be worth a build
        (1000, 2000, 500, True),  # a second repository as large as the first
        (1000, 2001, 500, False),  # the build would redo more than twice the job's share
        (10_000, 0, 0, False),  # 0: never
    ],
)
def test_bulk_load_worthwhile(new: int, stored: int, min_files: int, expected: bool) -> None:
    assert vector_index.bulk_load_worthwhile(new, stored, min_files) is expected


def test_build_memory_fits_the_graph_within_bounds() -> None:
    mib = 1 << 20
    assert vector_index.build_memory(0, 768) == 64 * mib
    assert 300 * mib < vector_index.build_memory(75_000, 768) < 400 * mib
    assert vector_index.build_memory(10_000_000, 768) == 1024 * mib


def test_idempotent_definitions() -> None:
    assert vector_index.idempotent("CREATE INDEX e ON public.chunks USING hnsw (x)") == (
        "CREATE INDEX IF NOT EXISTS e ON public.chunks USING hnsw (x)"
    )
    assert vector_index.idempotent("CREATE UNIQUE INDEX u ON t (x)") == (
        "CREATE UNIQUE INDEX IF NOT EXISTS u ON t (x)"
    )


# --- against PostgreSQL --------------------------------------------------------------


def bulk_settings(pg_url: str, fake_ollama: FakeOllama, roots: Path) -> Settings:
    """A bulk load from 20 files on, 4 files per batch: small repositories exercise it."""
    return settings_for(
        pg_url,
        fake_ollama,
        roots,
        CODEBASE_BULK_INDEX_MIN_FILES="20",
        CODEBASE_FILE_BATCH_SIZE="4",
    )


@asynccontextmanager
async def database_pool(url: str) -> AsyncIterator[Pool]:
    """The engine's kind of pool (vector codec included), without an engine."""
    pool = await create_pool(settings_for(url, "http://127.0.0.1:9", "/tmp"))
    try:
        yield pool
    finally:
        await pool.close()


# The first model a fresh database registers (the engines here embed with one model).
INDEX = "embeddings_hnsw_1"


async def index_state(url: str, name: str = INDEX) -> tuple[str | None, list[str]]:
    """(the model's vector index's definition or None, the names set aside).
    Tests poll this while the engine drops and builds the index: pg_get_indexdef reads
    the catalog outside the query's snapshot, so an index dropped meanwhile fails the
    read ("cache lookup failed"); it is read again."""
    conn = await asyncpg.connect(url)
    try:
        for attempt in range(20):
            try:
                definition = await conn.fetchval(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = $1", name
                )
                break
            except asyncpg.InternalServerError as exc:
                if "cache lookup failed" not in str(exc) or attempt == 19:
                    raise
                await anyio.sleep(0.01)
        aside = [r[0] for r in await conn.fetch("SELECT name FROM deferred_indexes")]
    finally:
        await conn.close()
    return definition, aside


async def a_model(pool: Pool, dimensions: int = 768) -> embeddings.Model:
    async with pool.acquire() as conn:
        model = await embeddings.register(conn, "test-model", dimensions)
    assert model.index_name == INDEX
    return model


async def store_random_vectors(conn: asyncpg.Connection, count: int = 2000) -> None:
    """The first model ('test-model', 768 dimensions) with `count` distinct vectors."""
    await conn.execute("INSERT INTO embedding_models (name, dimensions) VALUES ('test-model', 768)")
    await conn.execute(
        """
        INSERT INTO embeddings (model_id, text_hash, embedding)
        SELECT 1, sha256(g::text::bytea),
               (SELECT array_agg(random())::vector(768) FROM generate_series(1, 768)
                WHERE g > 0)  -- correlated: a new vector per row
        FROM generate_series(1, $1) g
        """,
        count,
    )


async def until_set_aside(url: str) -> None:
    with anyio.fail_after(30):
        while True:
            if (await index_state(url))[0] is None:
                return
            await anyio.sleep(0.02)


async def test_a_large_first_index_loads_without_the_vector_index_and_builds_it_once(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "big", 40)
    fake_ollama.embed_delay = 0.05
    settings = bulk_settings(pg_url, fake_ollama, tmp_path)
    async with open_engine(settings) as engine:
        original, _ = await index_state(pg_url)  # the model's, made when it registered
        assert original is not None
        job = await engine.start_index(str(repo))
        await until_set_aside(pg_url)
        assert (await index_state(pg_url))[1] == [INDEX]
        # Meanwhile searches still answer by vector (exactly, without the index).
        await wait_for_progress(engine, job.id)
        response = await engine.search("big_lookup_3", mode="vector")
        assert response.results
        fake_ollama.embed_delay = 0
        with anyio.fail_after(60):
            done = await engine.wait_job(job.id)
        assert done.state is JobState.COMPLETED, done
        # The job ends when the index is back, as it was.
        assert await index_state(pg_url) == (original, [])
        response = await engine.search("store a value under big_store_7", mode="vector")
        assert any(r.path == "big_007.py" for r in response.results)

        # A small job afterwards inserts into the graph as it goes.
        small = write_modules(tmp_path, "small", 5)
        fake_ollama.embed_delay = 0.05
        job = await engine.start_index(str(small))
        while (current := await engine.job_status(job.id)).state in (
            JobState.QUEUED,
            JobState.RUNNING,
        ):
            assert (await index_state(pg_url))[0] == original
            await anyio.sleep(0.02)
        assert current.state is JobState.COMPLETED


async def test_a_stopped_bulk_load_leaves_the_build_to_the_next_start(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "big", 40)
    fake_ollama.embed_delay = 0.1
    settings = bulk_settings(pg_url, fake_ollama, tmp_path)
    async with open_engine(settings) as engine:
        original, _ = await index_state(pg_url)
        job = await engine.start_index(str(repo))
        await until_set_aside(pg_url)
    # The shutdown stopped the job at a safe point and did not start a build.
    assert await index_state(pg_url) == (None, [INDEX])
    fake_ollama.embed_delay = 0
    async with open_engine(settings) as engine:
        assert (await engine.job_status(job.id)).state is JobState.QUEUED  # handed back
        with anyio.fail_after(60):  # built in the background at start
            while True:
                if await index_state(pg_url) == (original, []):
                    break
                await anyio.sleep(0.05)
        done = await index_and_wait(engine, repo)  # resumes the rest
        assert done.state is JobState.COMPLETED, done
        assert done.id == job.id
    assert await index_state(pg_url) == (original, [])


async def test_two_loaders_leave_the_build_to_the_last_one(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """Two servers sharing the database load two repositories at once."""
    await migrate_async(pg_url)
    first, second = write_modules(tmp_path, "one", 30), write_modules(tmp_path, "two", 30)
    fake_ollama.embed_delay = 0.02
    settings = bulk_settings(pg_url, fake_ollama, tmp_path)
    async with open_engine(settings) as one, open_engine(settings) as two:
        original, _ = await index_state(pg_url)
        jobs = [await one.start_index(str(first)), await two.start_index(str(second))]
        with anyio.fail_after(60):
            done = [await one.wait_job(jobs[0].id), await two.wait_job(jobs[1].id)]
        assert [j.state for j in done] == [JobState.COMPLETED, JobState.COMPLETED]
    assert await index_state(pg_url) == (original, [])
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM embeddings") == 120
    finally:
        await conn.close()


async def test_a_downgrade_builds_what_is_set_aside(pg_url: str) -> None:
    """Down past the store (revision 0008), vectors go back into chunks with their index
    built: a model index set aside is not left behind half done."""
    await anyio.to_thread.run_sync(migrate, pg_url)
    async with database_pool(pg_url) as pool:
        model = await a_model(pool)
        async with vector_index.bulk_load(pool, model, enabled=True, build_after=lambda: False):
            pass
    assert await index_state(pg_url) == (None, [INDEX])
    await anyio.to_thread.run_sync(downgrade, pg_url, "0007")
    definition, aside = await index_state(pg_url, "chunks_embedding")
    assert aside == []
    assert "((embedding)::halfvec(768)) halfvec_cosine_ops" in (definition or "")


async def test_a_build_is_announced_with_its_size_and_skipped_while_a_job_loads(
    pg_url: str,
) -> None:
    await anyio.to_thread.run_sync(migrate, pg_url)
    heard: list[int] = []

    async def announce(vectors: int) -> None:
        heard.append(vectors)

    async with database_pool(pg_url) as pool:
        model = await a_model(pool)
        original, _ = await index_state(pg_url)
        async with (
            vector_index.bulk_load(pool, model, enabled=True, build_after=lambda: True) as first,
            vector_index.bulk_load(
                pool, model, enabled=True, build_after=lambda: True, announce=announce
            ) as second,
        ):
            assert (first, second) == (True, True)  # the second joins the first's load
        # The inner one ended while the outer still loaded: it left the build alone; the
        # outer one built, unannounced.
        assert heard == []
        assert await index_state(pg_url) == (original, [])
        async with vector_index.bulk_load(
            pool, model, enabled=True, build_after=lambda: True, announce=announce
        ):
            pass
        assert heard == [0]


async def test_vector_search_walks_the_hnsw_index(pg_url: str) -> None:
    """The query must order by the very expression the model's index is built on, and
    name the model so that its partial index applies; otherwise PostgreSQL silently
    computes every distance (a sequential scan). With filters, the planner may start
    from the chunks they pick instead, through an index, never from a scan of all."""
    await anyio.to_thread.run_sync(migrate, pg_url)
    async with database_pool(pg_url) as pool:
        model = await a_model(pool)
        for filters in (Filters(), Filters(language="python", path_glob="*.py")):
            sql, params = vector_sql(model, filters)
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(VECTOR_SETTINGS)
                for _ in range(7):  # past asyncpg's switch to a generic plan
                    rows = await conn.fetch("EXPLAIN " + sql, [0.5] * 768, 10, *params)
            plan = "\n".join(r[0] for r in rows)
            assert "Seq Scan" not in plan and "Bitmap" not in plan, plan
            if filters == Filters():
                assert f"Index Scan using {INDEX}" in plan, plan


async def test_the_half_precision_index_migrates_both_ways(pg_url: str) -> None:
    """Revision 0004's index, on its way down and up (0008 then replaces it)."""
    await anyio.to_thread.run_sync(lambda: migrate(pg_url, "0007"))
    assert "halfvec_cosine_ops" in ((await index_state(pg_url, "chunks_embedding"))[0] or "")
    await anyio.to_thread.run_sync(downgrade, pg_url, "0003")
    assert "vector_cosine_ops" in ((await index_state(pg_url, "chunks_embedding"))[0] or "")
    await anyio.to_thread.run_sync(lambda: migrate(pg_url, "0007"))
    assert "halfvec_cosine_ops" in ((await index_state(pg_url, "chunks_embedding"))[0] or "")


async def test_an_upgrade_during_a_bulk_load_leaves_nothing_half_done(pg_url: str) -> None:
    """Revision 0008 meets the old index set aside (a bulk load cut short at 0007): the
    old definition goes with the old column, the store starts with its own indexes."""
    await anyio.to_thread.run_sync(lambda: migrate(pg_url, "0007"))
    conn = await asyncpg.connect(pg_url)
    try:
        definition = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'chunks_embedding'"
        )
        await conn.execute(
            "INSERT INTO deferred_indexes (name, definition) VALUES ('chunks_embedding', $1)",
            definition,
        )
        await conn.execute("DROP INDEX chunks_embedding")
    finally:
        await conn.close()
    await anyio.to_thread.run_sync(migrate, pg_url)
    assert await index_state(pg_url, "chunks_embedding") == (None, [])
    async with database_pool(pg_url) as pool:
        assert not await vector_index.build_deferred(pool)


@pytest.fixture
def small_shm_url() -> Iterator[str]:
    """A PostgreSQL whose /dev/shm is 16 MiB, as in a container left at its defaults
    (64 MiB) with a build that needs more."""
    # Under /tmp itself: PostgreSQL runs as nobody, who cannot enter pytest's tmp dirs.
    base = Path(tempfile.mkdtemp(prefix="cbmcp-shm-", dir="/tmp"))
    with running_cluster(base, shm_size="16m") as cluster:
        yield cluster.create_database("shm")


async def test_a_build_without_enough_shared_memory_falls_back_to_one_process(
    small_shm_url: str,
) -> None:
    url = small_shm_url
    await anyio.to_thread.run_sync(migrate, url)
    conn = await asyncpg.connect(url)
    try:
        # Parallel workers even for this small table (a large one gets them anyway).
        await conn.execute("ALTER DATABASE shm SET min_parallel_table_scan_size = 0")
        await store_random_vectors(conn)
    finally:
        await conn.close()
    async with database_pool(url) as pool:
        model = await a_model(pool)  # registered already: its index is made now
        original, _ = await index_state(url)
        assert original is not None
        async with pool.acquire() as probe:
            # The parallel build fails here as it does in such a container ...
            with pytest.raises(asyncpg.DiskFullError):
                await probe.execute(
                    "SET maintenance_work_mem = '64MB'; "
                    "CREATE INDEX probe ON embeddings USING hnsw "
                    "((embedding::halfvec(768)) halfvec_cosine_ops) WHERE model_id = 1"
                )
        # ... and the bulk load's build still makes the index.
        async with vector_index.bulk_load(pool, model, enabled=True, build_after=lambda: True):
            pass
    assert await index_state(url) == (original, [])


# asyncpg drops the listener as it releases a connection, and says so.
@pytest.mark.filterwarnings("ignore:.*active log listener")
async def test_a_small_stores_graph_is_built_in_parallel(pg_url: str) -> None:
    """The store's main heap is small (vectors live in TOAST): PostgreSQL would build
    its graph in one process, at half the speed on two cores."""
    await migrate_async(pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        await store_random_vectors(conn)
    finally:
        await conn.close()
    messages: list[str] = []

    def heard(_conn: object, message: object) -> None:
        messages.append(str(message))

    async def listen(conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record]) -> None:
        # On every acquire: a release resets the settings and drops the listener.
        await conn.execute("SET client_min_messages = debug1")
        conn.add_log_listener(heard)

    async with database_pool(pg_url) as pool:
        model = await a_model(pool)
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2, setup=listen)
    try:
        async with vector_index.bulk_load(pool, model, enabled=True, build_after=lambda: True):
            pass
    finally:
        await pool.close()
    building = [m for m in messages if "building index" in m]
    assert building and all("parallel workers" in m for m in building), messages
    definition, aside = await index_state(pg_url)
    assert definition is not None and aside == []
