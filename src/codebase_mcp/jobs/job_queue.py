"""Index jobs as a queue in PostgreSQL, which every replica shares.

A job is `queued` until a replica claims it, then `running` under a lease (`job:<id>`,
codebase_mcp/store/lease.py) that the replica renews; a job whose lease expires (its replica
died or hangs) is claimed again by another replica, which resumes it: unchanged files are
skipped by their content hashes. At most one job per repository runs (a partial unique
index), a request for a repository with an active job gets that job back, and a cancel is
a flag in the row that the running replica reads at its next safe point.

Why not a queue library: procrastinate speaks psycopg 3 only (its asyncpg connector was
never finished), keeps its own schema beside our migrations and leaves stalled-job
recovery to a periodic task of ours; pgqueuer has asyncpg but deletes finished jobs into a
log table, while our jobs table is the status every replica answers from. Neither offers
a lease a file watcher could hold. So: `SELECT ... FOR UPDATE SKIP LOCKED` on the jobs
table and the generic lease of store/lease.py.

The decisions (`admit`, `pick_claim`, `cancel_action`, `ending`) are pure functions; the
SQL below reads what they need and writes what they decide. Every write by the running
replica is conditional on it still owning the job (`owner = me AND state = 'running'`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

import asyncpg

from codebase_mcp.models import JobInfo, JobState
from codebase_mcp.store import db, lease

# Advisory-lock key (two-int form) serializing admissions across replicas: the overlap
# check and the insert of a repository's job happen as one step.
ADMISSION_LOCK = (0x6362, 1)
LEASE_PREFIX = "job:"

StopReason = Literal["cancel", "shutdown", "lost"]


def lease_name(job_id: str) -> str:
    return LEASE_PREFIX + job_id


@dataclass(frozen=True)
class ActiveJob:
    """A queued or running job with its lease, as a claim or an admission sees it."""

    id: str
    repository: str
    state: JobState
    force: bool
    created_at: datetime
    holder: str | None = None  # the lease's owner
    expires_at: datetime | None = None
    cancel_requested: bool = False
    started: bool = False  # it ran before (a queued one was handed back)

    def held(self, now: datetime) -> bool:
        """Running under a lease that has not expired."""
        return (
            self.state is JobState.RUNNING
            and self.holder is not None
            and self.expires_at is not None
            and self.expires_at > now
        )


# --- decisions (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """What a request to index a repository does: `answer` is the job returned (None: the
    one inserted); `take`, a job to claim and run here now; `insert`, the state of a new
    job (running: claimed here at once); `force_up`, a queued job made forced."""

    answer: str | None = None
    take: str | None = None
    insert: Literal["running", "queued"] | None = None
    force_up: str | None = None
    message: str | None = None
    queued_force: bool = True  # the `force` of an inserted queued job


def admit(
    active: Sequence[ActiveJob], force: bool, me: str, now: datetime, fresh: bool = False
) -> Admission:
    """One job per repository runs; a request gets back the job that covers it. With
    `force` while a job without it runs, one forced job is queued to follow it. With
    `fresh` (a sync, a watcher), only a job that reads the disk after this request
    covers it: a job running under a live lease may have read it already, so one job
    is queued to follow it (a queued one, or a taken-over one, starts its run anew)."""
    running = next((a for a in active if a.state is JobState.RUNNING), None)
    queued = sorted((a for a in active if a.state is JobState.QUEUED), key=lambda a: a.created_at)
    if running is not None and fresh and not (force and not running.force):
        if not running.held(now) and running.holder != me:
            return Admission(answer=running.id, take=running.id)  # its next run starts now
        if queued:
            return Admission(answer=queued[0].id)
        return Admission(
            insert="queued",
            queued_force=False,
            message=f"queued: job {running.id} runs for this repository and may have read "
            "the files before this request; this job starts when it ends",
        )
    if running is not None:
        if force and not running.force:
            forced = next((q for q in queued if q.force), None)
            if forced is not None:
                return Admission(answer=forced.id)
            return Admission(
                insert="queued",
                message=f"queued: a job without force ({running.id}) runs for this "
                "repository; this forced job starts when it ends",
            )
        take = None if running.held(now) or running.holder == me else running.id
        return Admission(answer=running.id, take=take)
    if queued:
        first = queued[0]
        forced = next((q for q in queued if q.force), None)
        if force and forced is None:
            return Admission(answer=first.id, take=first.id, force_up=first.id)
        answer = forced.id if force and forced is not None else first.id
        return Admission(answer=answer, take=first.id)
    return Admission(insert="running")


def pick_claim(
    candidates: Sequence[ActiveJob],
    me: str,
    now: datetime,
    reachable: Callable[[str], bool],
    here: Collection[str] = (),
) -> ActiveJob | None:
    """The job a polling replica claims, if any: a running job whose lease expired
    (its replica died or hangs, or it is this replica's own job that stopped when it
    could not confirm the lease in time), or the oldest queued job of a repository where
    nothing runs; only in repositories this replica can reach (under its CODEBASE_ROOTS).
    `here`: the jobs running in this replica, never claimed again."""
    ordered = sorted(candidates, key=lambda c: c.created_at)
    busy = {c.repository for c in ordered if c.state is JobState.RUNNING}
    first_queued: dict[str, str] = {}
    for c in ordered:
        if c.state is JobState.QUEUED:
            first_queued.setdefault(c.repository, c.id)
    for c in ordered:
        if not reachable(c.repository):
            continue
        if c.state is JobState.RUNNING:
            if c.id in here:
                continue
            if c.holder == me:
                # Ours but not running here: it stopped for a lease it could not confirm.
                # Once the lease has lapsed nobody else will resume it; we do.
                if c.expires_at is None or c.expires_at <= now:
                    return c
            elif lease.may_take(c.holder, c.expires_at, me, now):
                return c
        elif c.repository not in busy and first_queued[c.repository] == c.id:
            return c
    return None


def cancel_action(job: ActiveJob | None, now: datetime) -> Literal["none", "finish", "request"]:
    """How to cancel: nothing to stop (unknown or finished); end it here (queued, or its
    replica's lease expired: nobody would see a request); or ask the running replica."""
    if job is None:
        return "none"
    if job.held(now):
        return "request"
    return "finish"


def claim_note(job: ActiveJob, me: str) -> str | None:
    """The message a claimed job shows while it runs: where it comes from."""
    if job.state is JobState.RUNNING:
        if job.holder is None:
            return f"taken over by {me}: its replica left no lease; files indexed before are kept"
        return (
            f"taken over by {me} from {job.holder}, whose lease expired; files indexed "
            "before are kept"
        )
    if job.started:
        return f"resumed by {me} after it was handed back; files indexed before are kept"
    return None


class Ending(NamedTuple):
    """How a run ends: the state and message to record, or nothing (`record` False: the
    job belongs to another replica now). A queued ending hands the job back."""

    state: JobState | None
    message: str | None
    record: bool = True


def ending(
    stopped: bool | None,
    note: str | None,
    stop: StopReason | None,
    error: str | None,
    owner: str,
) -> Ending:
    """The end of a run (pure). `stopped` None means the run did not return (an exception
    or a hard cancel); `note` is its message (e.g. embedder down). An error while a stop
    was requested is part of stopping (e.g. worker processes that got the same SIGTERM):
    the job is resumable, not failed. A run stopped by shutdown hands the job back to the
    queue: another replica resumes it."""
    if stop == "lost":
        return Ending(None, None, record=False)
    if error is not None and stop is None:
        return Ending(JobState.FAILED, error)
    if stopped is None or stopped:
        detail = error or note
        if stop == "cancel":
            message = "cancelled by request; index the repository again to resume"
            state = JobState.CANCELLED
        else:
            message = (
                f"handed back to the queue by {owner}, which stopped; the next replica "
                "to poll the queue (or this server's next start) resumes it"
            )
            state = JobState.QUEUED
        return Ending(state, f"{message} ({detail})" if detail else message)
    return Ending(JobState.COMPLETED, note)


# --- the table ------------------------------------------------------------------------

_ACTIVE = f"""
    SELECT j.id, j.repository_path, j.state, j.force, j.created_at, j.cancel_requested,
           j.started_at IS NOT NULL AS started, l.owner AS holder, l.expires_at,
           now() AS db_now
    FROM jobs j LEFT JOIN leases l ON l.name = '{LEASE_PREFIX}' || j.id::text
"""  # noqa: S608 - built from constants


def _active(row: asyncpg.Record) -> ActiveJob:
    return ActiveJob(
        id=str(row["id"]),
        repository=row["repository_path"],
        state=JobState(row["state"]),
        force=row["force"],
        created_at=row["created_at"],
        holder=row["holder"],
        expires_at=row["expires_at"],
        cancel_requested=row["cancel_requested"],
        started=row["started"],
    )


async def db_now(conn: db.Conn) -> datetime:
    value: datetime = await conn.fetchval("SELECT now()")
    return value


async def lock_admission(conn: db.Conn) -> None:
    """Inside a transaction: admissions one at a time, across replicas."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *ADMISSION_LOCK)


async def active_jobs(conn: db.Conn, repository: str) -> list[ActiveJob]:
    """The repository's queued and running jobs, locked for the admission's transaction."""
    rows = await conn.fetch(
        _ACTIVE + " WHERE j.repository_path = $1 AND j.state IN ('queued', 'running') "
        "ORDER BY j.created_at FOR UPDATE OF j",
        repository,
    )
    return [_active(r) for r in rows]


async def claimable(conn: db.Conn, limit: int = 200) -> tuple[list[ActiveJob], datetime]:
    """Every queued and running job, unlocked (most polls find nothing to do), with the
    database's time."""
    rows = await conn.fetch(
        _ACTIVE + " WHERE j.state IN ('queued', 'running') ORDER BY j.created_at LIMIT $1",
        limit,
    )
    now = rows[0]["db_now"] if rows else await db_now(conn)
    return [_active(r) for r in rows], now


async def lock_job(conn: db.Conn, job_id: str, *, skip_locked: bool) -> ActiveJob | None:
    """The job if it is active, its row locked for this transaction (None: finished, or
    locked by another transaction with `skip_locked`)."""
    key = db.parse_job_id(job_id)
    if key is None:
        return None
    suffix = " SKIP LOCKED" if skip_locked else ""
    row = await conn.fetchrow(
        _ACTIVE + " WHERE j.id = $1 AND j.state IN ('queued', 'running') FOR UPDATE OF j" + suffix,
        key,
    )
    return None if row is None else _active(row)


async def active_ids(conn: db.Conn, repository: str) -> list[str]:
    """The repository's active jobs, queued ones first (a cancel must not let a queued
    job start when the running one ends)."""
    rows = await conn.fetch(
        "SELECT id FROM jobs WHERE repository_path = $1 AND state IN ('queued', 'running') "
        "ORDER BY state = 'running', created_at",
        repository,
    )
    return [str(r["id"]) for r in rows]


async def active_repositories(conn: db.Conn) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT repository_path FROM jobs WHERE state IN ('queued', 'running')"
    )
    return [r["repository_path"] for r in rows]


async def insert(
    conn: db.Conn, repository: str, force: bool, owner: str | None, message: str | None
) -> JobInfo:
    """A new job: running under `owner` (who must acquire its lease in the same
    transaction) or queued (owner None)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO jobs (id, repository_path, state, force, owner, message, started_at)
        VALUES ($1, $2, CASE WHEN $4::text IS NULL THEN 'queued' ELSE 'running' END, $3,
                $4, $5, CASE WHEN $4::text IS NULL THEN NULL ELSE now() END)
        RETURNING {db.JOB_COLUMNS}
        """,  # noqa: S608 - built from constants
        uuid.uuid4(),
        repository,
        force,
        owner,
        message,
    )
    assert row is not None
    return db.job_from_row(row)


async def make_forced(conn: db.Conn, job_id: str) -> None:
    await conn.execute("UPDATE jobs SET force = true WHERE id = $1", uuid.UUID(job_id))


async def claim(
    conn: db.Conn, job: ActiveJob, owner: str, ttl: float, message: str | None
) -> tuple[JobInfo | None, str | None]:
    """Inside a transaction holding the job's row: take its lease and mark it running
    under `owner`. (None, _) when the lease cannot be taken (renewed meanwhile);
    else (the job, the owner it was taken from)."""
    taken, previous = await lease.acquire(conn, lease_name(job.id), owner, ttl)
    if not taken:
        return None, None
    row = await conn.fetchrow(
        f"""
        UPDATE jobs SET state = 'running', owner = $2, message = $3,
            started_at = coalesce(started_at, now()), updated_at = now()
        WHERE id = $1 RETURNING {db.JOB_COLUMNS}
        """,  # noqa: S608 - built from constants
        uuid.UUID(job.id),
        owner,
        message,
    )
    assert row is not None
    return db.job_from_row(row), previous


async def save_progress(conn: db.Conn, job: JobInfo, owner: str) -> bool:
    """Record the running job's progress; returns whether a cancel was requested.
    Raises LeaseLostError when the job is no longer this owner's to run."""
    requested = await conn.fetchval(
        """
        UPDATE jobs SET files_total = $3, files_done = $4, files_unchanged = $5,
            files_deleted = $6, chunks_total = $7, chunks_done = $8, errors = $9::jsonb,
            message = $10, skipped = $11::jsonb, updated_at = now()
        WHERE id = $1 AND owner = $2 AND state = 'running'
        RETURNING cancel_requested
        """,
        uuid.UUID(job.id),
        owner,
        *_progress(job),
    )
    if requested is None:
        raise lease.LeaseLostError(f"job {job.id} is no longer run by {owner}")
    return bool(requested)


def _progress(job: JobInfo) -> tuple[object, ...]:
    """The job's counts, errors, message and skips, in the order both updates take them."""
    return (
        job.files_total,
        job.files_done,
        job.files_unchanged,
        job.files_deleted,
        job.chunks_total,
        job.chunks_done,
        json.dumps([{"path": e.path, "error": e.error} for e in job.errors]),
        job.message,
        json.dumps(dict(job.skipped)),
    )


async def finish(conn: db.Conn, job: JobInfo, owner: str) -> bool:
    """Record the end of a run (a final state, or queued: handed back) and let its lease
    go; False when the job was not this owner's any more (nothing written)."""
    async with conn.transaction():
        status = await conn.execute(
            """
            UPDATE jobs SET state = $3, files_total = $4, files_done = $5,
                files_unchanged = $6, files_deleted = $7, chunks_total = $8, chunks_done = $9,
                errors = $10::jsonb, message = $11, skipped = $12::jsonb,
                finished_at = CASE WHEN $3 = 'queued' THEN NULL ELSE now() END,
                owner = CASE WHEN $3 = 'queued' THEN NULL ELSE owner END, updated_at = now()
            WHERE id = $1 AND owner = $2 AND state = 'running'
            """,
            uuid.UUID(job.id),
            owner,
            job.state.value,
            *_progress(job),
        )
        await lease.release(conn, lease_name(job.id), owner)
    return bool(status != "UPDATE 0")


async def end_here(conn: db.Conn, job_id: str, state: JobState, message: str) -> None:
    """End a job that no replica runs (queued, or its lease expired), from any replica:
    inside the transaction that locked its row."""
    await conn.execute(
        "UPDATE jobs SET state = $2, message = $3, cancel_requested = true, "
        "finished_at = now(), updated_at = now() WHERE id = $1",
        uuid.UUID(job_id),
        state.value,
        message,
    )
    await conn.execute("DELETE FROM leases WHERE name = $1", lease_name(job_id))


async def request_cancel(conn: db.Conn, job_id: str) -> None:
    await conn.execute(
        "UPDATE jobs SET cancel_requested = true, updated_at = now() WHERE id = $1",
        uuid.UUID(job_id),
    )


async def cancels_requested(conn: db.Conn, job_ids: Sequence[str]) -> set[str]:
    rows = await conn.fetch(
        "SELECT id FROM jobs WHERE id = ANY($1::uuid[]) AND cancel_requested",
        [uuid.UUID(i) for i in job_ids],
    )
    return {str(r["id"]) for r in rows}


async def is_running(conn: db.Conn, repository: str) -> bool:
    """Whether a job of the repository runs (or waits for a takeover), on any replica."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE repository_path = $1 AND state = 'running')",
            repository,
        )
    )
