"""Embeddings catch up by themselves: chunks stored without a vector of the active model
(the embedder was down while they were indexed, or the model changed) get one in the
background, once an embedder answers, while searches answer with what exists.

One replica does it per model (the lease `embed:<model id>`); the others skip. It walks
the chunks in id order in batches, embeds the texts the store lacks, and stores them; a
pass ends when none is missing. The engine starts a pass at start, after every index job
and, while the embedder is failing, every RETRY_S seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import structlog

from codebase_mcp.embed.clients import Embedder
from codebase_mcp.errors import EmbedderError
from codebase_mcp.index.pipeline import embedding_text
from codebase_mcp.store import db, embeddings, lease

log = structlog.get_logger(__name__)

BATCH = 128
RETRY_S = 30.0


@dataclass
class Progress:
    """What the health resource shows of the catch-up."""

    state: str = "idle"  # idle | running | waiting (the embedder failed) | elsewhere
    embedded: int = 0  # texts embedded since the server started
    last_error: str | None = None
    updated_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "embedded": self.embedded,
            "last_error": self.last_error,
        }


async def catch_up(
    pool: db.Pool,
    embedder: Embedder,
    model: embeddings.Model,
    owner: str,
    progress: Progress,
    *,
    lease_seconds: float,
    batch: int = BATCH,
) -> bool:
    """One pass; True when nothing is missing any more (or another replica holds the
    work), False when the embedder failed (try again later)."""
    name = f"embed:{model.id}"
    after = 0
    try:
        while True:
            async with pool.acquire() as conn:
                held, _ = await lease.acquire(conn, name, owner, lease_seconds)
                if not held:
                    progress.state = "elsewhere"
                    return True
                rows = await embeddings.missing(conn, model, after, batch)
            if not rows:
                progress.state = "idle"
                return True
            progress.state = "running"
            after = int(rows[-1]["id"])
            texts: dict[bytes, str] = {}
            for r in rows:
                texts.setdefault(
                    bytes(r["embed_hash"]), embedding_text(r["path"], r["symbol"], r["text"])
                )
            try:
                vectors = embeddings.encode(
                    model, await embedder.embed_documents(list(texts.values()))
                )
            except EmbedderError as exc:
                progress.state, progress.last_error = "waiting", str(exc)
                log.warning("catching up embeddings: the embedder failed", error=str(exc))
                return False
            async with pool.acquire() as conn:
                await embeddings.store(conn, model, list(texts), vectors)
            progress.embedded += len(texts)
            progress.last_error = None
            await anyio.lowlevel.checkpoint()  # searches and jobs share the loop
    finally:
        progress.updated_at = time.time()
        with anyio.CancelScope(shield=True):
            try:
                async with pool.acquire() as conn:
                    await lease.release(conn, name, owner)
            except Exception:  # the pool is closing: the lease expires by itself
                log.debug("could not release the catch-up lease")
