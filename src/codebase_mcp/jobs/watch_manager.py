"""Which replica watches which repository: exactly one at a time, the holder of the
repository's `watch:<path>` lease (store/lease.py, the mechanism index jobs use).

Every serving replica looks at the repositories every CODEBASE_JOB_POLL_SECONDS (and at
once when asked to watch one): it starts a watcher (watch.py) for each one that is
wanted (`repositories.watch`, else CODEBASE_WATCH), reachable under its CODEBASE_ROOTS
and whose lease it can take (free, expired, or its own), and stops those no longer
wanted. It renews its leases; one it loses (it hung, another took over) stops its
watcher at once. Stopping releases the lease, so another replica takes over at its next
look instead of after the lease's length; a replica that dies lets it expire. The new
holder's watcher starts with a job, which finds what changed while nobody watched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import structlog

from codebase_mcp.jobs.watch import RepositoryWatcher, Sync, Timing
from codebase_mcp.models import JobInfo
from codebase_mcp.store import db, lease

log = structlog.get_logger(__name__)

LEASE_PREFIX = "watch:"
# Watcher jobs this replica waits on at once: a server starting with many watched
# repositories scans them a few at a time, not all together.
CONCURRENT_SYNCS = 2


def lease_name(repository: str) -> str:
    return LEASE_PREFIX + repository


# --- decisions (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class WatchRow:
    """A repository as the watch manager sees it."""

    path: str
    watch: bool | None  # None: CODEBASE_WATCH decides
    holder: str | None
    expires_at: datetime | None


@dataclass(frozen=True)
class WatchPlan:
    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)


def plan_watches(
    rows: Sequence[WatchRow],
    *,
    default: bool,
    me: str,
    now: datetime,
    watching: Iterable[str],
    reachable: Callable[[str], bool],
) -> WatchPlan:
    """Which watches this replica starts (wanted, reachable here, and its lease free,
    expired or its own) and stops (no longer wanted, or the repository is gone)."""
    here = set(watching)
    wanted = {
        r.path for r in rows if (r.watch if r.watch is not None else default) and reachable(r.path)
    }
    start = [
        r.path
        for r in rows
        if r.path in wanted
        and r.path not in here
        and lease.may_take(r.holder, r.expires_at, me, now)
    ]
    return WatchPlan(start=start, stop=sorted(here - wanted))


# --- the table ------------------------------------------------------------------------


async def set_watch(conn: db.Conn, repository: str, watch: bool) -> None:
    """Store the watch choice with the repository. To watch, its row is made if need
    be: the choice holds from the request on, before its first job writes a file."""
    if watch:
        await conn.execute(
            "INSERT INTO repositories (path, watch) VALUES ($1, true) "
            "ON CONFLICT (path) DO UPDATE SET watch = true",
            repository,
        )
    else:
        await conn.execute("UPDATE repositories SET watch = false WHERE path = $1", repository)


async def watch_rows(conn: db.Conn) -> tuple[list[WatchRow], datetime]:
    rows = await conn.fetch(
        f"""
        SELECT r.path, r.watch, l.owner, l.expires_at, now() AS db_now
        FROM repositories r LEFT JOIN leases l ON l.name = '{LEASE_PREFIX}' || r.path
        ORDER BY r.path
        """  # noqa: S608 - built from constants
    )
    now = rows[0]["db_now"] if rows else await db.database_now(conn)
    found = [WatchRow(r["path"], r["watch"], r["owner"], r["expires_at"]) for r in rows]
    return found, now


async def freshness(conn: db.Conn, default: bool) -> list[dict[str, object]]:
    """Per repository, for the health report: watched (its choice, else `default`), by
    which replica, when the index last read the disk, the changes pending, an error."""
    rows = await conn.fetch(
        f"""
        SELECT r.path, r.watch, r.synced_at, r.pending_changes, r.watch_error, l.owner
        FROM repositories r LEFT JOIN leases l
            ON l.name = '{LEASE_PREFIX}' || r.path AND l.expires_at > now()
        ORDER BY r.path
        """  # noqa: S608 - built from constants
    )
    return [
        {
            "path": r["path"],
            "watched": default if r["watch"] is None else r["watch"],
            "watcher": r["owner"],
            "synced_at": r["synced_at"].isoformat() if r["synced_at"] else None,
            "pending_changes": r["pending_changes"] if r["owner"] is not None else None,
            "watch_error": r["watch_error"],
        }
        for r in rows
    ]


async def write_status(
    conn: db.Conn, repository: str, owner: str, pending: int | None, error: str | None
) -> bool:
    """The watcher's view, written only while `owner` holds the watch lease."""
    status = await conn.execute(
        """
        UPDATE repositories SET pending_changes = $2, watch_error = $3
        WHERE path = $1 AND EXISTS (SELECT 1 FROM leases WHERE name = $4 AND owner = $5)
        """,
        repository,
        pending,
        error,
        lease_name(repository),
        owner,
    )
    return bool(status != "UPDATE 0")


async def let_go(conn: db.Conn, repository: str, owner: str) -> None:
    """Stop watching: no pending count is claimed any more, the lease is free at once."""
    async with conn.transaction():
        await write_status(conn, repository, owner, None, None)
        await lease.release(conn, lease_name(repository), owner)


# --- the replica's watches ------------------------------------------------------------


class WatchManager:
    """`open()` starts the renewals and the look at the repositories; `close()` stops
    every watcher here and lets its lease go."""

    def __init__(
        self,
        pool: db.Pool,
        owner: str,
        sync: Sync,
        *,
        default: bool,
        timing: Timing,
        lease_seconds: float,
        poll_seconds: float,
        poll_ms: int = 0,
        max_file_bytes: int | None = None,
        reachable: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.sync = sync
        self.default = default
        self.timing = timing
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.poll_ms = poll_ms
        self.max_file_bytes = max_file_bytes
        self.reachable = reachable
        self.watchers: dict[str, RepositoryWatcher] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._keeper = lease.LeaseKeeper(pool, owner, lease_seconds, self._lost)
        self._background: list[asyncio.Task[None]] = []
        self._kick = asyncio.Event()
        self._closed = False
        self._syncs = asyncio.Semaphore(CONCURRENT_SYNCS)

    def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._keeper.run()), loop.create_task(self._poll())]

    def kick(self) -> None:
        """Look at the repositories now (a watch was asked for)."""
        self._kick.set()

    async def _poll(self) -> None:
        while not self._closed:
            try:
                await self.reconcile()
            except Exception as exc:  # the database away: look again next round
                log.warning("could not look at the watches", error=f"{type(exc).__name__}: {exc}")
            with anyio.move_on_after(self.poll_seconds):
                await self._kick.wait()
            self._kick.clear()

    async def reconcile(self) -> None:
        """Start and stop watchers here as plan_watches says."""
        for path in [p for p, t in self._tasks.items() if t.done()]:
            await self._stop(path)  # a watcher that ended by itself (an error)
        async with self.pool.acquire() as conn:
            rows, now = await watch_rows(conn)
            plan = plan_watches(
                rows,
                default=self.default,
                me=self.owner,
                now=now,
                watching=self._tasks,
                reachable=self.reachable,
            )
            for path in plan.start:
                if self._closed:
                    return
                sent = time.monotonic()
                taken, previous = await lease.acquire(
                    conn, lease_name(path), self.owner, self.lease_seconds
                )
                if taken:
                    self._keeper.track(lease_name(path), sent)
                    self._start(path, previous)
        for path in plan.stop:
            await self._stop(path)

    def _start(self, path: str, previous: str | None) -> None:
        async def report(pending: int | None, error: str | None) -> None:
            async with self.pool.acquire() as conn:
                await write_status(conn, path, self.owner, pending, error)

        async def sync(repository: str) -> JobInfo:
            async with self._syncs:
                return await self.sync(repository)

        watcher = RepositoryWatcher(
            path,
            timing=self.timing,
            sync=sync,
            report=report,
            poll_ms=self.poll_ms,
            max_file_bytes=self.max_file_bytes,
        )
        self.watchers[path] = watcher
        self._tasks[path] = asyncio.get_running_loop().create_task(self._run(watcher))
        log.info("watch started here", repository=path, taken_from=previous)

    async def _run(self, watcher: RepositoryWatcher) -> None:
        try:
            await watcher.run()
        except Exception as exc:
            log.error("a watcher failed", repository=watcher.repository, exc_info=exc)

    async def _stop(self, path: str, *, release: bool = True) -> None:
        task = self._tasks.pop(path, None)
        self.watchers.pop(path, None)
        self._keeper.forget(lease_name(path))
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if release:
            try:
                async with self.pool.acquire() as conn:
                    await let_go(conn, path, self.owner)
            except Exception as exc:  # it expires by itself
                log.warning("could not let a watch go", repository=path, error=str(exc))
        log.info("watch stopped here", repository=path)

    def _lost(self, name: str) -> None:
        path = name.removeprefix(LEASE_PREFIX)
        task = self._tasks.pop(path, None)
        self.watchers.pop(path, None)
        if task is not None:
            task.cancel()  # another replica watches it now: write nothing more

    async def forget(self, path: str) -> None:
        """The repository is being removed: stop watching it here now."""
        if path in self._tasks:
            await self._stop(path)

    async def close(self) -> None:
        self._closed = True
        self._kick.set()
        poll = self._background[1:]
        for task in poll:
            task.cancel()
        await asyncio.gather(*poll, return_exceptions=True)
        for path in list(self._tasks):
            await self._stop(path)
        for task in self._background[:1]:
            task.cancel()
        await asyncio.gather(*self._background[:1], return_exceptions=True)

    def status(self) -> dict[str, dict[str, int | str | None]]:
        """The watchers of this replica: changes pending, jobs started, an error."""
        return {
            path: {"pending_changes": w.pending, "jobs": w.jobs, "error": w.error}
            for path, w in sorted(self.watchers.items())
        }
