"""The engine: the one object the MCP server and the CLI talk to.

It owns the database pool, the embedder and the running index jobs; everything it does is
async and none of it writes to stdout.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from codebase_mcp.config import Settings
from codebase_mcp.errors import (
    ConfigError,
    EmbedderError,
    EmbedderUnavailableError,
    EngineError,
    JobNotFoundError,
    ModelMissingError,
    RepositoryNotFoundError,
    SchemaError,
)
from codebase_mcp.models import (
    FileError,
    JobInfo,
    JobState,
    Progress,
    ProgressCallback,
    RepositoryInfo,
    SearchMode,
    SearchResponse,
    SearchResult,
)

__all__ = [
    "ConfigError",
    "EmbedderError",
    "EmbedderUnavailableError",
    "Engine",
    "EngineError",
    "FileError",
    "JobInfo",
    "JobNotFoundError",
    "JobState",
    "ModelMissingError",
    "Progress",
    "ProgressCallback",
    "RepositoryInfo",
    "RepositoryNotFoundError",
    "SchemaError",
    "SearchMode",
    "SearchResponse",
    "SearchResult",
]


class Engine:
    """Use `engine = await Engine.create(settings)` (or `async with Engine(settings)`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    async def create(cls, settings: Settings) -> Engine:
        engine = cls(settings)
        await engine.start()
        return engine

    async def start(self) -> None:
        """Open the pool, check the schema, mark jobs left `running` as interrupted."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop running jobs (as `shutdown(grace=0)`), close the embedder and the pool."""
        raise NotImplementedError

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop running jobs at a safe point (within `grace` seconds), mark them
        interrupted, then close everything. Idempotent."""
        raise NotImplementedError

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start_index(
        self, path: str, force: bool = False, progress: ProgressCallback | None = None
    ) -> JobInfo:
        """Start indexing `path` in the background and return its job at once. If a job for
        the same repository is queued or running, that job is returned instead.
        Raises discover.PathNotAllowedError for paths outside CODEBASE_ROOTS."""
        raise NotImplementedError

    async def wait_job(self, job_id: str) -> JobInfo:
        """Wait until the job has finished (any final state) and return it (callers bound
        the wait with anyio.fail_after)."""
        raise NotImplementedError

    async def cancel_job(self, job_id: str) -> JobInfo:
        """Stop a running job at its next safe point; it ends `cancelled`."""
        raise NotImplementedError

    async def job_status(self, job_id: str) -> JobInfo:
        """Raises JobNotFoundError for an unknown id."""
        raise NotImplementedError

    async def search(
        self,
        query: str,
        repository: str | None = None,
        language: str | None = None,
        path_glob: str | None = None,
        limit: int = 10,
    ) -> SearchResponse:
        raise NotImplementedError

    async def list_repositories(self) -> list[RepositoryInfo]:
        raise NotImplementedError

    async def remove_repository(self, path: str) -> RepositoryInfo:
        """Delete a repository with its files and chunks; raises RepositoryNotFoundError."""
        raise NotImplementedError

    async def health(self) -> dict[str, Any]:
        """{"status": "ok"|"degraded"|"down", "database": {...}, "embedder": {...},
        "jobs": {"running": n, ...}}"""
        raise NotImplementedError
