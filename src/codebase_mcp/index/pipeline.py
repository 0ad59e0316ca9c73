"""The indexing pipeline for one repository.

discover -> decide what changed (changes.py: the stat check, then a hash, in threads, of
what it cannot vouch for) -> chunk the changed files (a process pool sized to the cores,
running ahead) -> embed what the store lacks (batched, concurrent) -> write each file
batch in one transaction with COPY. Unchanged files cost a stat, or a read and a hash
when their stat changed: no parsing, no embedding. Deleted files are removed. Per-file
errors are collected, not fatal. Stopping happens between file batches (a batch is all or
nothing), so a stopped run leaves only whole files behind and the next run picks up where
it stopped.
"""

from __future__ import annotations

import asyncio
import multiprocessing.context
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from codebase_mcp import paths
from codebase_mcp.embed.clients import Embedder
from codebase_mcp.errors import EmbedderError
from codebase_mcp.index.changes import (
    KnownSkips,
    Plan,
    SkippedFile,
    known_hashes,
    plan_changes,
    split_known_skips,
    stat_of,
    stats_to_store,
)
from codebase_mcp.models import FileError
from codebase_mcp.source.chunk import ChunkOptions, chunk_source
from codebase_mcp.source.discover import (
    DiscoveryStats,
    SkipReason,
    SourceFile,
    content_hash,
    discover_files,
)
from codebase_mcp.source.tokens import WEIGHT_A, WEIGHT_B, WEIGHT_D, chunk_vectors
from codebase_mcp.store import db, embeddings, stats, vector_index
from codebase_mcp.store.embeddings import text_hash

log = structlog.get_logger(__name__)

# Files per executor task and per database transaction: large enough to amortise the
# round trips, small enough that a stop request is honoured quickly.
FILE_BATCH = 32
# Concurrent batch writers (database connections) per job.
WRITERS = 2
# Cap on collected per-file errors kept in a job record.
MAX_ERRORS = 200
# Skips a job counts (JobInfo.skipped): files one could expect indexed. Ignore rules
# (built-in lists, .gitignore, excludes) are a choice, not a skip, and prune whole
# directories: they are not counted.
COUNTED_SKIPS = frozenset(SkipReason) - {
    SkipReason.IGNORED_BUILTIN,
    SkipReason.GITIGNORED,
    SkipReason.EXCLUDED,
}


# --- worker side (runs in the chunking processes; must stay picklable) ----------------


@dataclass(frozen=True, slots=True)
class PreparedFile:
    path: str
    language: str | None
    content_hash: str
    size: int
    # db.ChunkRecord: ..., text, tsv, term_freqs, body_length, embed_hash
    chunks: list[tuple[int, int, int, str, str | None, str | None, str, bytes, bytes, int, bytes]]


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    results: list[PreparedFile | SkippedFile]
    # word -> how many of the batch's chunks hold it (its share of document frequencies),
    # counted here so that the job's process does not merge a count per file
    words: dict[str, int]


def prepare_file(
    source: SourceFile, max_bytes: int
) -> tuple[PreparedFile | SkippedFile, list[str]]:
    """Read, decode, chunk one file and compute each chunk's search text; with the
    distinct words of each of its chunks, one after another."""
    try:
        loaded = source.load(max_bytes)
        if isinstance(loaded, SkipReason):
            error = "unreadable" if loaded is SkipReason.UNREADABLE else None
            return SkippedFile(source.rel_path, loaded, error), []
        chunks = chunk_source(loaded.text, loaded.language, ChunkOptions())
        rows = []
        words: list[str] = []
        for i, c in enumerate(chunks):
            tsv, term_freqs, body_length, lexemes = chunk_vectors(
                ((c.symbol or "", WEIGHT_A), (source.rel_path, WEIGHT_B), (c.text, WEIGHT_D))
            )
            words.extend(lexemes)
            text = c.text.replace("\x00", "")
            rows.append(
                (
                    i,
                    c.start_line,
                    c.end_line,
                    c.kind,
                    c.symbol,
                    c.language or loaded.language,
                    text,
                    tsv,
                    term_freqs,
                    body_length,
                    text_hash(embedding_text(source.rel_path, c.symbol, text)),
                )
            )
    except Exception as exc:  # one bad file must not stop the job
        failed = SkippedFile(source.rel_path, SkipReason.FAILED, f"{type(exc).__name__}: {exc}")
        return failed, []
    prepared = PreparedFile(
        source.rel_path, loaded.language, loaded.content_hash, len(loaded.data), rows
    )
    return prepared, words


def prepare_batch(sources: Sequence[SourceFile], max_bytes: int) -> PreparedBatch:
    results: list[PreparedFile | SkippedFile] = []
    words: Counter[str] = Counter()
    for source in sources:
        result, found = prepare_file(source, max_bytes)
        results.append(result)
        words.update(found)  # counted in C
    return PreparedBatch(results, words)


def hash_file(source: SourceFile) -> str | None:
    try:
        return content_hash(source.read_bytes())
    except OSError:
        return None


def hash_batch(sources: Sequence[SourceFile]) -> list[str | None]:
    return [hash_file(s) for s in sources]


def make_executor(workers: int) -> Executor:
    """Chunking runs in processes (tree-sitter walks and identifier splitting are Python,
    GIL-bound); with one worker a thread avoids starting a process at all."""
    if workers <= 1:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk")
    # spawn: forking a process that runs an event loop and HTTP threads is unsafe.
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=_QuietSpawnContext(), initializer=_worker_init
    )


_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class _QuietSpawnProcess(multiprocessing.context.SpawnProcess):
    """Starts with SIGINT and SIGTERM blocked: a process takes about a second to import
    before `_worker_init` runs, and a group signal in that second would kill it. Blocked,
    the signal stays pending until `_worker_init` ignores it, which discards it."""

    def start(self) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _QuietSpawnContext(multiprocessing.context.SpawnContext):
    Process = _QuietSpawnProcess


def warm_worker() -> int:
    """Runs once in each chunking process at engine start: imports and parser set-up
    happen before the first job instead of inside it."""
    chunk_source("def warm(up):\n    return up\n", "python", ChunkOptions())
    return os.getpid()


def _worker_init() -> None:
    """Chunking processes leave stopping to the engine: a SIGTERM or Ctrl-C sent to the
    whole process group must not kill them mid-job (the job would fail instead of being
    interrupted at a safe point). They exit when the engine shuts the pool down, or when
    their parent dies (their task pipe closes)."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


# --- decisions (pure) -----------------------------------------------------------------


def embedder_notice(error: str) -> str:
    """The job's message when the embedder failed during a run."""
    return (
        f"embedder unavailable ({error}); files were stored for full-text search, and get "
        "their vectors in the background once the embedder answers"
    )


def embedding_text(path: str, symbol: str | None, text: str) -> str:
    """What the model sees for a chunk: where it lives helps it match descriptions."""
    header = f"{path} {symbol}" if symbol else path
    return f"{header}\n{text}"


# --- the run --------------------------------------------------------------------------


class JobControl(Protocol):
    """What the pipeline needs from the job that runs it (see jobs.manager.RunningJob)."""

    @property
    def stop_requested(self) -> bool: ...

    async def report(self, **changes: Any) -> None: ...

    async def fence(self, conn: db.Conn) -> None:
        """Inside each write's transaction: raise unless the job is still this
        process's to run (its lease; another replica may have taken it over)."""


@dataclass
class Counters:
    files_total: int = 0
    files_done: int = 0
    files_unchanged: int = 0
    files_deleted: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    errors: list[FileError] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    texts_embedded: int = 0  # sent to the embedder
    texts_reused: int = 0  # found in the store (this model, the same text)

    def add_error(self, path: str, error: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(FileError(path, error))

    def skip(self, path: str, reason: SkipReason, error: str | None = None) -> None:
        if reason in COUNTED_SKIPS:
            self.skipped[reason.value] += 1
        if error is not None:
            self.add_error(path, error)

    def snapshot(self) -> dict[str, Any]:
        return {
            "files_total": self.files_total,
            "files_done": self.files_done,
            "files_unchanged": self.files_unchanged,
            "files_deleted": self.files_deleted,
            "skipped": dict(self.skipped),
            "chunks_total": self.chunks_total,
            "chunks_done": self.chunks_done,
            "errors": tuple(self.errors),
        }


@dataclass
class _Embedded:
    files: list[PreparedFile]
    skipped: list[SkippedFile]
    vectors: dict[bytes, bytes]  # the texts newly embedded (store-encoded), by their hash
    words: dict[str, int]  # PreparedBatch.words


@dataclass
class IndexResult:
    counters: Counters
    stopped: bool
    embedder_error: str | None


class IndexRun:
    """Indexes one repository once; `run()` returns when done or stopped."""

    def __init__(
        self,
        *,
        pool: db.Pool,
        embedder: Embedder | None,
        model: embeddings.Model | None = None,
        executor: Executor,
        root: str,
        job: JobControl,
        force: bool = False,
        max_file_bytes: int = 1_000_000,
        file_batch: int = FILE_BATCH,
        read_ahead: int = 4,
        bulk_min_files: int = 0,
        stat_check: bool = True,
        known_skips: KnownSkips | None = None,
    ) -> None:
        self.pool = pool
        self.embedder = embedder if model is not None else None
        self.model = model
        self.executor = executor
        self.root = root
        self.job = job
        self.force = force
        self.max_file_bytes = max_file_bytes
        self.file_batch = file_batch
        self.read_ahead = max(2, read_ahead)
        self.bulk_min_files = bulk_min_files
        self.stat_check = stat_check
        self.known_skips: KnownSkips = {} if known_skips is None else known_skips
        self.counters = Counters()
        self._stats: dict[str, db.FileStat] = {}  # of the files to (re)write
        self.embedder_error: str | None = None if self.embedder is not None else "no embedder"

    async def run(self) -> IndexResult:
        c = self.counters
        async with self.pool.acquire() as conn:
            repo = await db.upsert_repository(conn, self.root)
            stored = await db.stored_files(conn, repo.id)
            synced_at = await db.database_now(conn)  # the index holds the disk of then
        # `force` re-reads and re-chunks every file; texts whose vectors the store holds
        # (for this model) are not embedded again.
        force = self.force

        scan_started_ns = time.time_ns()  # the file system's clock, for the racy check
        discovered, plan = await self._discover_and_plan(stored, force)

        if plan.deleted:
            async with self.pool.acquire() as conn, conn.transaction():
                await self.job.fence(conn)
                c.files_deleted = await db.delete_files(conn, repo.id, plan.deleted)
        restat = [] if force else stats_to_store(discovered, stored, plan.changed, scan_started_ns)
        if restat:
            async with self.pool.acquire() as conn, conn.transaction():
                await self.job.fence(conn)
                await db.update_file_stats(conn, repo.id, restat)
        self._stats = {s.rel_path: stat_of(s, scan_started_ns) for s in plan.changed}
        changed: list[SourceFile] = plan.changed
        still_skipped: list[SkippedFile] = []
        if self.stat_check and not force:
            present = {s.rel_path for s in discovered}
            for gone in [p for p in self.known_skips if p not in present]:
                del self.known_skips[gone]
            changed, still_skipped = split_known_skips(changed, self.known_skips)
        c.files_total = len(discovered)
        c.files_done = c.files_unchanged = plan.unchanged
        for skipped in still_skipped:
            c.skip(skipped.path, skipped.reason, skipped.error)
        c.files_done += len(still_skipped)
        await self.job.report(**c.snapshot())

        bulk = False
        if self.model is not None and self.bulk_min_files:
            async with self.pool.acquire() as conn:
                held = await db.count_files(conn)
            bulk = vector_index.bulk_load_worthwhile(
                len(changed), held - len(changed), self.bulk_min_files
            )

        async def announce(vectors: int) -> None:
            await self.job.report(message=f"building the vector index ({vectors:,} vectors)")

        async with vector_index.bulk_load(
            self.pool,
            self.model,
            enabled=bulk,
            build_after=lambda: not self.job.stop_requested,
            announce=announce,
        ):
            stopped = await self._process(repo.id, changed, stored)
        async with self.pool.acquire() as conn:
            await stats.compact(conn, repo.id)
            if plan.deleted or any(s.rel_path in stored for s in plan.changed):
                # Texts this run replaced or removed may be nobody's any more.
                collected = await embeddings.collect_garbage(conn)
                if collected:
                    log.info("vectors no chunk uses any more collected", vectors=collected)
        if not stopped:
            async with self.pool.acquire() as conn:
                await db.mark_repository_indexed(
                    conn, repo.id, *await self._vectors_held(conn, repo), synced_at
                )
        return IndexResult(
            c, stopped, self.embedder_error if self.embedder_error != "no embedder" else None
        )

    async def _discover_and_plan(
        self, stored: dict[str, db.StoredFile], force: bool
    ) -> tuple[list[SourceFile], Plan]:
        """Walk the repository, hash what the stat check cannot vouch for, and plan."""
        discovery = DiscoveryStats()
        discovered: list[SourceFile] = await anyio.to_thread.run_sync(
            lambda: list(
                discover_files(
                    paths.to_os(self.root), max_file_bytes=self.max_file_bytes, stats=discovery
                )
            )
        )
        for path, reason in discovery.skipped:
            self.counters.skip(
                path, reason, "unreadable" if reason is SkipReason.UNREADABLE else None
            )
        digests, to_hash = ({}, []) if force else known_hashes(discovered, stored, self.stat_check)
        for i in range(0, len(to_hash), 512):
            batch = to_hash[i : i + 512]
            found = await anyio.to_thread.run_sync(hash_batch, batch)
            digests.update(zip((s.rel_path for s in batch), found, strict=True))
        hashes = [digests.get(s.rel_path) for s in discovered]
        plan = plan_changes(discovered, hashes, stored, force=force)
        return discovered, plan

    def _remember_skip(self, skipped: SkippedFile) -> None:
        stat = self._stats.get(skipped.path)
        # Not an unreadable file: a chmod that makes it readable keeps its mtime.
        if stat is not None and skipped.reason is not SkipReason.UNREADABLE:
            self.known_skips[skipped.path] = (stat, skipped.reason, skipped.error)

    async def _vectors_held(
        self, conn: db.Conn, repo: db.RepositoryRow
    ) -> tuple[str | None, int | None]:
        """The model and size of the vectors the repository's chunks have after this run
        (this run's model when it has any): none when lexical only."""
        held = await embeddings.held_by(conn, repo.id, self.model)
        return (held.name, held.dimensions) if held is not None else (None, None)

    async def _process(
        self, repository_id: int, changed: list[SourceFile], stored: dict[str, db.StoredFile]
    ) -> bool:
        """Chunk -> embed -> write, as three stages joined by small buffers."""
        batches = [
            changed[i : i + self.file_batch] for i in range(0, len(changed), self.file_batch)
        ]
        if not batches:
            return False
        to_embed_send, to_embed_recv = anyio.create_memory_object_stream[PreparedBatch](1)
        to_write_send, to_write_recv = anyio.create_memory_object_stream[_Embedded](1)

        async def chunk_stage() -> None:
            async with to_embed_send:
                pending: list[Future[PreparedBatch]] = []
                submitted = 0
                try:
                    while submitted < len(batches) or pending:
                        while submitted < len(batches) and len(pending) < self.read_ahead:
                            pending.append(
                                self.executor.submit(
                                    prepare_batch, batches[submitted], self.max_file_bytes
                                )
                            )
                            submitted += 1
                        result = await asyncio.wrap_future(pending.pop(0))
                        if self.job.stop_requested:
                            return
                        try:
                            await to_embed_send.send(result)
                        except anyio.BrokenResourceError:  # the embed stage stopped first
                            return
                finally:
                    for future in pending:  # not started yet: drop; running: ignore
                        future.cancel()

        async def embed_stage() -> None:
            async with to_embed_recv, to_write_send:
                async for prepared in to_embed_recv:
                    files = [r for r in prepared.results if isinstance(r, PreparedFile)]
                    skipped = [r for r in prepared.results if isinstance(r, SkippedFile)]
                    self.counters.chunks_total += sum(len(f.chunks) for f in files)
                    vectors = await self._embed(files)
                    if self.job.stop_requested:
                        return
                    try:
                        await to_write_send.send(_Embedded(files, skipped, vectors, prepared.words))
                    except anyio.BrokenResourceError:  # the writers stopped first
                        return

        async def write_stage(receive: MemoryObjectReceiveStream[_Embedded]) -> None:
            async with receive:
                async for batch in receive:
                    await self._write(repository_id, batch, stored)
                    await self.job.report(**self.counters.snapshot())
                    if self.job.stop_requested:
                        return  # a safe point: this batch is committed, the next not begun

        async with anyio.create_task_group() as tg:
            tg.start_soon(chunk_stage)
            tg.start_soon(embed_stage)
            # Writers on separate connections: the database's share of the work (COPY,
            # index upkeep) then uses more than one core. Batches hold distinct files.
            async with to_write_recv, anyio.create_task_group() as writers:
                for _ in range(WRITERS):
                    writers.start_soon(write_stage, to_write_recv.clone())
            # Normally the other stages are done by now; after a stop they may wait on a
            # full buffer, and hold no database work.
            tg.cancel_scope.cancel()
        return self.job.stop_requested

    async def _embed(self, files: list[PreparedFile]) -> dict[bytes, bytes]:
        """Vectors for the batch's texts the store does not hold yet for this model (a
        text seen before, in this file or another, at this or another commit, is not
        embedded again); nothing when there is no embedder or it failed (the chunks are
        stored anyway, and get their vectors from the background catch-up)."""
        if self.embedder is None or self.model is None or self.embedder_error is not None:
            return {}
        wanted: dict[bytes, str] = {}
        for f in files:
            for ch in f.chunks:
                wanted.setdefault(ch[10], embedding_text(f.path, ch[4], ch[6]))
        if not wanted:
            return {}
        async with self.pool.acquire() as conn:
            held = await embeddings.known(conn, self.model, list(wanted))
        todo = [(h, text) for h, text in wanted.items() if h not in held]
        self.counters.texts_reused += len(wanted) - len(todo)
        if not todo:
            return {}
        try:
            vectors = embeddings.encode(
                self.model, await self.embedder.embed_documents([text for _, text in todo])
            )
        except EmbedderError as exc:
            # Keep indexing for lexical search; a job-level notice: no file is at fault.
            self.embedder_error = str(exc)
            log.warning("embedder failed; storing chunks for lexical search only", error=str(exc))
            await self.job.report(message=embedder_notice(self.embedder_error))
            return {}
        self.counters.texts_embedded += len(todo)
        return {h: v for (h, _), v in zip(todo, vectors, strict=True)}

    async def _write(
        self, repository_id: int, batch: _Embedded, stored: dict[str, db.StoredFile]
    ) -> None:
        c = self.counters
        rows: list[db.FileRow] = []
        for f in batch.files:
            st = self._stats.get(f.path)
            rows.append(
                db.FileRow(
                    f.path,
                    f.language,
                    f.content_hash,
                    f.size,
                    len(f.chunks),
                    *((st.mtime_ns, st.inode, st.trusted) if st is not None else ()),
                )
            )
        chunk_rows = [f.chunks for f in batch.files]
        gone = [s.path for s in batch.skipped if s.path in stored]
        if rows or gone:
            added = stats.share(
                batch.words,
                sum(len(f.chunks) for f in batch.files),
                sum(ch[9] for f in batch.files for ch in f.chunks),
            )
            async with self.pool.acquire() as conn, conn.transaction():
                await self.job.fence(conn)
                await db.replace_files(
                    conn,
                    repository_id,
                    rows,
                    chunk_rows,
                    forget=gone,
                    added=added,
                    replacing=any(f.path in stored for f in batch.files),
                )
                if self.model is not None and batch.vectors:
                    hashes = list(batch.vectors)
                    await embeddings.store(
                        conn, self.model, hashes, [batch.vectors[h] for h in hashes]
                    )
        for s in batch.skipped:
            c.skip(s.path, s.reason, s.error)
            self._remember_skip(s)
        c.files_done += len(batch.files) + len(batch.skipped)
        c.chunks_done += sum(len(f.chunks) for f in batch.files)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)
