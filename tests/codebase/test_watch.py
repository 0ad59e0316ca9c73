"""Watch mode against real files, real inotify and a real PostgreSQL: what a watched
repository's search sees after files are created, changed, deleted, renamed, ignored,
written in a burst, or changed while no server ran; `sync`; two replicas on one
database. The watcher's timings are shortened so that the tests run fast."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from codebase_mcp.engine import Engine, JobState
from codebase_mcp.models import SearchResponse
from tests.codebase.fixtures_engine import migrate_async, settings_for, write_modules
from tests.support.fake_ollama import FakeOllama

pytestmark = pytest.mark.anyio

FAST = {
    "CODEBASE_WATCH_DEBOUNCE": "0.1",
    "CODEBASE_WATCH_MAX_DELAY": "2",
    "CODEBASE_JOB_POLL_SECONDS": "0.2",
}


def aged_modules(base: Path, name: str, count: int) -> Path:
    repo = write_modules(base, name, count)
    for f in repo.iterdir():
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 60 * 10**9))
    return repo


@asynccontextmanager
async def server(
    pg_url: str, ollama: FakeOllama, roots: Path, **extra: str
) -> AsyncIterator[Engine]:
    """An engine as a server runs it: it serves the queue and watches."""
    settings = settings_for(pg_url, ollama, roots, **{**FAST, **extra})
    engine = await Engine.create(settings, serve_queue=True)
    try:
        yield engine
    finally:
        await engine.close()


async def eventually(
    check: Callable[[], Awaitable[Any]], within: float = 20.0, what: str = ""
) -> Any:
    """Until check() returns something true; its last value."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what} (last: {value!r})")
        await anyio.sleep(0.05)


def watcher_of(engine: Engine, repo: Path) -> Any:
    watches = engine._watches
    assert watches is not None
    return watches.watchers.get(str(repo))


async def watching(engine: Engine, repo: Path) -> None:
    """Until the engine watches `repo` and its first scan has run."""

    async def ready() -> bool:
        w = watcher_of(engine, repo)
        return w is not None and w.first_scan_done and w._notify is not None

    await eventually(ready, what=f"watching {repo}")


async def found(engine: Engine, query: str) -> SearchResponse:
    return await engine.search(query, mode="lexical")


async def paths_for(engine: Engine, query: str) -> set[str]:
    return {r.path for r in (await found(engine, query)).results}


async def job_count(pg_url: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM jobs"))
    finally:
        await conn.close()


async def settled(engine: Engine, repo: Path) -> None:
    """Until the watcher has nothing pending and no job in flight."""

    async def idle() -> bool:
        w = watcher_of(engine, repo)
        return w is not None and w.pending == 0 and w.batch.empty

    await eventually(idle, what="the watcher settles")


async def test_created_modified_deleted_and_renamed_files_reach_search(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = aged_modules(tmp_path, "w", 5)
    async with server(pg_url, fake_ollama, tmp_path) as engine:
        job = await engine.start_index(str(repo), watch=True)
        assert (await engine.wait_job(job.id)).state is JobState.COMPLETED
        await watching(engine, repo)

        (repo / "fresh.py").write_text("def brand_new_gadget():\n    return 1\n")
        assert await eventually(lambda: paths_for(engine, "brand_new_gadget")) == {"fresh.py"}

        (repo / "fresh.py").write_text("def renamed_gizmo():\n    return 2\n")
        await eventually(lambda: paths_for(engine, "renamed_gizmo"), what="modified")
        assert await paths_for(engine, "brand_new_gadget") == set()

        (repo / "w_001.py").unlink()

        async def deleted() -> bool:
            return "w_001.py" not in await paths_for(engine, "w_lookup_1")

        await eventually(deleted, what="deleted")

        (repo / "w_002.py").rename(repo / "moved.py")

        async def renamed() -> bool:
            found = await paths_for(engine, "w_lookup_2")
            return "moved.py" in found and "w_002.py" not in found

        await eventually(renamed, what="renamed")

        sub = repo / "pkg" / "deep"
        sub.mkdir(parents=True)
        (sub / "inner.py").write_text("def nested_widget():\n    return 3\n")
        await eventually(lambda: paths_for(engine, "nested_widget"), what="a new directory")
        # ... and the new directory is watched from then on
        (sub / "inner.py").write_text("def nested_widget_two():\n    return 4\n")
        await eventually(lambda: paths_for(engine, "nested_widget_two"), what="in it")

        (info,) = await engine.list_repositories()
        assert info.watch is True and info.watcher == engine.owner


async def test_a_gitignore_edit_is_honoured(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = aged_modules(tmp_path, "g", 3)
    (repo / "generated").mkdir()
    (repo / "generated" / "out.py").write_text("def generated_thing():\n    return 0\n")
    async with server(pg_url, fake_ollama, tmp_path) as engine:
        await engine.sync(str(repo))
        await engine.start_index(str(repo), watch=True)
        await watching(engine, repo)
        assert await paths_for(engine, "generated_thing") == {"generated/out.py"}

        (repo / ".gitignore").write_text("generated/\n")

        async def gone() -> bool:
            return "generated/out.py" not in await paths_for(engine, "generated_thing")

        await eventually(gone, what="an ignored directory leaves the index")
        # ... and is not watched any more: its churn starts no job
        await settled(engine, repo)
        jobs = await job_count(pg_url)
        (repo / "generated" / "out.py").write_text("def generated_again():\n    return 1\n")
        await anyio.sleep(1.0)
        assert await job_count(pg_url) == jobs
        assert "generated/out.py" not in await paths_for(engine, "generated_again")

        (repo / ".gitignore").write_text("")

        async def back() -> bool:
            return "generated/out.py" in await paths_for(engine, "generated_again")

        await eventually(back, what="un-ignored")


async def test_a_burst_of_a_thousand_files_makes_one_job(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = aged_modules(tmp_path, "b", 3)
    async with server(pg_url, fake_ollama, tmp_path, CODEBASE_WATCH_DEBOUNCE="0.5") as engine:
        await engine.start_index(str(repo), watch=True)
        await watching(engine, repo)
        await settled(engine, repo)
        before = await job_count(pg_url)
        watcher = watcher_of(engine, repo)
        jobs_before = watcher.jobs
        for i in range(1000):  # a branch switch, a `git pull`
            (repo / f"burst_{i:04}.py").write_text(f"def burst_function_{i}():\n    return {i}\n")
        await eventually(lambda: paths_for(engine, "burst_function_999"), what="the last file")
        await settled(engine, repo)
        assert await job_count(pg_url) - before == 1
        assert watcher.jobs - jobs_before == 1
        (info,) = await engine.list_repositories()
        assert info.files == 1003


async def test_changes_made_while_no_server_ran_are_found_at_start(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    await migrate_async(pg_url)
    repo = aged_modules(tmp_path, "r", 4)
    async with server(pg_url, fake_ollama, tmp_path) as engine:
        await engine.start_index(str(repo), watch=True)
        await watching(engine, repo)
    # the server is down
    (repo / "r_000.py").write_text("def while_nobody_watched():\n    return 0\n")
    (repo / "r_003.py").unlink()
    (repo / "added_offline.py").write_text("def offline_addition():\n    return 1\n")
    async with server(pg_url, fake_ollama, tmp_path) as engine:
        # the stored watch is resumed, and its first scan finds what changed
        await watching(engine, repo)
        assert await paths_for(engine, "while_nobody_watched") == {"r_000.py"}
        assert await paths_for(engine, "offline_addition") == {"added_offline.py"}
        assert "r_003.py" not in await paths_for(engine, "r_lookup_3")

        async def in_step() -> bool:
            (info,) = await engine.list_repositories()
            return (info.files, info.pending_changes) == (4, 0)

        await eventually(in_step, what="4 files, nothing pending")


async def test_sync_returns_once_search_sees_the_change(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """No watcher: the edit is found by sync alone, and is searchable when it returns,
    even when a job that read the files before the edit is still running."""
    await migrate_async(pg_url)
    repo = aged_modules(tmp_path, "s", 40)
    settings = settings_for(pg_url, fake_ollama, tmp_path, CODEBASE_FILE_BATCH_SIZE="4")
    async with Engine(settings) as engine:
        await engine.sync(str(repo))
        (repo / "s_000.py").write_text("def edited_before_sync():\n    return 0\n")
        done = await engine.sync(str(repo))
        assert done.state is JobState.COMPLETED
        assert await paths_for(engine, "edited_before_sync") == {"s_000.py"}

        # a slow job runs (it read the files already); an edit; then sync
        fake_ollama.embed_delay = 0.2
        for i in range(1, 40):
            (repo / f"s_{i:03}.py").write_text(f"def slow_{i}():\n    return {i}\n")
        running = await engine.start_index(str(repo))
        while True:
            if (await engine.job_status(running.id)).files_done > 0:
                break
            await anyio.sleep(0.02)
        (repo / "s_000.py").write_text("def edited_during_a_job():\n    return 0\n")
        done = await engine.sync(str(repo))
        assert done.id != running.id
        assert (await engine.job_status(running.id)).state is JobState.COMPLETED
        assert await paths_for(engine, "edited_during_a_job") == {"s_000.py"}


async def test_one_replica_watches_and_another_takes_over_when_it_stops(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    """Two engines on one database stand for two replicas. (A replica that dies:
    test_watch_replicas.py, with real processes and SIGKILL.)"""
    await migrate_async(pg_url)
    repo = aged_modules(tmp_path, "t", 3)
    settings = settings_for(pg_url, fake_ollama, tmp_path, **FAST, CODEBASE_JOB_LEASE_SECONDS="30")
    engines = [await Engine.create(settings, serve_queue=True) for _ in range(2)]
    try:
        await engines[0].start_index(str(repo), watch=True)

        async def watchers() -> list[Engine]:
            return [e for e in engines if watcher_of(e, repo) is not None]

        await eventually(watchers, what="a watcher")
        await anyio.sleep(1.0)  # both have looked at the repositories a few times
        (first,) = await watchers()
        await watching(first, repo)
        for engine in engines:
            (info,) = await engine.list_repositories()
            assert (info.watch, info.watcher) == (True, first.owner)
        (other,) = [e for e in engines if e is not first]

        await first.close()  # lets its lease go
        stopped = time.monotonic()
        await watching(other, repo)
        assert time.monotonic() - stopped < 10  # not the lease's 30 s
        (repo / "after_takeover.py").write_text("def taken_over_edit():\n    return 1\n")
        await eventually(lambda: paths_for(other, "taken_over_edit"), what="takeover")
        (info,) = await other.list_repositories()
        assert info.watcher == other.owner
    finally:
        for engine in engines:
            await engine.close()
