"""The watcher's decisions as plain functions (what an event means, when a batch of
events becomes a job, which replica watches what, when a result is stale), and one
watcher with a notify layer that fails the way an exhausted inotify does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from codebase_mcp.jobs import watch
from codebase_mcp.jobs.watch import Batch, Change, Timing, Verdict, classify
from codebase_mcp.jobs.watch_manager import WatchRow, plan_watches
from codebase_mcp.models import JobInfo, JobState
from codebase_mcp.search.freshness import is_stale
from codebase_mcp.source.discover import DirectoryRules, discover_files

T = Timing(debounce=0.3, max_delay=5.0)


# --- what an event means ----------------------------------------------------------------


def rules_of(root: Path) -> dict[str, DirectoryRules]:
    found: dict[str, DirectoryRules] = {}
    for _ in discover_files(root, directories=found):
        pass
    return found


def test_classify_follows_the_discovery_rules(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.log\ngenerated/\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "generated").mkdir()
    rules = rules_of(tmp_path)
    assert sorted(rules) == [str(tmp_path), str(tmp_path / "src")]  # ignored: not walked
    root = rules[str(tmp_path)]

    def verdict(kind: Change, name: str, is_dir: bool = False, watched: bool = False) -> Verdict:
        return classify(kind, name, rules=root, is_dir=is_dir, was_watched_dir=watched)

    assert verdict(Change.MODIFIED, "app.py") == Verdict(True, False)
    assert verdict(Change.DELETED, "app.py") == Verdict(True, False)
    assert verdict(Change.ADDED, "debug.log") == Verdict(False, False)  # gitignored
    assert verdict(Change.MODIFIED, "yarn.lock") == Verdict(False, False)  # built-in list
    assert verdict(Change.MODIFIED, ".app.py.swp") == Verdict(False, False)  # vim
    assert verdict(Change.ADDED, "4913") == Verdict(False, False)
    assert verdict(Change.ADDED, ".#app.py") == Verdict(False, False)  # emacs lock
    # ignore rules changed: walk again
    assert verdict(Change.MODIFIED, ".gitignore") == Verdict(True, True)
    # a new directory: watch it, unless it is ignored
    assert verdict(Change.ADDED, "pkg", is_dir=True) == Verdict(True, True)
    assert verdict(Change.ADDED, "node_modules", is_dir=True) == Verdict(False, False)
    assert verdict(Change.ADDED, "generated", is_dir=True) == Verdict(False, False)
    # a watched directory: gone or moved makes its watch stale; its metadata does not
    assert verdict(Change.DELETED, "src", watched=True) == Verdict(True, True)
    assert verdict(Change.MODIFIED, "src", is_dir=True, watched=True) == Verdict(False, False)
    # in a directory no walk visited (a renamed one): assume the worst
    unknown = classify(Change.MODIFIED, "a.py", rules=None, is_dir=False, was_watched_dir=False)
    assert unknown == Verdict(True, True)


# --- when a batch becomes a job ---------------------------------------------------------


def test_a_batch_waits_for_quiet_or_for_the_longest_delay() -> None:
    empty = Batch()
    assert empty.empty and empty.due_in(T, 100.0) is None
    assert empty.add([], False, 100.0) is empty  # irrelevant events change nothing
    one = empty.add(["/r/a.py"], False, 100.0)
    assert one.due_in(T, 100.0) == pytest.approx(0.3)
    assert one.due_in(T, 100.3) == 0.0
    # events keep coming: each pushes the start back, up to max_delay after the first
    busy = one
    for i in range(1, 60):
        busy = busy.add([f"/r/f{i}.py"], False, 100.0 + i * 0.1)
    assert busy.due_in(T, 105.9) == 0.0  # 5 s after the first, although not quiet
    assert len(busy.paths) == 60
    # the same path twice counts once
    assert len(one.add(["/r/a.py"], False, 100.2).paths) == 1


def test_a_burst_is_one_batch() -> None:
    batch = Batch()
    for i in range(1000):  # a branch switch: deliveries of a few hundred ms each
        batch = batch.add([f"/r/f{i}.py"], False, 100.0 + i * 0.001)
        assert batch.due_in(T, 100.0 + i * 0.001) != 0.0
    assert len(batch.paths) == 1000
    assert batch.due_in(T, 101.0 + 0.3) == 0.0


def test_a_first_scan_and_a_failed_job() -> None:
    start = Batch(start=True)
    assert not start.empty and start.due_in(T, 5.0) == 0.0
    taken = start.add(["/r/a.py"], True, 5.0).taken()
    assert taken.empty and not taken.rediscover
    again = Batch().put_back(frozenset({"/r/a.py"}), 10.0, retry_after=10.0)
    assert again.paths == {"/r/a.py"}
    assert again.due_in(T, 10.0) == pytest.approx(10.0)  # not before the retry time
    assert again.due_in(T, 20.0) == 0.0
    nothing = Batch().put_back(frozenset(), 10.0, retry_after=10.0)
    assert nothing.start and nothing.due_in(T, 20.0) == 0.0  # a failed first scan


# --- which replica watches what ---------------------------------------------------------

T0 = datetime(2026, 12, 4, tzinfo=UTC)


def row(path: str, watch_: bool | None, holder: str | None = None, in_s: float = 0) -> WatchRow:
    expires = None if holder is None else T0 + timedelta(seconds=in_s)
    return WatchRow(path, watch_, holder, expires)


def test_plan_watches() -> None:
    rows = [
        row("/r/asked", True),
        row("/r/default", None),
        row("/r/refused", False),
        row("/r/held", True, "other", 10),
        row("/r/expired", True, "other", -1),
        row("/r/mine", True, "me", 10),
        row("/elsewhere/x", True),
    ]

    def plan(default: bool, watching: list[str]) -> tuple[list[str], list[str]]:
        found = plan_watches(
            rows,
            default=default,
            me="me",
            now=T0,
            watching=watching,
            reachable=lambda p: p.startswith("/r/"),
        )
        return found.start, found.stop

    assert plan(False, []) == (["/r/asked", "/r/expired", "/r/mine"], [])
    assert plan(True, []) == (["/r/asked", "/r/default", "/r/expired", "/r/mine"], [])
    # running here already: not started twice; no longer wanted or gone: stopped
    assert plan(False, ["/r/asked", "/r/default", "/r/removed"]) == (
        ["/r/expired", "/r/mine"],
        ["/r/default", "/r/removed"],
    )


def test_a_result_is_stale_when_its_file_changed_or_went_away() -> None:
    assert is_stale((10, 5), (10, 5)) is False
    assert is_stale((10, 5), (11, 5)) is True
    assert is_stale((10, 5), (10, 6)) is True
    assert is_stale((10, 5), None) is True  # deleted
    assert is_stale((10, 5), "unknown") is None  # unreadable
    assert is_stale(None, (10, 5)) is None  # not stored
    assert is_stale((10, None), (10, 5)) is None  # stored before stats were kept


# --- a watcher whose notify layer fails -------------------------------------------------


@pytest.mark.anyio
async def test_a_watcher_that_cannot_watch_says_why_and_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "RETRY_AFTER", 0.3)
    (tmp_path / "a.py").write_text("x = 1\n")
    attempts: list[int] = []
    synced: list[str] = []
    reports: list[tuple[int | None, str | None]] = []

    def notifier(directories: list[str], poll_ms: int) -> Any:
        attempts.append(len(directories))
        if len(attempts) == 1:
            raise OSError("OS file watch limit reached. about [...]")
        return watch.rust_notifier(directories, poll_ms)

    async def sync(repository: str) -> JobInfo:
        synced.append(repository)
        return JobInfo("j", repository, JobState.COMPLETED)

    async def report(pending: int | None, error: str | None) -> None:
        reports.append((pending, error))

    watcher = watch.RepositoryWatcher(
        str(tmp_path), timing=Timing(0.05, 1.0), sync=sync, report=report, notifier=notifier
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        with anyio.fail_after(10):
            while True:
                if len(synced) >= 2 and watcher.error is None:
                    break
                await anyio.sleep(0.02)
            (tmp_path / "b.py").write_text("y = 2\n")
            while True:
                if len(synced) >= 3:
                    break
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    failed = next(i for i, (_, e) in enumerate(reports) if e)
    assert "fs.inotify.max_user_watches" in str(reports[failed][1]), reports
    assert any(e is None for _, e in reports[failed:]), reports  # cleared once it works
    # the first scan ran although nothing could be watched; once watching works, one
    # more job finds what was missed meanwhile; then an edit makes a third
    assert synced == [str(tmp_path)] * 3 and len(attempts) == 2
