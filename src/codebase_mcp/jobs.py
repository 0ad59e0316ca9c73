"""Index jobs at run time: one task per job, at most one job per repository, persisted in
the jobs table at every step, stoppable at a safe point (cancel, shutdown).

The pipeline itself lives in index.py; this module owns states and their transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
import structlog

from codebase_mcp import db
from codebase_mcp.errors import EngineError, JobNotFoundError, first_cause
from codebase_mcp.models import JobInfo, JobState, Progress, ProgressCallback

log = structlog.get_logger(__name__)

# Finished jobs kept in memory for status calls; older ones come from the database.
MAX_REMEMBERED = 256


@dataclass(frozen=True)
class Outcome:
    """What a finished run reports back: stopped early, or a note (e.g. embedder down)."""

    stopped: bool = False
    message: str | None = None


def final_state(
    outcome: Outcome | None, stop_state: JobState | None, error: str | None
) -> tuple[JobState, str | None]:
    """The state a job ends in and its message (pure).

    outcome None means the run did not return (an exception or a hard cancel). An error
    while a stop was requested is part of stopping (e.g. worker processes that got the
    same SIGTERM): the job is resumable, not failed."""
    if error is not None and stop_state is None:
        return JobState.FAILED, error
    if outcome is None or outcome.stopped:
        state = stop_state or JobState.INTERRUPTED
        why = "cancelled by request" if state is JobState.CANCELLED else "stopped by shutdown"
        note = f"{why}; index the repository again to resume"
        detail = error or (outcome.message if outcome is not None else None)
        if detail:
            note += f" ({detail})"
        return state, note
    return JobState.COMPLETED, outcome.message


class RunningJob:
    """A job in this process: its latest info, its stop request and its task."""

    def __init__(self, info: JobInfo, pool: db.Pool) -> None:
        self.info = info
        self.pool = pool
        self.stop_state: JobState | None = None
        self.stopping = asyncio.Event()
        self.done = asyncio.Event()
        self.scope = anyio.CancelScope()
        self.callbacks: list[ProgressCallback] = []
        self.task: asyncio.Task[None] | None = None

    @property
    def stop_requested(self) -> bool:
        return self.stop_state is not None

    def request_stop(self, state: JobState) -> None:
        if self.stop_state is None:
            self.stop_state = state
            self.stopping.set()

    async def report(self, **changes: Any) -> None:
        """Record progress: in memory, in the jobs table, and to progress callbacks."""
        self.info = replace(self.info, **changes)
        async with self.pool.acquire() as conn:
            await db.save_job(conn, self.info)
        await self._notify(self.info.message or "")

    async def _notify(self, message: str = "") -> None:
        i = self.info
        snapshot = Progress(
            i.id, i.files_done, i.files_total, i.chunks_done, i.chunks_total, message
        )
        for callback in list(self.callbacks):
            try:
                await callback(snapshot)
            except Exception as exc:  # a client that went away must not stop the job
                log.debug("progress callback failed", job=i.id, error=str(exc))
                self.callbacks.remove(callback)


Runner = Callable[[RunningJob], Awaitable[Outcome]]


class JobManager:
    def __init__(self, pool: db.Pool, owner: str, runner: Runner) -> None:
        self.pool = pool
        self.owner = owner
        self.runner = runner
        self._active: dict[str, RunningJob] = {}  # by repository path
        # A forced job asked for while a job without force runs: it starts when that ends.
        self._queued: dict[str, RunningJob] = {}
        self._by_id: dict[str, RunningJob] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def running(self) -> int:
        return len(self._active)

    def active_repositories(self) -> list[str]:
        """Repositories with a job running or queued in this process."""
        return list(self._active.keys() | self._queued.keys())

    def jobs_for(self, repository: str) -> list[RunningJob]:
        """The repository's queued job (first: cancelled first, it never starts) and its
        running job."""
        found = (self._queued.get(repository), self._active.get(repository))
        return [job for job in found if job is not None]

    async def start(
        self, repository: str, force: bool, progress: ProgressCallback | None
    ) -> JobInfo:
        """Start a job for the repository, or return the one that covers the request:
        the running job; with `force` while a job without it runs, a forced job queued
        to start when that one ends (created once, returned to every such call)."""
        async with self._lock:
            if self._closed:
                raise EngineError("the engine is shutting down; no new jobs")
            active = self._active.get(repository)
            queued = self._queued.get(repository)
            if force and active is not None and not active.info.force:
                job = queued or await self._launch(repository, True, after=active)
            else:
                job = active or queued or await self._launch(repository, force, after=None)
            if progress is not None:
                job.callbacks.append(progress)
            return job.info

    async def _launch(self, repository: str, force: bool, after: RunningJob | None) -> RunningJob:
        async with self.pool.acquire() as conn:
            info = await db.insert_job(conn, repository, force, self.owner)
            if after is not None:
                info = replace(
                    info,
                    message=f"queued: a job without force ({after.info.id}) runs for this "
                    "repository; this forced job starts when it ends",
                )
                await db.save_job(conn, info)
            else:
                resumed = await db.last_interrupted_job(conn, repository, info.id)
                if resumed is not None:
                    info = replace(info, message=f"resumes interrupted job {resumed}")
        job = RunningJob(info, self.pool)
        (self._active if after is None else self._queued)[repository] = job
        self._by_id[info.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job, after))
        return job

    async def _take_turn(self, job: RunningJob, after: RunningJob) -> bool:
        """Wait until `after` has ended, then become the repository's active job; False
        when a stop came first."""
        waits = [
            asyncio.ensure_future(after.done.wait()),
            asyncio.ensure_future(job.stopping.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if job.stop_requested:
            return False
        repository = job.info.repository
        del self._queued[repository]
        self._active[repository] = job
        return True

    async def _run(self, job: RunningJob, after: RunningJob | None = None) -> None:
        outcome: Outcome | None = None
        error: str | None = None
        try:
            with job.scope:
                if after is not None and not await self._take_turn(job, after):
                    outcome = Outcome(stopped=True)
                    return
                changes: dict[str, Any] = {"message": None} if after is not None else {}
                await job.report(state=JobState.RUNNING, started_at=db.now_utc(), **changes)
                outcome = await self.runner(job)
        except Exception as exc:
            cause = first_cause(exc)
            if isinstance(cause, EngineError):
                error = str(cause)
            else:
                log.error("index job failed", job=job.info.id, exc_info=cause)
                error = f"{type(cause).__name__}: {cause}"
        finally:
            state, message = final_state(outcome, job.stop_state, error)
            job.info = replace(job.info, state=state, message=message, finished_at=db.now_utc())
            with anyio.CancelScope(shield=True):
                try:
                    async with self.pool.acquire() as conn:
                        await db.save_job(conn, job.info)
                except Exception as exc:  # the database may be gone at shutdown
                    log.warning("could not record the job's end", job=job.info.id, error=str(exc))
                await job._notify(state.value)
            for table in (self._active, self._queued):
                if table.get(job.info.repository) is job:
                    del table[job.info.repository]
            job.done.set()
            self._forget_finished()
            log.info(
                "index job finished",
                job=job.info.id,
                repository=job.info.repository,
                state=state.value,
                files=job.info.files_done,
                chunks=job.info.chunks_done,
            )

    def _forget_finished(self, keep: int = MAX_REMEMBERED) -> None:
        """A long-lived server runs many jobs: finished ones beyond `keep` are answered
        from the jobs table instead of memory."""
        if len(self._by_id) <= keep:
            return
        for job_id in [i for i, j in self._by_id.items() if j.done.is_set()]:
            if len(self._by_id) <= keep:
                break
            del self._by_id[job_id]

    async def status(self, job_id: str) -> JobInfo:
        job = self._by_id.get(job_id)
        if job is not None:
            return job.info
        async with self.pool.acquire() as conn:
            info = await db.get_job(conn, job_id)
        if info is None:
            raise JobNotFoundError(f"no indexing job with id {job_id!r}")
        return info

    async def wait(self, job_id: str) -> JobInfo:
        job = self._by_id.get(job_id)
        if job is not None:
            await job.done.wait()
            return job.info
        return await self.status(job_id)

    async def cancel(self, job_id: str) -> JobInfo:
        job = self._by_id.get(job_id)
        if job is None:
            return await self.status(job_id)  # finished or unknown: nothing to stop
        job.request_stop(JobState.CANCELLED)
        await job.done.wait()
        return job.info

    def active_for(self, repository: str) -> RunningJob | None:
        return self._active.get(repository)

    async def stop_all(self, grace: float) -> None:
        """Ask every job to stop at its next safe point; after `grace` seconds cancel what
        is left (its open batch rolls back). All end `interrupted`."""
        self._closed = True
        jobs = [*self._queued.values(), *self._active.values()]
        for job in jobs:
            job.request_stop(JobState.INTERRUPTED)
        with anyio.move_on_after(max(grace, 0.0)):
            for job in jobs:
                await job.done.wait()
        for job in jobs:
            if not job.done.is_set():
                job.scope.cancel()
        with anyio.move_on_after(5):
            for job in jobs:
                await job.done.wait()
        for job in jobs:
            if not job.done.is_set() and job.task is not None:
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job.task
