"""The MCP surface: tools, the health resource and the /health route over one Engine.

Tools are thin: they validate, call the engine, and turn its results into plain JSON and
its errors into ToolError messages. Unexpected exceptions are masked by FastMCP
(mask_error_details) and logged here, so a user never sees a traceback.
"""

from __future__ import annotations

import os

# Set before fastmcp is imported: its settings are read once, at import. A container must
# not call out at start (update check), and its log lines belong on plain stderr.
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_ENABLE_RICH_LOGGING", "false")

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import anyio
import structlog
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from codebase_mcp.config import Settings, load_settings
from codebase_mcp.engine import Engine
from codebase_mcp.errors import EngineError
from codebase_mcp.models import (
    JobInfo,
    JobState,
    Progress,
    RepositoryInfo,
    SearchResponse,
    SearchResult,
)
from codebase_mcp.source.discover import PathNotAllowedError

log = structlog.get_logger(__name__)

SERVER_NAME = "codebase-mcp"
INSTRUCTIONS = (
    "Semantic and full-text search over local code repositories. Index a repository with "
    "index_repository (it returns a job id at once; follow it with get_indexing_status), "
    "then find code with search_code. With watch=true the index follows the files as they "
    "change; sync_repository applies what changed on disk now and returns once search "
    "sees it."
)
# How long a stop lets running jobs reach a safe point: well inside the supervisor's
# 8 s grace window, leaving time to mark them interrupted and close the pool.
SHUTDOWN_GRACE = 3.0
TEARDOWN_LIMIT = SHUTDOWN_GRACE + 3.0
# While a client waits on a job, how often progress is re-read without an engine wake-up.
PROGRESS_POLL = 1.0
PROGRESS_MIN_INTERVAL = 0.2


# --- pure conversions -------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_to_dict(job: JobInfo) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "repository": job.repository,
        "state": str(job.state),
        "finished": job.state.finished,
        "files_done": job.files_done,
        "files_total": job.files_total,
        "files_unchanged": job.files_unchanged,
        "files_deleted": job.files_deleted,
        "files_skipped": dict(job.skipped),
        "chunks_done": job.chunks_done,
        "chunks_total": job.chunks_total,
        "errors": [{"path": e.path, "error": e.error} for e in job.errors],
        "message": job.message,
        "force": job.force,
        "replica": job.replica,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def result_to_dict(result: SearchResult) -> dict[str, Any]:
    return {
        "repository": result.repository,
        "path": result.path,
        "start_line": result.start_line,
        "end_line": result.end_line,
        "language": result.language,
        "symbol": result.symbol,
        "kind": result.kind,
        "snippet": result.snippet,
        "score": round(result.score, 6),
        "mode": result.mode,
        "stale": result.stale,
    }


def search_to_dict(response: SearchResponse) -> dict[str, Any]:
    return {
        "query": response.query,
        "mode": response.mode,
        "notice": response.notice,
        "elapsed_ms": round(response.elapsed_ms, 2),
        "results": [result_to_dict(r) for r in response.results],
    }


def repository_to_dict(repo: RepositoryInfo) -> dict[str, Any]:
    return {
        "path": repo.path,
        "files": repo.files,
        "chunks": repo.chunks,
        "last_indexed": _iso(repo.last_indexed),
        "embedding_model": repo.embedding_model,
        "embedding_dimensions": repo.embedding_dimensions,
        "chunks_embedded": repo.chunks_embedded,
        **freshness_to_dict(repo),
    }


def freshness_to_dict(repo: RepositoryInfo) -> dict[str, Any]:
    return {
        "watched": bool(repo.watch),
        "watcher": repo.watcher,
        "synced_at": _iso(repo.synced_at),
        "pending_changes": repo.pending_changes,
        "watch_error": repo.watch_error,
    }


def progress_message(job: JobInfo) -> str:
    line = (
        f"{job.state}: {job.files_done}/{job.files_total} files, "
        f"{job.chunks_done}/{job.chunks_total} chunks"
    )
    # While running, the message says what the job does (e.g. building the vector index).
    return f"{line}; {job.message}" if job.message and not job.state.finished else line


def user_error(exc: BaseException) -> ToolError | None:
    """The ToolError to show for an error meant for users, None for anything else."""
    if isinstance(exc, EngineError | PathNotAllowedError):
        return ToolError(str(exc))
    return None


# --- the server -------------------------------------------------------------------------


@dataclass
class AppState:
    """What the lifespan started; the CLI reads startup_error to pick an exit code."""

    settings: Settings | None = None
    engine: Engine | None = None
    startup_error: BaseException | None = None

    def require_engine(self) -> Engine:
        if self.engine is None:
            raise ToolError("the server is starting or stopping; try again in a moment")
        return self.engine


class Wakeup:
    """A re-armable event: the engine's progress callback sets it, the follower waits."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait_at_most(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._event.wait()
        self._event = anyio.Event()


async def follow_job(engine: Engine, job: JobInfo, ctx: Context, woken: Wakeup) -> JobInfo:
    """Report a job's progress to the calling client until it finishes.

    Progress is sent from this request's own task (the job runs in the engine's), woken by
    the engine's progress callback or, for a job we did not start, by a slow poll."""
    last: tuple[int, int, int, str] | None = None
    while True:
        job = await engine.job_status(job.id)
        snapshot = (job.files_done, job.files_total, job.chunks_done, progress_message(job))
        if snapshot != last:
            last = snapshot
            total = float(job.files_total) if job.files_total else None
            await ctx.report_progress(float(job.files_done), total, progress_message(job))
        if job.state.finished:
            return job
        await woken.wait_at_most(PROGRESS_POLL)
        await anyio.sleep(PROGRESS_MIN_INTERVAL)


def build_server(settings: Settings | None = None) -> tuple[FastMCP[AppState], AppState]:
    """The FastMCP server; its lifespan starts the engine from `settings` (or the
    environment) and shuts it down gracefully."""
    state = AppState(settings=settings)

    @asynccontextmanager
    async def lifespan(_: FastMCP[AppState]) -> AsyncIterator[AppState]:
        try:
            resolved = state.settings or load_settings()
            # A server takes jobs from the queue every replica shares.
            engine = await Engine.create(resolved, serve_queue=True)
        except BaseException as exc:
            state.startup_error = exc
            raise
        state.engine = engine
        log.info("engine started", roots=[str(r) for r in resolved.roots])
        try:
            yield state
        finally:
            state.engine = None
            # FastMCP shields its own teardown; shielding here too keeps the in-memory
            # client's exit (and any other caller) just as safe.
            with anyio.CancelScope(shield=True), anyio.move_on_after(TEARDOWN_LIMIT):
                await engine.shutdown(SHUTDOWN_GRACE)
            log.info("engine stopped")

    mcp: FastMCP[AppState] = FastMCP(
        SERVER_NAME,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        mask_error_details=True,
    )
    _add_index_tools(mcp, state)
    _add_query_tools(mcp, state)
    _add_health(mcp, state)
    return mcp, state


def _add_index_tools(mcp: FastMCP[AppState], state: AppState) -> None:

    @mcp.tool(annotations={"readOnlyHint": False, "idempotentHint": True, "openWorldHint": False})
    async def index_repository(
        path: Annotated[
            str,
            Field(
                description="Directory of the repository; must be under CODEBASE_ROOTS. "
                "Paths are UTF-8 text with \\\\ for a backslash and \\xHH for any other "
                "byte that is not UTF-8 (as list_repositories and search_code show them)"
            ),
        ],
        ctx: Context,
        force: Annotated[
            bool,
            Field(
                description="Re-index and re-embed every file, not only the changed ones. If "
                "a job without force runs for the repository, a forced job is queued to "
                "start when it ends, and returned"
            ),
        ] = False,
        wait: Annotated[
            bool,
            Field(
                description="Stay until the job finishes, sending MCP progress notifications "
                "(when the request carries a progressToken), and return the final status. "
                "By default the job id returns at once and the job goes on in the background."
            ),
        ] = False,
        watch: Annotated[
            bool | None,
            Field(
                description="true: keep the repository up to date from now on, across "
                "restarts (a server watches its files and indexes what changes); false: "
                "stop. Unset: as it was (CODEBASE_WATCH by default)"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Index (or incrementally update) a repository. Returns the job at once, or the
        job already running for that repository. A directory that contains an indexed
        repository, or lies inside one, is refused (its files would be found twice)."""
        engine = state.require_engine()
        woken = Wakeup()

        async def on_progress(_: Progress) -> None:
            woken.set()

        try:
            job = await engine.start_index(
                path, force=force, progress=on_progress if wait else None, watch=watch
            )
            if wait:
                job = await follow_job(engine, job, ctx, woken)
        except Exception as exc:
            raise _tool_error(exc, "index_repository") from None
        return job_to_dict(job)

    @mcp.tool(annotations={"readOnlyHint": False, "idempotentHint": True, "openWorldHint": False})
    async def sync_repository(
        path: Annotated[
            str,
            Field(
                description="Directory of the repository (as for index_repository); one "
                "not indexed yet is indexed"
            ),
        ],
        ctx: Context,
    ) -> dict[str, Any]:
        """Apply what changed on disk now (files created, changed, deleted since the
        index last read them) and return once search sees it: the finished job
        (`in_sync` true when it completed) and the repository's freshness. Cheap when
        little changed: unchanged files are recognised by their size and mtime."""
        engine = state.require_engine()
        woken = Wakeup()

        async def on_progress(_: Progress) -> None:
            woken.set()

        try:
            job = await engine.start_index(path, progress=on_progress, fresh=True)
            job = await follow_job(engine, job, ctx, woken)
            repo = next(
                (r for r in await engine.list_repositories() if r.path == job.repository), None
            )
        except Exception as exc:
            raise _tool_error(exc, "sync_repository") from None
        return {
            **job_to_dict(job),
            "in_sync": job.state is JobState.COMPLETED,
            "repository": repository_to_dict(repo) if repo is not None else None,
        }

    @mcp.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
    async def get_indexing_status(
        job_id: Annotated[str, Field(description="The id index_repository returned")],
    ) -> dict[str, Any]:
        """State of an indexing job (queued, running, completed, failed, cancelled,
        interrupted) with files and chunks done and total, files unchanged, files skipped
        by reason (too_large, binary, undecodable, unreadable, ...), per-file errors and a
        message (e.g. the embedder was unavailable)."""
        engine = state.require_engine()
        try:
            job = await engine.job_status(job_id.strip())
        except Exception as exc:
            raise _tool_error(exc, "get_indexing_status") from None
        return job_to_dict(job)


def _add_query_tools(mcp: FastMCP[AppState], state: AppState) -> None:
    @mcp.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
    async def search_code(
        query: Annotated[
            str,
            Field(
                min_length=1,
                max_length=2000,
                description="What to look for: a description or an identifier",
            ),
        ],
        repository: Annotated[
            str | None,
            Field(
                description="Only this repository: its indexed path, or its directory's "
                "name when no other indexed repository has that name"
            ),
        ] = None,
        language: Annotated[
            str | None, Field(description="Only this language, e.g. python, go, rust")
        ] = None,
        path_glob: Annotated[
            str | None, Field(description="Only paths matching this glob, e.g. src/**/*.py")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=100, description="Number of results")] = 10,
    ) -> dict[str, Any]:
        """Hybrid semantic + full-text code search. Each result has repository, path,
        start/end line, language, symbol, snippet, score, the retrieval mode, and `stale`:
        true when the file changed on disk after it was indexed (the snippet may be out
        of date: sync_repository brings it up to date)."""
        if not query.strip():
            raise ToolError("query must not be empty")
        engine = state.require_engine()
        try:
            response = await engine.search(
                query,
                repository=repository or None,
                language=language or None,
                path_glob=path_glob or None,
                limit=limit,
            )
        except Exception as exc:
            raise _tool_error(exc, "search_code") from None
        return search_to_dict(response)

    @mcp.tool(annotations={"readOnlyHint": True, "openWorldHint": False})
    async def list_repositories() -> dict[str, Any]:
        """Indexed repositories: path, files, chunks, last indexed, embedding model, and
        freshness: whether it is watched (and by which server), when the index last read
        the disk (`synced_at`), changes seen but not applied yet (`pending_changes`, null
        when nobody watches it) and why it cannot be watched (`watch_error`)."""
        engine = state.require_engine()
        try:
            repos = await engine.list_repositories()
        except Exception as exc:
            raise _tool_error(exc, "list_repositories") from None
        return {"repositories": [repository_to_dict(r) for r in repos]}

    @mcp.tool(annotations={"readOnlyHint": False, "destructiveHint": True, "openWorldHint": False})
    async def remove_repository(
        path: Annotated[
            str,
            Field(
                description="The repository's indexed path, or its directory's name when no "
                "other indexed repository has that name"
            ),
        ],
    ) -> dict[str, Any]:
        """Remove a repository with its files and chunks from the index."""
        engine = state.require_engine()
        try:
            repo = await engine.remove_repository(path)
        except Exception as exc:
            raise _tool_error(exc, "remove_repository") from None
        return {"removed": repository_to_dict(repo)}


def _add_health(mcp: FastMCP[AppState], state: AppState) -> None:
    @mcp.resource("health://status", name="health", mime_type="application/json")
    async def health_status() -> dict[str, Any]:
        """Database, embedder and jobs."""
        return await _health(state)

    @mcp.custom_route("/health", methods=["GET"])
    async def health_route(_: Request) -> JSONResponse:
        report = await _health(state)
        return JSONResponse(report, status_code=503 if report["status"] == "down" else 200)


async def _health(state: AppState) -> dict[str, Any]:
    if state.engine is None:
        return {"status": "down", "reason": "engine not running"}
    try:
        return await state.engine.health()
    except Exception as exc:
        log.warning("health check failed", error=str(exc))
        return {"status": "down", "reason": str(exc)}


def _tool_error(exc: Exception, tool: str) -> Exception:
    """ToolError for users' errors; anything else is logged here and passed on for
    FastMCP to mask (the client sees only that the tool failed)."""
    if isinstance(exc, ToolError):
        return exc
    error = user_error(exc)
    if error is not None:
        return error
    log.error("tool failed", tool=tool, exc_info=exc)
    return ToolError(f"{tool} failed unexpectedly ({type(exc).__name__}); see the server log")
