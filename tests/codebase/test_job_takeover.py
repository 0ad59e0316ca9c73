"""A job survives its replica: two real `codebase-mcp serve` processes on one PostgreSQL,
MCP clients over HTTP, and a real signal to the replica that runs the job. The other one
takes the job over once its lease expires and finishes it; the index is whole and
nothing is stored twice. The job loads without the vector index (a bulk load), so the
takeover must also leave the index built. (scripts/scale-out-test does the same with
three replicas behind haproxy and a real repository.)"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from tests.codebase.fixtures_engine import migrate, write_modules
from tests.support.fake_ollama import FakeOllama
from tests.support.http_servers import HttpServer, running_servers, server_env
from tests.support.integrity import integrity, problems
from tests.support.pg import PostgresCluster

FILES = 80
LEASE = 3.0


def replica_env(url: str, ollama: FakeOllama, roots: Path) -> dict[str, str]:
    return server_env(
        REGISTRY_DATABASE_URL=url,
        OLLAMA_BASE_URL=ollama.url,
        CODEBASE_ROOTS=str(roots),
        CODEBASE_INDEX_WORKERS="1",
        CODEBASE_FILE_BATCH_SIZE="4",
        CODEBASE_EMBED_BATCH_SIZE="8",
        CODEBASE_EMBED_CONCURRENCY="1",
        CODEBASE_BULK_INDEX_MIN_FILES="20",
        CODEBASE_JOB_LEASE_SECONDS=str(LEASE),
        CODEBASE_JOB_POLL_SECONDS="0.3",
    )


async def call(url: str, tool: str, **arguments: Any) -> dict[str, Any]:
    from fastmcp import Client

    async with Client(url) as client:
        result = await client.call_tool(tool, arguments)
    assert result.structured_content is not None
    return result.structured_content


async def newest_rows(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        return (
            await conn.fetchval("SELECT coalesce(max(id), 0) FROM files"),
            await conn.fetchval("SELECT coalesce(max(id), 0) FROM chunks"),
        )
    finally:
        await conn.close()


def runs_on(status: dict[str, Any], server: HttpServer) -> bool:
    replica = status.get("replica") or ""
    return replica.split(":")[1:2] == [str(server.proc.pid)]


@pytest.mark.anyio
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
async def test_another_replica_finishes_the_job_of_one_that_died_or_hangs(
    pg_cluster: PostgresCluster, tmp_path: Path, signum: signal.Signals
) -> None:
    url = pg_cluster.create_database("t_" + uuid.uuid4().hex[:12])
    await anyio.to_thread.run_sync(migrate, url)
    repo = write_modules(tmp_path, "takeover", FILES)
    with (
        FakeOllama(embed_delay=0.25) as ollama,
        running_servers(replica_env(url, ollama, tmp_path), tmp_path / "logs", 2) as servers,
    ):
        doomed, other = servers
        started = await call(doomed.url, "index_repository", path=str(repo))
        job_id = started["job_id"]
        assert runs_on(started, doomed), started
        with anyio.fail_after(30):
            while True:
                status = await call(other.url, "get_indexing_status", job_id=job_id)
                if status["files_done"] >= 8:
                    break
                await anyio.sleep(0.1)
        assert runs_on(status, doomed) and status["state"] == "running"

        os.kill(doomed.proc.pid, signum)
        hit = time.monotonic()
        try:
            with anyio.fail_after(LEASE + 10):
                while not runs_on(
                    status := await call(other.url, "get_indexing_status", job_id=job_id), other
                ):
                    assert not status["finished"], status
                    await anyio.sleep(0.1)
            taken_after = time.monotonic() - hit
            assert "taken over" in status["message"], status
            ollama.embed_delay = 0.02
            with anyio.fail_after(60):
                while True:
                    status = await call(other.url, "get_indexing_status", job_id=job_id)
                    if status["finished"]:
                        break
                    await anyio.sleep(0.2)
            assert status["state"] == "completed", status
            assert runs_on(status, other)
            before = await integrity(url), await newest_rows(url)
            if signum == signal.SIGSTOP:
                os.kill(doomed.proc.pid, signal.SIGCONT)  # it wakes, and must write nothing
                await anyio.sleep(LEASE)
                async with httpx.AsyncClient(timeout=10) as http:
                    resp = await http.get(f"http://127.0.0.1:{doomed.port}/health")
                assert resp.status_code == 200  # and it serves on
            after = await integrity(url), await newest_rows(url)
        finally:
            if signum == signal.SIGSTOP and doomed.proc.poll() is None:
                os.kill(doomed.proc.pid, signal.SIGCONT)
        final = await call(other.url, "get_indexing_status", job_id=job_id)
    assert taken_after <= LEASE + 3, taken_after
    assert before == after
    assert (after[0]["files"], after[0]["chunks"]) == (FILES, 2 * FILES)
    assert problems(after[0]) == {}
    assert (final["state"], final["replica"]) == (status["state"], status["replica"])
    if signum == signal.SIGSTOP:
        log = doomed.log_text()
        assert "moved to another replica" in log, log[-3000:]
        assert "Traceback" not in log
