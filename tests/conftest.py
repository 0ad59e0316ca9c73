"""Shared fixtures: one real PostgreSQL per session (a fresh database per test) and a
local Ollama-API server."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_ollama import FakeOllama
from tests.support.pg import PostgresCluster, running_cluster


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A real PostgreSQL (bundled binaries, with pgvector) on a free TCP port."""
    base = Path(tempfile.mkdtemp(prefix="cbmcp-pg-", dir="/tmp"))
    with running_cluster(base) as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty database on the session's cluster: postgresql://... URL."""
    return pg_cluster.create_database("t_" + uuid.uuid4().hex[:12])


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No settings leak in from the developer's environment."""
    for key in list(os.environ):
        if key.startswith(
            (
                "MCP_SUPERVISOR_",
                "REGISTRY_DATABASE_URL",
                "OLLAMA_",
                "OPENAI_",
                "EMBEDDING_",
                "CODEBASE_",
            )
        ):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(autouse=True)
def shipped_logging() -> None:
    """In-process code logs as it does when shipped (stderr, redacted, no locals in
    tracebacks), not through structlog's defaults, which print to stdout."""
    from codebase_mcp.logs import configure_logging

    configure_logging("info", "console")
