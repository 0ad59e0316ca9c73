"""Index jobs at run time in this process: the jobs it runs (one task each, under a
lease it renews), what it takes from the queue every replica shares, and following,
cancelling and stopping jobs wherever they run.

The queue's rules and SQL are in job_queue.py, the lease in store/lease.py, the pipeline in
index/pipeline.py; this module owns the tasks and their transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio
import asyncpg
import structlog

from codebase_mcp.errors import EngineError, JobNotFoundError, first_cause
from codebase_mcp.jobs import job_queue
from codebase_mcp.jobs.job_queue import StopReason
from codebase_mcp.models import JobInfo, JobState, Progress, ProgressCallback
from codebase_mcp.store import db, lease

log = structlog.get_logger(__name__)

# Finished jobs kept in memory for status calls; older ones come from the database.
MAX_REMEMBERED = 256
# A replica takes jobs from the queue while it runs fewer than this; jobs started on it by
# a call always start.
QUEUE_SLOTS = 2
# Between reads of a job another replica runs (wait, cancel).
FOLLOW_POLL = 0.25
# How long a claim waits for a lock (a hung holder's write in flight) before it ends the
# holder's sessions and tries again at the next poll.
CLAIM_LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class Outcome:
    """What a finished run reports back: stopped early, or a note (e.g. embedder down)."""

    stopped: bool = False
    message: str | None = None


class RunningJob:
    """A job this process runs: its latest info, its stop request and its task."""

    def __init__(self, info: JobInfo, pool: db.Pool, owner: str) -> None:
        self.info = info
        self.pool = pool
        self.owner = owner
        self.note = info.message  # how it came here (a takeover, a resume)
        self.stop: StopReason | None = None
        self.stopping = asyncio.Event()
        self.done = asyncio.Event()
        self.scope = anyio.CancelScope()
        self.callbacks: list[ProgressCallback] = []
        self.task: asyncio.Task[None] | None = None

    @property
    def lease_name(self) -> str:
        return job_queue.lease_name(self.info.id)

    @property
    def stop_requested(self) -> bool:
        return self.stop is not None

    def request_stop(self, reason: StopReason) -> None:
        # A lost lease overrides any other reason: the job is no longer ours to record.
        if self.stop is None or reason == "lost":
            self.stop = reason
            self.stopping.set()

    async def report(self, **changes: Any) -> None:
        """Record progress: in memory, in the jobs table (where a cancel request is read),
        and to progress callbacks. Raises LeaseLostError when the job moved on."""
        self.info = replace(self.info, **changes)
        async with self.pool.acquire() as conn:
            try:
                cancel = await job_queue.save_progress(conn, self.info, self.owner)
            except lease.LeaseLostError:
                self.request_stop("lost")
                raise
        if cancel:
            self.request_stop("cancel")
        await self._notify(self.info.message or "")

    async def fence(self, conn: db.Conn) -> None:
        """Inside a write's transaction: the write lands only while this process holds
        the job's lease (see lease.fence)."""
        try:
            await lease.fence(conn, self.lease_name, self.owner)
        except lease.LeaseLostError:
            self.request_stop("lost")
            raise

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
# Runs inside the admission's transaction (e.g. the overlap check); raises to refuse.
AdmissionCheck = Callable[[db.Conn], Awaitable[None]]


class JobManager:
    """`open()` starts the lease renewals and the queue's poller; `stop_all()` stops."""

    def __init__(
        self,
        pool: db.Pool,
        owner: str,
        runner: Runner,
        *,
        lease_seconds: float = 30.0,
        poll_seconds: float = 2.0,
        serve_queue: bool = False,
        reachable: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.runner = runner
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.serve_queue = serve_queue
        self.reachable = reachable
        self._by_id: dict[str, RunningJob] = {}
        # Jobs this process queued (a forced job behind a running one): it runs them when
        # their turn comes even if it serves no queue (the CLI), unless another does.
        self._queued_here: set[str] = set()
        self._keeper = lease.LeaseKeeper(pool, owner, lease_seconds, self._lost)
        self._tasks: list[asyncio.Task[None]] = []
        self._kick = asyncio.Event()
        self._closed = False

    def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._keeper.run()),
            loop.create_task(self._poll()),
        ]

    @property
    def running(self) -> int:
        """Jobs running in this process."""
        return sum(1 for j in self._by_id.values() if not j.done.is_set())

    def _running_ids(self) -> set[str]:
        return {i for i, j in self._by_id.items() if not j.done.is_set()}

    def _lost(self, name: str) -> None:
        for job in self._by_id.values():
            if job.lease_name == name and not job.done.is_set():
                job.request_stop("lost")
                # Ours to resume if nobody takes it over meanwhile (pick_claim), also
                # where this engine serves no queue (the CLI).
                self._queued_here.add(job.info.id)
                self._kick.set()

    # --- starting -----------------------------------------------------------------------

    async def start(
        self,
        repository: str,
        force: bool,
        progress: ProgressCallback | None,
        check: AdmissionCheck | None = None,
        *,
        fresh: bool = False,
    ) -> JobInfo:
        """The job that covers a request to index `repository` (job_queue.admit): the
        one running for it anywhere, a forced one queued behind it, a queued one taken
        to run here, or a new one that starts here. `fresh`: only a job that reads the
        disk after this request covers it."""
        if self._closed:
            raise EngineError("the engine is shutting down; no new jobs")
        for attempt in range(3):
            try:
                return await self._admit(repository, force, progress, check, fresh)
            except asyncpg.UniqueViolationError:
                # A replica claimed a queued job of this repository meanwhile: look again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _admit(
        self,
        repository: str,
        force: bool,
        progress: ProgressCallback | None,
        check: AdmissionCheck | None,
        fresh: bool = False,
    ) -> JobInfo:
        sent = time.monotonic()
        run_here: JobInfo | None = None
        previous: str | None = None
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                await job_queue.lock_admission(conn)
                if check is not None:
                    await check(conn)
                active = await job_queue.active_jobs(conn, repository)
                now = await job_queue.db_now(conn)
                plan = job_queue.admit(active, force, self.owner, now, fresh)
                if plan.force_up is not None:
                    await job_queue.make_forced(conn, plan.force_up)
                answer: JobInfo | None = None
                if plan.insert == "running":
                    run_here = answer = await self._insert_running(conn, repository, force)
                elif plan.insert == "queued":
                    answer = await job_queue.insert(
                        conn, repository, plan.queued_force, None, plan.message
                    )
                    self._queued_here.add(answer.id)
                if plan.take is not None:
                    target = next(a for a in active if a.id == plan.take)
                    run_here, previous = await job_queue.claim(
                        conn,
                        target,
                        self.owner,
                        self.lease_seconds,
                        job_queue.claim_note(target, self.owner),
                    )
                if answer is None:
                    assert plan.answer is not None
                    if run_here is not None and run_here.id == plan.answer:
                        answer = run_here
                    else:
                        answer = await db.get_job(conn, plan.answer)
                assert answer is not None
            if previous is not None:
                await self._evict(conn, previous)
        if run_here is not None:
            self._launch(run_here, sent)
        job = self._by_id.get(answer.id)
        if job is not None and not job.done.is_set():
            if progress is not None:
                job.callbacks.append(progress)
            return job.info
        return answer

    async def _insert_running(self, conn: db.Conn, repository: str, force: bool) -> JobInfo:
        info = await job_queue.insert(conn, repository, force, self.owner, None)
        taken, _ = await lease.acquire(
            conn, job_queue.lease_name(info.id), self.owner, self.lease_seconds
        )
        assert taken, "a new job's lease is free"
        resumed = await db.last_interrupted_job(conn, repository, info.id)
        if resumed is not None:
            info = replace(info, message=f"resumes interrupted job {resumed}")
            await conn.execute(
                "UPDATE jobs SET message = $2 WHERE id = $1", db.parse_job_id(info.id), info.message
            )
        return info

    def _launch(self, info: JobInfo, sent: float) -> RunningJob:
        self._queued_here.discard(info.id)
        job = RunningJob(info, self.pool, self.owner)
        self._keeper.track(job.lease_name, sent)
        self._by_id[info.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        log.info(
            "index job started here",
            job=info.id,
            repository=info.repository,
            note=info.message,
        )
        return job

    async def _evict(self, conn: db.Conn, previous: str) -> None:
        ended = await lease.evict(conn, previous)
        log.info("took over a job whose lease expired", previous_owner=previous, sessions=ended)

    # --- running ------------------------------------------------------------------------

    async def _run(self, job: RunningJob) -> None:
        outcome: Outcome | None = None
        error: str | None = None
        try:
            with job.scope:
                outcome = await self.runner(job)
        except Exception as exc:
            cause = first_cause(exc)
            if isinstance(cause, lease.LeaseLostError):
                job.request_stop("lost")
            elif isinstance(cause, EngineError):
                error = str(cause)
            elif job.stop is None:
                log.error("index job failed", job=job.info.id, exc_info=cause)
                error = f"{type(cause).__name__}: {cause}"
            else:
                error = f"{type(cause).__name__}: {cause}"
        finally:
            end = job_queue.ending(
                None if outcome is None else outcome.stopped,
                None if outcome is None else outcome.message,
                job.stop,
                error,
                self.owner,
            )
            with anyio.CancelScope(shield=True):
                await self._record(job, end)
                self._keeper.forget(job.lease_name)
            job.done.set()
            self._kick.set()  # a job queued behind this one may start now
            self._forget_finished()
            log.info(
                "index job ended here",
                job=job.info.id,
                repository=job.info.repository,
                state=end.state.value if end.state is not None else "moved to another replica",
                files=job.info.files_done,
                chunks=job.info.chunks_done,
            )

    async def _record(self, job: RunningJob, end: job_queue.Ending) -> None:
        if not end.record or end.state is None:
            return
        message = end.message
        if end.state is JobState.COMPLETED and message is None:
            message = job.note
        finished = None if end.state is JobState.QUEUED else db.now_utc()
        job.info = replace(job.info, state=end.state, message=message, finished_at=finished)
        try:
            async with self.pool.acquire() as conn:
                if not await job_queue.finish(conn, job.info, self.owner):
                    log.warning("the job had moved to another replica", job=job.info.id)
        except Exception as exc:  # the database may be gone at shutdown
            log.warning(
                "could not record the job's end; its lease expires and another replica resumes it",
                job=job.info.id,
                error=str(exc),
            )
        await job._notify(end.state.value)

    def _forget_finished(self, keep: int = MAX_REMEMBERED) -> None:
        """A long-lived server runs many jobs: finished ones beyond `keep` are answered
        from the jobs table instead of memory."""
        if len(self._by_id) <= keep:
            return
        for job_id in [i for i, j in self._by_id.items() if j.done.is_set()]:
            if len(self._by_id) <= keep:
                break
            del self._by_id[job_id]

    # --- the queue ----------------------------------------------------------------------

    async def _poll(self) -> None:
        """Take jobs from the queue (serve_queue) and pass on cancel requests for the
        jobs running here, every poll_seconds or when a job here ends."""
        while not self._closed:
            try:
                while (self.serve_queue or self._queued_here) and await self.claim_next():
                    pass
                await self._read_cancels()
            except Exception as exc:  # the poller must outlive a database outage
                log.warning("could not poll the job queue", error=f"{type(exc).__name__}: {exc}")
            with anyio.move_on_after(self.poll_seconds):
                await self._kick.wait()
            self._kick.clear()

    async def claim_next(self) -> JobInfo | None:
        """Claim one job from the queue and run it here (job_queue.pick_claim); None when
        there is none for this replica, or it runs QUEUE_SLOTS jobs already."""
        if self._closed or self.running >= QUEUE_SLOTS:
            return None
        async with self.pool.acquire() as conn:
            candidates, now = await job_queue.claimable(conn)
            if not self.serve_queue:
                self._queued_here &= {c.id for c in candidates}  # others took or ended them
                candidates = [
                    c
                    for c in candidates
                    if c.id in self._queued_here or c.state is JobState.RUNNING
                ]
            here = self._running_ids()
            pick = job_queue.pick_claim(candidates, self.owner, now, self.reachable, here)
            if pick is not None and not self.serve_queue and pick.id not in self._queued_here:
                return None
            if pick is None:
                return None
            sent = time.monotonic()
            claimed: JobInfo | None = None
            previous: str | None = None
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{CLAIM_LOCK_TIMEOUT}'")
                    fresh = await job_queue.lock_job(conn, pick.id, skip_locked=True)
                    now = await job_queue.db_now(conn)
                    if fresh is None or not job_queue.pick_claim(
                        [fresh], self.owner, now, self.reachable, self._running_ids()
                    ):
                        return None
                    if fresh.cancel_requested:
                        await job_queue.end_here(
                            conn, fresh.id, JobState.CANCELLED, "cancelled by request"
                        )
                        return None
                    claimed, previous = await job_queue.claim(
                        conn,
                        fresh,
                        self.owner,
                        self.lease_seconds,
                        job_queue.claim_note(fresh, self.owner),
                    )
            except asyncpg.LockNotAvailableError:
                # The holder hangs inside a write that share-locks the lease: end its
                # sessions (its transaction rolls back) and try again at the next poll.
                if pick.holder is not None and pick.holder != self.owner:
                    await self._evict(conn, pick.holder)
                return None
            except asyncpg.UniqueViolationError:
                return None  # another replica started this repository's job first
            if claimed is None:
                return None
            if previous is not None:
                await self._evict(conn, previous)
        self._launch(claimed, sent)
        return claimed

    async def _read_cancels(self) -> None:
        here = [i for i, j in self._by_id.items() if not j.done.is_set()]
        if not here:
            return
        async with self.pool.acquire() as conn:
            for job_id in await job_queue.cancels_requested(conn, here):
                self._by_id[job_id].request_stop("cancel")

    # --- following, cancelling ----------------------------------------------------------

    async def status(self, job_id: str) -> JobInfo:
        job = self._by_id.get(job_id)
        if job is not None and not job.done.is_set() and job.stop != "lost":
            return job.info
        async with self.pool.acquire() as conn:
            info = await db.get_job(conn, job_id)
        if info is None:
            raise JobNotFoundError(f"no indexing job with id {job_id!r}")
        return info

    async def wait(self, job_id: str) -> JobInfo:
        """Until the job has finished, wherever it runs (and if it moves)."""
        while True:
            info = await self.status(job_id)
            if info.state.finished:
                return info
            job = self._by_id.get(job_id)
            if job is not None and not job.done.is_set():
                with anyio.move_on_after(self.poll_seconds):
                    await job.done.wait()
            else:
                await anyio.sleep(FOLLOW_POLL)

    async def cancel(self, job_id: str) -> JobInfo:
        """Stop the job wherever it runs, at its next safe point, and return it ended.
        A job nobody runs (queued, or its replica's lease expired) is ended here."""
        local = self._by_id.get(job_id)
        if local is not None and not local.done.is_set():
            local.request_stop("cancel")
        while True:
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    job = await job_queue.lock_job(conn, job_id, skip_locked=False)
                    action = job_queue.cancel_action(job, await job_queue.db_now(conn))
                    if action == "finish":
                        assert job is not None
                        await job_queue.end_here(
                            conn,
                            job_id,
                            JobState.CANCELLED,
                            "cancelled by request; index the repository again to resume",
                        )
                    elif action == "request":
                        await job_queue.request_cancel(conn, job_id)
                if action == "finish" and job is not None and job.holder not in (None, self.owner):
                    await self._evict(conn, job.holder)
            if action != "request":
                return await self.status(job_id)
            if local is not None and not local.done.is_set():
                with anyio.move_on_after(self.poll_seconds):
                    await local.done.wait()
            else:
                await anyio.sleep(FOLLOW_POLL)

    async def cancel_repository(self, repository: str) -> None:
        """Cancel the repository's jobs, wherever they run, and wait until they ended."""
        async with self.pool.acquire() as conn:
            ids = await job_queue.active_ids(conn, repository)
        for job_id in ids:
            await self.cancel(job_id)

    # --- stopping -----------------------------------------------------------------------

    async def stop_all(self, grace: float) -> None:
        """Stop taking jobs, ask every job here to stop at its next safe point, after
        `grace` seconds cancel what is left (its open batch rolls back). Each is handed
        back to the queue, for another replica (or the next start) to resume."""
        self._closed = True
        self._kick.set()
        poller = self._tasks[1:] if len(self._tasks) > 1 else []
        for task in poller:
            task.cancel()
        await asyncio.gather(*poller, return_exceptions=True)
        jobs = [j for j in self._by_id.values() if not j.done.is_set()]
        for job in jobs:
            job.request_stop("shutdown")
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
        for task in self._tasks[:1]:  # the renewals, last: jobs ending above still held leases
            task.cancel()
        await asyncio.gather(*self._tasks[:1], return_exceptions=True)
