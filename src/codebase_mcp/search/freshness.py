"""Whether a search result's file changed on disk after it was indexed.

For the few results a search returns (at most its limit), one query reads the stat each
file was indexed with and one `stat` per file reads today's: a result is stale when its
file is gone or its size or mtime differ. Cheap enough for every search (~0.1 ms per
result on a local disk), and it tells an assistant when to sync before trusting a
snippet.
"""

from __future__ import annotations

import dataclasses
import os

import anyio

from codebase_mcp import paths
from codebase_mcp.models import SearchResponse
from codebase_mcp.store import db

Key = tuple[str, str]  # (repository, path), text form
Stored = tuple[int, int | None]  # (size, mtime_ns) as indexed
Seen = tuple[int, int] | None  # (size, mtime_ns) now; None: gone


def is_stale(stored: Stored | None, seen: Seen | str) -> bool | None:
    """`seen`: today's stat, None when the file is gone, or "unknown" (unreadable)."""
    if stored is None or stored[1] is None or seen == "unknown":
        return None
    if seen is None:
        return True
    return seen != stored


async def stored_stats(conn: db.Conn, keys: list[Key]) -> dict[Key, Stored]:
    rows = await conn.fetch(
        """
        SELECT r.path AS repository, f.path, f.size, f.mtime_ns
        FROM unnest($1::text[], $2::text[]) AS k(repository, path)
        JOIN repositories r ON r.path = k.repository
        JOIN files f ON f.repository_id = r.id AND f.path = k.path
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["repository"], r["path"]): (r["size"], r["mtime_ns"]) for r in rows}


def stat_now(keys: list[Key]) -> dict[Key, Seen | str]:
    out: dict[Key, Seen | str] = {}
    for repository, path in keys:
        try:
            st = os.stat(os.path.join(paths.to_os(repository), paths.to_os(path)))  # noqa: PTH116, PTH118
        except FileNotFoundError:
            out[(repository, path)] = None
        except OSError:
            out[(repository, path)] = "unknown"
        else:
            out[(repository, path)] = (st.st_size, st.st_mtime_ns)
    return out


async def mark_stale(pool: db.Pool, response: SearchResponse) -> SearchResponse:
    """The response with each result's `stale` set."""
    if not response.results:
        return response
    keys = sorted({(r.repository, r.path) for r in response.results})
    async with pool.acquire() as conn:
        stored = await stored_stats(conn, keys)
    seen = await anyio.to_thread.run_sync(stat_now, keys)
    results = tuple(
        dataclasses.replace(
            r, stale=is_stale(stored.get((r.repository, r.path)), seen[(r.repository, r.path)])
        )
        for r in response.results
    )
    return dataclasses.replace(response, results=results)
