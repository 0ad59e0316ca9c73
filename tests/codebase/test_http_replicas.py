"""Any replica answers any request: two real servers on one PostgreSQL, and real MCP
clients whose every HTTP request goes to the next replica in turn (what a round-robin
balancer does). Streamable HTTP runs stateless, so no request depends on the replica
that answered the one before."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.codebase.fixtures_engine import migrate, write_modules
from tests.support.fake_ollama import FakeOllama
from tests.support.http_servers import HttpServer, running_servers, server_env
from tests.support.pg import PostgresCluster

FILES = 60


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next port in turn, and records which one took it."""

    def __init__(self, ports: list[int]) -> None:
        self._ports = itertools.cycle(ports)
        self._inner = httpx2.AsyncHTTPTransport()
        self.sent: list[tuple[int, str, int]] = []  # (port, method, status)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = next(self._ports)
        request.url = request.url.copy_with(port=port)
        response = await self._inner.handle_async_request(request)
        self.sent.append((port, request.method, response.status_code))
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _client_factory(balancer: RoundRobin) -> Any:
    def factory(**kwargs: Any) -> httpx2.AsyncClient:
        kwargs.pop("transport", None)
        return httpx2.AsyncClient(transport=balancer, **kwargs)

    return factory


def _replica_env(url: str, ollama: FakeOllama, roots: Path, **extra: str) -> dict[str, str]:
    return server_env(
        REGISTRY_DATABASE_URL=url,
        OLLAMA_BASE_URL=ollama.url,
        CODEBASE_ROOTS=str(roots),
        CODEBASE_INDEX_WORKERS="1",
        CODEBASE_FILE_BATCH_SIZE="8",
        # Slow enough embeddings (15 calls of 0.1 s) that a job reports progress
        # several times.
        CODEBASE_EMBED_BATCH_SIZE="8",
        CODEBASE_EMBED_CONCURRENCY="1",
        **extra,
    )


@pytest.fixture(scope="module")
def replicas(
    pg_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[HttpServer], Path]]:
    tmp = tmp_path_factory.mktemp("replicas")
    url = pg_cluster.create_database("t_" + uuid.uuid4().hex[:12])
    migrate(url)
    repo = write_modules(tmp, "replica", FILES)
    with (
        FakeOllama(embed_delay=0.1) as ollama,
        running_servers(_replica_env(url, ollama, tmp), tmp / "logs", count=2) as servers,
    ):
        yield servers, repo


async def _official_sdk_round_trip(servers: list[HttpServer], repo: Path) -> dict[str, Any]:
    """Initialize, list, index with wait=true (progress) and search: each request on the
    next replica. Returns what the client saw."""
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    balancer = RoundRobin([s.port for s in servers])
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with (
        httpx2.AsyncClient(transport=balancer, timeout=60) as http,
        streamable_http_client(servers[0].url, http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        job = await session.call_tool(
            "index_repository",
            {"path": str(repo), "wait": True, "force": True},
            progress_callback=on_progress,
        )
        found = await session.call_tool("search_code", {"query": "replica_lookup_7"})
    return {
        "tools": {t.name for t in tools.tools},
        "job": job.structured_content,
        "found": found.structured_content,
        "progress": progress,
        "sent": balancer.sent,
    }


def test_the_official_sdk_spreads_one_session_over_two_replicas(
    replicas: tuple[list[HttpServer], Path],
) -> None:
    servers, repo = replicas
    seen = anyio.run(_official_sdk_round_trip, servers, repo)
    ports = {port for port, _, _ in seen["sent"]}
    assert ports == {s.port for s in servers}, "both replicas took requests"
    assert all(status in (200, 202) for _, _, status in seen["sent"]), seen["sent"]
    assert "search_code" in seen["tools"]
    assert seen["job"]["state"] == "completed", seen["job"]
    assert seen["job"]["files_done"] == FILES
    symbols = [r["symbol"] for r in seen["found"]["results"]]
    assert "replica_lookup_7" in symbols
    # wait=true: the progress went back on the same POST's event stream, so it reached
    # the client from whichever replica ran the tool.
    assert len(seen["progress"]) >= 3, seen["progress"]
    dones = [p[0] for p in seen["progress"]]
    assert dones == sorted(dones)
    assert seen["progress"][-1][0] == FILES


async def _fastmcp_index_here_status_there(servers: list[HttpServer], repo: Path, mode: str) -> Any:
    from fastmcp import Client
    from fastmcp.client.transports import StreamableHttpTransport

    messages: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    balancer = RoundRobin([s.port for s in servers])
    transport = StreamableHttpTransport(
        servers[0].url, httpx_client_factory=_client_factory(balancer)
    )
    async with Client(transport, progress_handler=on_progress, mode=mode) as client:
        started = await client.call_tool("index_repository", {"path": str(repo), "force": True})
        assert started.structured_content is not None
        job_id = started.structured_content["job_id"]
        states = []
        with anyio.fail_after(60):
            while True:
                status = await client.call_tool("get_indexing_status", {"job_id": job_id})
                assert status.structured_content is not None
                states.append(status.structured_content["state"])
                if status.structured_content["finished"]:
                    break
                await anyio.sleep(0.1)
        listed = await client.call_tool("list_repositories", {})
        health = await client.read_resource("health://status")
    return states, listed.structured_content, health, balancer.sent


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_status_listing_and_health_answer_from_any_replica(
    replicas: tuple[list[HttpServer], Path], mode: str
) -> None:
    """The job runs on the replica that took the call; every other call alternates, so
    half the status polls are answered by the other replica, from PostgreSQL. FastMCP's
    client speaks the initialize handshake (legacy) and the sessionless protocol (auto)."""
    servers, repo = replicas
    states, listed, health, sent = anyio.run(_fastmcp_index_here_status_there, servers, repo, mode)
    assert states[-1] == "completed", states
    assert {port for port, _, _ in sent} == {s.port for s in servers}
    assert all(status in (200, 202) for _, _, status in sent), sent
    repos = {r["path"]: r for r in listed["repositories"]}
    assert repos[str(repo)]["files"] == FILES
    assert '"status":' in health[0].text
