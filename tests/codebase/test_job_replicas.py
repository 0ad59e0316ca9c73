"""Jobs across replicas: two engines on one database in this process stand for two
replicas (their own pools, leases and owners). Following, cancelling, removing and
counting a job from the replica that does not run it; a replica that hangs is taken over
and writes nothing when it wakes. (Real processes, SIGKILL and SIGSTOP:
test_job_takeover.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import asyncpg
import pytest

from codebase_mcp.engine import JobState
from codebase_mcp.jobs.job_queue import lease_name
from codebase_mcp.store import lease
from tests.codebase.fixtures_engine import (
    migrate_async,
    open_engine,
    settings_for,
    wait_for_progress,
    write_modules,
)
from tests.support.fake_ollama import FakeOllama
from tests.support.integrity import integrity, problems

pytestmark = pytest.mark.anyio

FILES = 60


async def test_the_other_replica_follows_counts_and_cancels_a_job(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    fake_ollama.embed_delay = 0.15
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4")
    async with open_engine(settings) as one, open_engine(settings) as two:
        job = await one.start_index(str(repo))
        await wait_for_progress(one, job.id)
        # the other replica: the same job back, its status from the table
        again = await two.start_index(str(repo))
        assert again.id == job.id and again.replica == one.owner
        seen = await two.job_status(job.id)
        assert (seen.state, seen.replica) == (JobState.RUNNING, one.owner)
        assert seen.files_done > 0
        health = (await two.health())["jobs"]
        assert (health["running"], health["here"]) == (1, 0)

        async with anyio.create_task_group() as tg:
            followed: list[JobState] = []

            async def follow() -> None:
                followed.append((await two.wait_job(job.id)).state)

            tg.start_soon(follow)
            with anyio.fail_after(20):
                cancelled = await two.cancel_job(job.id)
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.replica == one.owner  # stopped where it ran
        assert followed == [JobState.CANCELLED]
        assert 0 < cancelled.files_done < FILES
        assert (await one.job_status(job.id)).state is JobState.CANCELLED
    found = await integrity(pg_url)
    assert found["files"] == cancelled.files_done
    assert {k: v for k, v in problems(found).items() if k != "vector_index"} == {}


async def test_removing_on_the_other_replica_stops_the_job_before_deleting(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    fake_ollama.embed_delay = 0.15
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4")
    async with open_engine(settings) as one, open_engine(settings) as two:
        job = await one.start_index(str(repo))
        await wait_for_progress(one, job.id)
        with anyio.fail_after(20):
            removed = await two.remove_repository(str(repo))
        assert removed.path == str(repo)
        assert (await two.job_status(job.id)).state is JobState.CANCELLED
        await anyio.sleep(1.0)  # a replica still writing would show up now
        assert await one.list_repositories() == []
    found = await integrity(pg_url)
    assert (found["files"], found["chunks"]) == (0, 0)


@pytest.mark.parametrize("evict", [True, False], ids=["evicted", "not-evicted"])
async def test_a_hung_replica_is_taken_over_and_writes_nothing_when_it_wakes(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evict: bool
) -> None:
    """The first replica stops renewing (as a SIGSTOPped one does) while its embedder
    calls are slow; the second takes the job over and finishes it. The first then goes
    on: its writes are refused and its end is not recorded. Its sessions are ended by
    the takeover; where the role may not end them (not-evicted), each write's check of
    the lease refuses it."""
    if not evict:

        async def cannot_evict(conn: object, owner: str) -> int:
            return -1

        monkeypatch.setattr(lease, "evict", cannot_evict)
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    with FakeOllama(embed_delay=1.0) as slow, FakeOllama() as fast:
        extra = {"CODEBASE_FILE_BATCH_SIZE": "4", "CODEBASE_JOB_LEASE_SECONDS": "3"}
        hung_settings = settings_for(pg_url, slow, tmp_path, **extra)
        taker_settings = settings_for(
            pg_url, fast, tmp_path, CODEBASE_JOB_POLL_SECONDS="0.2", **extra
        )
        async with open_engine(hung_settings) as hung:
            job = await hung.start_index(str(repo))
            await wait_for_progress(hung, job.id)
            renewals = hung.jobs._tasks[0]
            renewals.cancel()  # it hangs: no renewal from now on
            async with open_engine(taker_settings, serve_queue=True) as taker:
                with anyio.fail_after(30):
                    done = await taker.wait_job(job.id)
                assert done.state is JobState.COMPLETED, done
                assert done.replica == taker.owner
                assert done.message is not None and f"from {hung.owner}" in done.message
                before = await integrity(pg_url), await newest_rows(pg_url)
                slow.embed_delay = 0  # it wakes up and goes on
                local = hung.jobs._by_id[job.id]
                with anyio.fail_after(30):
                    await local.done.wait()
                assert local.stop == "lost"
                after = await integrity(pg_url), await newest_rows(pg_url)
                final = await taker.job_status(job.id)
    assert (final.state, final.replica) == (JobState.COMPLETED, taker.owner)
    assert before == after  # not one row written by the replica that woke up
    assert (after[0]["files"], after[0]["chunks"]) == (FILES, 2 * FILES)
    assert problems(after[0]) == {}


async def newest_rows(pg_url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(pg_url)
    try:
        return (
            await conn.fetchval("SELECT coalesce(max(id), 0) FROM files"),
            await conn.fetchval("SELECT coalesce(max(id), 0) FROM chunks"),
        )
    finally:
        await conn.close()


async def test_a_forced_job_queued_on_one_replica_runs_after_the_job_of_another(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    fake_ollama.embed_delay = 0.1
    settings = settings_for(
        pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4", CODEBASE_JOB_POLL_SECONDS="0.2"
    )
    async with (
        open_engine(settings, serve_queue=True) as one,
        open_engine(settings, serve_queue=True) as two,
    ):
        first = await one.start_index(str(repo))
        await wait_for_progress(one, first.id)
        forced = await two.start_index(str(repo), force=True)
        assert (forced.state, forced.force) == (JobState.QUEUED, True)
        assert (await one.start_index(str(repo), force=True)).id == forced.id
        fake_ollama.embed_delay = 0
        with anyio.fail_after(60):
            done_first = await two.wait_job(first.id)
            done_forced = await one.wait_job(forced.id)
    assert done_first.state is JobState.COMPLETED
    assert done_forced.state is JobState.COMPLETED, done_forced
    assert done_forced.files_unchanged == 0  # everything again
    assert done_first.finished_at is not None and done_forced.started_at is not None
    assert done_forced.started_at >= done_first.finished_at
    assert problems(await integrity(pg_url)) == {}


async def test_a_cancel_reaches_a_job_whose_replica_died_without_waiting_for_it(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "gone", 4)
    dead = uuid.uuid4()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "INSERT INTO jobs (id, repository_path, state, owner) VALUES ($1, $2, 'running', $3)",
            dead,
            str(repo),
            "dead:1:dead",
        )
        await conn.execute(
            "INSERT INTO leases (name, owner, expires_at) VALUES ($1, 'dead:1:dead', now())",
            f"job:{dead}",
        )
    finally:
        await conn.close()
    async with open_engine(settings_for(pg_url, fake_ollama, tmp_path)) as engine:
        with anyio.fail_after(5):
            cancelled = await engine.cancel_job(str(dead))
    assert cancelled.state is JobState.CANCELLED


async def test_a_job_dropped_for_a_renewal_it_could_not_confirm_is_resumed_by_its_replica(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """One replica, and its lease renewals blocked for longer than a lease (a database
    stalled, a lock held): the job stops as "lost", and once the lease has lapsed the same
    replica resumes it; nobody else would, and it stayed "running" for ever."""
    await migrate_async(pg_url)
    repo = write_modules(tmp_path, "many", FILES)
    fake_ollama.embed_delay = 0.1
    settings = settings_for(
        pg_url,
        fake_ollama,
        tmp_path,
        CODEBASE_FILE_BATCH_SIZE="4",
        CODEBASE_JOB_LEASE_SECONDS="3",
        CODEBASE_JOB_POLL_SECONDS="0.5",
    )
    async with open_engine(settings) as engine:
        job = await engine.start_index(str(repo))
        await wait_for_progress(engine, job.id)
        blocker = await asyncpg.connect(pg_url)
        try:
            async with blocker.transaction():  # what a takeover does, held 4 s
                await blocker.execute(
                    "SELECT 1 FROM leases WHERE name = $1 FOR UPDATE", lease_name(job.id)
                )
                await anyio.sleep(4)
        finally:
            await blocker.close()
        with anyio.fail_after(60):
            done = await engine.wait_job(job.id)
        assert done.state is JobState.COMPLETED, done
        assert done.replica == engine.owner
        assert "taken over" in (done.message or ""), done.message
    found = await integrity(pg_url)
    assert found["files"] == FILES
    assert problems(found) == {}
