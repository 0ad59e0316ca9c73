"""Helpers for the engine tests: migrate a test database, write a small repository in
several languages, build settings, open an engine."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from codebase_mcp.config import Settings, load_settings
from codebase_mcp.engine import Engine, JobInfo, JobState
from tests.support.fake_ollama import FakeOllama

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = ROOT / "alembic.ini"
FAKE_OLLAMA_DIMENSIONS = 768


def alembic_config(url: str, dimensions: int | None = None) -> Any:
    """Unless `dimensions` or EMBEDDING_DIMENSIONS say otherwise, the schema is sized
    for the fake Ollama's 768 (the migrations' own default follows this process's
    environment, where `auto` may pick the local model)."""
    from alembic.config import Config

    if dimensions is None and not os.environ.get("EMBEDDING_DIMENSIONS"):
        dimensions = FAKE_OLLAMA_DIMENSIONS
    cfg = Config(str(ALEMBIC_INI))
    x = [f"url={url}"]
    if dimensions is not None:
        x.append(f"dimensions={dimensions}")
    cfg.cmd_opts = argparse.Namespace(x=x)
    cfg.attributes["configure_logger"] = False
    return cfg


def migrate(url: str, revision: str = "head", dimensions: int | None = None) -> None:
    from alembic import command

    command.upgrade(alembic_config(url, dimensions), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


async def migrate_async(url: str, dimensions: int | None = None) -> None:
    # alembic's env.py runs its own event loop: keep it off ours.
    await anyio.to_thread.run_sync(lambda: migrate(url, dimensions=dimensions))


PARSE_DATE_PY = '''\
"""Date helpers."""

import datetime


def parse_date(text):
    """Turn an ISO 8601 string such as 2024-01-31 into a calendar day."""
    return datetime.date.fromisoformat(text)


class Invoice:
    """A bill sent to a customer."""

    def total_amount(self):
        return sum(line.price * line.quantity for line in self.lines)
'''

FILES: dict[str, str] = {
    "app/dates.py": PARSE_DATE_PY,
    "app/net.py": (
        "import socket\n\n\n"
        "def open_connection(host, port):\n"
        '    """Connect a TCP socket to a remote server."""\n'
        "    return socket.create_connection((host, port))\n"
    ),
    "web/cart.ts": (
        "export function renderShoppingCart(items: string[]): string {\n"
        "  return items.map((item) => `<li>${item}</li>`).join('');\n"
        "}\n"
    ),
    "cmd/main.go": (
        "package main\n\n"
        "// ComputeChecksum folds the bytes into a CRC32 checksum.\n"
        "func ComputeChecksum(data []byte) uint32 {\n\treturn crc32.ChecksumIEEE(data)\n}\n"
    ),
    "src/lib.rs": (
        "/// Reverse the words of a sentence.\n"
        "pub fn reverse_words(s: &str) -> String {\n"
        '    s.split_whitespace().rev().collect::<Vec<_>>().join(" ")\n'
        "}\n"
    ),
    "docs/guide.md": "# Guide\n\nHow to deploy the service to production with rolling restarts.\n",
    ".gitignore": "secrets/\n*.log\n",
    "secrets/keys.py": "def leaked_private_key():\n    return 'gitignored'\n",
    "debug.log": "gitignored_log_line\n",
    "node_modules/lib/index.js": "function dependencyCodeNeverIndexed() {}\n",
}


def write_repo(base: Path, name: str = "repo") -> Path:
    repo = base / name
    for rel, text in FILES.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # Binary content under a source-looking name: skipped by its NUL bytes.
    (repo / "app" / "blob.py").write_bytes(b"def binary_marker():\x00\x01\x02" * 50)
    return repo


def settings_for(
    pg_url: str, ollama: FakeOllama | str, roots: Path | str, **extra: str
) -> Settings:
    url = ollama if isinstance(ollama, str) else ollama.url
    env = {
        "REGISTRY_DATABASE_URL": pg_url,
        "OLLAMA_BASE_URL": url,
        "CODEBASE_ROOTS": str(roots),
        "CODEBASE_INDEX_WORKERS": "1",
        "CODEBASE_EMBED_RETRIES": "1",
        # The test server's size, known up front: no probe embedding before a first job
        # (tests count embedded texts). Unset, it is learned (test_embeddings_store).
        "EMBEDDING_DIMENSIONS": "768",
    }
    env.update(extra)
    return load_settings(env=env)


@asynccontextmanager
async def open_engine(settings: Settings, **kwargs: Any) -> AsyncIterator[Engine]:
    engine = await Engine.create(settings, **kwargs)
    try:
        yield engine
    finally:
        await engine.close()


def write_modules(base: Path, name: str, count: int) -> Path:
    """`count` Python modules of two functions each (two chunks), named after `name`:
    {name}_lookup_{i} and {name}_store_{i} in {name}_{i:03}.py."""
    repo = base / name
    repo.mkdir()
    for i in range(count):
        (repo / f"{name}_{i:03}.py").write_text(
            f"def {name}_lookup_{i}(key):\n    return key * {i}\n\n\n"
            f"def {name}_store_{i}(key, value):\n    return (key, value, {i})\n"
        )
    return repo


async def wait_for_progress(engine: Engine, job_id: str) -> JobInfo:
    """Until at least one batch is written (and the job still runs)."""
    with anyio.fail_after(30):
        while True:
            job = await engine.job_status(job_id)
            assert job.state in (JobState.QUEUED, JobState.RUNNING), job
            if job.files_done > 0:
                return job
            await anyio.sleep(0.02)


async def index_and_wait(engine: Engine, path: Path | str, *, force: bool = False) -> JobInfo:
    job = await engine.start_index(str(path), force=force)
    with anyio.fail_after(60):
        return await engine.wait_job(job.id)


def child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


def chunking_processes(besides: set[int] | None = None) -> list[Any]:
    """This process's chunking workers (multiprocessing spawn children), leaving out the
    pids in `besides` (e.g. an earlier engine's, still exiting)."""
    import psutil

    return [
        p
        for p in psutil.Process().children()
        if p.pid not in (besides or set()) and "spawn_main" in " ".join(p.cmdline())
    ]
