"""Index jobs: one per repository, cancel and shutdown at a safe point, a stopped
engine's jobs handed back to the queue and resumed, jobs whose lease expired taken over.
(Two engines on one database stand for two replicas: tests/codebase/test_job_replicas.py.)"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from codebase_mcp.engine import Engine, JobInfo, JobState
from tests.codebase.fixtures_engine import (
    child_pids,
    chunking_processes,
    index_and_wait,
    migrate_async,
    open_engine,
    settings_for,
    wait_for_progress,
    write_modules,
)
from tests.support.fake_ollama import FakeOllama

pytestmark = pytest.mark.anyio

FILES = 60


async def consistency(pg_url: str) -> tuple[int, int, int]:
    """(files, chunks, files whose chunk rows do not match their chunk_count)."""
    conn = await asyncpg.connect(pg_url)
    try:
        files = await conn.fetchval("SELECT count(*) FROM files")
        chunks = await conn.fetchval("SELECT count(*) FROM chunks")
        broken = await conn.fetchval(
            "SELECT count(*) FROM files f WHERE f.chunk_count <> "
            "(SELECT count(*) FROM chunks c WHERE c.file_id = f.id)"
        )
    finally:
        await conn.close()
    return files, chunks, broken


async def test_cancel_stops_between_batches_and_a_new_index_finishes_the_rest(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    fake_ollama.embed_delay = 0.15
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4")
    async with open_engine(settings) as engine:
        job = await engine.start_index(str(repo))
        again = await engine.start_index(str(repo))
        assert again.id == job.id  # the running job, not a second one

        await wait_for_progress(engine, job.id)
        cancelled = await engine.cancel_job(job.id)
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.message is not None and "resume" in cancelled.message
        assert 0 < cancelled.files_done < FILES
        files, chunks, broken = await consistency(pg_url)
        assert broken == 0
        assert files == cancelled.files_done
        assert (await engine.job_status(job.id)).state is JobState.CANCELLED

        fake_ollama.embed_delay = 0
        await anyio.sleep(0.5)  # the server finishes requests the cancelled job gave up on
        fake_ollama.embedded_texts.clear()
        rest = await index_and_wait(engine, repo)
        assert rest.state is JobState.COMPLETED
        assert rest.files_unchanged == files
        assert len(fake_ollama.embedded_texts) == rest.chunks_done == 2 * FILES - chunks
        assert (await consistency(pg_url))[:2] == (FILES, 2 * FILES)


async def job_row(pg_url: str, job_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow(
            "SELECT j.state, j.owner, j.message, j.files_done, l.owner AS lease_owner "
            "FROM jobs j LEFT JOIN leases l ON l.name = 'job:' || j.id::text WHERE j.id = $1",
            uuid.UUID(job_id),
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def test_shutdown_hands_the_job_back_and_the_next_index_resumes_it(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    fake_ollama.embed_delay = 0.15
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4")
    engine = await Engine.create(settings)
    job = await engine.start_index(str(repo))
    await wait_for_progress(engine, job.id)
    await engine.shutdown(grace=5)

    files, chunks, broken = await consistency(pg_url)
    assert broken == 0 and 0 < files < FILES
    row = await job_row(pg_url, job.id)
    assert row["state"] == "queued", row
    assert row["owner"] is None and row["lease_owner"] is None  # anyone may claim it
    assert engine.owner in row["message"] and "handed back" in row["message"]
    fake_ollama.embed_delay = 0
    await anyio.sleep(0.5)  # the server finishes requests the stopped engine gave up on
    fake_ollama.embedded_texts.clear()
    async with open_engine(settings) as engine:  # the CLI's kind: it serves no queue
        resumed = await engine.start_index(str(repo))
        assert resumed.id == job.id  # the queued job, taken to run here
        assert resumed.message is not None and "resumed by" in resumed.message
        with anyio.fail_after(60):
            done = await engine.wait_job(resumed.id)
        assert done.state is JobState.COMPLETED
        assert done.files_unchanged == files
        assert done.replica == engine.owner
        assert len(fake_ollama.embedded_texts) == 2 * FILES - chunks
    assert (await consistency(pg_url))[:2] == (FILES, 2 * FILES)


async def test_a_job_handed_back_is_resumed_by_a_serving_replica_on_its_own(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    fake_ollama.embed_delay = 0.15
    settings = settings_for(
        pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4", CODEBASE_JOB_POLL_SECONDS="0.2"
    )
    async with open_engine(settings, serve_queue=True) as other:
        stopping = await Engine.create(settings, serve_queue=True)
        job = await stopping.start_index(str(repo))
        assert job.replica == stopping.owner
        await wait_for_progress(stopping, job.id)
        await stopping.shutdown(grace=5)
        fake_ollama.embed_delay = 0
        with anyio.fail_after(30):
            done = await other.wait_job(job.id)  # nobody called index_repository again
        assert done.state is JobState.COMPLETED, done
        assert done.replica == other.owner
        assert done.message is not None and "handed back" in done.message
    assert (await consistency(pg_url)) == (FILES, 2 * FILES, 0)


async def test_shutdown_past_its_grace_rolls_the_open_batch_back(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4")
    async with open_engine(settings) as engine:
        job = await engine.start_index(str(repo))
        await wait_for_progress(engine, job.id)
        fake_ollama.embed_delay = 30  # the next batch hangs in the embedder
        await anyio.sleep(0.3)
        await engine.shutdown(grace=0.2)
        stopped = await engine_status_after_close(pg_url, job.id)
    assert stopped == "queued"  # handed back: resumable
    files, _, broken = await consistency(pg_url)
    assert broken == 0 and files < FILES


async def engine_status_after_close(pg_url: str, job_id: str) -> str:
    conn = await asyncpg.connect(pg_url)
    try:
        return str(await conn.fetchval("SELECT state FROM jobs WHERE id = $1", uuid.UUID(job_id)))
    finally:
        await conn.close()


async def test_jobs_whose_lease_expired_are_taken_over_but_live_leases_are_left_alone(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """What a replica that died leaves behind: running jobs whose lease expired (or that
    have none). A job under a live lease is another replica's."""
    await migrate_async(pg_url)
    repos = {name: write_modules(tmp_path, name, 4) for name in ("expired", "unleased", "live")}
    ids = {name: uuid.uuid4() for name in repos}
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.executemany(
            "INSERT INTO jobs (id, repository_path, state, owner, started_at) "
            "VALUES ($1, $2, 'running', $3, now())",
            [(ids[n], str(repos[n]), f"dead-replica:7:{n}") for n in repos],
        )
        await conn.executemany(
            "INSERT INTO leases (name, owner, expires_at) "
            "VALUES ($1, $2, now() + make_interval(secs => $3))",
            [
                (f"job:{ids['expired']}", "dead-replica:7:expired", -1.0),
                (f"job:{ids['live']}", "live-replica:8:live", 3600.0),
            ],
        )
    finally:
        await conn.close()
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_JOB_POLL_SECONDS="0.2")
    async with open_engine(settings, serve_queue=True) as engine:
        with anyio.fail_after(30):
            expired = await engine.wait_job(str(ids["expired"]))
            unleased = await engine.wait_job(str(ids["unleased"]))
        for done in (expired, unleased):
            assert done.state is JobState.COMPLETED, done
            assert done.replica == engine.owner
            assert done.message is not None and "taken over" in done.message
        assert "dead-replica:7:expired" in (expired.message or "")
        live = await engine.job_status(str(ids["live"]))
        assert live.state is JobState.RUNNING and live.replica == "dead-replica:7:live"
        health = await engine.health()
        assert health["jobs"]["running"] == 1  # the live one, on another replica
        assert health["jobs"]["here"] == 0
        assert health["jobs"]["by_state"] == {"completed": 2, "running": 1}


async def test_one_job_per_repository_across_replicas(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """A second replica asked to index the same repository gets the running job back,
    and follows it to its end; the database refuses a second running job outright."""
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    fake_ollama.embed_delay = 0.05
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="8")
    async with open_engine(settings) as one, open_engine(settings) as two:
        first = await one.start_index(str(repo))
        second = await two.start_index(str(repo))
        assert second.id == first.id and second.replica == one.owner
        with anyio.fail_after(60):
            done = [await two.wait_job(first.id), await one.wait_job(first.id)]
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(
                "INSERT INTO jobs (id, repository_path, state) VALUES ($1, $2, 'running')",
                uuid.uuid4(),
                str(repo),
            )
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(
                    "INSERT INTO jobs (id, repository_path, state) VALUES ($1, $2, 'running')",
                    uuid.uuid4(),
                    str(repo),
                )
        finally:
            await conn.close()
    assert [j.state for j in done] == [JobState.COMPLETED, JobState.COMPLETED]
    assert len(fake_ollama.embedded_texts) == 2 * FILES  # each chunk embedded once
    assert (await consistency(pg_url)) == (FILES, 2 * FILES, 0)


@asynccontextmanager
async def indexing_with_two_chunkers(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> AsyncIterator[tuple[Engine, Path, JobInfo, list[Any]]]:
    """An engine with two chunking processes, part-way through indexing FILES modules
    (the embedder slowed down): (engine, repository, job, the chunking processes)."""
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    fake_ollama.embed_delay = 0.1
    settings = settings_for(
        pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4", CODEBASE_INDEX_WORKERS="2"
    )
    earlier = child_pids()
    async with open_engine(settings) as engine:
        job = await engine.start_index(str(repo))
        await wait_for_progress(engine, job.id)
        yield engine, repo, job, chunking_processes(besides=earlier)


async def test_chunking_processes_ignore_a_group_sigterm(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """A supervisor may signal the whole process group: stopping is the engine's call."""
    async with indexing_with_two_chunkers(pg_url, fake_ollama, tmp_path) as (
        engine,
        _,
        job,
        workers,
    ):
        assert len(workers) == 2
        for worker in workers:
            os.kill(worker.pid, signal.SIGTERM)
        fake_ollama.embed_delay = 0
        with anyio.fail_after(60):
            done = await engine.wait_job(job.id)
        assert done.state is JobState.COMPLETED, done
        assert all(w.is_running() for w in workers)


async def test_a_dead_chunking_process_fails_the_job_and_the_next_one_gets_a_new_pool(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    async with indexing_with_two_chunkers(pg_url, fake_ollama, tmp_path) as (
        engine,
        repo,
        job,
        workers,
    ):
        for p in workers:
            p.kill()
        with anyio.fail_after(60):
            failed = await engine.wait_job(job.id)
        assert failed.state is JobState.FAILED
        assert failed.message is not None and "BrokenProcessPool" in failed.message
        fake_ollama.embed_delay = 0
        again = await index_and_wait(engine, repo)
        assert again.state is JobState.COMPLETED
        assert (await consistency(pg_url)) == (FILES, 2 * FILES, 0)
