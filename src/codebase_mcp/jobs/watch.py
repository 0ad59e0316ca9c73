"""Watch mode: keep one repository's index in step with its files.

The watcher changes nothing itself: it queues an ordinary index job for the repository
(incremental, with the stat check) and waits for it, so every change goes through the
same pipeline and transactions as any job. Which replica watches which repository is
watch_manager.py's (one at a time, under a lease).

- Events come from watchfiles' RustNotify (the Rust `notify` crate: inotify on Linux; a
  poller with CODEBASE_WATCH_POLL_MS), in a thread of the watcher's own, watching each
  directory the discovery walk visits, non-recursively: ignored directories (`.git`,
  `node_modules`, build output, gitignored ones) get no inotify watch and cost nothing
  when they churn.
- Events are batched (`Batch`): a job starts once no event came for `debounce` seconds,
  or `max_delay` after the first one not yet applied; events arriving while a job runs
  make one job after it. A branch switch of 1,000 files is one job.
- A `.gitignore` edit, a new directory or a watched directory that went away starts the
  watcher again on a fresh walk before the job (which walks with the new rules anyway).
- A watcher starts with a job: what changed while nobody watched (the server was down,
  the lease moved) is found by the stat check.
- It reports the count of changes seen but not yet applied, and why it cannot watch.

The decisions (`classify`, `Batch`) are pure; the threads and the jobs are the shell
around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from codebase_mcp import paths
from codebase_mcp.models import JobInfo, JobState
from codebase_mcp.source.discover import DirectoryRules, discover_files

log = structlog.get_logger(__name__)

# Names whose change re-reads the ignore rules (a fresh walk).
IGNORE_FILES = frozenset({".gitignore"})
# Scratch files editors write beside the files they edit (vim's swap files and its
# write test, emacs' lock links, JetBrains' safe-write copies): never indexable text.
SCRATCH_SUFFIXES = (".swp", ".swo", ".swx", ".swpx", "___jb_tmp___", "___jb_old___")
SCRATCH_NAMES = frozenset({"4913"})
# The notify thread: how long it groups events before handing them over (ms), and how
# often it wakes up to look for them and for a stop (ms): ~0.3 % of a core while idle.
NOTIFY_GROUP_MS = 200
NOTIFY_STEP_MS = 50
# After a job that did not complete (or a watcher that failed), wait this long (s).
RETRY_AFTER = 10.0
# The pending count is written when it changes, at most once per this many seconds.
REPORT_EVERY = 0.25


class Change(enum.IntEnum):
    """watchfiles' event kinds."""

    ADDED = 1
    MODIFIED = 2
    DELETED = 3


# --- decisions (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    relevant: bool  # may change what the index holds: worth a job
    rediscover: bool  # the watched directories or the ignore rules may have changed


def classify(
    kind: Change,
    name: str,
    *,
    rules: DirectoryRules | None,
    is_dir: bool,
    was_watched_dir: bool,
) -> Verdict:
    """What an event on the entry `name` of a directory means. `rules`: the ignore rules
    of the directory it appeared in (None: not a directory the walk visited, e.g. a path
    under a renamed directory); `is_dir`: it is a directory now; `was_watched_dir`: it
    is one of the watched directories."""
    if name in IGNORE_FILES:
        return Verdict(relevant=True, rediscover=True)
    if was_watched_dir:
        # Gone or moved: its watch is stale. Still there: a change of its own metadata.
        gone = kind is Change.DELETED or not is_dir
        return Verdict(relevant=gone, rediscover=gone)
    if name in SCRATCH_NAMES or name.endswith(SCRATCH_SUFFIXES) or name.startswith(".#"):
        return Verdict(relevant=False, rediscover=False)
    if rules is None:
        return Verdict(relevant=True, rediscover=True)
    if is_dir and kind is not Change.DELETED:
        # A new directory: watch it (and index what is in it) unless it is ignored.
        wanted = not rules.ignores(name, is_dir=True)
        return Verdict(relevant=wanted, rediscover=wanted)
    return Verdict(relevant=not rules.ignores(name, is_dir=False), rediscover=False)


@dataclass(frozen=True)
class Timing:
    debounce: float  # a job starts once no change came for this long (s) ...
    max_delay: float  # ... or this long after the first change not yet applied


@dataclass(frozen=True)
class Batch:
    """Changes seen and not yet handed to a job (times: time.monotonic()). `start`: a
    job is due although no change was seen (a watcher's first scan). `not_before`: no
    job before then (after a failure)."""

    paths: frozenset[str] = frozenset()
    first_at: float | None = None
    last_at: float | None = None
    rediscover: bool = False
    start: bool = False
    not_before: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.paths and not self.start and not self.rediscover

    def add(self, changed: Iterable[str], rediscover: bool, at: float) -> Batch:
        """With the relevant changes of one delivery (their paths) added."""
        new = frozenset(changed)
        if not new and not rediscover:
            return self
        return replace(
            self,
            paths=self.paths | new,
            first_at=at if self.first_at is None else min(self.first_at, at),
            last_at=at if self.last_at is None else max(self.last_at, at),
            rediscover=self.rediscover or rediscover,
        )

    def due_in(self, timing: Timing, now: float) -> float | None:
        """Seconds until the job should start (0: now); None: nothing to do."""
        if self.empty:
            return None
        if self.start or self.first_at is None or self.last_at is None:
            due = now
        else:
            due = min(self.last_at + timing.debounce, self.first_at + timing.max_delay)
        return max(0.0, max(due, self.not_before) - now)

    def taken(self) -> Batch:
        """What is left once a job took these changes."""
        return Batch(not_before=self.not_before)

    def put_back(self, paths: frozenset[str], now: float, retry_after: float) -> Batch:
        """A job that did not complete: its changes wait for the next one."""
        again = self.add(paths, False, now) if paths else replace(self, start=True)
        return replace(again, not_before=now + retry_after)


# --- one repository -------------------------------------------------------------------


class Notifier(Protocol):
    """What the watcher needs of watchfiles' RustNotify."""

    def watch(
        self, debounce_ms: int, step_ms: int, timeout_ms: int, stop_event: Any
    ) -> set[tuple[int, str]] | str: ...

    def close(self) -> None: ...


NotifierFactory = Callable[[list[str], int], Notifier]


def rust_notifier(directories: list[str], poll_ms: int) -> Notifier:
    from watchfiles._rust_notify import RustNotify

    # non-recursive: the walk chose the directories; permission errors: skipped dirs
    return RustNotify(directories, False, poll_ms > 0, max(poll_ms, 1), False, True)


Sync = Callable[[str], Awaitable[JobInfo]]
Report = Callable[[int | None, str | None], Awaitable[None]]


@dataclass
class _Delivery:
    at: float
    changes: set[tuple[int, str]] | None  # None: the notify thread failed
    error: str | None = None


class RepositoryWatcher:
    """Watches one repository until cancelled: events in, index jobs out."""

    def __init__(
        self,
        repository: str,
        *,
        timing: Timing,
        sync: Sync,
        report: Report,
        poll_ms: int = 0,
        max_file_bytes: int | None = None,
        notifier: NotifierFactory = rust_notifier,
    ) -> None:
        self.repository = repository  # the text form (codebase_mcp.paths)
        self.root = paths.to_os(repository)
        self.timing = timing
        self.sync = sync
        self.report = report
        self.poll_ms = poll_ms
        self.max_file_bytes = max_file_bytes
        self.notifier = notifier
        self.batch = Batch(start=True)  # the first scan: what changed while unwatched
        self.in_flight: frozenset[str] = frozenset()
        self.first_scan_done = False
        self.jobs = 0  # jobs this watcher started
        self.error: str | None = None
        self._rules: dict[str, DirectoryRules] = {}
        self._retry_at = 0.0  # when to try watching again after a failure
        self._watch_attempts = 0
        self._changed = asyncio.Event()  # the batch or the notify thread changed
        self._status = asyncio.Event()  # the pending count or the error may have changed
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._thread: threading.Thread | None = None
        self._stop_thread = threading.Event()
        self._notify: Notifier | None = None

    @property
    def pending(self) -> int | None:
        """Changes seen that no finished job has applied (None: unknown until the first
        scan has run)."""
        if not self.first_scan_done:
            return None
        return len(self.batch.paths | self.in_flight)

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._receive)
                tg.start_soon(self._report_loop)
                await self._apply_loop()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop_notify(self._notify, self._thread, self._stop_thread)

    # -- the notify thread --

    async def _watch_directories(self) -> bool:
        """(Re)start the notify thread on the directories of a fresh walk. The old one
        runs until the new one is up, so a directory made in between is seen by one of
        them (and makes another walk). False: it cannot watch (self.error says why)."""
        for attempt in range(3):
            rules: dict[str, DirectoryRules] = {}
            try:
                watched = await anyio.to_thread.run_sync(self._walk, rules)
                notify = await anyio.to_thread.run_sync(self.notifier, watched, self.poll_ms)
                break
            except FileNotFoundError:
                if attempt < 2:  # a directory went away between the walk and the watch
                    continue
                self.error = "the repository's directories keep disappearing"
            except Exception as exc:
                # e.g. the inotify watch limit: say so; the watcher tries again later
                self.error = watch_error_text(exc, len(rules))
            log.warning("cannot watch", repository=self.repository, error=self.error)
            return False
        old = (self._notify, self._thread, self._stop_thread)
        self._rules = rules
        self._notify = notify
        self._stop_thread = threading.Event()
        self._thread = threading.Thread(
            target=self._notify_thread,
            args=(notify, self._stop_thread, asyncio.get_running_loop()),
            name="watch",
            daemon=True,
        )
        self._thread.start()
        await self._stop_notify(*old)
        self.error = None
        log.info("watching", repository=self.repository, directories=len(rules))
        return True

    def _walk(self, rules: dict[str, DirectoryRules]) -> list[str]:
        """The directories to watch: those the discovery walk visits, and .git/info
        (its `exclude` holds ignore rules)."""
        for _ in discover_files(self.root, max_file_bytes=self.max_file_bytes, directories=rules):
            pass
        watched = sorted(rules)
        info = Path(self.root, ".git", "info")
        if info.is_dir():
            watched.append(str(info))
        return watched

    def _notify_thread(
        self, notify: Notifier, stop: threading.Event, loop: asyncio.AbstractEventLoop
    ) -> None:
        def deliver(item: _Delivery) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
                loop.call_soon_threadsafe(self._queue.put_nowait, item)

        while not stop.is_set():
            try:
                found = notify.watch(NOTIFY_GROUP_MS, NOTIFY_STEP_MS, 0, stop)
            except Exception as exc:
                deliver(_Delivery(time.monotonic(), None, f"{type(exc).__name__}: {exc}"))
                return
            if isinstance(found, set):
                deliver(_Delivery(time.monotonic(), found))
            elif found in ("stop", "signal"):
                return

    @staticmethod
    async def _stop_notify(
        notify: Notifier | None, thread: threading.Thread | None, stop: threading.Event
    ) -> None:
        stop.set()
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join)
        if notify is not None:
            notify.close()

    async def _notify_failed(self) -> None:
        old = (self._notify, self._thread, self._stop_thread)
        self._notify, self._thread = None, None
        await self._stop_notify(*old)

    # -- events --

    async def _receive(self) -> None:
        while True:
            item = await self._queue.get()
            if item.changes is None:
                if self._notify is not None:
                    self.error = item.error
                    log.warning("the watcher failed", repository=self.repository, error=item.error)
                    await self._notify_failed()
                    self._retry_at = time.monotonic() + RETRY_AFTER
            else:
                relevant, rediscover = self._classify(item.changes)
                self.batch = self.batch.add(relevant, rediscover, item.at)
            self._wake()

    def _classify(self, changes: set[tuple[int, str]]) -> tuple[list[str], bool]:
        relevant: list[str] = []
        rediscover = False
        info = f"{os.sep}.git{os.sep}info"
        for kind, path in changes:
            parent, name = os.path.split(path)
            if parent.endswith(info):  # .git/info/exclude: ignore rules
                verdict = Verdict(relevant=name == "exclude", rediscover=name == "exclude")
            else:
                verdict = classify(
                    Change(kind),
                    name,
                    rules=self._rules.get(parent),
                    is_dir=kind != Change.DELETED and Path(path).is_dir(),
                    was_watched_dir=path in self._rules,
                )
            if verdict.relevant:
                relevant.append(path)
            rediscover = rediscover or verdict.rediscover
        return relevant, rediscover

    # -- jobs --

    async def _apply_loop(self) -> None:
        while True:
            now = time.monotonic()
            if self._notify is None and now >= self._retry_at:
                again = self._watch_attempts > 0
                self._watch_attempts += 1
                if await self._watch_directories():
                    if again:  # after a failure: what changed meanwhile went unseen
                        self.batch = replace(self.batch, start=True)
                else:
                    self._retry_at = now + RETRY_AFTER
                self._wake()  # the status changed
            wait = self.batch.due_in(self.timing, time.monotonic())
            if wait == 0:
                await self._apply()
                continue
            timeout = float("inf") if wait is None else wait
            if self._notify is None:
                timeout = min(timeout, max(0.0, self._retry_at - time.monotonic()))
            self._changed.clear()
            with anyio.move_on_after(timeout):
                await self._changed.wait()

    async def _apply(self) -> None:
        if self.batch.rediscover and self._notify is not None:
            await self._watch_directories()  # before the job: nothing slips between
        taken = self.batch
        self.in_flight, self.batch = taken.paths, taken.taken()
        self.jobs += 1
        try:
            job = await self.sync(self.repository)
            ok = job.state is JobState.COMPLETED
            note = None if ok else f"job {job.id} ended {job.state}: {job.message}"
        except Exception as exc:
            ok, note = False, f"{type(exc).__name__}: {exc}"
        if ok:
            self.first_scan_done = True
        else:
            log.warning(
                "the watcher's index job did not complete", repository=self.repository, error=note
            )
            self.batch = self.batch.put_back(self.in_flight, time.monotonic(), RETRY_AFTER)
        self.in_flight = frozenset()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._status.set()

    async def _report_loop(self) -> None:
        last: tuple[int | None, str | None] | None = None
        while True:
            await self._status.wait()
            self._status.clear()
            now = (self.pending, self.error)
            if now != last:
                try:
                    await self.report(*now)
                    last = now
                except Exception as exc:  # the database away: try again in a while
                    log.debug("could not write the watch status", error=str(exc))
                    self._status.set()
                    await anyio.sleep(RETRY_AFTER)
            await anyio.sleep(REPORT_EVERY)


def watch_error_text(exc: BaseException, directories: int) -> str:
    """Why a repository cannot be watched, with what to do about the usual cause."""
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if "limit" in lowered or "no space left" in lowered or "too many" in lowered:
        watches = _read_int("/proc/sys/fs/inotify/max_user_watches")
        text += (
            f" ({directories} directories to watch; fs.inotify.max_user_watches is "
            f"{watches}: raise it, e.g. sysctl fs.inotify.max_user_watches=524288)"
        )
    return text


def _read_int(path: str) -> str:
    try:
        with open(path) as f:  # noqa: PTH123 - one small read
            return f.read().strip()
    except OSError:
        return "unknown"
