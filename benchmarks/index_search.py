"""Indexing throughput and search latency on real code nobody here wrote: the standard
library of the running interpreter (copied without site-packages), plus a synthetic
scale-up to 100,000 chunks, and to --chunks beside it when more (1,000,000: the search
latencies side by side, the HNSW build, the sizes on disk and PostgreSQL's memory).

The embedder answers instantly (fixed vectors from a small pool, picked by a hash of the
text), so the numbers measure the pipeline - discovery, hashing, chunking, COPY, indexes -
not a model. Search latency excludes the query's embedding, as the goal states. Last, a
subset of the same files is indexed with the instant embedder and with the real local
model (the local-embed extra), side by side, with searches running meanwhile.

    .venv/bin/python benchmarks/index_search.py [--chunks 1000000] [--queries 300]
                                                [--local-files 150]

Starts its own PostgreSQL (tests/support/pg.py) and removes it afterwards, with the
durability a deployment has (fsync, synchronous_commit and full_page_writes on: the test
suite's cluster turns them off for speed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import resource
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.pg import running_cluster  # noqa: E402

from codebase_mcp.config import load_settings  # noqa: E402
from codebase_mcp.embed import local_embed  # noqa: E402
from codebase_mcp.embed.clients import Embedder  # noqa: E402
from codebase_mcp.engine import Engine, JobState, Progress  # noqa: E402
from codebase_mcp.index.pipeline import embedding_text  # noqa: E402
from codebase_mcp.search.filters import Filters  # noqa: E402
from codebase_mcp.search.hybrid import run_search  # noqa: E402
from codebase_mcp.store import db, embeddings, stats  # noqa: E402

DIMS = 768
UPSTREAM_FILES_PER_S = 10_649 / (24 * 60)  # ~7.4 files/s
UPSTREAM_SEARCH_MS = (340.0, 638.0)
GOALS = {"first": 200.0, "unchanged": 2000.0, "p95_ms": 50.0, "local_chunks_per_s": 40.0}
# A deployment's durability, over the test cluster's fast defaults.
DURABLE = ("fsync=on", "synchronous_commit=on", "full_page_writes=on")
# maintenance_work_mem for the scale-up's graph builds: enough for 1M 768-d vectors.
BUILD_MEMORY = "4GB"
# Sizes the scale-up measures at: 100k always (the goal's), and --chunks when larger.
BASE_POINT = 100_000


class InstantEmbedder:
    """Distinct vectors at once, no model: a 768-float window into a fixed random pool,
    at an offset taken from the text's hash. (Identical vectors would flatter the HNSW
    inserts, so every text gets its own.)"""

    model = "instant"

    def __init__(self, seed: int = 7, pool_size: int = 1 << 18, dimensions: int = DIMS) -> None:
        rng = random.Random(seed)
        self.dimensions = dimensions
        self._pool = [rng.gauss(0, 1) for _ in range(pool_size)]
        self._span = pool_size - dimensions

    def vector(self, text: str) -> list[float]:
        h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
        return self.window(h)

    def window(self, key: int) -> list[float]:
        offset = key % self._span
        return self._pool[offset : offset + self.dimensions]

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.vector(t) for t in texts]

    async def embed_query(self, text: str) -> list[float]:
        return self.vector(text)

    async def check(self) -> dict[str, Any]:
        return {"ok": True, "model": self.model}

    async def aclose(self) -> None:
        return None


def copy_stdlib(dest: Path) -> Path:
    src = Path(sysconfig.get_paths()["stdlib"])
    ignore = shutil.ignore_patterns("site-packages", "__pycache__", "*.pyc", "dist-packages")
    shutil.copytree(src, dest, ignore=ignore, symlinks=True)
    return dest


def migrate(url: str, dims: int = DIMS) -> None:
    import argparse as ap

    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.cmd_opts = ap.Namespace(x=[f"url={url}", f"dimensions={dims}"])
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed_index(engine: Engine, path: Path) -> tuple[float, Any, float]:
    """(seconds, the finished job, seconds of them spent building the HNSW graph at the
    end: from the job's "building the vector index" progress message on; 0 if none)."""
    started = time.perf_counter()
    build_started: list[float] = []

    async def progress(update: Progress) -> None:
        if not build_started and update.message.startswith("building the vector index"):
            build_started.append(time.perf_counter())

    job = await engine.start_index(str(path), progress=progress)
    job = await engine.wait_job(job.id)
    ended = time.perf_counter()
    assert job.state is JobState.COMPLETED, job
    return ended - started, job, (ended - build_started[0]) if build_started else 0.0


@dataclasses.dataclass
class ScalePoint:
    """One size of the scale-up: how it was reached, and the searches at it."""

    chunks: int
    load_s: float  # COPY of the chunks, their vectors and statistics
    build_s: float  # the model's HNSW graph, built once over every vector
    build_fit: bool  # the graph was built in maintenance_work_mem (no NOTICE otherwise)
    sizes: dict[str, int]
    latencies: dict[str, list[float]]
    pg_rss: int  # PostgreSQL's resident memory (postmaster and backends, PSS) after them


async def scale_up(
    pool: db.Pool, model: embeddings.Model, target: int, embedder: InstantEmbedder
) -> tuple[int, float, float, bool]:
    """Copy real chunks into a synthetic repository until the table holds `target`
    chunks, each with its own text (a path of its own) and its own random vector in the
    store; the model's HNSW index is rebuilt once afterwards (as a bulk load would do).
    Returns (chunks, seconds to load, seconds to build the graph, whether the graph was
    built in memory)."""
    started = time.perf_counter()
    rng = random.Random(11)
    span = 1 << 40
    async with pool.acquire() as conn:
        have = await conn.fetchval("SELECT count(*) FROM chunks")
        need = target - have
        if need <= 0:
            return have, 0.0, 0.0, True
        source = await conn.fetch(
            "SELECT c.text, c.tsv, c.term_freqs, c.body_length, c.path, c.kind, c.symbol, "
            "c.language FROM chunks c ORDER BY c.id"
        )
        index_def = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = $1", model.index_name
        )
        await conn.execute(f'DROP INDEX "{model.index_name}"')
        repo = await db.upsert_repository(conn, "/synthetic/scale-up")
        per_file, written = 10, 0
        # Scaling up again (100k, then 1M) goes on with new files.
        file_no = await conn.fetchval(
            "SELECT count(*) FROM files WHERE repository_id = $1", repo.id
        )
        while written < need:
            files: list[db.FileRow] = []
            chunk_rows: list[list[db.ChunkRecord]] = []
            hashes: list[bytes] = []
            vectors: list[list[float]] = []
            for _ in range(200):
                if written >= need:
                    break
                n = min(per_file, need - written)
                path = f"synthetic/{file_no:06}/{source[written % len(source)]['path']}"
                rows: list[db.ChunkRecord] = []
                for i in range(n):
                    s = source[(written + i) % len(source)]
                    key = embeddings.text_hash(embedding_text(path, s["symbol"], s["text"]))
                    hashes.append(key)
                    vectors.append(embedder.window(rng.randrange(span)))
                    rows.append(
                        (
                            i,
                            1 + 10 * i,
                            10 + 10 * i,
                            s["kind"],
                            s["symbol"],
                            s["language"],
                            s["text"],
                            s["tsv"],
                            s["term_freqs"],
                            s["body_length"],
                            key,
                        )
                    )
                files.append(db.FileRow(path, "python", f"h{file_no}", 1000, n))
                chunk_rows.append(rows)
                written += n
                file_no += 1
            async with conn.transaction():
                await db.replace_files(conn, repo.id, files, chunk_rows, replacing=False)
                await embeddings.store(conn, model, hashes, embeddings.encode(model, vectors))
                added = await stats.share_of(conn, repo.id, [f.path for f in files])
                await stats.record(conn, repo.id, added)
        await stats.compact(conn, repo.id)
        loaded = time.perf_counter()
        # What a deployment gives the build (README, "Scaling out"): the graph in memory.
        await conn.execute(f"SET maintenance_work_mem = '{BUILD_MEMORY}'")
        await conn.execute("SET max_parallel_maintenance_workers = 1")
        notices: list[str] = []

        def listen(_conn: Any, message: Any) -> None:
            notices.append(str(message))

        conn.add_log_listener(listen)
        try:
            await conn.execute(index_def)
        finally:
            conn.remove_log_listener(listen)
        built = time.perf_counter()
        await conn.execute("ANALYZE chunks")
        await conn.execute("ANALYZE embeddings")
        total = await conn.fetchval("SELECT count(*) FROM chunks")
    fit = not any("no longer fits" in n for n in notices)
    return int(total), loaded - started, built - loaded, fit


async def relation_sizes(pool: db.Pool, model: embeddings.Model) -> dict[str, int]:
    """Bytes on disk: the chunks table and its indexes, the store and the model's graph."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT pg_table_size('chunks') AS chunks, pg_indexes_size('chunks') AS chunk_indexes, "
            "pg_table_size('embeddings') AS embeddings, "
            "pg_indexes_size('embeddings') - pg_relation_size($1::regclass) AS store_key, "
            "pg_relation_size($1::regclass) AS hnsw, pg_database_size(current_database()) AS db",
            model.index_name,
        )
        assert row is not None
        return dict(row)


def postgres_memory(cluster: Any) -> int:
    """PostgreSQL's resident memory: the PSS of the postmaster and its children (shared
    buffers counted once)."""
    import psutil

    pid = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    total = 0
    main = psutil.Process(pid)
    for proc in [main, *main.children()]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total


def queries_from(symbols: list[str], rng: random.Random, n: int) -> list[str]:
    phrases = [
        "parse a date string",
        "open a network connection with a timeout",
        "read configuration file sections",
        "compress data with zlib",
        "join path components",
        "format an email address header",
        "decode base64 text",
        "spawn a subprocess and capture output",
        "compute a checksum of bytes",
        "thread pool executor shutdown",
        "serialize object to json",
        "walk a directory tree",
        "http request headers",
        "sort items by key",
        "unicode normalization",
    ]
    out: list[str] = []
    for i in range(n):
        if i % 2 == 0 and symbols:
            out.append(rng.choice(symbols))
        else:
            out.append(rng.choice(phrases))
    return out


async def search_latencies(
    pool: db.Pool,
    model: embeddings.Model,
    embedder: InstantEmbedder,
    queries: list[str],
    want: Any = None,
    filters: Filters | None = None,
) -> list[float]:
    out: list[float] = []
    for q in queries:
        vector = embedder.vector("search_query: " + q)  # outside the timing, as stated
        started = time.perf_counter()
        await run_search(pool, q, vector, filters or Filters(), 10, model=model, want=want)
        out.append((time.perf_counter() - started) * 1000)
    return out


def make_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="cbmcp-bench-", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL runs as nobody when we are root
    return base


async def open_bench_engine(
    cluster: Any,
    name: str,
    base: Path,
    args: argparse.Namespace,
    embedder: Embedder,
    **extra: str,
) -> Engine:
    url = cluster.create_database(name)
    await asyncio.to_thread(migrate, url, embedder.dimensions)
    settings = load_settings(
        env={
            "REGISTRY_DATABASE_URL": url,
            "CODEBASE_ROOTS": str(base),
            "EMBEDDING_DIMENSIONS": str(embedder.dimensions),
            **({"CODEBASE_INDEX_WORKERS": str(args.workers)} if args.workers else {}),
            **extra,
        }
    )
    engine = await Engine.create(settings, embedder=embedder)
    await engine.warm_up()  # a running server: its chunking processes are up
    return engine


def copy_subset(corpus: Path, dest: Path, files: int, seed: int = 5) -> Path:
    """A fixed sample of `files` files of the corpus, same relative paths."""
    everything = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.is_symlink())
    random.Random(seed).shuffle(everything)
    for path in everything[:files]:
        target = dest / path.relative_to(corpus)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest


class RssPeak:
    """Peak resident memory of this process, and of it with its children (the chunking
    processes), sampled every 50 ms while running."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.own = 0
        self.with_children = 0

    def sample(self) -> None:
        import psutil

        own = self._proc.memory_info().rss
        total = own
        for child in self._proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        self.own, self.with_children = max(self.own, own), max(self.with_children, total)

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(0.05)


def cpu_seconds() -> float:
    """CPU time of this process (the server: onnxruntime's threads, the event loop)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def timed_searches(engine: Engine, queries: list[str], pause: float) -> list[float]:
    """Full searches (query embedding included), in ms."""
    out: list[float] = []
    for q in queries:
        started = time.perf_counter()
        await engine.search(q, limit=10)
        out.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(pause)
    return out


async def local_model_runs(
    cluster: Any, base: Path, corpus: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The same stdlib subset indexed with the instant embedder and with the local model;
    while the model indexes, searches (query embedding included) run twice a second."""
    from codebase_mcp.embed.local_embed import LocalEmbedder

    subset = copy_subset(corpus, base / "subset", args.local_files)
    out: dict[str, Any] = {}
    instant = InstantEmbedder(dimensions=local_embed.DIMENSIONS)
    engine = await open_bench_engine(cluster, "subset_instant", base, args, instant)
    try:
        out["instant_s"], job, _ = await timed_index(engine, subset)
    finally:
        await engine.close()
    out["files"], out["chunks"] = job.files_total, job.chunks_done

    model = LocalEmbedder()
    engine = await open_bench_engine(cluster, "subset_local", base, args, model)
    rss = RssPeak()
    try:
        await model.warm_up()
        rng = random.Random(9)
        queries = queries_from([], rng, 40)
        out["idle_before"] = await timed_searches(engine, queries, 0.0)
        out["rss_before"] = RssPeak()
        out["rss_before"].sample()
        sampler = asyncio.create_task(rss.run())
        cpu_before = cpu_seconds()
        indexing = asyncio.create_task(timed_index(engine, subset))
        busy: list[float] = []
        while not indexing.done():  # two searches a second: a busy user, a small cost
            busy.extend(await timed_searches(engine, [rng.choice(queries)], 0.5))
        out["local_s"], job, _ = await indexing
        out["cpu_s"] = cpu_seconds() - cpu_before
        sampler.cancel()
        out["busy"] = busy
        out["idle_after"] = await timed_searches(engine, queries, 0.0)
        out["local_chunks"] = job.chunks_done
    finally:
        await engine.close()
    out["rss_own"], out["rss_total"] = rss.own, rss.with_children
    return out


def print_local(local: dict[str, Any]) -> None:
    instant_rate = local["chunks"] / local["instant_s"]
    rate = local["local_chunks"] / local["local_s"]
    goal = GOALS["local_chunks_per_s"]
    idle = local["idle_before"] + local["idle_after"]
    busy = local["busy"]
    print(
        f"first index of a {local['files']}-file subset ({local['chunks']:,} chunks), "
        f"end to end: instant embedder {local['instant_s']:6.1f} s = {instant_rate:7,.0f} "
        f"chunks/s; local model ({local_embed.MODEL_NAME}, {local_embed.MAX_TOKENS} word "
        f"pieces) {local['local_s']:6.1f} s = {rate:5.1f} chunks/s (goal >= {goal:.0f}: "
        f"{'met' if rate >= goal else 'MISSED'})"
    )
    cpu_ms = local["cpu_s"] / local["local_chunks"] * 1000
    print(
        f"  the server process spent {cpu_ms:.1f} ms of CPU per chunk (searches included): "
        f"two idle cores would embed ~{2000 / cpu_ms:.0f} chunks/s"
    )
    before = local["rss_before"]
    print(
        f"  while the model indexed: peak RSS {local['rss_own'] / 2**20:.0f} MB (server "
        f"process; {before.own / 2**20:.0f} MB before, model loaded), "
        f"{local['rss_total'] / 2**20:.0f} MB with its chunking processes "
        f"({before.with_children / 2**20:.0f} MB before)"
    )
    print(
        f"  search with the local model, query embedding included: idle p50 "
        f"{pct(idle, 0.5):5.1f} ms, p95 {pct(idle, 0.95):5.1f} ms ({len(idle)} searches); "
        f"while indexing p50 {pct(busy, 0.5):5.1f} ms, p95 {pct(busy, 0.95):5.1f} ms "
        f"({len(busy)} searches)"
    )


async def main_async(args: argparse.Namespace) -> None:
    base = make_base()
    load_before = os.getloadavg()[0]
    embedder = InstantEmbedder()
    try:
        corpus = copy_stdlib(base / "stdlib")
        if args.local_only:
            with running_cluster(base / "pg", settings=DURABLE) as cluster:
                local = await local_model_runs(cluster, base, corpus, args)
            print(
                f"cores: {os.cpu_count()}; load average {load_before:.1f} before, "
                f"{os.getloadavg()[0]:.1f} after (other work shares the cores)"
            )
            print_local(local)
            return
        with running_cluster(base / "pg", settings=DURABLE) as cluster:
            # 1. The pipeline alone: the same run into a database without the HNSW index
            #    (what PostgreSQL spends on the vector graph is measured in 2. and 3.).
            engine = await open_bench_engine(cluster, "pipeline", base, args, embedder)
            try:
                async with engine.pool.acquire() as conn:
                    assert engine.model is not None
                    await conn.execute(f'DROP INDEX IF EXISTS "{engine.model.index_name}"')
                pipe_s, pipe, _ = await timed_index(engine, corpus)
                again_s, again, _ = await timed_index(engine, corpus)
            finally:
                await engine.close()

            # 2. End to end, one HNSW insert per chunk as a small job does (bulk load off).
            engine = await open_bench_engine(
                cluster, "inserts", base, args, embedder, CODEBASE_BULK_INDEX_MIN_FILES="0"
            )
            try:
                inserts_s, inserts, _ = await timed_index(engine, corpus)
            finally:
                await engine.close()

            # 3. End to end as shipped: a first index this large loads without the HNSW
            #    index and builds it once; then the scale-up and the searches.
            engine = await open_bench_engine(cluster, "bench", base, args, embedder)
            try:
                first_s, first, build_s = await timed_index(engine, corpus)
                pool = engine.pool
                async with pool.acquire() as conn:
                    symbols = [
                        r[0]
                        for r in await conn.fetch(
                            "SELECT DISTINCT symbol FROM chunks WHERE symbol IS NOT NULL"
                        )
                    ]
                model = engine.model
                assert model is not None
                rng = random.Random(3)
                queries = queries_from(symbols, rng, args.queries)
                points: list[ScalePoint] = []
                for target in sorted({min(BASE_POINT, args.chunks), args.chunks}):
                    total, load_s, graph_s, fit = await scale_up(pool, model, target, embedder)
                    await search_latencies(pool, model, embedder, queries)  # caches filled
                    latencies = {
                        "hybrid": await search_latencies(pool, model, embedder, queries),
                        "lexical": await search_latencies(
                            pool, model, embedder, queries, want="lexical"
                        ),
                        "vector": await search_latencies(
                            pool, model, embedder, queries, want="vector"
                        ),
                        "filtered": await search_latencies(
                            pool,
                            model,
                            embedder,
                            queries,
                            filters=Filters(language="python", path_glob="*.py"),
                        ),
                    }
                    points.append(
                        ScalePoint(
                            total,
                            load_s,
                            graph_s,
                            fit,
                            await relation_sizes(pool, model),
                            latencies,
                            postgres_memory(cluster),
                        )
                    )
                async with pool.acquire() as conn:
                    shared_buffers = await conn.fetchval("SHOW shared_buffers")
            finally:
                await engine.close()

            # 4. The real local model beside the instant embedder, on a subset.
            local = (
                await local_model_runs(cluster, base, corpus, args)
                if args.local_files and local_embed.available()
                else None
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    pipe_rate = pipe.files_total / pipe_s
    first_rate = first.files_total / first_s
    again_rate = again.files_total / again_s
    print(
        f"corpus: {corpus.name} of Python {sys.version.split()[0]}: {first.files_total} files, "
        f"{first.chunks_done:,} chunks; cores: {os.cpu_count()}; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work shares the cores); "
        f"PostgreSQL with {', '.join(DURABLE)}"
    )
    print(
        f"first index, pipeline (no HNSW upkeep): {pipe_s:6.1f} s = {pipe_rate:7,.0f} files/s "
        f"(goal >= {GOALS['first']:.0f}: {verdict(pipe_rate >= GOALS['first'])}; "
        f"upstream ~{UPSTREAM_FILES_PER_S:.1f} files/s -> x{pipe_rate / UPSTREAM_FILES_PER_S:,.1f})"
    )
    inserts_rate = inserts.files_total / inserts_s
    print(
        f"first index, end to end (HNSW built once): {first_s:6.1f} s = {first_rate:7,.0f} "
        f"files/s = load {first_s - build_s:.1f} s + HNSW graph build {build_s:.1f} s "
        f"({GOALS['first']:.0f} files/s would allow {first.files_total / GOALS['first']:.1f} s "
        f"for both; the goal is the pipeline's, above; "
        f"upstream -> x{first_rate / UPSTREAM_FILES_PER_S:,.1f}); "
        f"x{inserts_s / first_s:.2f} faster than"
    )
    print(
        f"first index, end to end (HNSW inserts)   : {inserts_s:6.1f} s = {inserts_rate:7,.0f} "
        f"files/s (CODEBASE_BULK_INDEX_MIN_FILES=0: one graph insert per chunk)"
    )
    print(
        f"unchanged re-index                    : {again_s:6.2f} s = {again_rate:7,.0f} files/s "
        f"(goal >= {GOALS['unchanged']:.0f}: {verdict(again_rate >= GOALS['unchanged'])})"
    )
    print_scale(points, shared_buffers)
    if local is not None:
        print_local(local)
    elif args.local_files:
        print("local model: not measured (the local-embed extra is not installed)")


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def print_scale(points: list[ScalePoint], shared_buffers: str) -> None:
    """Each size's search latencies side by side, then what it took and needs."""
    header = "".join(f"{p.chunks:>22,}" for p in points)
    print(f"scale-up (chunks)     {header}")
    for name in ("hybrid", "lexical", "vector", "filtered"):
        cells = "".join(
            f"{pct(p.latencies[name], 0.5):8.1f} /{pct(p.latencies[name], 0.95):6.1f} ms  "
            for p in points
        )
        print(f"search {name:<8} p50/p95 {cells}")
    for p in points:
        p95 = pct(p.latencies["hybrid"], 0.95)
        z = p.sizes
        print(
            f"at {p.chunks:,} chunks: hybrid p95 {p95:.1f} ms, query embedding excluded (goal "
            f"<= {GOALS['p95_ms']:.0f} ms: {'met' if p95 <= GOALS['p95_ms'] else 'MISSED'}; "
            f"upstream {UPSTREAM_SEARCH_MS[1]:.0f} ms -> x{UPSTREAM_SEARCH_MS[1] / p95:,.1f}); "
            f"loaded in {p.load_s:.1f} s, HNSW graph built in {p.build_s:.1f} s "
            f"(maintenance_work_mem {BUILD_MEMORY}, 2 processes"
            f"{'' if p.build_fit else '; it did NOT fit: slower on-disk build'})"
        )
        print(
            f"  on disk: chunks {gib(z['chunks'])} + their indexes {gib(z['chunk_indexes'])}; "
            f"vectors {gib(z['embeddings'])} + key {gib(z['store_key'])}; HNSW graph "
            f"{gib(z['hnsw'])}; database {gib(z['db'])}. PostgreSQL resident after the "
            f"searches: {gib(p.pg_rss)} (shared_buffers {shared_buffers}; the rest of what "
            "it reads comes from the page cache)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--workers", type=int, default=0, help="chunking processes (0: cores)")
    parser.add_argument(
        "--local-files",
        type=int,
        default=150,
        help="files of the stdlib subset indexed with the real local model (0: skip)",
    )
    parser.add_argument(
        "--local-only", action="store_true", help="only the local model's run (needs the extra)"
    )
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
