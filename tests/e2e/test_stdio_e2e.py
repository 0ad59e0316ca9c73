"""End to end over stdio: `mcp-supervisor` running `codebase-mcp serve` as real processes,
driven by FastMCP's stdio client, against a real PostgreSQL and the local Ollama-API
server. Nothing but protocol messages may appear on the wire."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from tests.support.fake_ollama import FakeOllama
from tests.support.pg import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mcp_supervisor.cli") is None,
    reason="mcp-supervisor (src/mcp_supervisor/cli.py) is not importable",
)


def write_repo(root: Path) -> Path:
    repo = root / "workspace" / "shop"
    (repo / "billing").mkdir(parents=True)
    (repo / "billing" / "invoice.py").write_text(
        "class Invoice:\n"
        "    def total_with_tax(self, rate):\n"
        '        """The invoice total including sales tax."""\n'
        "        return sum(self.lines) * (1 + rate)\n"
    )
    (repo / "billing" / "refund.rs").write_text(
        "pub fn issue_refund(amount: u64) -> Result<(), String> {\n    Ok(())\n}\n"
    )
    return repo


@pytest.mark.anyio
async def test_supervised_server_over_stdio(
    pg_url: str, fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    repo = write_repo(tmp_path)
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "REGISTRY_DATABASE_URL": pg_url,
        "OLLAMA_BASE_URL": fake_ollama.url,
        "CODEBASE_ROOTS": str(tmp_path / "workspace"),
        "CODEBASE_INDEX_WORKERS": "1",
        # The supervisor waits for PostgreSQL and the Ollama API and migrates, as in the
        # container; a fast heartbeat shows our sd_notify READY/WATCHDOG in time.
        "MCP_SUPERVISOR_HEARTBEAT_FILE": str(tmp_path / "heartbeat.json"),
        "MCP_SUPERVISOR_HEARTBEAT_INTERVAL": "0.5",
    }
    stderr_log = tmp_path / "stderr.log"
    transport = StdioTransport(
        str(BIN / "mcp-supervisor"),
        ["--", "codebase-mcp", "serve"],
        env=env,
        cwd=str(tmp_path),
        log_file=stderr_log,
    )
    # Anything on stdout that is not a JSON-RPC message reaches the client as an exception.
    stray: list[Exception] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            stray.append(message)

    async with Client(transport, mode="legacy", message_handler=on_message) as client:
        names = {t.name for t in await client.list_tools()}
        assert {"index_repository", "get_indexing_status", "search_code"} <= names

        started = (await client.call_tool("index_repository", {"path": str(repo)})).data
        job_id = started["job_id"]
        deadline = time.monotonic() + 60
        while True:
            status = (await client.call_tool("get_indexing_status", {"job_id": job_id})).data
            if status["finished"] or time.monotonic() > deadline:
                break
            await anyio.sleep(0.1)
        assert status["state"] == "completed", status
        assert status["files_done"] == 2

        found = (await client.call_tool("search_code", {"query": "total with tax"})).data
        top = found["results"][0]
        assert top["path"] == "billing/invoice.py", found
        assert top["symbol"] == "Invoice.total_with_tax", found

        # The server told the supervisor READY=1 and keeps pinging WATCHDOG=1.
        deadline = time.monotonic() + 20
        while True:
            probe = await anyio.run_process(
                [str(BIN / "mcp-supervisor"), "--check", "--ready"], env=env, check=False
            )
            heartbeat = tmp_path / "heartbeat.json"
            beat = json.loads(heartbeat.read_text()) if heartbeat.exists() else {}
            if probe.returncode == 0 and beat.get("last_watchdog_ping"):
                break
            assert time.monotonic() < deadline, (probe.stdout, probe.stderr, beat)
            await anyio.sleep(0.25)
        assert beat["status"] == "ready", beat

        refused = await client.call_tool("index_repository", {"path": "/etc"}, raise_on_error=False)
        assert refused.is_error

    assert stray == [], f"non-protocol output on stdout: {stray}"
    log = stderr_log.read_text()
    assert "Traceback" not in log
    assert PASSWORD not in log
