"""The engine's public result types: plain, immutable data shared by the server and the CLI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass(frozen=True)
class FileError:
    """One file that could not be indexed; the job goes on without it."""

    path: str
    error: str


@dataclass(frozen=True)
class JobInfo:
    id: str
    repository: str
    state: JobState
    files_total: int = 0
    files_done: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    files_unchanged: int = 0  # unchanged since the last index: no parsing, no embedding
    files_deleted: int = 0
    # Files not indexed, by reason (discover.SkipReason values: too_large, binary,
    # undecodable, unreadable, ...), whether skipped at discovery or on reading.
    skipped: Mapping[str, int] = field(default_factory=dict)
    errors: tuple[FileError, ...] = ()
    message: str | None = None  # why a job failed or was interrupted; what it does now
    force: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # The replica running the job (host:pid:token); after it ends, the one that ran it
    # last; None while queued.
    replica: str | None = None


@dataclass(frozen=True)
class Progress:
    """A progress snapshot handed to `progress` callbacks (MCP progress notifications)."""

    job_id: str
    files_done: int
    files_total: int
    chunks_done: int
    chunks_total: int
    message: str = ""


ProgressCallback = Callable[[Progress], Awaitable[None]]

SearchMode = Literal["hybrid", "vector", "lexical"]


@dataclass(frozen=True)
class SearchResult:
    repository: str
    path: str  # relative to the repository root
    start_line: int  # 1-based, inclusive
    end_line: int
    language: str | None
    symbol: str | None
    kind: str | None
    snippet: str
    score: float
    mode: SearchMode
    # The file changed on disk (size or mtime) after it was indexed, or is gone; None:
    # not known (its stat was not stored, or could not be read).
    stale: bool | None = None


@dataclass(frozen=True)
class SearchResponse:
    query: str
    mode: SearchMode
    results: tuple[SearchResult, ...] = ()
    # Set when the engine answered in a degraded mode, e.g. "embedder unreachable: ...".
    notice: str | None = None
    elapsed_ms: float = 0.0


@dataclass(frozen=True)
class RepositoryInfo:
    path: str
    files: int
    chunks: int
    last_indexed: datetime | None
    # The active embedder's model and size when any chunk has a vector of it, else None.
    embedding_model: str | None
    embedding_dimensions: int | None = field(default=None)
    chunks_embedded: int = 0  # chunks with a vector of that model (the rest catch up)
    # Freshness: the stored watch choice (None: CODEBASE_WATCH decides), the replica
    # watching it now (None: nobody), when the last completed job began to read the disk,
    # the changes its watcher saw that no finished job has applied yet (None: unknown, not
    # watched), and why it cannot be watched.
    watch: bool | None = None
    watcher: str | None = None
    synced_at: datetime | None = None
    pending_changes: int | None = None
    watch_error: str | None = None
