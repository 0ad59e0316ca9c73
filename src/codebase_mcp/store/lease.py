"""Leases: a named piece of work held by one process at a time across replicas, through
PostgreSQL (the `leases` table). Index jobs are the first user (`job:<id>`), one file
watcher per watched repository the second (`watch:<path>`, jobs/watch_manager.py).

The rules:
- a lease has an owner and an expiry, both kept by the database, and times are the
  database's clock (`now()`), never a replica's: replicas' clocks may disagree;
- the owner renews it every third of its length (`renew_every`); a lease not renewed in
  time expires, and then anyone may take it over (`may_take`): its owner died (SIGKILL,
  OOM) or hangs (SIGSTOP, a blocked event loop);
- the owner counts a lease as lost once it could not confirm a renewal within a lease's
  length of sending it (`valid_until`): by then another may hold it, so it stops writing;
- writes made under a lease check it in their own transaction (`fence`): the lease row is
  key-share-locked until the write commits, so a takeover (which locks the row FOR UPDATE)
  waits for a write in flight, and a write after a takeover fails instead of landing
  beside the new owner's; the owner's renewals, which change no key, do not wait for its
  writes (a share lock made them wait: a write of more than a third of a lease lost it);
- a takeover ends the previous owner's database sessions (`evict`): a hung owner holds
  row locks in an open transaction and session-level advisory locks that would
  otherwise block the new owner until it wakes up.

Decisions are pure functions; the SQL below only applies them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

import anyio
import asyncpg
import structlog

from codebase_mcp.store import db

log = structlog.get_logger(__name__)

# The application_name of an owner's connections starts with this (see session_name).
SESSION_PREFIX = "codebase-mcp "
# While renewals fail, try again this often (seconds) until the leases lapse.
RETRY_AFTER_FAILURE = 1.0


class LeaseLostError(Exception):
    """A lease this process held is held by another now (or by nobody): stop the work."""


# --- decisions (pure) -----------------------------------------------------------------


def renew_every(ttl: float) -> float:
    """How often an owner renews: three chances before the lease expires."""
    return ttl / 3


def may_take(holder: str | None, expires_at: datetime | None, claimant: str, now: datetime) -> bool:
    """Whether `claimant` may take the lease: nobody holds it, it holds it itself, or the
    holder let it expire (`now` and `expires_at` from the database's clock)."""
    if holder is None or expires_at is None or holder == claimant:
        return True
    return expires_at <= now


def valid_until(sent_at: float, ttl: float) -> float:
    """Until when (monotonic) an owner may count on a lease it acquired or renewed by a
    statement sent at `sent_at`: the database set the expiry from its own clock at or
    after that moment, so this never outlasts it."""
    return sent_at + ttl


def lapsed(valid: Mapping[str, float], now: float) -> list[str]:
    """The leases whose validity ran out without a confirmed renewal."""
    return sorted(name for name, until in valid.items() if now >= until)


def owner_id(host: str, pid: int, token: str) -> str:
    """A process's owner name: readable (host and pid) and unique (the token: a pid is
    reused after a restart, in a new container too)."""
    return f"{host}:{pid}:{token}"


def session_name(owner: str) -> str:
    """The application_name of the owner's database sessions, by which `evict` finds them
    (at most 63 bytes: PostgreSQL truncates longer names)."""
    return SESSION_PREFIX + owner.rsplit(":", 1)[-1][:40]


# --- the table ------------------------------------------------------------------------


async def acquire(conn: db.Conn, name: str, owner: str, ttl: float) -> tuple[bool, str | None]:
    """Take the lease if `may_take` allows it: (taken, the previous holder when it was
    another owner's). Atomic: of two claimants of an expired lease, one gets it. The row
    is locked FOR UPDATE first: that waits for the writes `fence` lets through (an
    upsert's own lock would not)."""
    async with conn.transaction():  # a savepoint inside the caller's transaction
        await conn.execute("SELECT 1 FROM leases WHERE name = $1 FOR UPDATE", name)
        row = await conn.fetchrow(
            """
            WITH before AS (SELECT owner FROM leases WHERE name = $1)
            INSERT INTO leases (name, owner, expires_at)
            VALUES ($1, $2, now() + make_interval(secs => $3))
            ON CONFLICT (name) DO UPDATE
                SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at,
                    acquired_at = CASE WHEN leases.owner = EXCLUDED.owner THEN leases.acquired_at
                                       ELSE now() END
                WHERE leases.owner = EXCLUDED.owner OR leases.expires_at <= now()
            RETURNING (SELECT owner FROM before) AS previous
            """,
            name,
            owner,
            ttl,
        )
    if row is None:
        return False, None
    previous = row["previous"]
    return True, previous if previous not in (None, owner) else None


async def renew(conn: db.Conn, owner: str, names: Iterable[str], ttl: float) -> set[str]:
    """Extend the owner's leases among `names`; returns those it still holds. A lease
    that expired but that nobody took is renewed too: nothing was lost."""
    rows = await conn.fetch(
        "UPDATE leases SET expires_at = now() + make_interval(secs => $3) "
        "WHERE owner = $1 AND name = ANY($2::text[]) RETURNING name",
        owner,
        list(names),
        ttl,
    )
    return {r["name"] for r in rows}


async def release(conn: db.Conn, name: str, owner: str) -> bool:
    status = await conn.execute("DELETE FROM leases WHERE name = $1 AND owner = $2", name, owner)
    return bool(status != "DELETE 0")


async def fence(conn: db.Conn, name: str, owner: str) -> None:
    """Inside a write's transaction: raise LeaseLostError unless `owner` holds the lease,
    and keep it from changing hands until the transaction ends (FOR KEY SHARE: a takeover's
    FOR UPDATE waits for it; the owner's renewals do not)."""
    holder = await conn.fetchval("SELECT owner FROM leases WHERE name = $1 FOR KEY SHARE", name)
    if holder != owner:
        raise LeaseLostError(f"lease {name} is held by {holder or 'nobody'}, not by {owner}")


async def evict(conn: db.Conn, owner: str) -> int:
    """End the database sessions of an owner whose lease was taken over: its open
    transaction rolls back and its locks go. Returns how many sessions ended (-1 when
    the role may not end them: the new owner then waits for PostgreSQL's
    idle_in_transaction_session_timeout)."""
    try:
        ended = await conn.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = $1 "
            "AND pid <> pg_backend_pid()",
            session_name(owner),
        )
    except asyncpg.InsufficientPrivilegeError as exc:
        log.warning("cannot end the sessions of a replica whose lease expired", error=str(exc))
        return -1
    return int(ended or 0)


# --- keeping leases -------------------------------------------------------------------


class LeaseKeeper:
    """Renews every lease this process holds, in one statement per round; calls
    `on_lost(name)` for each lease it no longer holds (taken over, or not confirmed in
    time). Acquire leases with `acquire` (inside the claim's transaction), then `track`."""

    def __init__(
        self, pool: db.Pool, owner: str, ttl: float, on_lost: Callable[[str], None]
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.ttl = ttl
        self.on_lost = on_lost
        self._valid: dict[str, float] = {}

    @property
    def held(self) -> list[str]:
        return sorted(self._valid)

    def track(self, name: str, sent_at: float) -> None:
        """Renew `name` from now on; `sent_at`: when the acquiring statement was sent."""
        self._valid[name] = valid_until(sent_at, self.ttl)

    def forget(self, name: str) -> None:
        self._valid.pop(name, None)

    async def renew_once(self) -> bool:
        """One round; False when the database did not answer."""
        names = list(self._valid)
        if not names:
            return True
        sent = time.monotonic()
        try:
            with anyio.fail_after(max(self.ttl / 3, 1.0)):
                async with self.pool.acquire() as conn:
                    kept = await renew(conn, self.owner, names, self.ttl)
        except Exception as exc:  # the database away, the pool closing: try again soon
            log.warning(
                "could not renew leases", leases=len(names), error=f"{type(exc).__name__}: {exc}"
            )
            self._drop(lapsed(self._valid, time.monotonic()))
            return False
        for name in names:
            if name not in self._valid:
                continue  # forgotten meanwhile
            if name in kept:
                self._valid[name] = valid_until(sent, self.ttl)
        self._drop([n for n in names if n not in kept and n in self._valid])
        return True

    def _drop(self, names: list[str]) -> None:
        for name in names:
            self.forget(name)
            log.warning("lease lost", lease=name, owner=self.owner)
            self.on_lost(name)

    async def run(self) -> None:
        """Renew until cancelled."""
        while True:
            ok = await self.renew_once()
            await anyio.sleep(renew_every(self.ttl) if ok else RETRY_AFTER_FAILURE)
