"""The lease (codebase_mcp/store/lease.py): its decisions as plain functions, then its SQL against
a real PostgreSQL, with the database's clock deciding expiry."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from codebase_mcp.jobs.job_queue import ActiveJob, admit, cancel_action, claim_note, pick_claim
from codebase_mcp.models import JobState
from codebase_mcp.store import lease
from tests.codebase.fixtures_engine import migrate_async

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# --- decisions ------------------------------------------------------------------------


def test_renewal_gives_three_chances_before_expiry() -> None:
    assert lease.renew_every(30) == 10
    assert lease.renew_every(3) == 1


def test_who_may_take_a_lease() -> None:
    later = T0 + timedelta(seconds=1)
    assert lease.may_take(None, None, "b", T0)  # nobody holds it
    assert lease.may_take("a", later, "a", T0)  # its own
    assert not lease.may_take("a", later, "b", T0)  # another's, still valid
    assert lease.may_take("a", T0, "b", T0)  # expired at this very instant
    assert lease.may_take("a", T0 - timedelta(seconds=5), "b", T0)


def test_an_owner_counts_its_lease_from_when_it_asked() -> None:
    assert lease.valid_until(100.0, 30) == 130.0
    assert lease.lapsed({"job:a": 130.0, "job:b": 131.0, "job:c": 129.0}, 130.0) == [
        "job:a",
        "job:c",
    ]
    assert lease.lapsed({}, 1e9) == []


def test_owner_names_and_their_sessions() -> None:
    owner = lease.owner_id("pod-7f9c", 4711, "0a1b2c3d")
    assert owner == "pod-7f9c:4711:0a1b2c3d"
    assert lease.session_name(owner) == "codebase-mcp 0a1b2c3d"
    long_host = lease.owner_id("h" * 200, 1, "0a1b2c3d")
    assert len(lease.session_name(long_host).encode()) <= 63


def job(
    name: str,
    state: JobState,
    repo: str = "/r",
    *,
    at: int = 0,
    holder: str | None = None,
    expires_in: float | None = None,
    force: bool = False,
    started: bool = False,
) -> ActiveJob:
    return ActiveJob(
        id=name,
        repository=repo,
        state=state,
        force=force,
        created_at=T0 + timedelta(seconds=at),
        holder=holder,
        expires_at=None if expires_in is None else T0 + timedelta(seconds=expires_in),
        started=started,
    )


RUNNING, QUEUED = JobState.RUNNING, JobState.QUEUED


def test_admission_one_job_per_repository() -> None:
    live = job("r", RUNNING, holder="a", expires_in=20)
    # nothing active: a new job, running here
    assert admit([], False, "b", T0).insert == "running"
    # the running job covers a request, wherever it runs
    plan = admit([live], False, "b", T0)
    assert (plan.answer, plan.take, plan.insert) == ("r", None, None)
    # ... and is taken over when its replica let the lease expire
    dead = job("r", RUNNING, holder="a", expires_in=-1)
    assert admit([dead], False, "b", T0).take == "r"
    assert admit([job("r", RUNNING)], False, "b", T0).take == "r"  # no lease at all
    # force while a job without it runs: one forced job queued behind it, once
    plan = admit([live], True, "b", T0)
    assert plan.insert == "queued" and plan.message is not None and "r" in plan.message
    follower = job("f", QUEUED, at=1, force=True)
    assert admit([live, follower], True, "b", T0).answer == "f"
    assert admit([live, follower], False, "b", T0).answer == "r"
    forced_running = job("r", RUNNING, holder="a", expires_in=20, force=True)
    assert admit([forced_running], True, "b", T0).answer == "r"


def test_admission_takes_a_queued_job_to_run_here() -> None:
    back = job("q", QUEUED, started=True)
    plan = admit([back], False, "b", T0)
    assert (plan.answer, plan.take, plan.force_up) == ("q", "q", None)
    # force: the oldest queued job becomes forced, rather than a second job
    plan = admit([back], True, "b", T0)
    assert (plan.answer, plan.take, plan.force_up) == ("q", "q", "q")
    # ... unless a forced one is queued already: the oldest starts, the forced one answers
    plan = admit([back, job("f", QUEUED, at=1, force=True)], True, "b", T0)
    assert (plan.answer, plan.take, plan.force_up) == ("f", "q", None)


def test_admission_of_a_sync_wants_a_job_that_reads_the_disk_after_it() -> None:
    live = job("r", RUNNING, holder="a", expires_in=20)
    # nothing active: a new job, running here, as for any request
    assert admit([], False, "b", T0, fresh=True).insert == "running"
    # a running job may have read the files already: one job queued behind it, unforced
    plan = admit([live], False, "b", T0, fresh=True)
    assert (plan.answer, plan.insert, plan.queued_force) == (None, "queued", False)
    assert plan.message is not None and "r" in plan.message
    mine = job("r", RUNNING, holder="b", expires_in=20)
    assert admit([mine], False, "b", T0, fresh=True).insert == "queued"
    # ... or the one already queued behind it, which has not started
    follower = job("q", QUEUED, at=1)
    plan = admit([live, follower], False, "b", T0, fresh=True)
    assert (plan.answer, plan.take, plan.insert) == ("q", None, None)
    # a taken-over job starts its run anew: it covers the request
    dead = job("r", RUNNING, holder="a", expires_in=-1)
    plan = admit([dead], False, "b", T0, fresh=True)
    assert (plan.answer, plan.take, plan.insert) == ("r", "r", None)
    # a queued job alone: taken to run here, as for any request
    plan = admit([follower], False, "b", T0, fresh=True)
    assert (plan.answer, plan.take) == ("q", "q")
    # force and fresh: force's rule (a forced job queued behind) covers both
    plan = admit([live], True, "b", T0, fresh=True)
    assert (plan.insert, plan.queued_force) == ("queued", True)


def reachable(repo: str) -> bool:
    return not repo.startswith("/elsewhere")


def test_what_a_polling_replica_claims() -> None:
    assert pick_claim([], "b", T0, reachable) is None
    live = job("r", RUNNING, holder="a", expires_in=20)
    assert pick_claim([live], "b", T0, reachable) is None
    dead = job("d", RUNNING, "/d", holder="a", expires_in=-1)
    assert pick_claim([live, dead], "b", T0, reachable) == dead
    # its own job running here is never claimed again (renewal is merely late) ...
    mine = job("m", RUNNING, "/m", holder="b", expires_in=-1)
    assert pick_claim([mine], "b", T0, reachable, here={"m"}) is None
    # ... but one that stopped here for a lease it could not confirm is resumed once the
    # lease lapsed: nobody else would (a single replica's job stayed "running" forever)
    assert pick_claim([mine], "b", T0, reachable, here=set()) == mine
    mine_live = job("m", RUNNING, "/m", holder="b", expires_in=20)
    assert pick_claim([mine_live], "b", T0, reachable, here=set()) is None
    # a queued job waits while its repository's job runs, then the oldest goes first
    queued = job("q", QUEUED, "/r", at=1)
    assert pick_claim([live, queued], "b", T0, reachable) is None
    second = job("q2", QUEUED, "/r", at=2)
    assert pick_claim([second, queued], "b", T0, reachable) == queued
    # an expired running job of the repository goes before its queued follower
    dead_r = job("x", RUNNING, "/r", holder="a", expires_in=-1)
    assert pick_claim([queued, dead_r], "b", T0, reachable) == dead_r
    # repositories this replica cannot reach are left to others
    far = job("e", QUEUED, "/elsewhere/x")
    assert pick_claim([far], "b", T0, reachable) is None


def test_how_a_job_is_cancelled() -> None:
    assert cancel_action(None, T0) == "none"
    assert cancel_action(job("q", QUEUED), T0) == "finish"
    assert cancel_action(job("r", RUNNING, holder="a", expires_in=5), T0) == "request"
    assert cancel_action(job("r", RUNNING, holder="a", expires_in=-5), T0) == "finish"
    assert cancel_action(job("r", RUNNING), T0) == "finish"


def test_what_a_claimed_job_says() -> None:
    assert claim_note(job("q", QUEUED), "b") is None
    assert "handed back" in (claim_note(job("q", QUEUED, started=True), "b") or "")
    taken = claim_note(job("r", RUNNING, holder="a:1:x", expires_in=-1), "b")
    assert taken is not None and "a:1:x" in taken and "taken over by b" in taken


# --- the table ------------------------------------------------------------------------


@pytest.fixture
async def conns(pg_url: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    await migrate_async(pg_url)
    one = await asyncpg.connect(pg_url, server_settings={"application_name": "codebase-mcp aaaa"})
    two = await asyncpg.connect(pg_url, server_settings={"application_name": "codebase-mcp bbbb"})
    try:
        yield one, two
    finally:
        for conn in (one, two):
            conn.terminate()  # one of them may have been ended by the test


@pytest.mark.anyio
async def test_acquire_renew_release(conns: tuple[asyncpg.Connection, asyncpg.Connection]) -> None:
    one, _ = conns
    assert await lease.acquire(one, "w:/r", "h:1:aaaa", 30) == (True, None)
    assert await lease.acquire(one, "w:/r", "h:2:bbbb", 30) == (False, None)  # held
    assert await lease.acquire(one, "w:/r", "h:1:aaaa", 30) == (True, None)  # its own again
    assert await lease.renew(one, "h:1:aaaa", ["w:/r", "w:/other"], 30) == {"w:/r"}
    assert await lease.renew(one, "h:2:bbbb", ["w:/r"], 30) == set()
    assert not await lease.release(one, "w:/r", "h:2:bbbb")
    assert await lease.release(one, "w:/r", "h:1:aaaa")
    assert await lease.acquire(one, "w:/r", "h:2:bbbb", 30) == (True, None)


@pytest.mark.anyio
async def test_an_expired_lease_goes_to_one_claimant_and_its_owner_learns_it(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    one, two = conns
    assert (await lease.acquire(one, "w:/r", "h:1:aaaa", 0.5))[0]
    assert not (await lease.acquire(two, "w:/r", "h:2:bbbb", 30))[0]
    await anyio.sleep(0.7)  # the database's clock, not ours, says it expired
    results = [
        await lease.acquire(two, "w:/r", "h:2:bbbb", 30),
        await lease.acquire(one, "w:/r", "h:3:cccc", 30),
    ]
    assert results == [(True, "h:1:aaaa"), (False, None)]
    assert await lease.renew(one, "h:1:aaaa", ["w:/r"], 30) == set()  # lost, and it knows


@pytest.mark.anyio
async def test_an_expired_lease_nobody_took_is_renewed(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    one, _ = conns
    await lease.acquire(one, "w:/r", "h:1:aaaa", 0.2)
    await anyio.sleep(0.4)
    assert await lease.renew(one, "h:1:aaaa", ["w:/r"], 30) == {"w:/r"}


@pytest.mark.anyio
async def test_a_fenced_write_holds_off_a_takeover_and_fails_after_one(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    one, two = conns
    await lease.acquire(one, "job:x", "h:1:aaaa", 0.3)
    await anyio.sleep(0.5)  # expired; the owner does not know yet
    taken: list[tuple[bool, str | None]] = []

    async def take_over() -> None:
        taken.append(await lease.acquire(two, "job:x", "h:2:bbbb", 30))

    async with anyio.create_task_group() as tg:
        write = one.transaction()
        await write.start()
        await lease.fence(one, "job:x", "h:1:aaaa")  # a write in flight
        tg.start_soon(take_over)
        await anyio.sleep(0.3)
        assert taken == []  # the takeover waits for the write to commit
        await write.commit()
    assert taken == [(True, "h:1:aaaa")]
    with pytest.raises(lease.LeaseLostError, match=r"h:2:bbbb"):
        async with one.transaction():
            await lease.fence(one, "job:x", "h:1:aaaa")


@pytest.mark.anyio
async def test_a_long_fenced_write_does_not_hold_off_its_owners_renewal(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    """A batch that writes for longer than a third of the lease: the owner's renewal
    (another connection of the owner) goes through meanwhile. A share lock made it wait
    for the commit, the renewal timed out and the job was dropped as lost."""
    one, two = conns
    await lease.acquire(one, "job:x", "h:1:aaaa", 30)
    async with one.transaction():
        await lease.fence(one, "job:x", "h:1:aaaa")  # a write in flight
        with anyio.fail_after(2):
            assert await lease.renew(two, "h:1:aaaa", ["job:x"], 30) == {"job:x"}


@pytest.mark.anyio
async def test_evict_ends_the_previous_owners_sessions(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
) -> None:
    one, two = conns
    tx = one.transaction()
    await tx.start()
    await one.execute("SELECT pg_advisory_lock(42)")  # what a hung owner holds
    assert await lease.evict(two, "h:1:aaaa") == 1
    with pytest.raises(Exception):  # noqa: B017 - asyncpg's error depends on the timing
        await one.execute("SELECT 1")
    with anyio.fail_after(5):  # the session ends (and lets go) as soon as it sees the signal
        while True:
            if await two.fetchval("SELECT pg_try_advisory_lock(42)"):
                break
            await anyio.sleep(0.05)
    assert await lease.evict(two, "h:9:zzzz") == 0  # nobody by that name


@pytest.mark.anyio
async def test_the_keeper_renews_and_gives_up_what_it_cannot_confirm(pg_url: str) -> None:
    await migrate_async(pg_url)
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2)
    lost: list[str] = []
    keeper = lease.LeaseKeeper(pool, "h:1:aaaa", 0.5, lost.append)
    async with pool.acquire() as conn:
        sent = time.monotonic()
        for name in ("w:/a", "w:/b"):
            assert (await lease.acquire(conn, name, "h:1:aaaa", 0.5))[0]
            keeper.track(name, sent)
        assert await keeper.renew_once()
        await conn.execute("UPDATE leases SET owner = 'h:2:bbbb' WHERE name = 'w:/b'")
    assert await keeper.renew_once()
    assert lost == ["w:/b"] and keeper.held == ["w:/a"]  # taken over: reported once
    await pool.close()  # the database out of reach
    assert not await keeper.renew_once()
    assert lost == ["w:/b"]  # still within the lease it last confirmed
    await anyio.sleep(0.6)
    assert not await keeper.renew_once()
    assert lost == ["w:/b", "w:/a"] and keeper.held == []
