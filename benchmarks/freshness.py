"""Freshness: how soon an edit is searchable in a watched repository, what a change costs
in embedded texts, what an unchanged re-index costs with and without the stat check,
and what watching an idle repository costs. Everything in one run, side by side.

The embedder is the Ollama-API test server (tests/support/fake_ollama.py) answering at
once with distinct vectors; it records every text it embeds, so the counts below are
what the product sent over the real API. PostgreSQL runs with a deployment's durability
(fsync, synchronous_commit, full_page_writes on).

    .venv/bin/python benchmarks/freshness.py [--files 2000] [--edits 30] [--idle 30]

Goals (issue 13): edit to searchable p95 <= 2 s (2,000 files, watched, instant
embedder); a one-function edit of a 60-chunk file embeds <= 2 texts; `git checkout`
of another branch embeds only the chunks that differ; an unchanged re-index >= 3x
faster than hashing every file; a watched idle repository < 1 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fake_ollama import FakeOllama  # noqa: E402
from tests.support.pg import running_cluster  # noqa: E402

from codebase_mcp.config import Settings, load_settings  # noqa: E402
from codebase_mcp.engine import Engine, JobInfo, JobState, Progress  # noqa: E402

DIMS = 768
DURABLE = ("fsync=on", "synchronous_commit=on", "full_page_writes=on")
GOALS = {"p95_s": 2.0, "texts_one_function": 2, "reindex_speedup": 3.0, "idle_cpu": 1.0}


# --- set-up -----------------------------------------------------------------------------


def instant_vectors(dims: int = DIMS) -> Any:
    """Distinct vectors at once: a window into a fixed random pool, at an offset taken
    from the text's hash."""
    rng = random.Random(7)
    pool = [rng.gauss(0, 1) for _ in range(1 << 16)]
    span = len(pool) - dims

    def embed(texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            key = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())
            offset = key % span
            out.append(pool[offset : offset + dims])
        return out

    return embed


def migrate(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.cmd_opts = argparse.Namespace(x=[f"url={url}", f"dimensions={DIMS}"])
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")


def copy_stdlib(dest: Path) -> Path:
    src = Path(sysconfig.get_paths()["stdlib"])
    ignore = shutil.ignore_patterns("site-packages", "__pycache__", "*.pyc", "dist-packages")
    shutil.copytree(src, dest, ignore=ignore, symlinks=True)
    return dest


def module_text(name: str, functions: int, salt: str = "") -> str:
    parts = [f'"""Module {name}."""\n\nimport os\n']
    for j in range(functions):
        parts.append(
            f"\n\ndef {name}_step_{j}{salt}(path, count={j}):\n"
            f'    """Step {j} of {name}: read the file and count its lines."""\n'
            f"    with open(os.path.join(path, '{name}_{j}.txt')) as handle:\n"
            f"        lines = handle.read().splitlines()\n"
            f"    return len(lines) + count\n"
        )
    return "".join(parts)


def write_repository(root: Path, files: int, functions: int = 8) -> Path:
    """`files` Python modules in 20 packages, `functions` functions each, written
    a minute in the past (as a checkout that is not being edited)."""
    for i in range(files):
        package = root / f"pkg{i % 20:02}"
        package.mkdir(parents=True, exist_ok=True)
        path = package / f"mod{i:05}.py"
        path.write_text(module_text(f"mod{i:05}", functions))
    old = time.time() - 60
    for path in root.rglob("*.py"):
        os.utime(path, (old, old))
    return root


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def settings(url: str, ollama: FakeOllama, roots: Path, **extra: str) -> Settings:
    return load_settings(
        env={
            "REGISTRY_DATABASE_URL": url,
            "OLLAMA_BASE_URL": ollama.url,
            "CODEBASE_ROOTS": str(roots),
            "EMBEDDING_DIMENSIONS": str(DIMS),
            **extra,
        }
    )


async def open_engine(
    cluster: Any, name: str, ollama: FakeOllama, roots: Path, **kw: Any
) -> Engine:
    url = cluster.create_database(name)
    await asyncio.to_thread(migrate, url)
    engine = await Engine.create(settings(url, ollama, roots), **kw)
    await engine.warm_up()
    return engine


async def index(engine: Engine, path: Path) -> JobInfo:
    job = await engine.start_index(str(path))
    job = await engine.wait_job(job.id)
    assert job.state is JobState.COMPLETED, job
    return job


def watcher(engine: Engine, path: Path) -> Any:
    assert engine._watches is not None
    return engine._watches.watchers.get(str(path))


async def until_watching(engine: Engine, path: Path) -> Any:
    while True:
        w = watcher(engine, path)
        if w is not None and w.first_scan_done and w._notify is not None and w.batch.empty:
            return w
        await asyncio.sleep(0.05)


async def until_idle(engine: Engine, path: Path) -> None:
    while True:
        w = watcher(engine, path)
        if w is not None and w.batch.empty and not w.in_flight:
            return
        await asyncio.sleep(0.05)


async def searchable(engine: Engine, symbol: str, path: str, deadline: float) -> float:
    """Poll lexical search until `symbol` is found in `path`; the moment it is."""
    while time.perf_counter() < deadline:
        response = await engine.search(symbol, mode="lexical", limit=3)
        if any(r.path == path and r.symbol == symbol for r in response.results):
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{symbol} not searchable in time")


async def chunk_texts(engine: Engine, repository: Path) -> Counter[tuple[str, str]]:
    async with engine.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT c.path, c.text FROM chunks c JOIN repositories r ON r.id = c.repository_id "
            "WHERE r.path = $1",
            str(repository),
        )
    return Counter((r["path"], r["text"]) for r in rows)


# --- the measurements -------------------------------------------------------------------


async def edit_to_searchable(
    cluster: Any, ollama: FakeOllama, base: Path, files: int, edits: int
) -> dict[str, Any]:
    repo = write_repository(base / "watched", files)
    engine = await open_engine(cluster, "watched", ollama, base, serve_queue=True)
    try:
        first = await index(engine, repo)
        await engine.start_index(str(repo), watch=True)
        w = await until_watching(engine, repo)
        rng = random.Random(5)
        watched_s: list[float] = []
        synced_s: list[float] = []
        texts: list[int] = []
        for n in range(edits):
            # through the watcher
            i = rng.randrange(files)
            rel = f"pkg{i % 20:02}/mod{i:05}.py"
            symbol = f"edited_function_{n}"
            await until_idle(engine, repo)
            before = len(ollama.embedded_texts)
            text = (repo / rel).read_text() + f"\n\ndef {symbol}(value):\n    return value\n"
            started = time.perf_counter()
            (repo / rel).write_text(text)
            seen = await searchable(engine, symbol, rel, started + 30)
            watched_s.append(seen - started)
            await until_idle(engine, repo)
            texts.append(len(ollama.embedded_texts) - before)
        jobs_watched = w.jobs
        await engine.start_index(str(repo), watch=False)  # then by hand: sync
        while True:
            if watcher(engine, repo) is None:
                break
            await asyncio.sleep(0.05)
        for n in range(max(5, edits // 3)):
            i = rng.randrange(files)
            rel = f"pkg{i % 20:02}/mod{i:05}.py"
            symbol = f"synced_function_{n}"
            text = (repo / rel).read_text() + f"\n\ndef {symbol}(value):\n    return value\n"
            started = time.perf_counter()
            (repo / rel).write_text(text)
            job = await engine.sync(str(repo))
            done = time.perf_counter()
            assert job.state is JobState.COMPLETED
            assert await searchable(engine, symbol, rel, done + 5) > 0
            synced_s.append(done - started)
    finally:
        await engine.close()
    return {
        "files": first.files_total,
        "chunks": first.chunks_done,
        "watched": watched_s,
        "synced": synced_s,
        "texts": texts,
        "jobs": jobs_watched,
    }


async def one_function_edit(cluster: Any, ollama: FakeOllama, base: Path) -> dict[str, Any]:
    repo = base / "big-file"
    repo.mkdir()
    target = repo / "big.py"
    target.write_text(module_text("big", 59))  # and the module header: 60 chunks
    engine = await open_engine(cluster, "bigfile", ollama, base)
    try:
        first = await index(engine, repo)
        text = target.read_text().replace(
            "    return len(lines) + count\n", "    return len(lines) + count + 1\n", 1
        )
        target.write_text(text)
        before = len(ollama.embedded_texts)
        job = await engine.sync(str(repo))
        embedded = len(ollama.embedded_texts) - before
    finally:
        await engine.close()
    return {"chunks": first.chunks_done, "changed_chunks": 1, "embedded": embedded, "job": job}


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "b",
            "GIT_AUTHOR_EMAIL": "b@x",
            "GIT_COMMITTER_NAME": "b",
            "GIT_COMMITTER_EMAIL": "b@x",
        },
    )


async def branch_switch(
    cluster: Any, ollama: FakeOllama, base: Path, files: int, changed: int
) -> dict[str, Any]:
    """A git repository of `files` modules; branch `other` changes one function in each
    of `changed` files. Watched; `git checkout other`; what was embedded."""
    repo = write_repository(base / "branches", files)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "main")
    git(repo, "checkout", "-q", "-b", "other")
    rng = random.Random(9)
    for i in rng.sample(range(files), changed):
        path = repo / f"pkg{i % 20:02}/mod{i:05}.py"
        path.write_text(
            path.read_text().replace(
                "return len(lines) + count\n", "return len(lines) - count\n", 1
            )
        )
    git(repo, "commit", "-q", "-am", "other")
    git(repo, "checkout", "-q", "main")
    engine = await open_engine(cluster, "branches", ollama, base, serve_queue=True)
    try:
        await index(engine, repo)
        await engine.start_index(str(repo), watch=True)
        w = await until_watching(engine, repo)
        before_texts = await chunk_texts(engine, repo)
        jobs = w.jobs
        embedded_before = len(ollama.embedded_texts)
        started = time.perf_counter()
        git(repo, "checkout", "-q", "other")
        while True:
            if w.jobs > jobs:
                break
            await asyncio.sleep(0.02)
        await until_idle(engine, repo)
        synced = time.perf_counter() - started
        embedded = len(ollama.embedded_texts) - embedded_before
        after_texts = await chunk_texts(engine, repo)
        jobs_run = w.jobs - jobs
    finally:
        await engine.close()
    differ = sum((after_texts - before_texts).values())
    files_changed = len({p for p, _ in after_texts - before_texts})
    return {
        "files_changed": files_changed,
        "chunks_differ": differ,
        "embedded": embedded,
        "jobs": jobs_run,
        "seconds": synced,
    }


async def unchanged_reindex(
    cluster: Any, ollama: FakeOllama, base: Path, rounds: int
) -> dict[str, Any]:
    corpus = copy_stdlib(base / "stdlib")
    engine = await open_engine(cluster, "reindex", ollama, base)
    try:
        first = await index(engine, corpus)
        timings: dict[bool, list[float]] = {False: [], True: []}
        scans: dict[bool, list[float]] = {False: [], True: []}
        await index(engine, corpus)  # both modes start from stored stats
        await quiet_database(engine)  # the first index's writes are not in the way
        for _ in range(rounds):
            for check in (False, True):  # interleaved: the machine's load hits both alike
                engine.settings = engine.settings.model_copy(update={"stat_check": check})
                planned: list[float] = []

                async def progress(update: Progress, planned: list[float] = planned) -> None:
                    # The first report with a total: the job knows what changed.
                    if not planned and update.files_total:
                        planned.append(time.perf_counter())

                started = time.perf_counter()
                job = await engine.start_index(str(corpus), progress=progress)
                job = await engine.wait_job(job.id)
                assert job.state is JobState.COMPLETED, job
                timings[check].append(time.perf_counter() - started)
                scans[check].append(planned[0] - started)
    finally:
        await engine.close()
    return {"files": first.files_total, "timings": timings, "scans": scans}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def postgres_cpu(cluster: Any) -> float:
    """CPU seconds of the cluster so far: the postmaster's own, its reaped children's
    (backends that exited), and its live children's."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "postgres" and str(cluster.datadir) in " ".join(
                proc.info["cmdline"] or []
            ):
                times = proc.cpu_times()
                total = times.user + times.system + times.children_user + times.children_system
                for child in proc.children():
                    with contextlib.suppress(psutil.Error):
                        total += sum(child.cpu_times()[:2])
                return total
        except psutil.Error:
            continue
    return 0.0


async def quiet_database(engine: Engine) -> None:
    """Until no autovacuum worker runs: the measurement below is of our work alone."""
    async with engine.pool.acquire() as conn:
        await conn.execute("CHECKPOINT")
        for _ in range(600):
            busy = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            )
            if not busy:
                return
            await asyncio.sleep(0.1)


async def idle_cpu(
    cluster: Any, ollama: FakeOllama, base: Path, seconds: float, files: int
) -> dict[str, Any]:
    """A server with one indexed repository of `files` files, idle for `seconds`: not
    watched, then watched. This process's CPU (the server: event loop, job poller,
    notify thread, lease renewals; and the Ollama-API test server's thread) and
    PostgreSQL's."""
    repo = write_repository(base / "idle", files)
    engine = await open_engine(cluster, "idle", ollama, base, serve_queue=True)
    out: dict[str, Any] = {}
    try:
        await index(engine, repo)
        for watched in (False, True):
            await engine.start_index(str(repo), watch=watched)
            if watched:
                w = await until_watching(engine, repo)
                out["directories"] = len(w._rules)
            await asyncio.sleep(3)  # settle
            await quiet_database(engine)
            for _ in range(30):  # PostgreSQL's own background work after the index
                before = postgres_cpu(cluster)
                await asyncio.sleep(2)
                if postgres_cpu(cluster) - before < 0.02:  # < 1 % of a core
                    break
            cpu, pg, wall = cpu_seconds(), postgres_cpu(cluster), time.perf_counter()
            await asyncio.sleep(seconds)
            wall = time.perf_counter() - wall
            out[watched] = (
                100 * (cpu_seconds() - cpu) / wall,
                100 * (postgres_cpu(cluster) - pg) / wall,
            )
    finally:
        await engine.close()
    return out


async def main_async(args: argparse.Namespace, base: Path) -> None:
    load_before = os.getloadavg()[0]
    ollama = FakeOllama(dims=DIMS, embed_fn=instant_vectors())
    try:
        with ollama, running_cluster(base / "pg", settings=DURABLE) as cluster:
            # First, before the other parts leave PostgreSQL busy (checkpoints, autovacuum)
            reindex = await unchanged_reindex(cluster, ollama, base, args.rounds)
            edits = await edit_to_searchable(cluster, ollama, base, args.files, args.edits)
            big = await one_function_edit(cluster, ollama, base)
            branch = await branch_switch(cluster, ollama, base, args.files, args.branch_files)
            idle = await idle_cpu(cluster, ollama, base, args.idle, args.files)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(
        f"cores: {os.cpu_count()}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other work shares the cores); PostgreSQL with "
        f"{', '.join(DURABLE)}; embedder: the Ollama-API test server, instant vectors"
    )
    w, s = edits["watched"], edits["synced"]
    p95 = pct(w, 0.95)
    print(
        f"edit to searchable, watched ({edits['files']} files, {edits['chunks']:,} chunks, "
        f"{len(w)} one-file edits, debounce {Settings.model_fields['watch_debounce'].default} s): "
        f"p50 {pct(w, 0.5):.2f} s, p95 {p95:.2f} s, max {max(w):.2f} s "
        f"(goal p95 <= {GOALS['p95_s']:.0f} s: {verdict(p95 <= GOALS['p95_s'])}); "
        f"{edits['jobs']} jobs for {len(w)} edits and the first scan; texts embedded per edit: "
        f"{statistics.median(edits['texts']):.0f} (median; the new function)"
    )
    print(
        f"edit then sync_repository (not watched): p50 {pct(s, 0.5):.2f} s, "
        f"p95 {pct(s, 0.95):.2f} s over {len(s)} edits (returns once search sees it)"
    )
    print(
        f"one-function edit in a {big['chunks']}-chunk file: {big['embedded']} texts embedded "
        f"for {big['changed_chunks']} changed chunk (goal <= {GOALS['texts_one_function']}: "
        f"{verdict(big['embedded'] <= GOALS['texts_one_function'])}: the other chunks' "
        "vectors come from the embeddings store, keyed by (model, text hash))"
    )
    print(
        f"git checkout of another branch ({branch['files_changed']} files differ, one "
        f"function each; watched): {branch['embedded']} texts embedded for "
        f"{branch['chunks_differ']} chunks that differ; {branch['jobs']} job(s), searchable "
        f"{branch['seconds']:.2f} s after the checkout began"
    )
    n = reindex["files"]
    for what, key in (("whole job", "timings"), ("its scan", "scans")):
        off, on = reindex[key][False], reindex[key][True]
        m_off, m_on = statistics.median(off), statistics.median(on)
        speedup = m_off / m_on
        print(
            f"unchanged re-index, standard library ({n} files), {what}, median of {len(on)}: "
            f"hashing every file (CODEBASE_STAT_CHECK=false, as before) {m_off * 1000:.0f} ms = "
            f"{n / m_off:,.0f} files/s; stat check {m_on * 1000:.0f} ms = "
            f"{n / m_on:,.0f} files/s: x{speedup:.1f} (goal >= "
            f"{GOALS['reindex_speedup']:.0f}: {verdict(speedup >= GOALS['reindex_speedup'])}); "
            f"each run, ms: {' '.join(f'{t * 1000:.0f}' for t in off)} / "
            f"{' '.join(f'{t * 1000:.0f}' for t in on)}"
        )
    print(
        "  (the scan: from the request to the job's first report, which comes once it knows "
        "what changed: admission, stored rows, walk, hashing, plan)"
    )
    (cpu_off, pg_off), (cpu_on, pg_on) = idle[False], idle[True]
    print(
        f"idle CPU over {args.idle:.0f} s, {args.files} files ({idle['directories']} "
        f"directories watched): server {cpu_off:.2f} % of a core not watched, {cpu_on:.2f} % "
        f"watched (+{cpu_on - cpu_off:.2f}; goal < {GOALS['idle_cpu']:.0f} %: "
        f"{verdict(cpu_on < GOALS['idle_cpu'])}); PostgreSQL {pg_off:.2f} % / {pg_on:.2f} % "
        "(with its own background work after an index: autovacuum, checkpoints)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--edits", type=int, default=30)
    parser.add_argument("--branch-files", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    base = Path(tempfile.mkdtemp(prefix="cbmcp-fresh-", dir="/tmp"))
    base.chmod(0o755)  # PostgreSQL runs as nobody when we are root
    asyncio.run(main_async(args, base))


if __name__ == "__main__":
    main()
