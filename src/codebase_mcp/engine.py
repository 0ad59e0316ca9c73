"""The engine: the one object the MCP server and the CLI talk to.

It owns the database pool, the embedder and the running index jobs; everything it does is
async and none of it writes to stdout.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from types import TracebackType
from typing import Any

import anyio
import asyncpg
import structlog

from codebase_mcp import paths, validate
from codebase_mcp.config import Settings
from codebase_mcp.embed.clients import Embedder, create_embedder
from codebase_mcp.embed.local_embed import INSTALL_HINT, LocalEmbedder
from codebase_mcp.errors import (
    ConfigError,
    EmbedderError,
    EmbedderUnavailableError,
    EngineError,
    JobNotFoundError,
    ModelMissingError,
    RepositoryNotFoundError,
    SchemaError,
    first_cause,
)
from codebase_mcp.index import catchup
from codebase_mcp.index.changes import KnownSkips
from codebase_mcp.index.pipeline import (
    IndexRun,
    embedder_notice,
    make_executor,
    warm_worker,
)
from codebase_mcp.jobs import job_queue, watch_manager
from codebase_mcp.jobs.manager import JobManager, Outcome, RunningJob
from codebase_mcp.jobs.watch import Timing
from codebase_mcp.jobs.watch_manager import WatchManager
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
from codebase_mcp.search import freshness
from codebase_mcp.search.filters import Filters
from codebase_mcp.search.hybrid import run_search
from codebase_mcp.source import tokens
from codebase_mcp.source.discover import resolve_under_roots
from codebase_mcp.store import db, embeddings, lease, stats, vector_index

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


log = structlog.get_logger(__name__)

# After a failed query embedding, answer lexically without trying again for this long:
# a dead embedder must not add its timeout to every search.
EMBEDDER_COOLDOWN_S = 5.0
QUERY_EMBED_TIMEOUT_S = 10.0
HEALTH_CACHE_S = 5.0
NO_EMBEDDER_CONFIGURED = (
    "no embedder configured: full-text search only. For search by meaning install the "
    f"local model ({INSTALL_HINT}), or set OLLAMA_BASE_URL (or EMBEDDING_PROVIDER) to use "
    "an embedding server"
)


class Engine:
    """Use `engine = await Engine.create(settings)` (or `async with Engine(settings)`).

    `embedder` replaces the HTTP embedder built from the settings (benchmarks plug an
    instant one in); pass `embedder=None` with `use_embedder=False` for lexical only.
    `serve_queue`: take jobs from the queue every replica shares and watch repositories
    (a server does; the CLI runs only the jobs it starts and watches nothing)."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        use_embedder: bool = True,
        serve_queue: bool = False,
    ) -> None:
        self.settings = settings
        self._embedder_override = embedder
        self._use_embedder = use_embedder
        self._serve_queue = serve_queue
        self._pool: db.Pool | None = None
        self._embedder: Embedder | None = None
        self._jobs: JobManager | None = None
        self._watches: WatchManager | None = None
        self._executor: Executor | None = None
        # Who holds this process's leases; its database sessions carry the token.
        self.owner = lease.owner_id(socket.gethostname(), os.getpid(), secrets.token_hex(4))
        self._embedder_down_until = 0.0
        self._embedder_error: str | None = None
        self._health_cache: tuple[float, dict[str, Any]] | None = None
        self._warming: list[Future[int]] = []
        self._maintenance: asyncio.Task[None] | None = None
        self._embedder_loading: asyncio.Task[None] | None = None
        self._no_embedder = "no embedder configured"
        # The active model in the embeddings store (None: no embedder, or it cannot be
        # used), and the background catch-up of its vectors.
        self._model: embeddings.Model | None = None
        self._model_error: str | None = None
        self._catchup: asyncio.Task[None] | None = None
        self._catchup_wanted = asyncio.Event()
        self.catchup_progress = catchup.Progress()
        # Per repository: files found not indexable, with their stat (changes.KnownSkips).
        self._known_skips: dict[str, KnownSkips] = {}
        self._closed = False

    @classmethod
    async def create(cls, settings: Settings, **kwargs: Any) -> Engine:
        engine = cls(settings, **kwargs)
        await engine.start()
        return engine

    async def start(self) -> None:
        """Open the pool, check the schema, start the lease renewals and (serve_queue)
        the poller that takes jobs from the queue: jobs handed back, or whose replica
        stopped renewing their lease."""
        lease_s = self.settings.job_lease_seconds
        pool = await db.create_pool(
            self.settings,
            application_name=lease.session_name(self.owner),
            # A hung replica's open transaction must not outlive its lease for long.
            idle_in_transaction_timeout=lease_s,
        )
        try:
            async with pool.acquire() as conn:
                await db.check_schema(conn)
                self._embedder = await self._open_embedder()
        except BaseException:
            if self._embedder is not None and self._embedder is not self._embedder_override:
                await self._embedder.aclose()
            await pool.close()
            raise
        self._pool = pool
        if self._embedder is None:
            # The one line that says search is lexical, and how to change that.
            log.warning(f"search by meaning is off: {self._no_embedder}")
        elif isinstance(self._embedder, LocalEmbedder):
            self._embedder_loading = asyncio.get_running_loop().create_task(
                self._load_local(self._embedder)
            )
        if self._embedder is not None and self._embedder.dimensions is not None:
            await self._register_model(self._embedder)
        self._jobs = JobManager(
            pool,
            self.owner,
            self._run_job,
            lease_seconds=lease_s,
            poll_seconds=self.settings.job_poll_seconds,
            serve_queue=self._serve_queue,
            reachable=self._reachable,
        )
        self._jobs.open()
        if self._serve_queue:
            self._watches = WatchManager(
                pool,
                self.owner,
                self._watch_sync,
                default=self.settings.watch,
                timing=Timing(self.settings.watch_debounce, self.settings.watch_max_delay),
                lease_seconds=lease_s,
                poll_seconds=self.settings.job_poll_seconds,
                poll_ms=self.settings.watch_poll_ms,
                max_file_bytes=self.settings.max_file_size,
                reachable=self._reachable,
            )
            self._watches.open()
        self._warming = self._start_workers()
        # A bulk load cut short (a stop, a crash) left the vector index set aside.
        self._maintenance = asyncio.get_running_loop().create_task(self._leftovers())
        self._start_catch_up()
        if not tokens.COMPILED:
            log.warning(
                "codebase_mcp._tsvector is missing (installed without a C compiler): "
                "indexing builds its full-text vectors in Python, which is slower"
            )
        log.info(
            "engine ready",
            database=self.settings.database_url_masked,
            embedder=self.settings.provider if self._embedder is not None else "none",
            model=self._embedder.model if self._embedder is not None else None,
        )

    async def _open_embedder(self) -> Embedder | None:
        """The embedder the settings choose (None: full-text search only, and
        `_no_embedder` says why). Its vectors go to the embeddings store under its model,
        whatever their size: any model fits any database."""
        if self._embedder_override is not None:
            return self._embedder_override
        if not self._use_embedder:
            self._no_embedder = "no embedder configured: full-text search only"
            return None
        embedder = create_embedder(self.settings)
        if embedder is None:
            self._no_embedder = NO_EMBEDDER_CONFIGURED
        return embedder

    async def _load_local(self, embedder: LocalEmbedder) -> None:
        """Load the local model in the background: the first search then finds it ready,
        and a model that cannot load (a wrong hash) is reported at start."""
        try:
            await embedder.warm_up()
        except EmbedderError as exc:
            log.error(f"the local embedder cannot load; full-text search only: {exc}")

    async def close(self) -> None:
        """Stop running jobs (as `shutdown(grace=0)`), close the embedder and the pool."""
        await self.shutdown(0.0)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop running jobs at a safe point (within `grace` seconds), mark them
        interrupted, then close everything. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._watches is not None:  # first: they start jobs
                await self._watches.close()
            if self._jobs is not None:
                await self._jobs.stop_all(grace)
            for task in (self._maintenance, self._catchup, self._embedder_loading):
                if task is not None:
                    task.cancel()  # a build rolls back and is taken up next start
                    await asyncio.gather(task, return_exceptions=True)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            if self._embedder is not None:
                await self._embedder.aclose()
            if self._pool is not None:
                with anyio.move_on_after(5) as scope:
                    await self._pool.close()
                if scope.cancelled_caught:
                    self._pool.terminate()

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

    # --- plumbing -----------------------------------------------------------------------

    @property
    def pool(self) -> db.Pool:
        if self._pool is None or self._closed:
            raise EngineError("the engine is not running")
        return self._pool

    @property
    def model(self) -> embeddings.Model | None:
        """The active model in the embeddings store (None: search is by full text)."""
        return self._model

    @property
    def jobs(self) -> JobManager:
        if self._jobs is None or self._closed:
            raise EngineError("the engine is not running")
        return self._jobs

    def _start_workers(self) -> list[Future[int]]:
        """Start the chunking processes now, in the background (a process starts in about
        a second), so the first index does not wait for them."""
        executor = self._chunk_executor()
        return [executor.submit(warm_worker) for _ in range(self.settings.workers)]

    async def warm_up(self) -> None:
        """Wait until the chunking processes are up (benchmarks time a running server)."""
        for future in self._warming:
            await asyncio.wrap_future(future)

    def _chunk_executor(self) -> Executor:
        if self._executor is None:
            self._executor = make_executor(self.settings.workers)
        return self._executor

    async def _register_model(self, embedder: Embedder) -> None:
        """The embedder's model in the embeddings store (registered on first use). A name
        the store knows with another size leaves search by meaning off, and says why."""
        assert embedder.dimensions is not None
        try:
            async with self.pool.acquire() as conn:
                self._model = await embeddings.register(conn, embedder.model, embedder.dimensions)
        except EmbedderError as exc:
            self._model, self._model_error = None, str(exc)
            log.error(f"search by meaning is off: {exc}")

    async def _ensure_model(self) -> embeddings.Model | None:
        """The active model, registered once its size is known: an embedding server whose
        size was not configured tells it with its first answer (a probe here, before a
        job, or a search's query vector). The server itself calls out to nobody at start."""
        embedder = self._embedder
        if self._model is not None or embedder is None or self._model_error is not None:
            return self._model
        if embedder.dimensions is None:
            try:
                with anyio.fail_after(QUERY_EMBED_TIMEOUT_S):
                    await embedder.embed_query("the size of this model's vectors")
            except (EmbedderError, TimeoutError) as exc:
                # Down: a job stores chunks for full text; the next one tries again.
                self._embedder_error = str(exc) or "timed out"
                return None
        await self._register_model(embedder)
        self._start_catch_up()
        return self._model

    def _start_catch_up(self) -> None:
        if self._model is not None and self._catchup is None and not self._closed:
            self._catchup = asyncio.get_running_loop().create_task(self._catch_up_forever())

    async def _catch_up_forever(self) -> None:
        """Catch-up passes: at start, after every job, and every catchup.RETRY_S seconds
        while the embedder fails."""
        assert self._embedder is not None and self._model is not None
        while True:
            self._catchup_wanted.clear()
            try:
                done = await self._catch_up_pass(self._embedder, self._model)
            except Exception as exc:  # the database went away: try again later
                self.catchup_progress.state = "waiting"
                self.catchup_progress.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("catching up embeddings failed", error=str(exc))
                done = False
            with anyio.move_on_after(None if done else catchup.RETRY_S):
                await self._catchup_wanted.wait()

    def catch_up(self) -> None:
        """Ask for a catch-up pass (after a job, or when the embedder answers again)."""
        self._catchup_wanted.set()

    async def catch_up_now(self) -> None:
        """Run a catch-up pass and wait for it (tests and benchmarks)."""
        if self._embedder is not None and self._model is not None:
            await self._catch_up_pass(self._embedder, self._model)

    async def _catch_up_pass(self, embedder: Embedder, model: embeddings.Model) -> bool:
        """One pass over the chunks without a vector of `model`; True when none is left."""
        return await catchup.catch_up(
            self.pool,
            embedder,
            model,
            self.owner,
            self.catchup_progress,
            lease_seconds=self.settings.job_lease_seconds,
        )

    async def _leftovers(self) -> None:
        """What a job cut short left: statistics deltas to fold in, a vector index set
        aside during a bulk load."""
        await self._compact_statistics()
        await self._build_deferred()

    async def _compact_statistics(self) -> None:
        try:
            async with self.pool.acquire() as conn:
                for repository_id in await stats.repositories_with_deltas(conn):
                    path = await conn.fetchval(
                        "SELECT path FROM repositories WHERE id = $1", repository_id
                    )
                    # A job running there (on any replica, or waiting for a takeover)
                    # folds them in when it ends.
                    if path is None or await job_queue.is_running(conn, path):
                        continue
                    await stats.compact(conn, repository_id)
        except Exception as exc:  # searches still answer (deltas count); next start retries
            log.warning("could not fold in the statistics of an interrupted job", error=str(exc))

    async def _build_deferred(self) -> None:
        try:
            await vector_index.build_deferred(self.pool)
        except Exception as exc:  # searches still answer; the next job tries again
            log.warning("could not build the vector index", error=str(exc))

    def _reachable(self, repository: str) -> bool:
        """Whether a queued job's repository is one this replica may index: under its
        CODEBASE_ROOTS, and a directory here."""
        try:
            return resolve_under_roots(paths.to_os(repository), self.settings.roots).is_dir()
        except Exception:  # outside the roots, or not a path at all
            return False

    async def _run_job(self, job: RunningJob) -> Outcome:
        # One job per repository runs across replicas: the jobs table's unique index says
        # so, and every write checks the job's lease (RunningJob.fence).
        if not self._reachable(job.info.repository):
            raise EngineError(
                f"{job.info.repository} is not a directory under CODEBASE_ROOTS on the "
                f"replica {self.owner}"
            )
        return await self._index(job)

    async def _index(self, job: RunningJob) -> Outcome:
        model = await self._ensure_model()
        unsized = self._embedder is not None and model is None and self._model_error is None
        run = IndexRun(
            pool=self.pool,
            embedder=self._embedder,
            model=model,
            executor=self._chunk_executor(),
            root=job.info.repository,
            job=job,
            force=job.info.force,
            max_file_bytes=self.settings.max_file_size,
            file_batch=self.settings.file_batch_size,
            read_ahead=2 * self.settings.workers,
            bulk_min_files=self.settings.bulk_index_min_files,
            stat_check=self.settings.stat_check,
            known_skips=self._known_skips.setdefault(job.info.repository, {}),
        )
        try:
            result = await run.run()
        except Exception as exc:
            if isinstance(first_cause(exc), BrokenProcessPool):
                # A chunking process died (OOM killer, a crash in a grammar): the pool is
                # unusable, the next job gets a fresh one.
                broken, self._executor = self._executor, None
                if broken is not None:
                    broken.shutdown(wait=False, cancel_futures=True)
            raise
        message = embedder_notice(result.embedder_error) if result.embedder_error else None
        if unsized:  # the probe for the model's size failed: nothing was embedded
            message = embedder_notice(self._embedder_error or "no answer")
        log.info(
            "texts embedded by the job",
            embedded=run.counters.texts_embedded,
            reused=run.counters.texts_reused,
        )
        self.catch_up()  # chunks it stored without vectors, if the embedder failed
        return Outcome(stopped=result.stopped, message=message)

    # --- jobs ---------------------------------------------------------------------------

    async def start_index(
        self,
        path: str,
        force: bool = False,
        progress: ProgressCallback | None = None,
        *,
        watch: bool | None = None,
        fresh: bool = False,
    ) -> JobInfo:
        """Start indexing `path` (the text form of codebase_mcp.paths) in the background
        and return its job at once. If a job for the same repository is queued or running,
        that job is returned instead (see JobManager.start for `force` and `fresh`).
        `watch`: keep the repository up to date from now on (True), or stop (False); None
        leaves the stored choice (else CODEBASE_WATCH) as it is.
        Raises discover.PathNotAllowedError for paths outside CODEBASE_ROOTS, EngineError
        for a path that is not a directory or overlaps an indexed repository."""
        os_path = validate.path("path", path)
        resolved = resolve_under_roots(os_path, self.settings.roots)
        shown = paths.to_text(os_path)
        if not resolved.exists():
            raise validate.InvalidArgumentError(f"path: {shown} does not exist")
        if not resolved.is_dir():
            raise validate.InvalidArgumentError(f"path: {shown} is not a directory")
        repository = paths.to_text(str(resolved))

        async def refuse_overlaps(conn: db.Conn) -> None:
            # Inside the admission's transaction: across replicas, one at a time.
            indexed = await db.repository_paths(conn)
            active = await job_queue.active_repositories(conn)
            containing, inside = validate.overlaps(repository, [*indexed, *active])
            if containing or inside:
                raise validate.overlap_error(repository, containing, inside)

        job = await self.jobs.start(repository, force, progress, refuse_overlaps, fresh=fresh)
        if watch is not None:
            async with self.pool.acquire() as conn:
                await watch_manager.set_watch(conn, repository, watch)
            if self._watches is not None:
                self._watches.kick()
        return job

    async def sync(self, path: str, progress: ProgressCallback | None = None) -> JobInfo:
        """Apply what changed on disk now and return once search sees it: the ended job
        of a run that read the disk after this call (a job already running may have read
        it before: one is queued behind it, see job_queue.admit)."""
        job = await self.start_index(path, progress=progress, fresh=True)
        return await self.wait_job(job.id)

    async def _watch_sync(self, repository: str) -> JobInfo:
        """A watcher's job: as `sync`, for an indexed repository (removed meanwhile: an
        error, the watcher stops)."""

        async def still_watched(conn: db.Conn) -> None:
            # Inside the admission's transaction: a removal turns the watch off first.
            wanted = await conn.fetchval(
                "SELECT watch IS NOT false FROM repositories WHERE path = $1", repository
            )
            if not wanted:
                raise RepositoryNotFoundError(f"{repository} is no longer indexed and watched")

        job = await self.jobs.start(repository, False, None, still_watched, fresh=True)
        return await self.jobs.wait(job.id)

    async def wait_job(self, job_id: str) -> JobInfo:
        """Wait until the job has finished (any final state), wherever it runs, and return
        it (callers bound the wait with anyio.fail_after)."""
        return await self.jobs.wait(job_id)

    async def cancel_job(self, job_id: str) -> JobInfo:
        """Stop a job at its next safe point, wherever it runs; it ends `cancelled`."""
        return await self.jobs.cancel(validate.name("job_id", job_id))

    async def job_status(self, job_id: str) -> JobInfo:
        """Raises JobNotFoundError for an unknown id."""
        return await self.jobs.status(validate.name("job_id", job_id))

    # --- search -------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        repository: str | None = None,
        language: str | None = None,
        path_glob: str | None = None,
        limit: int = 10,
        *,
        mode: SearchMode | None = None,
    ) -> SearchResponse:
        """Hybrid search (mode None); `mode` forces one retrieval. `repository` is an
        indexed repository's path or its directory's name (exactly; see
        validate.pick_repository)."""
        query = validate.query(query)
        limit = validate.limit(limit)
        filters = Filters(
            repository=await self._find_repository(repository) if repository else None,
            language=validate.name("language", language) if language else None,
            path_glob=validate.path_glob(path_glob) if path_glob else None,
        )
        vector: list[float] | None = None
        notice: str | None = None
        if mode != "lexical":
            vector, notice = await self._query_vector(query)
        try:
            response = await run_search(
                self.pool,
                query,
                vector,
                filters,
                limit,
                model=self._model,
                want=mode,
                notice=notice,
            )
        except asyncpg.InvalidRegularExpressionError as exc:  # a net: globs are checked
            raise validate.InvalidArgumentError(
                f"path_glob: PostgreSQL cannot use this pattern ({exc})"
            ) from None
        return await freshness.mark_stale(self.pool, response)

    async def _query_vector(self, query: str) -> tuple[list[float] | None, str | None]:
        if self._embedder is None:
            return None, self._no_embedder
        if self._model_error is not None:
            return None, f"search by meaning is off ({self._model_error}): full-text search only"
        if time.monotonic() < self._embedder_down_until:
            return None, f"embedder unavailable ({self._embedder_error}): full-text search only"
        try:
            with anyio.fail_after(QUERY_EMBED_TIMEOUT_S):
                vector = await self._embedder.embed_query(query)
        except (EmbedderError, TimeoutError) as exc:
            self._embedder_error = str(exc) or "timed out"
            self._embedder_down_until = time.monotonic() + EMBEDDER_COOLDOWN_S
            log.warning("query embedding failed; lexical search", error=self._embedder_error)
            return None, f"embedder unavailable ({self._embedder_error}): full-text search only"
        if self._embedder_down_until or self.catchup_progress.state == "waiting":
            self.catch_up()  # it answers again: the catch-up resumes
        self._embedder_down_until = 0.0
        model = await self._ensure_model()
        if model is None:  # the store refused the model
            return None, f"search by meaning is off ({self._model_error}): full-text search only"
        if not embeddings.holdable(vector):  # the index could not compare it
            error = str(embeddings.bad_values(model))
            log.warning("query embedding unusable; lexical search", error=error)
            return None, f"embedder unusable ({error}): full-text search only"
        return vector, None

    # --- repositories -------------------------------------------------------------------

    async def list_repositories(self) -> list[RepositoryInfo]:
        """Every repository, with how many of its chunks have a vector of the active
        model (the model shows only when some have). With no embedder: the model whose
        vectors it held when last indexed. `watch` is what holds for it (its own choice,
        else CODEBASE_WATCH)."""
        async with self.pool.acquire() as conn:
            found = [
                replace(r, watch=self._watched(r.watch)) for r in await db.list_repositories(conn)
            ]
            if self._model is None:
                return found
            embedded = await embeddings.coverage_by_repository(conn, self._model)
        model = self._model
        out = []
        for info in found:
            n = embedded.get(info.path, 0)
            out.append(
                replace(
                    info,
                    embedding_model=model.name if n else None,
                    embedding_dimensions=model.dimensions if n else None,
                    chunks_embedded=n,
                )
            )
        return out

    def _watched(self, choice: bool | None) -> bool:
        return self.settings.watch if choice is None else choice

    async def _find_repository(self, given: str, argument: str = "repository") -> str:
        """The indexed repository `given` names: its path (as indexed, or one that resolves
        to it) or its directory's name when no other repository has that name."""
        name = validate.repository_name(argument, given)
        real: str | None = None
        if "/" in name:
            os_path = validate.path(argument, name)
            real = paths.to_text(await anyio.to_thread.run_sync(os.path.realpath, os_path))
        async with self.pool.acquire() as conn:
            known = await db.repository_paths(conn)
        return validate.pick_repository(name, known, real)

    async def remove_repository(self, path: str) -> RepositoryInfo:
        """Delete a repository with its files and chunks; raises RepositoryNotFoundError.
        Jobs running or queued for it are cancelled first."""
        found = await self._find_repository(path, "path")
        # Watchers first (on any replica: no watcher job is admitted once this commits),
        # then the jobs, then the rows.
        async with self.pool.acquire() as conn:
            await watch_manager.set_watch(conn, found, False)
        if self._watches is not None:
            await self._watches.forget(found)
        await self.jobs.cancel_repository(found)
        self._known_skips.pop(found, None)
        async with self.pool.acquire() as conn:
            info = await db.repository_info(conn, found)
            await db.delete_repository(conn, found)
        if info is None:
            raise RepositoryNotFoundError(f"no indexed repository at {found}")
        return info

    # --- health -------------------------------------------------------------------------

    async def _coverage(self) -> dict[str, Any]:
        """How many chunks have a vector of the active model, and the catch-up's state."""
        out: dict[str, Any] = {"catch_up": self.catchup_progress.as_dict()}
        assert self._model is not None
        try:
            with anyio.fail_after(3):
                async with self.pool.acquire() as conn:
                    embedded, total = await embeddings.coverage(conn, self._model)
            out |= {"model": self._model.name, "chunks_embedded": embedded, "chunks": total}
        except Exception as exc:  # the database part of health says what is wrong
            out["error"] = f"{type(exc).__name__}: {exc}"
        return out

    async def health(self) -> dict[str, Any]:
        """{"status": "ok"|"degraded"|"down", "database": {...}, "embedder": {...},
        "jobs": {"running": n, ...}}"""
        now = time.monotonic()
        if self._health_cache is not None and now - self._health_cache[0] < HEALTH_CACHE_S:
            return self._health_cache[1]
        database: dict[str, Any]
        # Running jobs across every replica (the table), and those running here.
        jobs: dict[str, Any] = {"running": 0, "here": self._jobs.running if self._jobs else 0}
        repositories: list[dict[str, Any]] = []
        started = time.perf_counter()
        try:
            with anyio.fail_after(3):
                async with self.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
                    jobs["by_state"] = await db.job_counts(conn)
                    jobs["running"] = jobs["by_state"].get(JobState.RUNNING.value, 0)
                    repositories = await watch_manager.freshness(conn, self.settings.watch)
            database = {
                "ok": True,
                "url": self.settings.database_url_masked,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            }
        except Exception as exc:
            database = {
                "ok": False,
                "url": self.settings.database_url_masked,
                "error": f"{type(exc).__name__}: {exc}".replace(
                    self.settings.database_url, self.settings.database_url_masked
                ),
            }
        embedder: dict[str, Any]
        if self._embedder is None:
            embedder = {"ok": False, "error": self._no_embedder}
        else:
            try:
                with anyio.fail_after(5):
                    embedder = await self._embedder.check()
            except TimeoutError:
                embedder = {"ok": False, "model": self._embedder.model, "error": "timed out"}
        if self._model is not None:
            embedder["vectors"] = await self._coverage()
        status = "down" if not database["ok"] else "ok" if embedder.get("ok") else "degraded"
        report = {
            "status": status,
            "database": database,
            "embedder": embedder,
            "jobs": jobs,
            # Freshness per repository, and the watchers this server runs.
            "repositories": repositories,
            "watching_here": self._watches.status() if self._watches is not None else {},
        }
        self._health_cache = (now, report)
        return report
