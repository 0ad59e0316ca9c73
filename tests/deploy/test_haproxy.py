"""The balancer of docker-compose.prod.yml: its configuration checked by Debian's haproxy,
then run in front of two real servers (plain processes on 127.0.0.1) with real MCP
clients going through it. Only the backend's server lines and the bind address differ
from the shipped file: timeouts, checks and the balancing algorithm are the ones shipped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.codebase.fixtures_engine import migrate, write_modules
from tests.support.fake_ollama import FakeOllama
from tests.support.http_servers import HttpServer, running_servers, server_env
from tests.support.pg import PostgresCluster, free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy/haproxy/haproxy.cfg"
TOKEN = "lb-" + uuid.uuid4().hex
FILES = 40


def haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is missing: scripts/test installs Debian's package")
        pytest.skip("haproxy is not installed (scripts/test installs it as root)")
    return path


def test_the_shipped_configuration_is_valid() -> None:
    done = subprocess.run(
        [haproxy(), "-c", "-f", str(CONFIG)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_configuration_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a typo in a directive is refused."""
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(CONFIG.read_text().replace("balance leastconn", "balance leastconnections"))
    done = subprocess.run(
        [haproxy(), "-c", "-f", str(broken)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0


def local_config(ports: list[int], listen: int) -> str:
    """The shipped configuration with two local servers instead of the compose service."""
    text = CONFIG.read_text()
    template = re.compile(r"^(\s*)server-template .*$", re.M)
    assert len(template.findall(text)) == 1
    indent = template.search(text)[1]  # type: ignore[index]
    servers = "\n".join(f"{indent}server replica{i} 127.0.0.1:{p}" for i, p in enumerate(ports, 1))
    text = template.sub(servers, text)
    assert text.count("bind :8080") == 1
    return text.replace("bind :8080", f"bind 127.0.0.1:{listen}")


@pytest.fixture(scope="module")
def balanced(
    pg_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, Path]]:
    """Two replicas with a token on one database, haproxy in front; yields the MCP URL,
    the repository to index and haproxy's log."""
    binary = haproxy()
    tmp = tmp_path_factory.mktemp("haproxy")
    url = pg_cluster.create_database("t_" + uuid.uuid4().hex[:12])
    migrate(url)
    repo = write_modules(tmp, "balanced", FILES)
    env = server_env(
        REGISTRY_DATABASE_URL=url,
        CODEBASE_ROOTS=str(tmp),
        CODEBASE_INDEX_WORKERS="1",
        MCP_AUTH_TOKENS=TOKEN,
    )
    with FakeOllama() as ollama:
        env["OLLAMA_BASE_URL"] = ollama.url
        with running_servers(env, tmp / "logs", count=2) as servers:
            yield from _with_haproxy(binary, servers, tmp, repo)


def _with_haproxy(
    binary: str, servers: list[HttpServer], tmp: Path, repo: Path
) -> Iterator[tuple[str, Path, Path]]:
    listen = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(local_config([s.port for s in servers], listen))
    log = tmp / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{listen}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{listen}/mcp", repo, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _fastmcp(url: str, token: str | None, repo: Path) -> dict[str, Any]:
    from fastmcp import Client

    # The initialize handshake: its session must not tie the client to one replica.
    async with Client(url, auth=token, mode="legacy") as client:
        tools = {t.name for t in await client.list_tools()}
        job = await client.call_tool("index_repository", {"path": str(repo), "wait": True})
        found = await client.call_tool("search_code", {"query": "balanced_store_11"})
        listed = await client.call_tool("list_repositories", {})
    return {
        "tools": tools,
        "job": job.structured_content,
        "found": found.structured_content,
        "listed": listed.structured_content,
    }


async def _sdk(url: str, token: str) -> list[str]:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        names = sorted(t.name for t in (await session.list_tools()).tools)
        result = await session.call_tool("search_code", {"query": "balanced lookup"})
        assert not result.is_error, result
        return names


def test_mcp_clients_through_the_balancer_reach_both_replicas(
    balanced: tuple[str, Path, Path],
) -> None:
    url, repo, log = balanced
    seen = anyio.run(_fastmcp, url, TOKEN, repo)
    assert "search_code" in seen["tools"]
    assert seen["job"]["state"] == "completed", seen["job"]
    assert any(r["symbol"] == "balanced_store_11" for r in seen["found"]["results"])
    assert [r["files"] for r in seen["listed"]["repositories"]] == [FILES]
    assert "search_code" in anyio.run(_sdk, url, TOKEN)
    # haproxy's log names the server of each request: both replicas answered /mcp.
    time.sleep(0.5)  # the log line is written when a response ends
    lines = [line for line in log.read_text().splitlines() if "/mcp" in line]
    assert any("codebase-mcp/replica1 " in line for line in lines), lines
    assert any("codebase-mcp/replica2 " in line for line in lines), lines


def test_the_balancer_passes_the_servers_refusals_through(
    balanced: tuple[str, Path, Path],
) -> None:
    url, _, _ = balanced
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    assert httpx.post(url, json=body, headers=headers).status_code == 401
    foreign = {**headers, "Authorization": f"Bearer {TOKEN}", "Host": "attacker.example"}
    assert httpx.post(url, json=body, headers=foreign).status_code == 421
