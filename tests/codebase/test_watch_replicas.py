"""A watch survives its replica: two real `codebase-mcp serve` processes on one
PostgreSQL, MCP clients over HTTP. `index_repository(watch=true)` on one; exactly one
replica watches; it is SIGKILLed; the other takes the watch over once the lease expires,
catches the change made in between, and keeps following the files. `sync_repository`
and search's `stale` over the same MCP surface."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.codebase.fixtures_engine import migrate, write_modules
from tests.support.fake_ollama import FakeOllama
from tests.support.http_servers import HttpServer, running_servers, server_env
from tests.support.pg import PostgresCluster

LEASE = 3.0


async def call(url: str, tool: str, **arguments: Any) -> dict[str, Any]:
    from fastmcp import Client

    async with Client(url) as client:
        result = await client.call_tool(tool, arguments)
    assert result.structured_content is not None
    return result.structured_content


def pid_of(replica: str | None) -> int | None:
    return None if replica is None else int(replica.split(":")[1])


async def repository(url: str) -> dict[str, Any]:
    (repo,) = (await call(url, "list_repositories"))["repositories"]
    return repo


async def search_paths(url: str, query: str) -> list[tuple[str, bool | None]]:
    found = await call(url, "search_code", query=query, limit=5)
    return [(r["path"], r["stale"]) for r in found["results"]]


async def top_hit(url: str, query: str, path: str) -> tuple[str, bool | None] | None:
    """The first result when it is `path` (None otherwise)."""
    found = await search_paths(url, query)
    return found[0] if found and found[0][0] == path else None


async def until(check: Any, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {within} s: {what} ({value!r})"
        await anyio.sleep(0.1)


@pytest.mark.anyio
async def test_the_other_replica_takes_over_the_watch_of_one_killed(
    pg_cluster: PostgresCluster, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    url = pg_cluster.create_database("t_" + uuid.uuid4().hex[:12])
    await anyio.to_thread.run_sync(migrate, url)
    repo = write_modules(tmp_path, "watched", 6)
    env = server_env(
        REGISTRY_DATABASE_URL=url,
        OLLAMA_BASE_URL=fake_ollama.url,
        CODEBASE_ROOTS=str(tmp_path),
        CODEBASE_INDEX_WORKERS="1",
        CODEBASE_JOB_LEASE_SECONDS=str(LEASE),
        CODEBASE_JOB_POLL_SECONDS="0.3",
        CODEBASE_WATCH_DEBOUNCE="0.1",
    )
    with running_servers(env, tmp_path / "logs", 2) as servers:
        by_pid: dict[int, HttpServer] = {s.proc.pid: s for s in servers}
        done = await call(servers[0].url, "index_repository", path=str(repo), wait=True, watch=True)
        assert done["state"] == "completed"

        async def watcher() -> int | None:
            return pid_of((await repository(servers[1].url))["watcher"])

        holder = by_pid[await until(watcher, 20, "a replica watches")]
        other = next(s for s in servers if s is not holder)
        await anyio.sleep(1.5)  # both replicas have looked at the repository
        for server in servers:
            seen = await repository(server.url)
            assert (seen["watched"], pid_of(seen["watcher"])) == (True, holder.proc.pid)
        health = await call(other.url, "get_indexing_status", job_id=done["job_id"])
        assert health["state"] == "completed"

        os.kill(holder.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        (repo / "watched_000.py").write_text("def written_while_unwatched():\n    return 0\n")

        async def taken_over() -> bool:
            return await watcher() == other.proc.pid

        await until(taken_over, LEASE + 10, "the other replica takes the watch over")
        assert time.monotonic() - killed <= LEASE + 5
        # its first scan catches the change made while nobody watched
        found = await until(
            lambda: top_hit(other.url, "written_while_unwatched", "watched_000.py"),
            20,
            "caught up",
        )
        assert found == ("watched_000.py", False)
        # ... and it follows the files from then on
        (repo / "later.py").write_text("def followed_after_takeover():\n    return 1\n")
        found = await until(
            lambda: top_hit(other.url, "followed_after_takeover", "later.py"), 20, "followed"
        )
        assert found == ("later.py", False)

        # sync_repository: a change is searchable when it returns; `stale` before it
        await call(other.url, "index_repository", path=str(repo), watch=False)
        await until(lambda: _unwatched(other.url), 10, "the watch stops")
        (repo / "later.py").write_text("def synced_by_hand():\n    return 2\n")
        assert ("later.py", True) in await search_paths(other.url, "followed_after_takeover")
        synced = await call(other.url, "sync_repository", path=str(repo))
        assert synced["in_sync"] is True and synced["state"] == "completed"
        assert synced["repository"]["watched"] is False
        assert (await search_paths(other.url, "synced_by_hand"))[0] == ("later.py", False)
    log = other.log_text()
    assert "Traceback" not in log, log[-3000:]


async def _unwatched(url: str) -> bool:
    seen = await repository(url)
    return seen["watched"] is False and seen["watcher"] is None
